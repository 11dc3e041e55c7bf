"""Prediction bands (experiments.intervals): the rule's parts, replications, and the sweep's band columns."""

import dataclasses
import math

import pytest
from fakesim import fake_simulate

from experiments import intervals
from experiments.intervals import BAND_METRICS, BandPolicy, ValidationErrors, band_columns, derive_seeds
from experiments.sweep import sweep
from experiments.whatif import parse_whatif
from simkit.profile import CostProfile, Param
from simkit.result import columns
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

PROFILE = CostProfile.default()
POINT = Scenario(model=ModelSpec.for_model("m3_reactor"), hardware=Hardware(cores=1),
                 workload=Workload(connections=50, cpu_us=100, duration_s=0.5))


def noisy_simulate(scenario, profile=None, *, spread=0.3):
    """fake_simulate with throughput and p99 scaled by a factor the seed decides (1 +- spread)."""
    r = fake_simulate(scenario, profile)
    f = 1.0 + spread * ((scenario.seed * 7919) % 1000 / 500.0 - 1.0)
    return dataclasses.replace(r, throughput_rps=r.throughput_rps * f, latency_p99_s=r.latency_p99_s / f)


def quiet_simulate(scenario, profile=None):
    return noisy_simulate(scenario, profile, spread=1e-5)


def _rows(scores, model="m3_reactor", metric="throughput", role="interp", **extra):
    """Validation rows whose |log(pred/meas)| are `scores`, one point each."""
    return [{"set": "grid", "point": i, "model": model, "metric": metric, "role": role, "cores": 1,
             "connections": 100, "measured": 100.0, "predicted": 100.0 * math.exp(s), **extra}
            for i, s in enumerate(scores)]


def test_band_contains_the_point_and_an_uncalibrated_profile_says_so():
    result, b = intervals.predict(POINT, PROFILE, simulate=fake_simulate)
    for metric in BAND_METRICS:
        assert b[f"{metric}_lo"] < getattr(result, metric) < b[f"{metric}_hi"]
    # no validation rows: the stated default factor, at least, on each side
    assert b["throughput_rps_hi"] / result.throughput_rps >= intervals.DEFAULT_FACTOR
    assert "uncalibrated" in b["band_basis"]
    assert b["replications"] == 2 and b["seeds"].split()[0] == str(POINT.seed)


def test_replications_stop_at_the_half_width_or_the_cap():
    policy = BandPolicy(min_replications=2, max_replications=6, target_half_width=0.02)
    quiet = intervals.replicate(quiet_simulate, POINT, PROFILE, policy)
    assert len(quiet) == 2  # noise far under 2%: the minimum suffices
    noisy = intervals.replicate(noisy_simulate, POINT, PROFILE, policy)
    assert len(noisy) == 6  # +-30% noise never gets to 2% in 6 runs: the cap
    assert [r.scenario.seed for r in noisy] == derive_seeds(POINT.seed, 6)
    assert len(set(derive_seeds(POINT.seed, 6))) == 6
    mean = intervals.combine(noisy)
    assert mean.throughput_rps == pytest.approx(sum(r.throughput_rps for r in noisy) / 6)
    h = intervals.noise_half_width([r.throughput_rps for r in noisy], 0.9)
    assert h > 0.02


def test_parameter_uncertainty_widens_the_band_when_sds_grow():
    wide = dataclasses.replace(PROFILE, params={n: Param(p.value, 3 * p.sd, p.source)
                                                for n, p in PROFILE.params.items()})
    narrow = dataclasses.replace(PROFILE, params={n: Param(p.value, 0.0, p.source)
                                                  for n, p in PROFILE.params.items()})
    s_wide = intervals.param_sensitivities(POINT, wide)
    s_base = intervals.param_sensitivities(POINT, PROFILE)
    assert intervals.param_sensitivities(POINT, narrow)["throughput_rps"] == 0.0
    assert s_wide["throughput_rps"] > s_base["throughput_rps"] > 0
    _, b_wide = intervals.predict(POINT, wide, simulate=fake_simulate, use_analytic=True)
    _, b_base = intervals.predict(POINT, PROFILE, simulate=fake_simulate, use_analytic=True)
    assert b_wide["latency_p99_s_hi"] > b_base["latency_p99_s_hi"]


def test_validation_part_is_a_conformal_quantile_and_leave_one_out_drops_the_point():
    errors = ValidationErrors.from_rows(_rows([0.1] * 9 + [2.0]))
    # n = 10 at level 0.9: the 10th smallest, the outlier
    assert errors.half_width("m3_reactor", "throughput", ("interp",), 0.9)[0] == pytest.approx(2.0)
    h, _ = errors.half_width("m3_reactor", "throughput", ("interp",), 0.9, exclude=("grid", 9))
    assert h == pytest.approx(0.1)
    # too few rows for this model: every model's rows of the kind count
    h_other, where = errors.half_width("m6_prefork", "throughput", ("interp",), 0.9)
    assert h_other == pytest.approx(2.0) and "all models" in where


