"""Scenario options shared by `serverlab measure` and `serverlab simulate` (same flags, same Scenario)."""

from __future__ import annotations

import functools
import os

import click

from simkit import registry
from simkit.scenario import (
    DISPATCH_MODES,
    Hardware,
    ModelSpec,
    Scenario,
    Workload,
    available_cores,
)

CORES_HELP = "how many cores the server gets: a count, in every command"
CPUS_HELP = "pin to these CPUs: a list such as 0,1 or 0-3 (--cores is a count)"


def _cpu_list(text: str) -> list[int] | None:
    """'0,1' or '0-3' -> [0, 1] / [0, 1, 2, 3]; None when `text` is not such a list."""
    cpus: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                if int(hi) - int(lo) > 65536:
                    return None
                cpus.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                cpus.append(int(part))
    except ValueError:
        return None
    return cpus


def parse_cpus(text: str | None, name: str = "cpus") -> list[int] | None:
    """'0,1' or '0-3' -> [0, 1] / [0, 1, 2, 3]; None stays None. Every CPU must be one this process may
    run on; a bad list is a usage error naming `name` (the option)."""
    if text is None:
        return None
    cpus = _cpu_list(text)
    if cpus is None:
        raise click.BadParameter(f"{name}: expected a list like 0,1 or 0-3, got {text!r}")
    if not cpus:
        raise click.BadParameter(f"{name}: empty CPU list")
    allowed = os.sched_getaffinity(0)
    outside = sorted(set(cpus) - allowed)
    if outside:
        raise click.BadParameter(f"{name}: CPU {outside[0]} is not available here; available: "
                                 f"{', '.join(map(str, sorted(allowed)))}")
    return cpus


class CoreCount(click.ParamType):
    """`--cores`: a count of cores (>= 1) in every command. A CPU list (the old `serve --cores 0,1`) is
    refused in one line that points at the option that pins, `pin_option`, where the command has one."""

    name = "N"

    def __init__(self, pin_option: str | None = None) -> None:
        self.pin_option = pin_option

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            text, count = str(value), value
        else:
            text = str(value).strip()
            count = int(text) if text.isdigit() else None
        if count is not None and count >= 1:
            return count
        cpus = _cpu_list(text)
        pin = ""
        if cpus:
            pin = (f"; to pin to CPUs {text} use {self.pin_option} {text}" if self.pin_option
                   else f"; a CPU list is not a count (`serverlab serve --cpus {text}` pins a server)")
        self.fail(f"cores: expected a count of cores >= 1 (e.g. --cores 2), got {text!r}{pin}", param, ctx)


def connect_rate_option(default: float | None):
    """--connect-rate CPS: closed-loop clients first connect evenly at this rate (Workload.connect_rate_cps);
    0 connects them all at once, a start-up storm."""
    return click.option("--connect-rate", "connect_rate_cps", type=click.FloatRange(min=0.0),
                        default=default or 0.0, show_default=True,
                        help="closed loop: clients first connect evenly at this many per second "
                             "(0: all at once, a start-up storm)")


def scenario_options(func):
    """Add every Scenario flag to a click command; the command receives `scenario=`."""
    d_model, d_hw, d_wl = ModelSpec(), Hardware(), Workload()
    opts = [
        click.option("--model", "-m", "model", required=True, help=f"name or number: {registry.model_help()}"),
        click.option("--threads", type=int, default=None, help=f"{registry.knob_help('threads')} [default: the model's]"),
        click.option("--processes", type=int, default=None,
                     help=f"{registry.knob_help('processes')} [default: the model's]"),
        click.option("--pool", type=int, default=None, help=f"{registry.knob_help('pool')} [default: the model's]"),
        click.option("--dispatch", type=click.Choice(DISPATCH_MODES), default=d_model.dispatch, show_default=True,
                     help="how a pre-forked server spreads connections over its workers"),
        click.option("--backlog", type=int, default=d_model.backlog, show_default=True),
        click.option("--no-gil", is_flag=True,
                     help="no global interpreter lock: simulate a C server; with --target, the measured "
                          "server's runtime has none (recorded in its Result); realkit's own servers ignore it"),
        click.option("--cores", "n_cores", type=CoreCount(), default=None,
                     help=f"{CORES_HELP} [default: all here]"),
        click.option("--memory-bytes", type=int, default=d_hw.memory_bytes, show_default=True),
        click.option("--fd-limit", type=int, default=d_hw.fd_limit, show_default=True),
        click.option("--somaxconn", type=int, default=d_hw.somaxconn, show_default=True),
        click.option("--threads-max", type=int, default=d_hw.threads_max, show_default=True),
        click.option("--connections", "-c", type=int, default=d_wl.connections, show_default=True),
        click.option("--rate", "rate_rps", type=float, default=None, help="open loop at this many requests/s"),
        click.option("--arrival", type=click.Choice(["poisson", "constant"]), default="poisson", show_default=True),
        click.option("--think", "think_s", type=float, default=0.0, show_default=True, help="seconds"),
        click.option("--requests-per-conn", type=int, default=None),
        click.option("--idle", "idle_connections", type=int, default=0, show_default=True),
        click.option("--connect-concurrency", type=int, default=d_wl.connect_concurrency, show_default=True,
                     help="connects the clients have in flight at once"),
        connect_rate_option(d_wl.connect_rate_cps),
        click.option("--cpu-us", type=float, default=0.0, show_default=True),
        click.option("--gil-us", type=float, default=0.0, show_default=True),
        click.option("--io-us", type=float, default=0.0, show_default=True),
        click.option("--resp-bytes", type=int, default=d_wl.resp_bytes, show_default=True),
        click.option("--duration", "duration_s", type=float, default=d_wl.duration_s, show_default=True),
        click.option("--warmup", "warmup_s", type=float, default=d_wl.warmup_s, show_default=True),
        click.option("--seed", type=int, default=1, show_default=True),
    ]

    @functools.wraps(func)
    def wrapper(**kw):
        try:
            model = ModelSpec.for_model(
                kw.pop("model"),
                threads=kw.pop("threads"),
                processes=kw.pop("processes"),
                pool=kw.pop("pool"),
                dispatch=kw.pop("dispatch"),
                backlog=kw.pop("backlog"),
                gil=not kw.pop("no_gil"),
            )
            n_cores = kw.pop("n_cores")
            hardware = Hardware(
                cores=n_cores if n_cores is not None else available_cores(),
                memory_bytes=kw.pop("memory_bytes"),
                fd_limit=kw.pop("fd_limit"),
                somaxconn=kw.pop("somaxconn"),
                threads_max=kw.pop("threads_max"),
            )
            rate = kw.pop("rate_rps")
            workload = Workload(
                connections=kw.pop("connections"),
                mode="open" if rate is not None else "closed",
                rate_rps=rate,
                arrival=kw.pop("arrival"),
                think_s=kw.pop("think_s"),
                requests_per_conn=kw.pop("requests_per_conn"),
                idle_connections=kw.pop("idle_connections"),
                connect_concurrency=kw.pop("connect_concurrency"),
                connect_rate_cps=kw.pop("connect_rate_cps") or None,
                cpu_us=kw.pop("cpu_us"),
                gil_us=kw.pop("gil_us"),
                io_us=kw.pop("io_us"),
                resp_bytes=kw.pop("resp_bytes"),
                duration_s=kw.pop("duration_s"),
                warmup_s=kw.pop("warmup_s"),
            )
            scenario = Scenario(model=model, hardware=hardware, workload=workload, seed=kw.pop("seed"))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        return func(scenario=scenario, **kw)

    for opt in reversed(opts):
        wrapper = opt(wrapper)
    return wrapper


