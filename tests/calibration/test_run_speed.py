"""Each real run's measured work speed (Result.work_cpu_scale / work_gil_scale, realkit.work.WorkLedger)
is the speed its simulation runs at; the profile keeps the runs' median and spread; a measured scale is
not fitted."""

import math
from dataclasses import replace

import pytest

from calibration.compare import at_run_speed
from calibration.fit import FIT_PARAMS, apply_measured, fit, unmeasured, work_speeds_from_runs
from calibration.grid import build_grid
from simkit.profile import CostProfile
from simkit.result import Result

pytestmark = pytest.mark.timeout(60)


def gil_bound(scenario, profile=None, *, seed=None, loadgen_on_server_cores=False, source="sim", **_kw):
    """A server whose every request is its gil_us work at the profile's speed plus 50 us."""
    p = profile or CostProfile.default()
    w = scenario.workload
    service = 50e-6 + w.gil_us * 1e-6 * p["gil_work_scale"] + w.cpu_us * 1e-6 * p["cpu_work_scale"]
    x = 1.0 / service
    lat = w.connections * service
    return Result(scenario=scenario, source=source, throughput_rps=x, latency_mean_s=lat, latency_p50_s=lat,
                  latency_p90_s=lat, latency_p99_s=lat, latency_p999_s=lat, completed=int(x * w.duration_s))


def _runs(scales, min_gil_us=1.0):
    points = [p for p in build_grid(quick=False) if p.role == "train" and p.scenario.workload.gil_us >= min_gil_us]
    out = []
    for point, scale in zip(points, scales, strict=False):
        real = gil_bound(point.scenario, CostProfile.default().with_params("probe", gil_work_scale=scale),
                         source="real")
        cpu = 1.0 if point.scenario.workload.cpu_us > 0 else math.nan
        out.append(replace(real, work_gil_scale=scale, work_cpu_scale=cpu))
    return out


def test_a_run_is_simulated_at_the_speed_it_measured():
    real = _runs([1.6], min_gil_us=200)[0]
    base = CostProfile.default()
    assert at_run_speed(base, real)["gil_work_scale"] == 1.6
    assert at_run_speed(base, replace(real, work_gil_scale=math.nan, work_cpu_scale=math.nan)) is base  # nothing measured: as it was
    sim = gil_bound(real.scenario, at_run_speed(base, real))
    assert sim.throughput_rps == pytest.approx(real.throughput_rps)
    assert gil_bound(real.scenario, base).throughput_rps > 1.2 * real.throughput_rps


def test_measured_scales_are_not_fitted_and_runs_at_two_speeds_leave_no_residual():
    """Half the runs did their work 1.8x slower (the box's slow spell): a single fitted scale cannot
    match both halves, the runs' own speeds match each exactly."""
    reals = _runs([1.0, 1.8] * 20)
    assert unmeasured(FIT_PARAMS, reals) == ()
    got = fit(reals, CostProfile.default(), names=(), simulate=gil_bound, bootstrap=0)
    assert got.names == () and got.rmse_log < 1e-3  # completions counted whole
    unmeasured_runs = [replace(r, work_gil_scale=math.nan) for r in reals]
    assert "gil_work_scale" in unmeasured(FIT_PARAMS, unmeasured_runs)
    fitted = fit(unmeasured_runs, CostProfile.default(), names=("gil_work_scale",), simulate=gil_bound,
                 max_evaluations=20, bootstrap=0)
    assert fitted.rmse_log > 20 * got.rmse_log


def test_the_profile_takes_the_runs_median_speed_and_their_spread_as_its_sd():
    reals = _runs([1.0, 1.1, 1.2, 1.6, 1.9])
    got = work_speeds_from_runs(reals)
    assert got["gil_work_scale"][0] == pytest.approx(1.2)
    assert got["gil_work_scale"][1] == pytest.approx((1.6 - 1.1) / 1.349)
    prof = apply_measured(CostProfile.default(), reals)
    assert prof["gil_work_scale"] == pytest.approx(1.2) and prof.params["gil_work_scale"].source == "fit"


def test_the_servers_python_costs_run_at_the_runs_speed_over_the_speed_they_were_probed_at():
    """A zero-work m3 on one CPU spent 12.7 us x the run's speed for Python a request: its probed Python
    costs are priced at run speed / probe speed; a figure whose probe recorded no speed stays."""
    base = CostProfile.default()
    notes = {"probes": {"parse_s": {"interp_speed": 1.0}, "recv_base_s": {"interp_speed": 2.0}}}
    prof = replace(base, notes=notes)
    real = _runs([1.6], min_gil_us=200)[0]
    got = at_run_speed(prof, real)
    assert got["parse_s"] == pytest.approx(base["parse_s"] * 1.6)
    assert got["recv_base_s"] == pytest.approx(base["recv_base_s"] * 0.8)
    assert got["send_base_s"] == base["send_base_s"]  # no probe speed recorded: as probed
    assert got["gil_work_scale"] == 1.6
    no_gil = replace(real, work_gil_scale=math.nan)  # no speed for Python measured: nothing to scale by
    assert at_run_speed(prof, no_gil)["parse_s"] == base["parse_s"]
