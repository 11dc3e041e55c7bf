"""measure(scenario) -> Result on every real server, with small scenarios (~2 s each), plus the pure parts."""

from __future__ import annotations

import math
import warnings

import pytest

from realkit import measure
from realkit.histogram import LatencyHistogram
from realkit.loadgen import LoadReport, LoadSpec
from realkit.monitor import TreeStats
from realkit.runner import (
    ServerProcess,
    ServerStartError,
    build_result,
    load_spec_for,
    plan_cpus,
    server_command,
)
from realkit.servers import parse_server_argument
from simkit import registry
from simkit.result import Result, columns, metric_columns, to_frame
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload, available_cores

# The server gets one core and the load generator the other where the box has two.
CORES = 1


def small(model: str, connections: int = 10, **model_kw) -> Scenario:
    return Scenario(
        model=ModelSpec(name=model, **model_kw),
        hardware=Hardware(cores=CORES),
        workload=Workload(connections=connections, cpu_us=50, duration_s=1.0, warmup_s=0.5, timeout_s=5.0),
    )


_KNOBS = {"m4_reactor_workers": {"pool": 2}, "m5_multi_reactor": {"threads": 2}, "m6_prefork": {"processes": 2},
          "m7_reactor_spawn": {"threads": 2}}


def _measure(scenario: Scenario) -> Result:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "sharing CPUs" on a 1-core box
        return measure(scenario)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", registry.names())
def test_measure_every_model_fills_every_field(model):
    result = _measure(small(model, **_KNOBS.get(model, {})))
    print(f"\n{model}: {result.throughput_rps:.0f} req/s, p99 {result.latency_p99_s * 1e3:.2f} ms, "
          f"cpu {result.cpu_util:.2f}, ctx {result.ctx_switches_per_s:.0f}/s, threads {result.threads_peak}, "
          f"procs {result.processes_peak}, rss {result.rss_peak_bytes / 2**20:.0f} MiB, fds {result.fds_peak}, "
          f"loadgen cpu {result.loadgen_cpu_util:.2f}, failure {result.failure!r}")
    assert result.source == "real"
    row = result.to_row()
    assert set(columns()) == set(row)
    assert result.throughput_rps > 0 and result.completed > 0
    # The work ledger: the cpu_us work's actual / asked duration; no gil_us was asked.
    assert 0.3 < result.work_cpu_scale < 5 and math.isnan(result.work_gil_scale)
    # A 1 s window (a busy box may stretch it a little).
    assert result.completed / 1.5 <= result.throughput_rps <= result.completed / 0.95
    lat = [result.latency_p50_s, result.latency_p90_s, result.latency_p99_s, result.latency_p999_s]
    assert all(not math.isnan(v) and v > 0 for v in lat) and lat == sorted(lat)
    assert result.latency_mean_s > 0
    assert result.rss_peak_bytes > 5 * 2**20
    assert result.threads_peak >= 1 and result.processes_peak >= 1
    assert result.fds_peak >= 3
    assert 0 < result.cpu_util <= CORES
    assert result.ctx_switches_per_s > 0
    assert result.loadgen_cpu_util > 0
    assert result.errors_refused == 0 and result.errors_reset == 0
    assert "server_died" not in result.failure and "no_graceful_stop" not in result.failure
    if model == "m1_iterative":
        # One connection is served at a time: the other 9 wait in the backlog, their requests in flight.
        assert result.in_flight >= 9
    else:
        assert result.errors_timeout == 0
    if model == "m6_prefork":
        assert result.processes_peak >= 3  # master + 2 workers
    if model == "m4_reactor_workers":
        assert result.threads_peak >= 3  # loop + 2 workers


@pytest.mark.timeout(120)
def test_m2_holds_a_thread_per_connection():
    result = _measure(small("m2_thread_per_conn", connections=50))
    assert result.threads_peak >= 50
    assert result.completed > 0


@pytest.mark.timeout(120)
def test_m5_runs_its_io_threads():
    result = _measure(small("m5_multi_reactor", threads=4))
    assert result.threads_peak >= 5  # acceptor + 4 I/O threads
    assert result.completed > 0


@pytest.mark.timeout(60)
def test_cores_beyond_this_box_raise_naming_cores():
    with pytest.raises(ValueError, match="cores"):
        plan_cpus(available_cores() + 1)
    with pytest.raises(ValueError, match="cores"):
        measure(Scenario(hardware=Hardware(cores=available_cores() + 1)))


def test_cpu_plan_splits_or_shares():
    n = available_cores()
    whole = plan_cpus(n)
    assert whole.shared and whole.loadgen_cpus == whole.server_cpus and "share" in whole.note
    if n >= 2:
        one = plan_cpus(1)
        assert not one.shared and len(one.server_cpus) == 1
        assert set(one.loadgen_cpus).isdisjoint(one.server_cpus)


def test_server_command_carries_the_model_spec_as_json():
    spec = ModelSpec(name="m4", pool=3, backlog=77, keepalive_timeout_s=2.5)
    cmd = server_command(Scenario(model=spec), cpus=(0,))
    assert cmd[1:3] == ["-m", "realkit.servers"] and len(cmd) == 4
    args = parse_server_argument(cmd[3])
    assert args.model == spec and (args.host, args.port, args.cores) == ("127.0.0.1", 0, (0,))
    assert parse_server_argument(server_command(Scenario())[3]).cores is None


