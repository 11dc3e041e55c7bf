"""The sweep engines: a local process pool and Dask return the same frame; missing points are reported."""

import pandas as pd
import pytest
from fakesim import crashing_simulate, fake_analytic, fake_simulate, raising_simulate

from experiments.intervals import band_columns
from experiments.sweep import AnalyticPointsWarning, SweepIncomplete, sweep
from simkit.profile import CostProfile
from simkit.result import columns
from simkit.scenario import Scenario, Workload

BASE = Scenario(workload=Workload(cpu_us=150, gil_us=30, duration_s=0.5))
GRID = dict(models=["m1", "m3", "m5", "m6"], cores=[1, 4], connections=[10, 500, 5000])
PROFILE = CostProfile.default()


@pytest.fixture(scope="module")
def local_frame():
    return sweep(BASE, **GRID, profile=PROFILE, engine="local", simulate=fake_simulate, progress=False, workers=2)


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    # In-process workers on loopback tcp: the same code path as a remote `--dask tcp://HOST:PORT`.
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, host="127.0.0.1",
                                       protocol="tcp://", dashboard_address="127.0.0.1:0")
    yield cluster
    cluster.close()


@pytest.mark.timeout(60)
def test_local_pool_returns_the_contract_frame_in_grid_order(local_frame):
    assert list(local_frame.columns) == columns() + band_columns()
    assert len(local_frame) == 4 * 2 * 3
    assert list(local_frame["model"].iloc[:6]) == ["m1_iterative"] * 6
    assert list(local_frame["connections"].iloc[:3]) == [10, 500, 5000]
    assert set(local_frame["source"]) == {"sim"}
    serial = sweep(BASE, **GRID, profile=PROFILE, engine="serial", simulate=fake_simulate, progress=False)
    pd.testing.assert_frame_equal(local_frame, serial)


@pytest.mark.timeout(90)
def test_dask_client_and_address_match_the_local_run(local_frame, dask_cluster):
    from distributed import Client

    with Client(dask_cluster) as client:
        on_client = sweep(BASE, **GRID, profile=PROFILE, engine=client, simulate=fake_simulate, progress=False)
    pd.testing.assert_frame_equal(local_frame, on_client)
    by_address = sweep(BASE, **GRID, profile=PROFILE, engine=dask_cluster.scheduler_address,
                       simulate=fake_simulate, progress=False)
    assert dask_cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    pd.testing.assert_frame_equal(local_frame, by_address)


@pytest.mark.timeout(60)
def test_dead_worker_reports_missing_scenarios():
    grid = dict(models=["m3"], cores=[1], connections=[10, 13, 20, 30])
    with pytest.raises(SweepIncomplete) as info:
        sweep(BASE, **grid, profile=PROFILE, engine="local", simulate=crashing_simulate, progress=False, workers=2)
    err = info.value
    assert err.total == 4
    missing = {sc.workload.connections for _, sc, _ in err.missing}
    assert 13 in missing  # the point that killed its worker is always listed
    assert len(err.partial) + len(err.missing) == 4
    assert "connections=13" in str(err) and "m3_reactor" in str(err) and "died" in str(err)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ["serial", "local"])
def test_simulator_exception_is_a_missing_scenario(engine):
    grid = dict(models=["m5"], cores=[2], connections=[10, 13])
    with pytest.raises(SweepIncomplete, match="simulated model bug") as info:
        sweep(BASE, **grid, profile=PROFILE, engine=engine, simulate=raising_simulate, progress=False)
    assert [sc.workload.connections for _, sc, _ in info.value.missing] == [13]
    assert list(info.value.partial["connections"]) == [10]


def test_analytic_above_threshold_labels_the_source():
    with pytest.warns(AnalyticPointsWarning, match="1 of 3 points come from simkit.analytic.*analytic_above=1000"):
        frame = sweep(BASE, models=["m6"], cores=[2], connections=[100, 1000, 50_000], profile=PROFILE,
                      engine="serial", simulate=fake_simulate, analytic=fake_analytic, analytic_above=1000,
                      progress=False)
    assert list(frame["source"]) == ["sim", "sim", "analytic"]


def test_bad_engine_is_named():
    with pytest.raises(ValueError, match="engine"):
        sweep(BASE, models=["m3"], cores=[1], connections=[10], profile=PROFILE, engine="carrier-pigeon",
              simulate=fake_simulate, progress=False)


def test_window_policy_sizes_windows_and_prices_out_costly_points():
    from experiments.windows import WindowPolicy

    with pytest.warns(AnalyticPointsWarning, match="1 of 2 points.*window policy"):
        frame = sweep(BASE, models=["m6"], cores=[2], connections=[100, 200_000], profile=PROFILE, engine="serial",
                      simulate=fake_simulate, analytic=fake_analytic, progress=False,
                      window=WindowPolicy(max_sim_requests=50_000))
    assert list(frame["source"]) == ["sim", "analytic"]
    assert frame["warmup_s"].iloc[1] >= 200_000 * PROFILE["client_cpu_per_request_s"]
    assert (frame["duration_s"] != BASE.workload.duration_s).all()


@pytest.mark.timeout(90)
def test_dask_worker_that_dies_is_reported_as_missing():
    import dask
    distributed = pytest.importorskip("distributed")

    # A real worker process (so os._exit kills only it); no retries, so the death surfaces at once.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster) as client:
            with pytest.raises(SweepIncomplete) as info:
                sweep(BASE, models=["m3"], cores=[1], connections=[10, 13, 20], profile=PROFILE, engine=client,
                      simulate=crashing_simulate, progress=False)
    missing = {sc.workload.connections: why for _, sc, why in info.value.missing}
    assert 13 in missing and "KilledWorker" in missing[13]
    assert "connections=13" in str(info.value)
