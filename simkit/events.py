"""The simulator's scheduling primitives: `at` calls fn(event) `delay` seconds from now, `run` runs
the events due before a time.

simkit is a callback engine (simkit.machine); it schedules ~12 events per simulated request, and a
simpy.events.Timeout costs more to make than its callback costs to run. `at` pushes a bare object
with what simpy.Environment.step reads of an event (callbacks, _ok; the callback reads _value) onto
the environment's queue, at the priority a Timeout has (NORMAL), so the order of events, and hence
every simulated figure, is the same as with Timeout. `run` is Environment.run(until=...) for a
queue that holds only such events (no processes: nothing fails, nothing is URGENT), without a
method call per event. Both read simpy's queue layout (simpy.core: (time, priority, id, event));
pyproject pins simpy to the 4.1 line for this.
"""

from __future__ import annotations

from heapq import heappop, heappush

from simpy.events import NORMAL


class Scheduled:
    """A callback due at a simulated time; `_value` is what the callback reads."""

    __slots__ = ("callbacks", "_value", "_ok")

    def __init__(self, fn, value) -> None:
        self.callbacks = [fn]
        self._value = value
        self._ok = True


def at(env, delay: float, fn, value=None) -> None:
    """fn(event) at env.now + delay (delay >= 0), event._value = value."""
    if delay < 0:
        raise ValueError(f"negative delay {delay}")
    heappush(env._queue, (env._now + delay, NORMAL, next(env._eid), Scheduled(fn, value)))


def run(env, until: float) -> None:
    """Process every event due before `until` (one due at `until` waits, as with env.run(until)),
    then set the clock to `until`."""
    q = env._queue
    while q and q[0][0] < until:
        env._now, _, _, ev = heappop(q)
        callbacks, ev.callbacks = ev.callbacks, None
        for fn in callbacks:
            fn(ev)
    env._now = until
