"""The generator's wait for a send (simkit.sendtimer's rule, run by realkit.loadgen): on CPUs of its own
it sleeps on the loop's timer until just before a send is due, then polls; sharing the server's CPUs it
never polls. Think times share one timer. A fake event loop records what was scheduled (no network)."""

from __future__ import annotations

import time

import pytest

from realkit.loadgen import LoadSpec, _Generator
from simkit.scenario import Workload
from simkit.sendtimer import POLL_WINDOW_S, SHARED_TIMER_RESOLUTION_S


class FakeLoop:
    def __init__(self) -> None:
        self.soon: list = []
        self.later: list[tuple[float, object]] = []

    def call_soon(self, cb, *args):
        self.soon.append(cb)

    def call_later(self, delay, cb, *args):
        self.later.append((delay, cb))


class FakeConn:
    def __init__(self) -> None:
        self.sent = 0

    def _next(self) -> None:
        self.sent += 1


def _gen(workload: Workload, resolution: float = 0.0) -> tuple[_Generator, FakeLoop]:
    loop = FakeLoop()
    spec = LoadSpec(url="http://127.0.0.1:9/", workload=workload, processes=0, timer_resolution_s=resolution)
    return _Generator(spec, 0, 1, loop), loop


def test_open_loop_polls_for_an_arrival_inside_the_window():
    g, loop = _gen(Workload(connections=2, mode="open", rate_rps=100.0))
    g.t_stop = time.monotonic() + 60.0
    g.next_t = time.monotonic() + 0.25 * POLL_WINDOW_S
    g.dispatch()
    assert loop.soon == [g.dispatch] and loop.later == []  # polls, no ms-grained timer


def test_open_loop_sleeps_until_the_window_before_a_far_arrival():
    g, loop = _gen(Workload(connections=2, mode="open", rate_rps=100.0))
    g.t_stop = time.monotonic() + 60.0
    g.next_t = time.monotonic() + 0.05
    g.dispatch()
    assert loop.soon == []
    (delay, cb), = loop.later
    assert cb == g.dispatch and 0.05 - POLL_WINDOW_S - 0.01 < delay <= 0.05 - POLL_WINDOW_S


def test_shared_cpus_never_poll():
    g, loop = _gen(Workload(connections=2, mode="open", rate_rps=100.0), SHARED_TIMER_RESOLUTION_S)
    g.t_stop = time.monotonic() + 60.0
    g.next_t = time.monotonic() + 0.25 * POLL_WINDOW_S
    g.dispatch()
    assert loop.soon == [] and loop.later == [(SHARED_TIMER_RESOLUTION_S, g.dispatch)]


def test_think_times_share_one_timer_and_send_when_due():
    g, loop = _gen(Workload(connections=2, think_s=0.02))
    a, b = FakeConn(), FakeConn()
    now = time.monotonic()
    g.think(a, now + 0.02)
    g.think(b, now + 0.0205)
    (delay, cb), = loop.later  # one timer for both
    assert cb == g.wake_think and delay == pytest.approx(0.02 - POLL_WINDOW_S, abs=0.01)
    # a is due, b within the poll window: a sends, b is polled for
    g.thinking[0] = (time.monotonic() - 1e-4, a)
    g.thinking[1] = (time.monotonic() + 0.25 * POLL_WINDOW_S, b)
    g.wake_think()
    assert (a.sent, b.sent) == (1, 0)
    assert loop.soon == [g.wake_think]
    g.thinking[0] = (time.monotonic() - 1e-6, b)
    g.wake_think()
    assert b.sent == 1 and not g.thinking and not g.think_armed


def test_the_runner_uses_the_resolution_the_simulator_models():
    from realkit.runner import load_spec_for
    from simkit.scenario import Scenario

    s = Scenario(workload=Workload(connections=2, mode="open", rate_rps=100.0))
    assert load_spec_for(s, 8080, (0,), 1, shared=True).timer_resolution_s == SHARED_TIMER_RESOLUTION_S
    assert load_spec_for(s, 8080, (0,), 1, shared=False).timer_resolution_s == 0.0
