"""The calibration grid takes every per-model choice from the registry: the configuration each
model runs in, which models --quick extrapolates in connections, and the run lengths."""

import dataclasses

import pytest

from calibration.grid import CALIBRATION_BACKLOG, build_grid, latency_estimate_s, make_scenario
from simkit import registry
from simkit.registry import CalibrationSpec
from simkit.scenario import ModelSpec


@pytest.mark.parametrize("quick", [True, False])
def test_grid_uses_each_entrys_calibration_knobs_and_quick_extrapolation(quick):
    points = build_grid(quick=quick)
    assert {p.scenario.model.name for p in points} == set(registry.names())
    for arch in registry.architectures():
        mine = [p for p in points if p.scenario.model.name == arch.name]
        want = ModelSpec.for_model(arch.name, **{"backlog": CALIBRATION_BACKLOG, **arch.calibration.knobs})
        assert {p.scenario.model for p in mine} == {want}, arch.name
        for field, value in arch.calibration.knobs.items():
            assert getattr(mine[0].scenario.model, field) == value
        extrapolates = any(p.role == "connections" for p in mine)
        assert extrapolates == (arch.calibration.quick_extrapolation or not quick), arch.name
        rpc = {p.scenario.workload.requests_per_conn for p in mine}
        assert rpc == ({1} if arch.one_connection_at_a_time else {None}), arch.name
    assert any(a.calibration.quick_extrapolation for a in registry.architectures())
    assert not all(a.calibration.quick_extrapolation for a in registry.architectures())


def test_a_new_registry_entry_gets_its_own_grid_configuration():
    base = registry.get("m5_multi_reactor")
    extra = dataclasses.replace(base, name="m9_grid_probe", calibration=CalibrationSpec(
        knobs={"threads": 3}, quick_extrapolation=True))
    registry.register(extra)
    try:
        points = build_grid(quick=True, models=("9",))
        assert {p.scenario.model for p in points} == {ModelSpec(name="m9_grid_probe", threads=3, backlog=CALIBRATION_BACKLOG)}
        assert any(p.role == "connections" for p in points)
        # its run lengths follow its own executors (3 loops), not another model's
        three = latency_estimate_s("m9_grid_probe", "io", 1000, 1)
        assert three == pytest.approx(latency_estimate_s("m5_multi_reactor", "io", 1000, 1) * 4 / 3)
    finally:
        registry.unregister("m9_grid_probe")
    with pytest.raises(ValueError, match="unknown model"):
        build_grid(quick=True, models=("m9_grid_probe",))


def test_latency_estimate_follows_the_bottleneck():
    # one executor does everything; processes split it; a pool of 4 bounds blocking io work
    one = latency_estimate_s("m3_reactor", "io", 1000, 1)
    assert one == pytest.approx(1000 * (2000e-6 + 20e-6 + 150e-6))
    assert latency_estimate_s("m6_prefork", "io", 1000, 1) == pytest.approx(one / 2)
    assert latency_estimate_s("m4_reactor_workers", "io", 1000, 1) == pytest.approx(one / 4)
    # a thread per connection: io overlaps, the GIL-held part queues
    assert latency_estimate_s("m2_thread_per_conn", "io", 1000, 2) == pytest.approx(1000 * 170e-6)
    # the window covers 4 estimated latencies up to the cap
    s = make_scenario("m4_reactor_workers", "io", 1000, 1, 1.2, 0.4)
    assert s.workload.duration_s == pytest.approx(round(4 * one / 4, 2))
    assert make_scenario("m3_reactor", "io", 10000, 1, 1.2, 0.4).workload.duration_s == 8.0
