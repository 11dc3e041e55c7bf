"""The CLI's face (issue 12, deliverable 6): `--cores` is a count in every command (pinning is --cpus),
`simulate` / `measure` print a compact table with units or JSON / CSV for machines, a prediction's bands
show as "value [lo, hi]", what-if reports also write Parquet, and progress bars are for terminals only.
Everything here is fast: CliRunner, tiny simulated windows, hand-made Results."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from rich.console import Console

from serverlab import render
from serverlab.cli import main
from serverlab.options import CoreCount
from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

SIM = ["simulate", "-m", "m3", "-c", "4", "--cpu-us", "100", "--duration", "0.1", "--warmup", "0.02"]


@pytest.fixture
def profile_file(tmp_path):
    return str(CostProfile.default().save(tmp_path / "box.json"))


def _result(**kw) -> Result:
    scenario = Scenario(model=ModelSpec.for_model("m6", processes=3), hardware=Hardware(cores=2),
                        workload=Workload(connections=50, cpu_us=120.0, io_us=500.0, duration_s=2.0))
    values = dict(throughput_rps=1234.5, latency_mean_s=0.004, latency_p50_s=0.003, latency_p90_s=0.006,
                  latency_p99_s=0.0123, latency_p999_s=0.02, completed=2469, errors_reset=3, cpu_util=1.5,
                  threads_peak=3, processes_peak=4, rss_peak_bytes=48 * 2**20, fds_peak=60)
    values.update(kw)
    return Result(scenario=scenario, source="sim", **values)


def _text(renderable) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


# -- --cores is a count everywhere; pinning is --cpus ------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "measure", "simulate"])
def test_every_cores_option_is_a_count_and_says_so(command):
    out = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert out.exit_code == 0, out.output
    cores = [p for p in main.get_command(None, command).params if p.name in ("cores", "n_cores")]
    assert len(cores) == 1 and isinstance(cores[0].type, CoreCount)
    assert "a count" in " ".join(out.output.split())


def test_serve_pins_with_cpus_and_cores_counts():
    out = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert "--cpus" in out.output
    text = " ".join(out.output.split())
    assert "first N CPUs" in text


@pytest.mark.parametrize("value", ["0,1", "0-1"])
def test_the_old_serve_cores_list_is_one_line_pointing_at_cpus(value):
    out = subprocess.run([sys.executable, "-m", "serverlab.cli", "serve", "-m", "m3", "--cores", value],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "cores" in errors[0] and f"--cpus {value}" in errors[0]


@pytest.mark.parametrize("args", [["--cores", "0"], ["--cores", "0,1"], ["--cores", "two"]])
def test_simulate_refuses_what_is_not_a_count_in_one_line(args):
    out = CliRunner().invoke(main, [*SIM, *args])
    assert out.exit_code == 2
    errors = [line for line in out.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "cores" in errors[0] and "count" in errors[0], out.output


def test_simulate_cores_is_the_scenarios_core_count(profile_file):
    out = CliRunner().invoke(main, [*SIM, "--cores", "3", "--profile", profile_file, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["cores"] == 3


def test_simulate_prints_each_figure_with_its_band_unless_told_not_to(profile_file):
    out = CliRunner().invoke(main, [*SIM, "--profile", profile_file, "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout)
    for metric in ("throughput_rps", "latency_p99_s", "rss_peak_bytes"):
        assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"], metric
        assert row[f"{metric}_lo"] < row[f"{metric}_hi"], metric
    bare = CliRunner().invoke(main, [*SIM, "--profile", profile_file, "--json", "--no-band"])
    assert bare.exit_code == 0, bare.output
    assert "throughput_rps_lo" not in json.loads(bare.stdout)


@pytest.mark.parametrize(("value", "expected"), [("500", 500.0), ("0", None)])
def test_connect_rate_reaches_the_workload_and_0_is_a_storm(profile_file, value, expected):
    out = CliRunner().invoke(main, [*SIM, "--connect-rate", value, "--profile", profile_file, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["connect_rate_cps"] == expected


def test_serve_cores_count_pins_to_the_first_cpus(monkeypatch):
    from serverlab import cmd_serve

    monkeypatch.setattr(cmd_serve.os, "sched_getaffinity", lambda pid: {4, 2, 7})
    assert cmd_serve.server_cpus(2, None) == [2, 4]
    assert cmd_serve.server_cpus(None, None) is None


# -- simulate / measure output -------------------------------------------------------------------


def test_the_table_has_units_the_inputs_line_the_failure_and_the_profile():
    result = dataclasses.replace(_result(failure="fd_limit"), profile="vm-2c 2026-12-01 #1a2b3c4d")
    text = _text(render.result_table(result))
    for expected in ("1,234 req/s", "12.30 ms", "1.50 cores", "48.0 MiB", "2,469 requests", "reset 3",
                     "fd_limit", "vm-2c 2026-12-01 #1a2b3c4d", "simulated"):
        assert expected in text, expected
    line = render.inputs_line(result.scenario)
    assert "\n" not in line
    for expected in (result.scenario.model.name + " (processes=3", "dispatch=shared", "2 cores", "50 connections, closed loop",
                     "cpu 120 us", "io 500 us", "2 s after 1 s warm-up"):
        assert expected in line, expected
    assert "50 connections, closed loop" in text  # the inputs line is printed with the table


def test_no_profile_row_when_the_result_has_none():
    assert "profile" not in dict(render.result_rows(_result()))
    assert dict(render.result_rows(_result()))["failure"] == "none"


def test_bands_show_as_value_lo_hi_in_the_table_and_as_columns_for_machines():
    bands = {"throughput_rps": (1100.0, 1400.0), "latency_p99_s": (0.010, 0.015)}
    rows = dict(render.result_rows(_result(), bands))
    assert rows["throughput"] == "1,234 req/s [1,100 req/s, 1,400 req/s]"
    assert rows["latency p99"] == "12.30 ms [10.00 ms, 15.00 ms]"
    assert "[" not in rows["latency p50"]
    record = json.loads(render.result_json(_result(), bands))
    assert record["throughput_rps_lo"] == 1100.0 and record["latency_p99_s_hi"] == 0.015
    row = next(csv.DictReader(io.StringIO(render.result_csv(_result(), bands))))
    assert float(row["latency_p99_s_lo"]) == 0.010


def test_simulate_prints_a_table_json_or_csv(profile_file, tmp_path):
    runner = CliRunner()
    table = runner.invoke(main, [*SIM, "--profile", profile_file], terminal_width=200)
    assert table.exit_code == 0, table.output
    for expected in ("throughput", "req/s", "latency p99", "cores", "MiB", "failure", "profile",
                     "m3_reactor: simulated", "4 connections, closed loop"):
        assert expected in table.stdout, expected
    as_json = runner.invoke(main, [*SIM, "--profile", profile_file, "--json"])
    record = json.loads(as_json.stdout)
    assert record["source"] == "sim" and record["model"] == "m3_reactor" and record["completed"] > 0
    assert record["profile"]  # the profile the numbers came from
    as_csv = runner.invoke(main, [*SIM, "--profile", profile_file, "--csv", "-"])
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == 1 and rows[0]["model"] == "m3_reactor" and rows[0]["profile"]
    assert as_csv.stdout.count("\n") == 2  # a header and a row: no table around them
    path = tmp_path / "runs.csv"
    for _ in range(2):  # appends: one header, two rows
        assert runner.invoke(main, [*SIM, "--profile", profile_file, "--csv", str(path)]).exit_code == 0
    assert [r["source"] for r in csv.DictReader(path.open())] == ["sim", "sim"]


def test_json_and_csv_on_stdout_together_are_refused():
    out = CliRunner().invoke(main, [*SIM, "--json", "--csv", "-"])
    assert out.exit_code == 2 and "csv" in out.output and "--json" in out.output


def test_a_csv_path_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    out = CliRunner().invoke(main, [*SIM, "--csv", str(tmp_path / "no" / "dir" / "x.csv")])
    assert out.exit_code == 2 and "csv" in out.output and "cannot write" in out.output


# -- Parquet beside results.csv ------------------------------------------------------------------


def _fake_simulate(scenario, profile, **kw):
    n = scenario.workload.connections
    return Result(scenario=scenario, source="sim", throughput_rps=1000.0 * scenario.hardware.cores,
                  latency_mean_s=0.001 * n / 10, latency_p50_s=0.001 * n / 10, latency_p90_s=0.002 * n / 10,
                  latency_p99_s=0.003 * n / 10, latency_p999_s=0.004 * n / 10, completed=1000,
                  threads_peak=1, processes_peak=1, rss_peak_bytes=2**20 * n, fds_peak=n,
                  failure="memory" if n > 100 else "")


def test_the_report_writes_parquet_beside_the_csv(tmp_path, monkeypatch):
    import pandas as pd

    from experiments import report
    from experiments.sweep import sweep

    monkeypatch.setattr(report, "write_plots", lambda data, out: ())  # plots are not what is tested here
    monkeypatch.setattr(report, "render_html", lambda data, images: "")
    frame = sweep(Scenario(workload=Workload(cpu_us=100)), models=["m3", "m6"], cores=[1, 2],
                  connections=[10, 1000], profile=CostProfile.default(), engine="serial",
                  simulate=_fake_simulate, progress=False)
    inputs = report.ReportInputs(frame=frame, slo_p99_s=0.05, memory_bytes=8 * 2**30, profile=CostProfile.default(),
                                 profile_label="test", host="testhost-2c", date="2026-01-01",
                                 workload_lines=("a test workload",))
    files = report.write_report(inputs, tmp_path / "r")
    parquet = pd.read_parquet(tmp_path / "r" / "results.parquet")
    from_csv = pd.read_csv(files.csv)
    assert list(parquet.columns) == list(from_csv.columns) and len(parquet) == len(from_csv) == 8
    assert parquet["throughput_rps"].dtype.kind == "f" and set(parquet["failure"].fillna("")) == {"", "memory"}


# -- progress: terminals only --------------------------------------------------------------------


def test_progress_is_for_terminals_and_never_for_json():
    from serverlab.cmd_real import show_progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert show_progress(False, Tty())
    assert not show_progress(True, Tty())  # --json: machines read stdout
    assert not show_progress(False, io.StringIO())  # a pipe
