"""`serverlab serve`: start one real server (realkit.servers.run_server) in this process, print its port,
serve until SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import errno
import os
import socket
import sys

import click

from serverlab.options import CORES_HELP, CPUS_HELP, CoreCount, parse_cpus
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
@click.option("--cores", type=CoreCount(pin_option="--cpus"), default=None,
              help=f"{CORES_HELP}: pinned to the first N CPUs available here, as `measure` pins it "
                   "[default: not pinned]")
@click.option("--cpus", default=None, help=f"{CPUS_HELP} [default: not pinned]")
def serve(model, threads, pool, processes, dispatch, backlog, keepalive_timeout_s, host, port, cores, cpus):
    """Run one real server; print the bound port on one line when ready; serve until SIGTERM."""
    from realkit.servers import run_server

    cpus = server_cpus(cores, cpus)
    check_address(host, port)
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
    except OSError as exc:  # the address was taken (or vanished) between the check and the bind
        raise _address_error(host, port, exc) from None


def server_cpus(cores: int | None, cpus: str | None) -> list[int] | None:
    """The CPUs to pin the server to: --cpus as listed, or --cores N as the first N available (the CPUs
    realkit.runner.plan_cpus gives a measured server); None: not pinned."""
    if cores is not None and cpus is not None:
        raise click.BadParameter("cores: give --cores N (a count) or --cpus LIST, not both", param_hint="--cores")
    if cpus is not None:
        return parse_cpus(cpus, "cpus")
    if cores is None:
        return None
    available = sorted(os.sched_getaffinity(0))
    if cores > len(available):
        raise click.BadParameter(f"cores: {cores} is more than the {len(available)} CPUs available here",
                                 param_hint="--cores")
    return available[:cores]


def _address_error(host: str, port: int, exc: OSError) -> click.ClickException:
    if isinstance(exc, socket.gaierror):
        return click.BadParameter(f"host: cannot resolve {host!r} ({exc.strerror})", param_hint="--host")
    if exc.errno == errno.EADDRINUSE:
        return click.BadParameter(f"port: {host}:{port} is already in use", param_hint="--port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return click.BadParameter(f"host: {host} is not an address of this machine", param_hint="--host")
    if exc.errno == errno.EACCES:
        return click.BadParameter(f"port: {port} needs privileges to bind (ports below 1024)", param_hint="--port")
    return click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror or exc}")


def check_address(host: str, port: int) -> None:
    """Bind (and release) a socket as the server will, so a bad --host or --port is one line naming
    it before any server starts (or forks)."""
    if not 0 <= port <= 65535:
        raise click.BadParameter(f"port: must be in 0..65535, got {port}", param_hint="--port")
    if not host or "\x00" in host:
        raise click.BadParameter(f"host: expected an address, got {host!r}", param_hint="--host")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except (OSError, UnicodeError) as exc:
        if isinstance(exc, UnicodeError):
            raise click.BadParameter(f"host: cannot resolve {host!r} (not a valid name)", param_hint="--host") from None
        raise _address_error(host, port, exc) from None
