"""`serverlab whatif` (a what-if report from a workload file) and `serverlab demo` (what `make demo` runs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click


def _engine(dask_address: str | None):
    if dask_address is None:
        return "local"
    if not dask_address.startswith(("tcp://", "tls://")):
        raise click.BadParameter(f"expected tcp://HOST:PORT, got {dask_address!r}", param_hint="--dask")
    return dask_address


def _run(workload: str | None, profile: str | None, dask_address: str | None, out: str) -> Path:
    from experiments.sweep import SweepIncomplete
    from experiments.whatif import load_whatif, run_whatif

    try:
        spec = load_whatif(workload)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--workload") from None
    from serverlab.cmd_sim import choose_profile

    prof = choose_profile(profile)
    click.echo(f"profile: {prof.describe()}")
    from experiments.report import target_notes

    for warning in target_notes(prof)[0]:
        click.secho(warning, fg="red", err=True)
    n = len(spec.scenarios())
    click.echo(f"what-if: {len(spec.models)} models x {len(spec.connections)} connection counts x "
               f"{len(spec.cores)} core counts = {n} points ({spec.source})")
    t0 = time.perf_counter()
    try:
        files = run_whatif(spec, prof, engine=_engine(dask_address), out_root=out)
    except SweepIncomplete as exc:
        raise click.ClickException(f"{exc}\nNo report written: it would present a partial sweep as complete.") from None
    except ValueError as exc:  # a corrupt profile, a bad engine address
        raise click.ClickException(str(exc)) from None
    click.echo(f"recommended: {files.recommendation.model or 'no model meets the SLO'}")
    for warning in files.recommendation.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    click.echo(f"report written in {time.perf_counter() - t0:.1f} s: {files.html}")
    return files.html


@click.command()
@click.option("--workload", "-w", type=click.Path(dir_okay=False), default=None,
              help="what-if TOML file [default: experiments/whatif.toml]")
@click.option("--profile", "-p", type=click.Path(dir_okay=False), default=None,
              help="cost profile JSON [default: $SERVERLAB_PROFILE, else this host's calibrated profile "
                   "(written by `serverlab calibrate`), else the uncalibrated built-in one, with a warning]")
@click.option("--dask", "dask_address", default=None, metavar="tcp://HOST:PORT",
              help="run the sweep on this Dask scheduler instead of the local process pool")
@click.option("--out", "out", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="directory in which whatif-<host>-<date>/ is written")
def whatif(workload, profile, dask_address, out):
    """Sweep models x connections x cores in the simulator and write a what-if report."""
    _run(workload, profile, dask_address, out)


@click.command()
@click.option("--out", "out", type=click.Path(file_okay=False), default="reports", show_default=True)
@click.option("--dask", "dask_address", default=None, metavar="tcp://HOST:PORT")
def demo(out, dask_address):
    """Calibrate this host if it has no profile (quick), then write the default what-if report."""
    from simkit.profile import PROFILE_ENV, default_profile_path

    t0 = time.perf_counter()
    path = default_profile_path()
    profile: str | None = str(path)
    if os.environ.get(PROFILE_ENV):
        profile = None  # the one rule: the profile named by the environment, no calibration
    elif path.exists():
        click.echo(f"profile for this host: {path}")
    else:
        click.echo(f"no profile for this host at {path}: running a quick calibration first")
        try:
            _quick_calibration(path)
        except Exception as exc:  # noqa: BLE001 - the demo still reports, loudly labelled uncalibrated
            click.secho(f"quick calibration failed ({type(exc).__name__}: {exc}); continuing with the "
                        "UNCALIBRATED default profile - the report says so.", fg="red", err=True)
        if not path.exists():
            profile = None
        else:
            click.echo(f"calibrated in {time.perf_counter() - t0:.0f} s: {path}")
    html = _run(None, profile, dask_address, out)
    click.echo(f"demo done in {time.perf_counter() - t0:.0f} s. Open {html}")


def _quick_calibration(path: Path) -> None:
    """calibration.calibrate(quick=True) with a rich progress bar per stage (probes, real runs, fit...)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from calibration import calibrate

    with Progress(TextColumn("[bold]{task.fields[stage]:<10}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}")) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, detail: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(detail[:70], total=max(total, 1), stage=stage)
            bar.update(tasks[stage], description=detail[:70], completed=done, total=max(total, 1))

        calibrate(out=path, quick=True, progress=progress)
