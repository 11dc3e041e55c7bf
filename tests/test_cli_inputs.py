"""Bad input is one line naming the field and the limit, never a traceback.

The CLI: each bad option gives one "Error: ..." line naming the field, and exit code 2 (a usage
error) or 1 (the request was understood but cannot be met), within a bounded time. `serve` runs in a
subprocess (it binds, forks and installs signal handlers); the rest through click's CliRunner.
The APIs behind them (LoadSpec, sweep) raise ValueError naming the argument, not TypeError,
AttributeError or KeyError.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from serverlab.cli import main
from simkit.profile import CostProfile
from simkit.scenario import Scenario, Workload


def _error_line(text: str, *words: str) -> str:
    """The one `Error:` line of a failed command; it names every one of `words`."""
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, text
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _invoke(args: list[str], code: int = 2, *words: str) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return _error_line(result.output, *words)


def _unavailable_cpu() -> int:
    here = os.sched_getaffinity(0)
    return 99 if 99 not in here else max(here) + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- serve (a subprocess) --------------------------------------------------------------------------


def _serve(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "serverlab.cli", "serve", "--model", "m3", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve {' '.join(args)} did not fail within {timeout_s:g} s (it started serving?)")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("args", "words"), [
    (("--host", "192.0.2.1"), ("--host", "192.0.2.1", "not an address of this machine")),  # TEST-NET-1
    (("--host", "nosuch.invalid"), ("--host", "cannot resolve")),
    (("--port", "70000"), ("--port", "0..65535")),
    (("--cpus", str(_unavailable_cpu())), ("cpus", "not available")),
    (("--cores", "999"), ("cores", "999", "CPUs available here")),
    (("--cores", "0,1"), ("cores", "count", "--cpus 0,1")),
])
def test_serve_refuses_a_bad_address_or_cpu_in_one_line(args, words):
    out = _serve(*args)
    assert out.returncode == 2, out.stderr
    _error_line(out.stderr, *words)
    assert out.stdout == ""  # no port printed: nothing was served


@pytest.mark.timeout(120)
@pytest.mark.parametrize("extra", [(), ("--model", "m6", "--processes", "2", "--dispatch", "reuseport")])
def test_serve_refuses_a_port_in_use_in_one_line(extra):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _serve("--port", str(port), *extra)
    assert out.returncode == 2, out.stderr
    _error_line(out.stderr, "--port", f"127.0.0.1:{port}", "already in use")


# -- load ------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "words"), [
    (["--cpus", str(_unavailable_cpu())], ("cpus", "not available", "available:")),
    (["--cpus", "x"], ("cpus", "0-3")),
    (["--processes", "100000"], ("processes", "0..256")),
    (["--rate", "1e12"], ("rate_rps", "bound")),
    (["--connections", "100000000"], ("connections", "bound")),
    (["--url", "http://127.0.0.1:99999/"], ("url", "1..65535")),
    (["--url", "http://127.0.0.1:notaport/"], ("url",)),
])
def test_load_refuses_bad_options_in_one_line(args, words):
    base = ["load", "--url", f"http://127.0.0.1:{_free_port()}/", "--duration", "30"]
    t0 = time.monotonic()
    _invoke(base + args, 2, *words)
    assert time.monotonic() - t0 < 10  # refused up front, not after a 30 s run


@pytest.mark.timeout(60)
def test_load_checks_its_csv_file_before_the_run(tmp_path):
    t0 = time.monotonic()
    _invoke(["load", "--url", f"http://127.0.0.1:{_free_port()}/", "--duration", "30",
             "--csv", str(tmp_path / "no" / "such" / "dir.csv")], 2, "--csv", "cannot write")
    assert time.monotonic() - t0 < 10


# -- simulate --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "words"), [
    (["--connections", "100000000"], ("connections", "4,000,000", "--force")),
    (["--duration", "1e9"], ("duration_s", "2e+07", "--force")),
    (["--rate", "1e12"], ("rate_rps", "2e+07", "--force")),
])
def test_simulate_refuses_a_run_past_its_cost_bound_up_front(args, words):
    t0 = time.monotonic()
    _invoke(["simulate", "--model", "m3", *args], 2, *words)
    assert time.monotonic() - t0 < 20


@pytest.mark.timeout(60)
def test_simulate_refuses_a_profile_with_an_absurd_time_slice(tmp_path):
    path = CostProfile.default().with_params("fit", time_slice_s=1e-12).save(tmp_path / "slice.json")
    _invoke(["simulate", "--model", "m3", "--cpu-us", "100", "--profile", str(path)], 2, "time_slice_s",
            "2e+07")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("where", "value", "words"), [
    ("value", "x", ("parse_s.value", "expected a finite number")),
    ("sd", [1], ("parse_s.sd",)),
    ("source", 3, ("parse_s.source", "default, probe, fit")),
    ("spread", "wide", ("parse_s.spread",)),
])
def test_simulate_names_the_field_of_a_profile_value_of_the_wrong_type(tmp_path, where, value, words):
    data = CostProfile.default().to_dict()
    data["params"]["parse_s"][where] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    _invoke(["simulate", "--model", "m3", "--profile", str(path)], 2, *words)


# -- measure ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "words"), [
    (["--cpu-us", "1e9"], ("cpu_us", "MAX_WORK_US")),
    (["--io-us", "2e7"], ("io_us", "MAX_WORK_US")),
    (["--resp-bytes", str(2**30)], ("resp_bytes", "MAX_RESP_BYTES")),
])
def test_measure_refuses_work_over_the_servers_caps_before_it_starts(monkeypatch, args, words):
    from realkit import runner

    def no_server(self):
        raise AssertionError("a server was started for a workload the servers refuse")

    monkeypatch.setattr(runner.ServerProcess, "start", no_server)
    _invoke(["measure", "--model", "m3", "--cores", "1", *args], 2, *words)


# -- whatif ----------------------------------------------------------------------------------------


WHATIF = """
[slo]
p99_ms = 50.0
[budget]
memory_gib = 8.0
[grid]
models = ["m3"]
connections = [10]
cores = [1]
"""


@pytest.mark.timeout(120)
def test_whatif_to_a_dead_dask_scheduler_fails_in_bounded_time(monkeypatch, tmp_path):
    from experiments import sweep

    monkeypatch.setattr(sweep, "DASK_CONNECT_TIMEOUT_S", 2.0)
    workload = tmp_path / "whatif.toml"
    workload.write_text(WHATIF)
    t0 = time.monotonic()
    _invoke(["whatif", "--workload", str(workload), "--dask", f"tcp://127.0.0.1:{_free_port()}",
             "--out", str(tmp_path / "reports")], 1, "engine", "no Dask scheduler", "within 2 s")
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


# -- the APIs behind them --------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "field"), [
    ({"url": 5}, "url"),
    ({"url": "http://127.0.0.1:99999/"}, "url"),
    ({"cpus": 3}, "cpus"),
    ({"cpus": (4095,)}, "cpus"),
    ({"use_uvloop": "no"}, "use_uvloop"),
    ({"allow_remote": 1}, "allow_remote"),
    ({"processes": 10**6}, "processes"),
    ({"processes": "2"}, "processes"),
    ({"workload": Workload(mode="open", rate_rps=1e12)}, "rate_rps"),
    ({"workload": Workload(connections=2_000_000)}, "connections"),
])
def test_loadspec_names_the_field_of_a_wrong_type_or_bound(kw, field):
    from realkit.loadgen import LoadSpec

    with pytest.raises(ValueError, match=f"^{field}:"):
        LoadSpec(**{"url": "http://127.0.0.1:1/", **kw})


@pytest.mark.parametrize(("kw", "field"), [
    ({"base_scenario": None}, "base_scenario"),
    ({"base_scenario": {}}, "base_scenario"),
    ({"models": "m3"}, "models"),
    ({"models": 3}, "models"),
    ({"models": [None]}, "models"),
    ({"cores": 2}, "cores"),
    ({"connections": "100"}, "connections"),
    ({"profile": 5}, "profile"),
    ({"engine": 5}, "engine"),
    ({"workers": "2"}, "workers"),
    ({"analytic_above": "x"}, "analytic_above"),
    ({"scenarios": [1]}, "scenarios"),
    ({"scenarios": 5}, "scenarios"),
    ({"use_analytic": 5, "scenarios": [Scenario()]}, "use_analytic"),
    ({"window": {}}, "window"),
    ({"simulate": "simkit.simulate"}, "simulate"),
    ({"sizing": {}}, "sizing"),
    ({"progress": "yes"}, "progress"),
])
def test_sweep_names_the_argument_of_a_wrong_type(kw, field):
    from experiments.sweep import sweep

    args = {"base_scenario": Scenario(), "models": ["m3"], "cores": [1], "connections": [10],
            "profile": CostProfile.default(), "engine": "serial", "progress": False}
    with pytest.raises(ValueError, match=f"^{field}:"):
        sweep(**{**args, **kw})
