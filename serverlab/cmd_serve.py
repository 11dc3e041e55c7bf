"""`serverlab serve`: start one real server (realkit.servers.run_server) in this process, print its port,
serve until SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import sys

import click

from serverlab.options import parse_cores
from simkit import registry
from simkit.scenario import DISPATCH_MODES, ModelSpec

_DEFAULTS = ModelSpec()


@click.command()
@click.option("--model", "-m", required=True, help=f"name or number: {registry.model_help()}")
@click.option("--threads", type=int, default=None, help=f"{registry.knob_help('threads')} [default: the model's]")
@click.option("--pool", type=int, default=None, help=f"{registry.knob_help('pool')} [default: the model's]")
@click.option("--processes", type=int, default=None,
              help=f"{registry.knob_help('processes')} [default: the model's]")
@click.option(
    "--dispatch",
    type=click.Choice(DISPATCH_MODES),
    default=_DEFAULTS.dispatch,
    show_default=True,
    help="how a pre-forked server spreads connections over its workers",
)
@click.option("--backlog", type=int, default=_DEFAULTS.backlog, show_default=True, help="listen() backlog")
@click.option(
    "--keepalive-timeout",
    "keepalive_timeout_s",
    type=float,
    default=_DEFAULTS.keepalive_timeout_s,
    show_default=True,
    help="close connections idle this many seconds",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=0, show_default=True, help="0: any free port (printed)")
@click.option("--cores", default=None, help="pin the server to these CPUs, e.g. 0,1 or 0-3")
def serve(model, threads, pool, processes, dispatch, backlog, keepalive_timeout_s, host, port, cores):
    """Run one real server; print the bound port on one line when ready; serve until SIGTERM."""
    from realkit.servers import run_server

    cpus = parse_cores(cores)
    try:
        spec = ModelSpec.for_model(
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
