"""The simulator's scheduling primitives: `at` calls fn(value) `delay` seconds from now, `run` runs
the events due before a time.

simkit is a callback engine (simkit.machine); it schedules ~4-15 events per simulated request, and a
simpy.events.Timeout costs more to make than its callback costs to run. `at` pushes a bare
(time, priority, id, fn, value) entry onto a simpy.Environment's queue, at the priority and with the
id a Timeout would get (NORMAL, env._eid), so events run in the order simpy would run them: by time,
then in scheduling order. No event object is made: the id is unique, so the tuple comparison never
reaches fn. `run` is Environment.run(until=...) for a queue that holds only such entries (no
processes: nothing fails, nothing is URGENT), without a method call per event. Both read simpy's
queue layout (simpy.core: time, priority, id first) and its clock (env._now, which the engine reads
directly: the `now` property's call was ~50 a request); pyproject pins simpy to the 4.1 line for this.
"""

from __future__ import annotations

from heapq import heappop, heappush

from simpy.events import NORMAL


def at(env, delay: float, fn, value=None) -> None:
    """fn(value) at env.now + delay (delay >= 0)."""
    if delay < 0:
        raise ValueError(f"negative delay {delay}")
    heappush(env._queue, (env._now + delay, NORMAL, next(env._eid), fn, value))


def run(env, until: float) -> None:
    """Process every event due before `until` (one due at `until` waits, as with env.run(until)),
    then set the clock to `until`."""
    q = env._queue
    while q and q[0][0] < until:
        env._now, _, _, fn, value = heappop(q)
        fn(value)
    env._now = until
