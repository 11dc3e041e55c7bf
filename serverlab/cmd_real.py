"""`serverlab load` (drive any server on loopback) and `serverlab measure` (one Scenario, for real)."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import threading
import time

import click

from serverlab.options import (
    CPUS_HELP,
    connect_rate_option,
    make_target,
    output_options,
    print_result,
    scenario_options,
    target_command_options,
)
from serverlab.render import fmt_seconds
from simkit import registry
from simkit.scenario import Workload


def show_progress(quiet: bool, stream=None) -> bool:
    """A progress bar is for a person: only when stdout is a terminal and not carrying JSON/CSV."""
    stream = sys.stdout if stream is None else stream
    return not quiet and stream.isatty()


@contextlib.contextmanager
def run_progress(label: str, expected_s: float, quiet: bool = False):
    """While a run lasts, a transient rich progress bar over its expected seconds (warm-up + window) on a
    terminal; nothing otherwise. Yields `started(t0)`: the bar counts from monotonic time t0 (the load's
    start, after the server and the generator are up); until called it counts from entry."""
    if not show_progress(quiet):
        yield lambda t0=None: None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed:.1f}/{task.total:.1f} s"), TimeElapsedColumn(), transient=True)
    task = progress.add_task(label, total=max(expected_s, 1e-3))
    origin = [time.monotonic()]
    done = threading.Event()

    def started(t0: float | None = None) -> None:
        origin[0] = time.monotonic() if t0 is None else t0

    def tick() -> None:
        while not done.wait(0.25):
            progress.update(task, completed=min(expected_s, max(0.0, time.monotonic() - origin[0])))

    thread = threading.Thread(target=tick, daemon=True)
    with progress:
        thread.start()
        try:
            yield started
        finally:
            done.set()
            thread.join(1.0)


def status_text(summary: dict) -> str:
    """Answers by status class, then by code: "2xx 950, 4xx 0, 5xx 50 (200: 950, 503: 50)"."""
    classes = ", ".join(f"{c} {summary['status_' + c]:,}" for c in ("2xx", "3xx", "4xx", "5xx")
                        if summary["status_" + c] or c in ("2xx", "4xx", "5xx"))
    if summary["status_unframed"]:
        classes += f", unframed {summary['status_unframed']:,}"
    codes = ", ".join(f"{k}: {v:,}" for k, v in summary["status_codes"].items())
    return classes + (f" ({codes})" if codes else "")


def _print_report(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"load {summary['url']} ({summary['mode']} loop)", show_header=False)
    table.add_row("throughput", f"{summary['throughput_rps']:,.0f} req/s over {summary['duration_s']:.2f} s")
    table.add_row("completed", f"{summary['completed']:,}")
    for key in ("latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_p999_s",
                "latency_max_s"):
        table.add_row(key.removeprefix("latency_").removesuffix("_s"), fmt_seconds(summary[key]))
    table.add_row("errors", ", ".join(f"{k}={summary['errors_' + k]}"
                                      for k in ("refused", "timeout", "reset", "http", "client")))
    table.add_row("status", status_text(summary))
    table.add_row("in flight at end", str(summary["in_flight"]))
    if summary["mode"] == "open":
        table.add_row("late sends", f"{summary['late_sends']} (mean lag {fmt_seconds(summary['send_lag_mean_s'])}, "
                                    f"max {fmt_seconds(summary['max_send_lag_s'])})")
    if summary["spec_idle_connections"]:
        table.add_row("idle held", f"{summary['idle_open']} of {summary['spec_idle_connections']} "
                                   f"({summary['idle_failed']} failed attempts)")
    table.add_row("loadgen CPU", f"{summary['loadgen_cpu_util']:.2f} cores, "
                                 f"peak RSS {summary['loadgen_rss_peak_bytes'] / 2**20:.0f} MiB")
    Console().print(table)
    if summary["loadgen_cpu_util"] >= 0.9 * max(1, summary["spec_processes"]):
        Console(stderr=True).print("note: the load generator used ~all its CPU: it, not the server, may be the "
                                   "bottleneck (try --processes N on more CPUs)")


@click.command()
@click.option("--url", required=True, help="http://127.0.0.1:PORT/work?cpu_us=100")
@click.option("--connections", "-c", type=int, default=10, show_default=True,
              help="closed loop: connections; open loop: cap on concurrent connections")
@click.option("--duration", "duration_s", type=float, default=10.0, show_default=True, help="seconds measured")
@click.option("--warmup", "warmup_s", type=float, default=0.0, show_default=True, help="seconds before measuring")
@click.option("--rate", "rate_rps", type=float, default=None, help="open loop at this many requests/s")
@click.option("--arrival", type=click.Choice(["poisson", "constant"]), default="poisson", show_default=True)
@click.option("--think", "think_s", type=float, default=0.0, show_default=True, help="closed loop think time, s")
@click.option("--requests-per-conn", type=int, default=None, help="reconnect after this many requests")
@click.option("--idle", "idle_connections", type=int, default=0, show_default=True,
              help="extra connections held open without traffic")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True, help="per request, s")
@click.option("--connect-concurrency", type=int, default=256, show_default=True,
              help="connects in flight at once, over all worker processes")
@connect_rate_option(Workload().connect_rate_cps)
@click.option("--processes", type=int, default=1, show_default=True,
              help="generator worker processes (0: run in this process)")
@click.option("--cpus", default=None, help=f"generator: {CPUS_HELP}")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--timer-resolution", "timer_resolution_s", type=float, default=0.0, show_default=True,
              help="open loop: wake at most this often, s (0: for every arrival; busy, but sends on time)")
@click.option("--allow-remote", is_flag=True, help="allow a non-loopback URL (default: loopback only)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="append the summary as a CSV row to FILE")
@click.option("--hdr", "hdr_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="write the latency histogram to FILE in HdrHistogram's percentile-distribution format "
                   "(.hgrm, values in ms)")
def load(url, connections, duration_s, warmup_s, rate_rps, arrival, think_s, requests_per_conn,
         idle_connections, timeout_s, connect_concurrency, connect_rate_cps, processes, cpus, seed,
         timer_resolution_s, allow_remote, as_json, csv_path, hdr_path):
    """Load a server with the serverlab wire protocol and print what was observed."""
    from realkit.loadgen import LoadGenError, LoadSpec, run_load
    from serverlab.options import parse_cpus

    try:
        workload = Workload(
            connections=connections, duration_s=duration_s, warmup_s=warmup_s,
            mode="open" if rate_rps is not None else "closed", rate_rps=rate_rps, arrival=arrival,
            think_s=think_s, requests_per_conn=requests_per_conn, idle_connections=idle_connections,
            timeout_s=timeout_s, connect_concurrency=connect_concurrency, connect_rate_cps=connect_rate_cps or None,
        )
        spec = LoadSpec(
            url=url, workload=workload, processes=processes, cpus=tuple(parse_cpus(cpus, "cpus")) if cpus else None,
            seed=seed, timer_resolution_s=timer_resolution_s, allow_remote=allow_remote,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for name, path in (("csv", csv_path), ("hdr", hdr_path)):  # checked before the run, not after it
        if path:
            try:
                with open(path, "a"):
                    pass
            except OSError as exc:
                raise click.BadParameter(f"{name}: cannot write {path} ({exc.strerror})",
                                         param_hint=f"--{name}") from None
    try:
        with run_progress(f"load {url}", warmup_s + duration_s, quiet=as_json) as started:
            report = run_load(spec, on_ready=started)
    except LoadGenError as exc:
        raise click.ClickException(str(exc)) from None
    if hdr_path:
        with open(hdr_path, "w") as fh:
            fh.write(report.histogram.to_hgrm())
    summary = report.summary()
    summary["spec_idle_connections"] = workload.idle_connections
    summary["spec_processes"] = spec.processes
    if csv_path:
        import os

        new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
        with open(csv_path, "a", newline="") as fh:
            row = dict(summary, status_codes=" ".join(f"{k}:{v}" for k, v in summary["status_codes"].items()))
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_report(summary)


class _MeasureCommand(click.Command):
    """`--as MODEL` is `--model MODEL`: beside --target it names the architecture the server has."""

    def parse_args(self, ctx, args):
        args = ["--model" if a == "--as" else "--model=" + a[5:] if a.startswith("--as=") else a for a in args]
        if "--target" in args or any(a.startswith("--target=") for a in args):
            if not any(a in ("--model", "-m") or a.startswith(("--model=", "-m")) for a in args):
                raise click.UsageError("as: --target needs --as MODEL, the architecture the server has "
                                       f"({registry.model_help()})", ctx)
        return super().parse_args(ctx, args)


def _gil_option(func):
    return click.option("--gil", "has_gil", is_flag=True,
                        help="with --target: its runtime has a global lock (the default; --no-gil: it has none)")(func)


def _target(scenario, target_cmd, path, has_gil, startup_timeout_s, stop_grace_s):
    """The Target the options describe, or None; a usage error names the option."""
    if target_cmd is None:
        if path is not None or has_gil:
            raise click.UsageError(f"{'path' if path is not None else 'gil'}: only with --target")
        return None
    if has_gil and not scenario.model.gil:
        raise click.UsageError("gil: --gil and --no-gil both given; choose one")
    return make_target(target_cmd, scenario.model.name, scenario.model.gil, path, startup_timeout_s, stop_grace_s)


@click.command(cls=_MeasureCommand)
@scenario_options
@output_options
@target_command_options
@_gil_option
def measure(scenario, as_json, csv_path, target_cmd, path, has_gil, startup_timeout_s, stop_grace_s):
    """Run one scenario for real on this box (server pinned to the first --cores CPUs, load generator on
    the other CPUs). With --target CMD --as MODEL, the server is that command (docs/external-servers.md)."""
    import warnings

    from realkit.loadgen import LoadGenError
    from realkit.runner import ServerStartError
    from realkit.runner import measure as run_measure

    target = _target(scenario, target_cmd, path, has_gil, startup_timeout_s, stop_grace_s)
    w = scenario.workload
    with warnings.catch_warnings(record=True) as caught, run_progress(
        f"measuring {scenario.model.name if target is None else target.command}", w.warmup_s + w.duration_s,
        quiet=as_json or csv_path == "-",
    ):
        warnings.simplefilter("always")
        try:
            result = run_measure(scenario, target=target)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        except (ServerStartError, LoadGenError) as exc:
            raise click.ClickException(str(exc)) from None
    for w in caught:
        click.echo(f"note: {w.message}", err=True)
    print_result(result, as_json, csv_path)