def test_points_past_the_calibrated_range_take_the_extrapolation_rows():
    rows = (_rows([0.05] * 12) + _rows([0.8] * 12, role="cores")
            + _rows([0.02] * 12, role="offgrid", mode="closed"))
    errors = ValidationErrors.from_rows(intervals.number_points(
        [{k: v for k, v in r.items() if k != "point"} for r in rows]))
    inside = POINT.replace(cores=1)
    assert errors.kinds_for(inside, "throughput") == ("offgrid/closed",)
    far = POINT.replace(cores=8, connections=100_000)
    assert errors.kinds_for(far, "throughput") == ("offgrid/closed", "cores", "connections")
    assert errors.half_width("m3_reactor", "throughput", errors.kinds_for(far, "throughput"), 0.9)[0] == \
        pytest.approx(0.8)


def test_sweep_frame_has_band_columns_with_the_value_inside():
    frame = sweep(POINT, models=["m3", "m6"], cores=[1, 2], connections=[10, 100], profile=PROFILE,
                  engine="serial", simulate=fake_simulate, progress=False)
    assert list(frame.columns) == columns() + band_columns()
    for metric in BAND_METRICS:
        assert (frame[f"{metric}_lo"] <= frame[metric]).all() and (frame[metric] <= frame[f"{metric}_hi"]).all()
    assert (frame["replications"] == 2).all() and (frame["band_level"] == 0.9).all()
    bare = sweep(POINT, models=["m3"], cores=[1], connections=[10], profile=PROFILE, engine="serial",
                 simulate=fake_simulate, progress=False, bands=False)
    assert list(bare.columns) == columns()
    with pytest.raises(ValueError, match="bands"):
        sweep(POINT, models=["m3"], cores=[1], connections=[10], profile=PROFILE, engine="serial",
              simulate=fake_simulate, progress=False, bands="yes")


@pytest.mark.parametrize(("kwargs", "field"), [({"level": 1.5}, "level"), ({"max_replications": 0}, "max_replications"),
                                              ({"min_replications": 4, "max_replications": 2}, "min_replications"),
                                              ({"target_half_width": -1}, "target_half_width")])
def test_band_policy_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        BandPolicy(**kwargs)


def test_whatif_sim_section_sets_the_band_policy():
    doc = {"slo": {"p99_ms": 50}, "budget": {"memory_gib": 8},
           "grid": {"models": ["m3"], "connections": [10], "cores": [1]},
           "sim": {"max_replications": 4, "band_level": 0.8}}
    spec = parse_whatif(doc)
    assert spec.bands == BandPolicy(level=0.8, max_replications=4)
    doc["sim"] = {"min_replications": 5, "max_replications": 3}
    with pytest.raises(ValueError, match="sim.min_replications"):
        parse_whatif(doc)


def test_offgrid_rows_come_from_the_profile_notes_or_the_csv_beside_an_older_profile(tmp_path):
    import pandas as pd

    off = [{**r, "set": "offgrid"} for r in _rows([0.3] * 10, role="offgrid", mode="open")]
    noted = dataclasses.replace(PROFILE, notes={"offgrid_validation": [{k: v for k, v in r.items() if k != "set"}
                                                                       for r in off]})
    assert ValidationErrors.of(noted).kinds_for(POINT.replace(mode="open", rate_rps=100.0), "throughput") == \
        ("offgrid/open",)
    path = tmp_path / "old.json"
    PROFILE.save(path)
    pd.DataFrame(off + _rows([0.1] * 3)).to_csv(path.with_suffix(".csv"), index=False)
    rows = intervals.profile_validation_rows(CostProfile.load(path))
    assert {r["set"] for r in rows} == {"offgrid"} and len(rows) == 10


def test_a_model_with_few_rows_never_borrows_a_band_narrower_than_its_own_worst_error():
    rows = _rows([0.1] * 30, model="m3_reactor") + [{**r, "point": 100 + r["point"]}
                                                    for r in _rows([0.9, 0.2], model="m2_thread_per_conn")]
    errors = ValidationErrors.from_rows(rows)
    h, where = errors.half_width("m2_thread_per_conn", "throughput", ("interp",), 0.9)
    assert h == pytest.approx(0.9) and "worst" in where
    assert errors.half_width("m6_prefork", "throughput", ("interp",), 0.9)[0] == pytest.approx(0.1)  # pooled
