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


def parse_cores(text: str | None, name: str = "cores") -> list[int] | None:
    """'0,1' or '0-3' -> [0, 1] / [0, 1, 2, 3]; None stays None. Every CPU must be one this process may
    run on; a bad list is a usage error naming `name` (the option)."""
    if text is None:
        return None
    cpus: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                if int(hi) - int(lo) > 65536:
                    raise ValueError
                cpus.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                cpus.append(int(part))
    except ValueError:
        raise click.BadParameter(f"{name}: expected a list like 0,1 or 0-3, got {text!r}") from None
    if not cpus:
        raise click.BadParameter(f"{name}: empty CPU list")
    allowed = os.sched_getaffinity(0)
    outside = sorted(set(cpus) - allowed)
    if outside:
        raise click.BadParameter(f"{name}: CPU {outside[0]} is not available here; available: "
                                 f"{', '.join(map(str, sorted(allowed)))}")
    return cpus


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
        click.option("--no-gil", is_flag=True, help="simulate a C server (no GIL); ignored by real runs"),
        click.option("--cores", "n_cores", type=int, default=None, help="cores for the server [default: all here]"),
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


def print_result(result, as_json: bool) -> None:
    """One Result as JSON (machine) or a two-column table (person)."""
    import json
    import math

    row = result.to_row()
    if as_json:
        click.echo(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{row['model']} ({row['source']})", show_header=False)
    for key, value in row.items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    Console().print(table)