def test_load_spec_carries_the_workload():
    # The simulator models the generator's connect places (Workload.connect_concurrency): the real
    # generator must get the same number, not its own default.
    w = Workload(connections=300, connect_concurrency=17, requests_per_conn=2, timeout_s=3.0, cpu_us=40)
    spec = load_spec_for(Scenario(workload=w, seed=9), 8080, (0,), 1)
    assert spec.workload is w
    assert (spec.url, spec.host, spec.cpus, spec.processes, spec.seed) == (
        f"http://127.0.0.1:8080{w.work_path}", "127.0.0.1", (0,), 1, 9)
    assert spec.timer_resolution_s == 0.0
    assert load_spec_for(Scenario(workload=w), 8080, (0,), 1, shared=True).timer_resolution_s > 0


@pytest.mark.timeout(60)
def test_a_server_that_does_not_start_raises_a_clear_error(monkeypatch):
    import realkit.runner as runner

    monkeypatch.setattr(runner, "server_command",
                        lambda scenario, cpus=None: ["python3", "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"])
    server = ServerProcess(Scenario(), cpus=(0,), startup_timeout_s=20)
    with pytest.raises(ServerStartError, match="boom"):
        try:
            server.start()
        finally:
            server.close()


def _report(**kw) -> LoadReport:
    hist = LatencyHistogram()
    hist.record_many([0.001] * 98 + [0.01, 0.1])
    base = dict(spec=LoadSpec(url="http://127.0.0.1:1/"), window_start_s=10.0, window_end_s=12.0,
                completed=100, errors_refused=1, errors_timeout=2, errors_reset=3, errors_http=0, errors_client=0,
                issued=110, in_flight=4, late_sends=0, max_send_lag_s=0.0, send_lag_mean_s=0.0, connects=5,
                idle_open=0, idle_failed=0, loadgen_cpu_s=0.5, loadgen_rss_peak_bytes=1, histogram=hist)
    base.update(kw)
    return LoadReport(**base)


def _stats(**kw) -> TreeStats:
    base = dict(window_s=2.0, samples=20, cpu_util=0.8, ctx_switches_per_s=1000.0, ctx_counter="perf",
                threads_peak=3, processes_peak=1, rss_peak_bytes=30 * 2**20, fds_peak=40, fds_max_process_peak=40)
    base.update(kw)
    return TreeStats(**base)


def test_build_result_maps_every_observation():
    scenario = Scenario(hardware=Hardware(cores=1, fd_limit=1000))
    r = build_result(scenario, _report(), _stats())
    assert r.throughput_rps == 50.0 and r.completed == 100
    assert (r.errors_refused, r.errors_timeout, r.errors_reset, r.in_flight) == (1, 2, 3, 4)
    assert r.latency_p50_s == pytest.approx(0.001, rel=0.01)
    assert r.latency_p99_s == pytest.approx(0.01, rel=0.01)
    assert r.cpu_util == 0.8 and r.ctx_switches_per_s == 1000.0 and r.loadgen_cpu_util == 0.25
    assert (r.threads_peak, r.processes_peak, r.rss_peak_bytes, r.fds_peak) == (3, 1, 30 * 2**20, 40)
    assert r.failure == ""
    assert list(to_frame([r]).columns) == columns() and set(metric_columns()) <= set(r.to_row())
    # Failures are named, not hidden.
    bad = build_result(scenario, _report(errors_client=2, idle_open=5, spec=LoadSpec(url="http://127.0.0.1:1/")),
                       _stats(fds_max_process_peak=998, cpu_util=1.02), died=True)
    assert set(bad.failure.split(",")) >= {"server_died", "loadgen", "fd_limit"}
    assert bad.cpu_util == 1.0  # pinned to one core: the excess is sampling jitter
    # clients still connecting when the window opened: named, over 2% of the connections only
    many = scenario.replace(connections=1000)
    assert build_result(many, _report(unconnected_at_window=700), _stats()).failure == "ramp"
    assert build_result(many, _report(unconnected_at_window=15), _stats()).failure == ""


@pytest.mark.timeout(120)
def test_cli_measure_prints_json(tmp_path):
    import json

    from click.testing import CliRunner

    from serverlab.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["measure", "--model", "m3", "--connections", "4", "--duration", "0.5",
                               "--warmup", "0.2", "--cores", "1", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output.strip().splitlines()[-1])
    assert data["source"] == "real" and data["model"] == "m3_reactor" and data["throughput_rps"] > 0
    bad = runner.invoke(main, ["measure", "--model", "m3", "--cores", str(available_cores() + 1)])
    assert bad.exit_code != 0 and "cores" in bad.output


@pytest.mark.parametrize(("field", "value", "cap"), [
    ("cpu_us", 1e9, "MAX_WORK_US"), ("gil_us", 1e7 + 1, "MAX_WORK_US"), ("io_us", 5e7, "MAX_WORK_US"),
    ("resp_bytes", (64 << 20) + 1, "MAX_RESP_BYTES"), ("request_bytes", 8 * 1024 + 1, "MAX_HEADER_BYTES"),
])
def test_measure_refuses_work_over_the_servers_caps_before_starting(monkeypatch, field, value, cap):
    def no_server(self):
        raise AssertionError("a server was started for a workload every server refuses")

    monkeypatch.setattr(ServerProcess, "start", no_server)
    with pytest.raises(ValueError, match=rf"^{field}:.*{cap}"):
        measure(Scenario(hardware=Hardware(cores=1), workload=Workload(**{field: value})))
