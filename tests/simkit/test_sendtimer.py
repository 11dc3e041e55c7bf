"""The load generator's send timing (simkit.sendtimer): the rule both halves share, and the simulated
generator that shares the server's cores sending open-loop arrivals in batches on its timer's grid."""

from __future__ import annotations

import math
import statistics

import pytest

from simkit import clients as clients_mod
from simkit import simulate
from simkit.profile import CostProfile
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload
from simkit.sendtimer import (
    LOOP_CLOCK_S,
    POLL_WINDOW_S,
    SHARED_TIMER_RESOLUTION_S,
    loop_timer_fire_s,
    wake_delay_s,
)


def test_own_cpus_sleep_until_the_window_then_poll():
    assert wake_delay_s(10.0, 10.0 + 0.5 * POLL_WINDOW_S, 0.0) is None  # inside the window: poll
    assert wake_delay_s(10.0, 10.0, 0.0) is None
    assert wake_delay_s(10.0, 10.02, 0.0) == pytest.approx(0.02 - POLL_WINDOW_S)


def test_shared_cpus_never_poll_and_sleep_at_least_the_resolution():
    r = SHARED_TIMER_RESOLUTION_S
    assert wake_delay_s(10.0, 10.0001, r) == r
    assert wake_delay_s(10.0, 9.0, r) == r  # already due: still one resolution (the batch rule)
    assert wake_delay_s(10.0, 10.02, r) == pytest.approx(0.02)


def test_loop_timer_fires_on_the_millisecond_grid_within_a_tick_either_side():
    for now, delay, phase in ((0.0123, 0.005, 0.0), (0.0123, 0.005, 0.99), (1.0004, 0.0016, 0.5)):
        fire = loop_timer_fire_s(now, delay, phase)
        assert fire >= now
        assert abs(fire - (now + delay)) <= 1.5 * LOOP_CLOCK_S + 1e-12
        # a whole number of ticks past a tick boundary, plus the poll's phase
        assert (fire / LOOP_CLOCK_S - phase) == pytest.approx(round(fire / LOOP_CLOCK_S - phase), abs=1e-6)
    assert loop_timer_fire_s(0.0123, 0.005, 0.0) == pytest.approx(0.017)  # 12 ms + 5 ms, 0.3 ms early
    with pytest.raises(ValueError, match="phase"):
        loop_timer_fire_s(0.0, 0.001, 1.5)


def _run(monkeypatch, shared: bool, workload: Workload, seed: int):
    """simulate() m3 on one core with `workload`; the Result and the run's Clients (their send record)."""
    seen = []
    finish = clients_mod.Clients.finish

    def capture(self, t_end):
        seen.append(self)
        return finish(self, t_end)

    monkeypatch.setattr(clients_mod.Clients, "finish", capture)
    s = Scenario(model=ModelSpec.for_model(3), hardware=Hardware(cores=1), workload=workload)
    return simulate(s, CostProfile.default(), seed=seed, loadgen_on_server_cores=shared), seen[-1]


def _open_run(monkeypatch, shared: bool, rate: float = 5000.0):
    return _run(monkeypatch, shared, Workload(connections=20, mode="open", rate_rps=rate, arrival="constant",
                                              cpu_us=20, gil_us=0, duration_s=0.05, warmup_s=0.01), seed=3)


def test_shared_open_loop_sends_in_batches_on_the_timer_grid(monkeypatch):
    result, c = _open_run(monkeypatch, shared=True)
    assert result.completed > 0
    window = c.w1 - c.w0
    # 5 arrivals per ms, but the generator wakes at most once a resolution: batches of several
    assert 0 < c.lg_wakes <= window / SHARED_TIMER_RESOLUTION_S + 1
    assert len(c.send_lag_s) >= 3 * c.lg_wakes
    # every arrival waits for a wake: on average about half the resolution or more, never a poll's 0
    assert statistics.mean(c.send_lag_s) >= 0.3 * SHARED_TIMER_RESOLUTION_S
    assert max(c.send_lag_s) <= 2.5 * SHARED_TIMER_RESOLUTION_S + 0.005  # a tick either side, plus CPU


def test_own_cores_open_loop_sends_on_time(monkeypatch):
    result, c = _open_run(monkeypatch, shared=False)
    assert result.completed > 0
    assert c.send_lag_s == [] and c.lg_wakes == 0  # no generator thread: each arrival goes at its time
    assert math.isfinite(result.latency_p50_s)


def _think_run(monkeypatch, shared: bool):
    return _run(monkeypatch, shared, Workload(connections=10, think_s=0.005, cpu_us=20, gil_us=0,
                                              duration_s=0.1, warmup_s=0.02), seed=5)


def test_shared_closed_loop_think_times_end_on_the_generator_timer(monkeypatch):
    own, c_own = _think_run(monkeypatch, shared=False)
    shared, c = _think_run(monkeypatch, shared=True)
    assert c_own.lg_wakes == 0
    window = c.w1 - c.w0
    # ten clients ending a think every ~0.5 ms, released at wakes at least a resolution apart: batched
    assert 0 < c.lg_wakes <= window / SHARED_TIMER_RESOLUTION_S + 1
    assert shared.completed > c.lg_wakes
    # each think runs long by the wait for a wake: the cycle (think + latency) is longer than on time
    cycle_own = 10 / own.throughput_rps - own.latency_mean_s
    cycle_shared = 10 / shared.throughput_rps - shared.latency_mean_s
    assert cycle_shared > cycle_own + 0.2 * SHARED_TIMER_RESOLUTION_S
