"""simkit.events: the scheduling primitives keep simpy's order and its run(until) boundary."""

import pytest
import simpy

from simkit.events import at, run


def test_events_fire_in_time_order_and_ties_in_scheduling_order_like_timeouts():
    env = simpy.Environment()
    seen = []
    for delay, tag in [(2.0, "c"), (1.0, "a"), (1.0, "b"), (0.0, "z")]:
        at(env, delay, lambda ev: seen.append((env.now, ev._value)), tag)
    t = simpy.events.Timeout(env, 1.0, "timeout")  # a plain Timeout interleaves by the same rule
    t.callbacks.append(lambda ev: seen.append((env.now, ev._value)))
    run(env, 5.0)
    assert seen == [(0.0, "z"), (1.0, "a"), (1.0, "b"), (1.0, "timeout"), (2.0, "c")]
    assert env.now == 5.0


def _until_one(runner) -> list[str]:
    env = simpy.Environment()
    seen = []
    at(env, 1.0, lambda ev: seen.append("due at until"))
    at(env, 0.5, lambda ev: at(env, 0.25, lambda ev2: seen.append("scheduled from a callback")))
    runner(env)
    assert env.now == 1.0
    return seen


def test_run_stops_before_an_event_due_at_until_as_simpy_does():
    assert _until_one(lambda env: run(env, 1.0)) == _until_one(lambda env: env.run(until=1.0)) == [
        "scheduled from a callback"]


def test_a_negative_delay_is_refused():
    with pytest.raises(ValueError, match="negative delay"):
        at(simpy.Environment(), -1e-9, print)
