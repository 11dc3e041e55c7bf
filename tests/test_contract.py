"""The Scenario/Result contract both halves obey."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simkit.registry import resolve
from simkit.result import Result, columns, from_frame, to_frame
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload


def test_model_by_number_and_name():
    assert resolve(5) == "m5_multi_reactor"
    assert resolve("m6") == "m6_prefork"
    assert ModelSpec(name="3").name == "m3_reactor"
    with pytest.raises(ValueError, match="name"):
        ModelSpec(name="m9_nope")


def test_scenario_dict_and_flat_round_trip():
    s = Scenario(
        model=ModelSpec(name="m4_reactor_workers", pool=8),
        hardware=Hardware(cores=4),
        workload=Workload(connections=50, mode="open", rate_rps=1000.0, requests_per_conn=3, cpu_us=200),
        seed=7,
    )
    assert Scenario.from_dict(s.to_dict()) == s
    assert Scenario.from_flat(s.flat()) == s
    assert s.replace(cores=8, connections=10, model="m3").hardware.cores == 8
    with pytest.raises(ValueError, match="bogus"):
        s.replace(bogus=1)
    with pytest.raises(ValueError, match="colour"):
        Scenario.from_dict({"model": {"colour": "red"}})


def test_result_frame_round_trip_has_exact_columns():
    s = Scenario()
    rows = [
        Result(scenario=s, source="sim", throughput_rps=100.0, latency_p99_s=0.01, completed=500),
        Result(scenario=s.replace(requests_per_conn=4), source="real", failure="threads_max"),
    ]
    frame = to_frame(rows)
    assert list(frame.columns) == columns()
    back = from_frame(frame)
    assert back[0].throughput_rps == 100.0 and back[0].scenario == s
    assert back[1].failure == "threads_max" and back[1].scenario.workload.requests_per_conn == 4
    assert math.isnan(back[1].latency_p99_s)


def test_result_rejects_bad_fields():
    with pytest.raises(ValueError, match="source"):
        Result(scenario=Scenario(), source="guess")
    with pytest.raises(ValueError, match="completed"):
        Result(scenario=Scenario(), source="sim", completed=-1)
    with pytest.raises(ValueError, match="cpu_util"):
        Result(scenario=Scenario(hardware=Hardware(cores=2)), source="sim", cpu_util=5.0)


_FIELDS = {
    "threads": (ModelSpec, st.integers(max_value=0)),
    "pool": (ModelSpec, st.integers(max_value=-1)),
    "cores": (Hardware, st.integers(max_value=0)),
    "fd_limit": (Hardware, st.integers(max_value=15)),
    "connections": (Workload, st.integers(max_value=0)),
    "cpu_us": (Workload, st.floats(max_value=-1e-9) | st.just(float("nan"))),
    "duration_s": (Workload, st.floats(max_value=0.0)),
    "connect_concurrency": (Workload, st.integers(max_value=0)),
    "connect_rate_cps": (Workload, st.floats(max_value=0.0) | st.just(float("inf"))),
    "mode": (Workload, st.text().filter(lambda t: t not in ("closed", "open"))),
}


@given(st.sampled_from(sorted(_FIELDS)), st.data())
def test_invalid_parameters_raise_value_error_naming_the_field(name, data):
    kind, strategy = _FIELDS[name]
    with pytest.raises(ValueError, match=name):
        kind(**{name: data.draw(strategy)})


def test_results_written_before_the_profile_column_still_load(tmp_path):
    import pandas as pd

    frame = to_frame([Result(scenario=Scenario(), source="sim", throughput_rps=5.0, profile="box #0123abcd"),
                      Result(scenario=Scenario(), source="real")])
    assert "profile" in columns()
    frame.to_csv(tmp_path / "new.csv", index=False)
    assert [r.profile for r in from_frame(pd.read_csv(tmp_path / "new.csv"))] == ["box #0123abcd", ""]
    frame.drop(columns=["profile"]).to_csv(tmp_path / "old.csv", index=False)
    back = from_frame(pd.read_csv(tmp_path / "old.csv"))
    assert back[0].throughput_rps == 5.0 and back[0].profile == ""
    with pytest.raises(ValueError, match="profile"):
        Result(scenario=Scenario(), source="sim", profile=3)
