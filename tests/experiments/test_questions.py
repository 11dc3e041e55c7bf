"""size(): the fewest cores for N clients, with the what-if file's defaults; the package exports."""

import dataclasses

import pytest

import experiments
from experiments.questions import size
from tests.experiments.fakesim import fake_simulate


def test_size_finds_the_fewest_cores_and_says_why_others_fail():
    # fakesim (no think time): m6 scales with cores, p99 75 ms / cores; m3 is one thread: 75 ms.
    answer = size(100, models=["m3", "m6"], cores=[1, 2, 4, 8], simulate=fake_simulate, engine="serial",
                  bands=False, window=None)
    assert answer.clients == 100 and answer.model == "m6_prefork"
    per = answer.per_model.set_index("model")
    assert not per.loc["m3_reactor", "meets_slo"] and per.loc["m3_reactor", "reason"]
    # The answer is the fewest cores: every smaller core count misses the SLO for m6.
    m6 = answer.frame[answer.frame["model"] == "m6_prefork"].set_index("cores")
    assert answer.cores == per.loc["m6_prefork", "cores"]
    assert all(m6.loc[c, "latency_p99_s"] > 0.050 for c in m6.index if c < answer.cores)
    assert answer.verdict.endswith("margin") and "vs SLO 50 ms" in answer.verdict  # whatif.toml's SLO
    assert answer.text.startswith(f"{answer.cores} cores: m6_prefork serves 100 clients")
    assert answer.cores == 2 and answer.source == "sim"


def test_size_when_nothing_fits_and_bad_input():
    answer = size(20_000, 1e-6, models=["m3"], cores=[1], simulate=fake_simulate, engine="serial",
                  bands=False, window=None)
    assert answer.cores is None and answer.model == "" and answer.text.startswith("No model meets")
    with pytest.raises(ValueError, match="clients"):
        size(0)
    with pytest.raises(ValueError, match="slo_p99_s"):
        size(10, -1.0)
    with pytest.raises(ValueError, match="frame: no rows with connections == 7"):
        size(7, frame=answer.frame)


def test_the_package_exports_the_three_questions():
    from experiments.planning import capacity, recommend

    assert experiments.size is size
    assert experiments.capacity is capacity and experiments.recommend is recommend
    with pytest.raises(AttributeError):
        experiments.nothing_here  # noqa: B018


def test_size_says_where_its_figures_come_from():
    from simkit.profile import CostProfile

    profile = dataclasses.replace(CostProfile.default(), validation=[
        {"model": "m6_prefork", "metric": "p99", "rel_err": 0.5, "cores": 1, "connections": 50},
        {"model": "m6_prefork", "metric": "throughput", "rel_err": 0.02, "cores": 1, "connections": 50}])
    answer = size(100, models=["m6"], cores=[1, 2, 4], simulate=fake_simulate, engine="serial", bands=False,
                  window=None, profile=profile)
    assert answer.cores == 2
    assert "simulated, extrapolated 2x past the calibrated range (up to 1 core, 50 connections)" in answer.text
    assert any("p99 50.0% (bar 25%)" in w for w in answer.warnings)
