"""simkit.events: the scheduling primitives keep simpy's order and its run(until) boundary."""

import pytest
import simpy

from simkit.events import at, run


def test_events_fire_in_time_order_and_ties_in_scheduling_order_like_timeouts():
    env = simpy.Environment()
    seen = []
    for delay, tag in [(2.0, "c"), (1.0, "a"), (1.0, "b"), (0.0, "z")]:
        at(env, delay, lambda tag: seen.append((env.now, tag)), tag)
    run(env, 5.0)
    assert seen == [(0.0, "z"), (1.0, "a"), (1.0, "b"), (2.0, "c")]
    assert env.now == 5.0
    # the same entries as simpy's Timeouts get: time, priority, then the environment's own counter
    t = simpy.events.Timeout(env, 1.0, "timeout")
    at(env, 1.0, seen.append, "after")
    (t1, p1, id1, ev), (t2, p2, id2, *_rest) = sorted(env._queue)
    assert ev is t and (t1, p1) == (t2, p2) and id2 == id1 + 1


def test_run_stops_before_an_event_due_at_until_as_simpy_does():
    env = simpy.Environment()
    seen = []
    at(env, 1.0, lambda _v: seen.append("due at until"))
    at(env, 0.5, lambda _v: at(env, 0.25, lambda _v2: seen.append("scheduled from a callback")))
    run(env, 1.0)
    assert env.now == 1.0 and seen == ["scheduled from a callback"]
    run(env, 2.0)
    assert seen == ["scheduled from a callback", "due at until"]


def test_a_negative_delay_is_refused():
    with pytest.raises(ValueError, match="negative delay"):
        at(simpy.Environment(), -1e-9, print)