def target_command_options(func):
    """--target CMD, --path, --startup-timeout and --stop-grace: an external server (realkit.target),
    the same flags in every command that runs one; the command receives target_cmd, path,
    startup_timeout_s and stop_grace_s."""
    for opt in reversed([
        click.option("--target", "target_cmd", default=None, metavar="CMD",
                     help="an external server instead of realkit's: a command line with {port} (and {workers}, "
                          "{threads}, {python}, {tmpdir}); --as MODEL names its architecture"),
        click.option("--path", default=None, help="with --target: the URL path requested  [default: /]"),
        click.option("--startup-timeout", "startup_timeout_s", type=float, default=30.0, show_default=True,
                     help="with --target: seconds for it to answer on its port"),
        click.option("--stop-grace", "stop_grace_s", type=float, default=10.0, show_default=True,
                     help="with --target: seconds between SIGTERM and SIGKILL"),
    ]):
        func = opt(func)
    return func


def make_target(target_cmd: str, as_model: str, gil: bool, path: str | None, startup_timeout_s: float,
                stop_grace_s: float):
    """The realkit.target.Target the options describe; a bad field is a usage error naming it."""
    from realkit.target import Target

    try:
        return Target(command=target_cmd, as_model=as_model, gil=gil, path=path or "/",
                      startup_timeout_s=startup_timeout_s, stop_grace_s=stop_grace_s)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _check_csv(ctx, param, value):
    """--csv FILE is checked when parsed, before any run: a bad path is one line, not a lost run."""
    if value and value != "-":
        try:
            with open(value, "a"):
                pass
        except OSError as exc:
            raise click.BadParameter(f"csv: cannot write {value} ({exc.strerror})") from None
    return value


def output_options(func):
    """--json and --csv FILE for a command that prints one Result; the command receives `as_json`
    and `csv_path` (never both on stdout: `--json --csv -` is refused before any run)."""

    @functools.wraps(func)
    def checked(*args, **kw):
        if kw.get("as_json") and kw.get("csv_path") == "-":
            raise click.UsageError("csv: --csv - and --json both print to stdout; choose one (or --csv FILE)")
        return func(*args, **kw)

    command = click.option("--csv", "csv_path", default=None, callback=_check_csv, metavar="FILE",
                           help="append the Result as a CSV row to FILE (a header when FILE is new; - prints "
                                "it to stdout instead of the table)")(checked)
    return click.option("--json", "as_json", is_flag=True, help="print the Result as one JSON object")(command)


def print_result(result, as_json: bool = False, csv_path: str | None = None, bands=None) -> None:
    """One Result as JSON, CSV (machines) or a compact table (a person); `bands` {metric: (lo, hi)}
    adds a prediction's interval to each metric it names."""
    from serverlab import render

    if csv_path == "-":
        click.echo(render.result_csv(result, bands), nl=False)
    elif csv_path:
        new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
        with open(csv_path, "a", newline="") as fh:
            fh.write(render.result_csv(result, bands, header=new))
    if as_json:
        click.echo(render.result_json(result, bands))
    elif csv_path != "-":
        from rich.console import Console

        Console().print(render.result_table(result, bands))
