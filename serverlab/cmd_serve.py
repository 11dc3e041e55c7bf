"""`serverlab serve`: start one real server (realkit.servers.run_server), print its port, serve until
SIGTERM/SIGINT, exit 0. `python -m realkit.servers` is this same command."""

from __future__ import annotations

import sys

import click

from serverlab.options import parse_cores
from simkit.scenario import DISPATCH_MODES


@click.command()
@click.option("--model", "-m", required=True, help="m1_iterative..m7_reactor_spawn, or 1..7")
@click.option("--threads", type=int, default=1, show_default=True, help="m5/m7 I/O threads")
@click.option("--pool", type=int, default=None, help="m4 worker threads [default: 4 for m4, else 0]")
@click.option("--processes", type=int, default=1, show_default=True, help="m6 worker processes")
@click.option(
    "--dispatch",
    type=click.Choice(DISPATCH_MODES),
    default="shared",
    show_default=True,
    help="m6 accept distribution",
)
@click.option("--backlog", type=int, default=1024, show_default=True, help="listen() backlog")
@click.option(
    "--keepalive-timeout",
    "keepalive_timeout_s",
    type=float,
    default=30.0,
    show_default=True,
    help="close connections idle this many seconds",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=0, show_default=True, help="0: any free port (printed)")
@click.option("--cores", default=None, help="pin the server to these CPUs, e.g. 0,1 or 0-3")
def serve(model, threads, pool, processes, dispatch, backlog, keepalive_timeout_s, host, port, cores):
    """Run one real server; print the bound port on one line when ready; serve until SIGTERM."""
    from realkit.servers import model_spec, run_server

    cpus = parse_cores(cores)
    try:
        spec = model_spec(
            model,
            threads=threads,
            pool=pool,
            processes=processes,
            dispatch=dispatch,
            backlog=backlog,
            keepalive_timeout_s=keepalive_timeout_s,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    def ready(bound_port: int) -> None:
        sys.stdout.write(f"{bound_port}\n")
        sys.stdout.flush()

    try:
        run_server(spec, host, port, ready, cores=cpus)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
