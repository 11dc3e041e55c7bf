"""The wake-up-from-idle probe: its curve fit, and one real (short) run."""

import math

import pytest

from calibration.probes import IDLE_GAPS_S, fit_idle_wakeup, probe_idle_wakeup


def test_fit_recovers_ceiling_and_time_constant():
    extra = [120e-6 * -math.expm1(-g / 4e-3) for g in IDLE_GAPS_S]
    ceiling, tau = fit_idle_wakeup(IDLE_GAPS_S, extra)
    assert ceiling == pytest.approx(120e-6, rel=0.05) and tau == pytest.approx(4e-3, rel=0.1)


def test_fit_never_gives_a_negative_ceiling():
    ceiling, _tau = fit_idle_wakeup(IDLE_GAPS_S, [0.0, -1e-6, -2e-6, -3e-6, -3e-6, -3e-6])
    assert ceiling == 0.0


@pytest.mark.timeout(60)
def test_probe_runs_on_loopback_and_gives_both_parameters():
    got = {r.name: r for r in probe_idle_wakeup(scale=0.2)}
    assert set(got) == {"idle_wakeup_s", "idle_wakeup_tau_s"}
    assert got["idle_wakeup_s"].value >= 0 and got["idle_wakeup_tau_s"].value > 0
