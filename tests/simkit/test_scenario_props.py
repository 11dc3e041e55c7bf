"""Property tests (hypothesis): every invalid parameter raises ValueError naming its field.

Covers every field of ModelSpec, Hardware, Workload and Scenario (out of range, wrong type, bool for
a number, NaN / inf, unknown names), the Result metrics, CostProfile / Param, the analytic functions'
arguments and simulate()'s own keyword arguments. Valid draws must construct and round-trip, so
the invalid cases are not passing by rejecting everything. Messages must start with "<field>:",
the project's convention, so a user sees which knob to turn.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simkit.analytic import Station, erlang_c, fit_usl, mm1, mmc, mva
from simkit.profile import PARAM_NAMES, CostProfile, Param
from simkit.registry import names
from simkit.result import Result, from_frame, to_frame
from simkit.scenario import (
    ARRIVALS,
    DISPATCH_MODES,
    LOAD_MODES,
    Hardware,
    ModelSpec,
    Scenario,
    Workload,
)

pytestmark = pytest.mark.timeout(60)

NAN, INF = float("nan"), float("inf")
# Values of the wrong type for any numeric field: strings, containers, objects, None.
WRONG_TYPES = st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just(object()),
                        st.just(b"1"), st.just(None))
NON_FINITE = st.sampled_from([NAN, INF, -INF])


def _named(field: str):
    return pytest.raises(ValueError, match=rf"^{re.escape(field)}:")


# -- field specs: (dataclass, kind, bounds) ---------------------------------------------------------
# kind "int": (min, max or None, optional); "float": (min, strict, optional); "choice": choices.
INT_FIELDS = {
    (ModelSpec, "threads"): (1, 4096, False),
    (ModelSpec, "processes"): (1, 4096, False),
    (ModelSpec, "pool"): (0, 65536, False),
    (ModelSpec, "backlog"): (1, None, False),
    (Hardware, "cores"): (1, 65536, False),
    (Hardware, "memory_bytes"): (1, None, False),
    (Hardware, "fd_limit"): (16, None, False),
    (Hardware, "somaxconn"): (1, None, False),
    (Hardware, "threads_max"): (1, None, False),
    (Workload, "connections"): (1, None, False),
    (Workload, "requests_per_conn"): (1, None, True),
    (Workload, "idle_connections"): (0, None, False),
    (Workload, "request_bytes"): (16, None, False),
    (Workload, "resp_bytes"): (0, None, False),
    (Scenario, "seed"): (0, None, False),
}
FLOAT_FIELDS = {
    (ModelSpec, "keepalive_timeout_s"): (0.0, True, False),
    (Workload, "rate_rps"): (0.0, True, True),
    (Workload, "think_s"): (0.0, False, False),
    (Workload, "cpu_us"): (0.0, False, False),
    (Workload, "gil_us"): (0.0, False, False),
    (Workload, "io_us"): (0.0, False, False),
    (Workload, "duration_s"): (0.0, True, False),
    (Workload, "warmup_s"): (0.0, False, False),
    (Workload, "timeout_s"): (0.0, True, False),
    (Workload, "connect_rate_cps"): (0.0, True, True),
}
CHOICE_FIELDS = {
    (ModelSpec, "dispatch"): DISPATCH_MODES,
    (Workload, "mode"): LOAD_MODES,
    (Workload, "arrival"): ARRIVALS,
}


def _id(key) -> str:
    return f"{key[0].__name__}.{key[1]}"


def _invalid_int(lo: int, hi: int | None, optional: bool):
    bad = [st.integers(max_value=lo - 1), st.booleans(), st.floats(allow_nan=True), NON_FINITE, WRONG_TYPES]
    if hi is not None:
        bad.append(st.integers(min_value=hi + 1))
    strategy = st.one_of(*bad)
    return strategy.filter(lambda v: v is not None) if optional else strategy


def _invalid_float(lo: float, strict: bool, optional: bool):
    below = st.floats(max_value=lo, exclude_max=not strict, allow_nan=False) | st.integers(max_value=-1)
    strategy = st.one_of(below, NON_FINITE, st.booleans(), WRONG_TYPES)
    return strategy.filter(lambda v: v is not None) if optional else strategy


def _build(kind, field: str, value):
    if kind is Scenario:
        return Scenario(**{field: value})
    extra = {}
    if kind is Workload and field == "rate_rps":
        extra["mode"] = "open"  # rate_rps is only required (and checked as required) in open loop
    return kind(**{field: value}, **extra)


@pytest.mark.parametrize("key", sorted(INT_FIELDS, key=_id), ids=_id)
@given(data=st.data())
def test_invalid_integer_fields(key, data):
    kind, field = key
    value = data.draw(_invalid_int(*INT_FIELDS[key]), label=field)
    with _named(field):
        _build(kind, field, value)


@pytest.mark.parametrize("key", sorted(FLOAT_FIELDS, key=_id), ids=_id)
@given(data=st.data())
def test_invalid_float_fields(key, data):
    kind, field = key
    value = data.draw(_invalid_float(*FLOAT_FIELDS[key]), label=field)
    with _named(field):
        _build(kind, field, value)


@pytest.mark.parametrize("key", sorted(CHOICE_FIELDS, key=_id), ids=_id)
@given(data=st.data())
def test_invalid_choice_fields(key, data):
    kind, field = key
    choices = CHOICE_FIELDS[key]
    value = data.draw(st.one_of(st.text(max_size=12), st.integers(), st.none(), st.booleans())
                      .filter(lambda v: v not in choices), label=field)
    with _named(field):
        _build(kind, field, value)


@given(st.one_of(st.text(max_size=20), st.integers(), st.none(), st.floats()))
def test_unknown_model_names(value):
    valid = {str(i) for i in range(1, len(names()) + 1)} | set(names()) | {n.split("_")[0] for n in names()}
    if str(value).strip() in valid:
        assert ModelSpec.for_model(value).name in names()
        return
    with _named("name"):
        ModelSpec(name=value)


@given(st.one_of(st.integers(), st.none(), st.text(max_size=3), st.floats()).filter(lambda v: not isinstance(v, bool)))
def test_gil_must_be_a_bool(value):
    with _named("gil"):
        ModelSpec(gil=value)


def test_cross_field_rules_name_the_field():
    with _named("pool"):
        ModelSpec(name="m4_reactor_workers", pool=0)
    with _named("rate_rps"):
        Workload(mode="open")
    for part in ("model", "hardware", "workload"):
        with _named(part):
            Scenario(**{part: {"name": "m3"}})
    with _named("colour"):
        Scenario.from_dict({"workload": {"colour": 1}})
    with _named("sauce"):
        Scenario.from_dict({"sauce": 1})
    with _named("wibble"):
        Scenario().replace(wibble=3)


# -- valid draws construct and round-trip ------------------------------------------------------------
@st.composite
def scenarios(draw):
    name = draw(st.sampled_from(names()))
    mode = draw(st.sampled_from(LOAD_MODES))
    model = ModelSpec(
        name=name,
        threads=draw(st.integers(1, 4096)),
        processes=draw(st.integers(1, 4096)),
        pool=draw(st.integers(1 if name == "m4_reactor_workers" else 0, 65536)),
        dispatch=draw(st.sampled_from(DISPATCH_MODES)),
        backlog=draw(st.integers(1, 10**6)),
        keepalive_timeout_s=draw(st.floats(1e-3, 1e4)),
        gil=draw(st.booleans()),
    )
    hardware = Hardware(cores=draw(st.integers(1, 65536)), memory_bytes=draw(st.integers(1, 2**50)),
                        fd_limit=draw(st.integers(16, 10**7)), somaxconn=draw(st.integers(1, 10**6)),
                        threads_max=draw(st.integers(1, 10**7)))
    finite = st.floats(0.0, 1e6)
    workload = Workload(
        connections=draw(st.integers(1, 10**7)), mode=mode,
        rate_rps=draw(st.floats(1e-3, 1e7)) if mode == "open" else draw(st.none() | st.floats(1e-3, 1e7)),
        arrival=draw(st.sampled_from(ARRIVALS)), think_s=draw(finite),
        requests_per_conn=draw(st.none() | st.integers(1, 10**6)), idle_connections=draw(st.integers(0, 10**7)),
        cpu_us=draw(finite), gil_us=draw(finite), io_us=draw(finite),
        request_bytes=draw(st.integers(16, 10**6)), resp_bytes=draw(st.integers(0, 10**8)),
        duration_s=draw(st.floats(1e-3, 1e5)), warmup_s=draw(finite), timeout_s=draw(st.floats(1e-3, 1e4)),
        connect_rate_cps=draw(st.none() | st.floats(1e-3, 1e9)),
    )
    return Scenario(model=model, hardware=hardware, workload=workload, seed=draw(st.integers(0, 2**31)))


@given(scenarios())
def test_valid_scenarios_round_trip(s):
    assert Scenario.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert Scenario.from_flat(s.flat()) == s
    row = Result(scenario=s, source="analytic", throughput_rps=1.0, completed=3)
    assert from_frame(to_frame([row]))[0].scenario == s


# -- Result ------------------------------------------------------------------------------------------
FLOAT_METRICS = ["throughput_rps", "latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s",
                 "latency_p999_s", "cpu_util", "ctx_switches_per_s", "loadgen_cpu_util"]
INT_METRICS = ["completed", "errors_refused", "errors_timeout", "errors_reset", "in_flight", "threads_peak",
               "processes_peak", "rss_peak_bytes", "fds_peak"]


@pytest.mark.parametrize("field", FLOAT_METRICS)
@given(value=st.one_of(st.floats(max_value=-1e-12, allow_nan=False), st.just(-INF), st.booleans(), WRONG_TYPES))
def test_invalid_float_metrics(field, value):
    with _named(field):
        Result(scenario=Scenario(), source="sim", **{field: value})


@pytest.mark.parametrize("field", INT_METRICS)
@given(value=st.one_of(st.integers(max_value=-1), st.floats().filter(lambda v: not (math.isfinite(v) and v.is_integer() and v >= 0)),
                       st.booleans(), WRONG_TYPES))
def test_invalid_int_metrics(field, value):
    with _named(field):
        Result(scenario=Scenario(), source="sim", **{field: value})


@given(st.one_of(st.text(max_size=8), st.none(), st.integers()).filter(lambda v: v not in ("real", "sim", "analytic")))
def test_invalid_result_source(value):
    with _named("source"):
        Result(scenario=Scenario(), source=value)


@given(st.integers(1, 64), st.floats(1.06, 100.0))
def test_cpu_util_cannot_exceed_the_cores(cores, factor):
    s = Scenario(hardware=Hardware(cores=cores))
    if cores * factor <= cores * 1.05 + 0.05:
        return
    with _named("cpu_util"):
        Result(scenario=s, source="sim", cpu_util=cores * factor)


def test_result_scenario_and_failure_types():
    with _named("scenario"):
        Result(scenario={"model": "m3"}, source="sim")
    with _named("failure"):
        Result(scenario=Scenario(), source="sim", failure=None)


# -- CostProfile -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["value", "sd"])
@given(value=st.one_of(st.floats(max_value=-1e-300, allow_nan=False), NON_FINITE, st.booleans(), WRONG_TYPES))
def test_invalid_param_numbers(field, value):
    args = {"value": 1.0, "sd": 0.1, field: value}
    with _named(field):
        Param(**args)


@given(st.text(max_size=10).filter(lambda t: t not in ("default", "probe", "fit")))
def test_invalid_param_source(source):
    with _named("source"):
        Param(1.0, 0.0, source)


@given(st.sampled_from(PARAM_NAMES), st.one_of(st.floats(max_value=-1e-300, allow_nan=False), NON_FINITE))
def test_profile_with_params_rejects_bad_values(name, value):
    with _named("value"):
        CostProfile.default().with_params("probe", **{name: value})


@given(st.text(min_size=1, max_size=20).filter(lambda t: t not in PARAM_NAMES and ":" not in t))
def test_profile_rejects_unknown_parameters(name):
    with pytest.raises(ValueError, match=re.escape(name)):
        CostProfile.default().with_params("probe", **{name: 1.0})
    params = dict(CostProfile.default().params)
    params[name] = Param(1.0)
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}:"):
        CostProfile(params=params)


@given(st.sampled_from(PARAM_NAMES))
def test_profile_names_a_missing_parameter(name):
    params = dict(CostProfile.default().params)
    del params[name]
    with _named(name):
        CostProfile(params=params)
    doc = CostProfile.default().to_dict()
    doc["params"][name] = {"sd": 1.0}
    with _named(name):
        CostProfile.from_dict(doc)


def test_profile_documents_and_files(tmp_path):
    with _named("format"):
        CostProfile.from_dict({"format": "other"})
    bad = tmp_path / "truncated.json"
    bad.write_text(json.dumps(CostProfile.default().to_dict())[:100])
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        CostProfile.load(bad)
    good = CostProfile.default().save(tmp_path / "p.json")
    assert CostProfile.load(good) == CostProfile.default()


JSON_WRONG = st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.booleans(),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@given(st.sampled_from(PARAM_NAMES), st.sampled_from(["value", "sd"]), JSON_WRONG)
def test_profile_document_names_the_parameter_and_field_of_a_wrong_type(name, field, value):
    doc = CostProfile.default().to_dict()
    doc["params"][name][field] = value
    with _named(f"{name}.{field}"):
        CostProfile.from_dict(doc)


@given(st.sampled_from(PARAM_NAMES), st.one_of(st.text(min_size=1, max_size=5), st.booleans(), st.lists(
    st.integers(), min_size=1, max_size=2)))
def test_profile_document_names_a_bad_spread(name, spread):
    doc = CostProfile.default().to_dict()
    doc["params"][name]["spread"] = spread
    with _named(f"{name}.spread"):
        CostProfile.from_dict(doc)


@pytest.mark.parametrize(("section", "value"), [
    ("fingerprint", [1]), ("fingerprint", "abc"), ("notes", [1, 2]), ("notes", 3),
    ("validation", 5), ("validation", "rows"), ("validation", [1]), ("failed_runs", {"a": 1}),
    ("failed_runs", ["x"]), ("calibrated", "no"), ("calibrated", 1),
])
def test_profile_document_names_a_section_of_the_wrong_type(tmp_path, section, value):
    doc = CostProfile.default().to_dict()
    doc[section] = value
    with _named(section):
        CostProfile.from_dict(doc)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"invalid profile: {section}:"):
        CostProfile.load(path)


def test_profile_load_takes_a_readable_file_path(tmp_path):
    with _named("path"):
        CostProfile.load(5)
    with pytest.raises(ValueError, match="cannot read the profile"):
        CostProfile.load(tmp_path)  # a directory
    with _named("params"):
        CostProfile(params=[("parse_s", Param(1.0))])


# -- analytic arguments ------------------------------------------------------------------------------
@given(st.floats(1e-3, 1e6), st.floats(1e-3, 1e6), st.integers(1, 200))
def test_mmc_is_valid_below_saturation_and_names_the_arrival_rate_at_or_above(lam, mu, c):
    if lam < c * mu * (1 - 1e-9):
        m = mmc(lam, mu, c)
        assert 0.0 <= m.wait_probability <= 1.0
        assert m.response_mean_s >= 1.0 / mu * (1 - 1e-12)
        assert m.number_in_system_mean == pytest.approx(lam * m.response_mean_s)
        if c == 1:
            assert m == mm1(lam, mu)
    elif lam >= c * mu:
        with _named("arrival_rate_rps"):
            mmc(lam, mu, c)


@pytest.mark.parametrize("arg", ["arrival_rate_rps", "service_rate_rps", "servers"])
@given(value=st.one_of(st.floats(max_value=-1e-9, allow_nan=False), NON_FINITE, st.booleans(), WRONG_TYPES))
def test_mmc_rejects_bad_arguments(arg, value):
    args = {"arrival_rate_rps": 1.0, "service_rate_rps": 10.0, "servers": 2, arg: value}
    with _named(arg):
        mmc(**args)


@given(st.integers(1, 50), st.floats(1e-3, 1.0))
def test_erlang_c_rejects_unstable_load(c, excess):
    with _named("offered_load"):
        erlang_c(c, c * (1 + excess))


@given(st.integers(1, 300), st.floats(0.0, 1.0), st.lists(st.tuples(st.floats(1e-4, 0.1), st.none() | st.integers(1, 16)),
                                                          min_size=1, max_size=4))
def test_mva_obeys_littles_law_and_the_asymptotic_bounds(n, think, spec):
    stations = [Station(f"s{i}", d, c) for i, (d, c) in enumerate(spec)]
    r = mva(n, think, stations)
    total_demand = sum(d for d, _ in spec)
    cap = min((c / d for d, c in spec if c is not None), default=math.inf)
    assert r.throughput_rps <= min(n / (think + total_demand), cap) * (1 + 1e-7)
    assert n == pytest.approx(r.throughput_rps * (think + r.response_s), rel=1e-7)
    assert r.response_s >= total_demand * (1 - 1e-7)
    if n > 1:
        assert mva(n - 1, think, stations).throughput_rps <= r.throughput_rps * (1 + 1e-9)


@given(st.lists(st.floats(1.0, 1e4), min_size=0, max_size=2))
def test_fit_usl_needs_three_points(n):
    with _named("n"):
        fit_usl(n, [1.0] * len(n))


# -- simulate()'s own arguments -----------------------------------------------------------------------
@given(st.one_of(st.integers(max_value=-1), st.booleans(), st.floats(), st.text(max_size=3)))
def test_simulate_rejects_a_bad_seed(seed):
    from simkit import simulate

    with _named("seed"):
        simulate(Scenario(), seed=seed)


@given(st.text(max_size=12).filter(lambda t: t not in ("deterministic", "exponential")))
def test_simulate_rejects_an_unknown_service_distribution(service):
    from simkit import simulate

    with _named("service"):
        simulate(Scenario(), service=service)


def test_simulate_rejects_wrong_argument_types():
    from simkit import simulate

    with _named("scenario"):
        simulate({"model": "m3"})
    with _named("profile"):
        simulate(Scenario(), profile={"ctx_switch_s": 1e-6})


# -- simulate()'s cost guard ---------------------------------------------------------------------------
@pytest.mark.parametrize(("workload", "field"), [
    ({"connections": 100_000_000}, "connections"),
    ({"duration_s": 1e9}, "duration_s"),
    ({"warmup_s": 1e9}, "duration_s"),
    ({"mode": "open", "rate_rps": 1e12}, "rate_rps"),
    ({"mode": "open", "rate_rps": 1e5, "duration_s": 1e4}, "rate_rps"),
])
def test_simulate_refuses_a_run_past_its_cost_bound_naming_the_field(workload, field):
    from simkit import simulate
    from simkit.sim import MAX_SIM_CONNECTIONS, MAX_SIM_REQUESTS

    bound = f"{MAX_SIM_CONNECTIONS:,}" if field == "connections" else f"{MAX_SIM_REQUESTS:.3g}"
    with pytest.raises(ValueError, match=rf"^{field}:.*{re.escape(bound)}.*force=True"):
        simulate(Scenario(workload=Workload(**workload)))


@given(st.floats(1e-15, 1e-8))
def test_simulate_refuses_a_profile_whose_time_slice_would_take_forever(slice_s):
    from simkit import simulate

    profile = CostProfile.default().with_params("fit", time_slice_s=slice_s)
    with _named("time_slice_s"):
        simulate(Scenario(workload=Workload(cpu_us=100)), profile)


def test_the_cost_guard_passes_ordinary_runs_and_yields_to_force(monkeypatch):
    from simkit import sim, simulate
    from simkit.sim import estimate_cost

    scenario = Scenario(workload=Workload(connections=10, cpu_us=100, duration_s=0.2, warmup_s=0.05))
    cost = estimate_cost(scenario, CostProfile.default())
    assert 0 < cost.requests + cost.slices < sim.MAX_SIM_REQUESTS
    assert simulate(scenario).completed > 0
    # The same run over a lowered bound: refused, unless forced; the estimate is what it did, within 2x.
    monkeypatch.setattr(sim, "MAX_SIM_REQUESTS", 10)
    with _named("duration_s"):
        simulate(scenario)
    result, stats = simulate(scenario, force=True, detail=True)
    assert result.completed > 0
    assert 0.5 * cost.requests <= stats.requests_simulated <= 2 * (cost.requests + scenario.workload.connections)
    with _named("force"):
        simulate(scenario, force="yes")


@pytest.mark.parametrize(("data", "field"), [
    ([1], "scenario"), (None, "scenario"), ("m3", "scenario"),
    ({"model": "m3"}, "model"), ({"model": 5}, "model"), ({"model": [1, 2]}, "model"),
    ({"hardware": "x"}, "hardware"), ({"workload": [("connections", 1)]}, "workload"),
    ({"workload": {"connections": "10"}}, "connections"), ({1: 2, "a": 3}, "1"),
])
def test_scenario_from_dict_names_the_field_of_a_wrong_type(data, field):
    with _named(field):
        Scenario.from_dict(data)
