"""The wake-up-from-idle probe: its curve fit, and one real (short) run."""

import math

import numpy as np
import pytest

from calibration.probes import IDLE_GAPS_S, fit_idle_wakeup, fit_slow_wakeups, probe_idle_wakeup


def test_fit_recovers_ceiling_and_time_constant():
    extra = [120e-6 * -math.expm1(-g / 4e-3) for g in IDLE_GAPS_S]
    ceiling, tau = fit_idle_wakeup(IDLE_GAPS_S, extra)
    assert ceiling == pytest.approx(120e-6, rel=0.05) and tau == pytest.approx(4e-3, rel=0.1)


def test_fit_never_gives_a_negative_ceiling():
    ceiling, _tau = fit_idle_wakeup(IDLE_GAPS_S, [0.0, -1e-6, -2e-6, -3e-6, -3e-6, -3e-6])
    assert ceiling == 0.0


def test_slow_wakeups_are_recovered_from_the_tail():
    """Draws of the simulator's own wake-up law (fast ceiling x f, plus a share p x f of exponential slow
    ones) give back p and the slow mean."""
    rng = np.random.default_rng(3)
    ceiling, tau, p, mean = 60e-6, 4e-3, 0.25, 1.5e-3
    extras = []
    for g in IDLE_GAPS_S:
        f = -math.expm1(-g / tau)
        base = rng.normal(0.0, 10e-6, 4000)
        slow = (rng.random(4000) < p * f) * rng.exponential(mean, 4000)
        extras.append(base + ceiling * f + slow)
    got_p, got_mean = fit_slow_wakeups(IDLE_GAPS_S, extras, ceiling, tau)
    assert got_p == pytest.approx(p, rel=0.15) and got_mean == pytest.approx(mean, rel=0.15)


def test_no_tail_gives_no_slow_wakeups():
    extras = [np.full(100, 50e-6 * -math.expm1(-g / 4e-3)) for g in IDLE_GAPS_S]
    assert fit_slow_wakeups(IDLE_GAPS_S, extras, 50e-6, 4e-3) == (0.0, 0.0)


@pytest.mark.timeout(60)
def test_probe_runs_on_loopback_and_gives_its_parameters():
    got = {r.name: r for r in probe_idle_wakeup(scale=0.2)}
    assert {"idle_wakeup_s", "idle_wakeup_tau_s", "idle_wakeup_slow_p"} <= set(got)
    assert got["idle_wakeup_s"].value >= 0 and got["idle_wakeup_tau_s"].value > 0
    assert 0.0 <= got["idle_wakeup_slow_p"].value <= 1.0


def test_the_connection_cache_fit_recovers_base_ceiling_and_knee():
    from calibration.probes import CACHE_PROBE_CONNS, fit_conn_cache

    trips = [12e-6 + 6e-6 * -math.expm1(-n / 700.0) for n in CACHE_PROBE_CONNS]
    base, ceiling, knee = fit_conn_cache(CACHE_PROBE_CONNS, trips)
    assert base == pytest.approx(12e-6, rel=0.02) and ceiling == pytest.approx(6e-6, rel=0.05)
    assert knee == pytest.approx(700.0, rel=0.1)
    # no growth with connections: no ceiling
    _base, ceiling, _knee = fit_conn_cache(CACHE_PROBE_CONNS, [12e-6, 11.9e-6, 12e-6, 11.8e-6, 11.9e-6])
    assert ceiling == pytest.approx(0.0, abs=2e-7)


def test_the_connection_cache_probe_runs_on_loopback_and_gives_its_parameters():
    from calibration.probes import probe_conn_cache

    miss, knee = probe_conn_cache(0.05)
    assert miss.name == "syscall_cache_miss_s" and 0.0 <= miss.value < 50e-6
    assert knee.name == "cache_knee_conns" and knee.value > 0
    assert len(miss.detail["round_trip_cpu_s"]) == len(miss.detail["connections"]) >= 3
