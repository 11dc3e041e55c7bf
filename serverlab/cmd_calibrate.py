"""`serverlab calibrate [--quick] [--out PROFILE.json] [--offgrid N] [--no-mechanisms]`: probes + real
runs + fit + held-out validation on the grid and on an off-grid random design, then the mechanism table,
with a progress bar per stage; writes the profile JSON, both validation tables as one CSV (its "set"
column says which) and the mechanism table as .mechanisms.csv. By default the profile goes to this host's
per-user location (simkit.profile.default_profile_path), where every command finds it.

`serverlab calibrate --target CMD --as MODEL [--gil/--no-gil] [--path /x] [--quick]` calibrates an external
server instead (calibration.target): its own small grid, its costs derived on this host's profile, held-out
errors and a verdict, written to <host>-<target>.json beside the host profile for `serverlab whatif --profile`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import click

from serverlab.options import make_target, target_command_options


@contextlib.contextmanager
def _stage_bars(console):
    """A rich progress bar per calibration stage; yields progress(stage, detail, done, total)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.fields[stage]:<10}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}"), console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, detail: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(detail, total=max(total, 1), stage=stage)
            bar.update(tasks[stage], description=detail[:70], completed=done, total=max(total, 1))

        yield progress


@click.command()
@click.option("--quick", is_flag=True, help="a small grid and short runs (about 3 minutes)")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="profile JSON to write [default: <host>.json in $SERVERLAB_PROFILE_DIR, else "
                   "~/.local/share/serverlab/profiles, where every command looks]")
@click.option("--model", "models", multiple=True, help="calibrate only these models (repeatable; numbers or names)")
@click.option("--workers", type=int, default=None, help="simulation processes for the fit [default: 2 on 2+ cores]")
@click.option("--offgrid", type=click.IntRange(min=0), default=None,
              help="off-grid validation points, drawn at random over every knob and never fitted "
                   "[default: 60, 15 with --quick; 0: none]")
@click.option("--offgrid-seed", type=click.IntRange(min=0), default=None,
              help="seed of the off-grid design (recorded in the profile) [default: 11]")
@click.option("--mechanisms/--no-mechanisms", default=True, show_default=True,
              help="finish with the mechanism table: each simulated mechanism beside a small real experiment")
@target_command_options
@click.option("--as", "as_model", default=None, metavar="MODEL",
              help="with --target: the architecture the server has (a model's name or number)")
@click.option("--gil/--no-gil", "has_gil", default=True, show_default=True,
              help="with --target: whether the server's runtime has a global lock (CPython: yes; C, Go, Rust: no)")
@click.option("--threads", type=int, default=None, help="with --target: the model's threads knob at 1 core")
@click.option("--processes", type=int, default=None, help="with --target: the model's processes knob at 1 core")
@click.option("--pool", type=int, default=None, help="with --target: the model's pool knob at 1 core")
@click.option("--fit", "fit_names", multiple=True, metavar="PARAM",
              help="with --target: also fit this profile parameter to the training runs (repeatable)")
def calibrate(quick: bool, out: str | None, models: tuple[str, ...], workers: int | None, offgrid: int | None,
              offgrid_seed: int | None, mechanisms: bool, target_cmd: str | None, path: str | None,
              startup_timeout_s: float, stop_grace_s: float, as_model: str | None, has_gil: bool,
              threads: int | None, processes: int | None, pool: int | None, fit_names: tuple[str, ...]) -> None:
    """Calibrate the simulator against this box and validate it on held-out and off-grid points; with
    --target CMD --as MODEL, calibrate that external server (docs/external-servers.md)."""
    knobs = {"threads": threads, "processes": processes, "pool": pool}
    if target_cmd is not None:
        _calibrate_target(target_cmd, as_model, has_gil, path, startup_timeout_s, stop_grace_s, quick, out,
                          models, offgrid, fit_names, {k: v for k, v in knobs.items() if v is not None})
        return
    only = [name for name, given in (("as", as_model is not None), ("path", path is not None),
                                     ("no-gil", not has_gil), ("fit", bool(fit_names)),
                                     *((k, v is not None) for k, v in knobs.items())) if given]
    if only:
        raise click.UsageError(f"{only[0]}: only with --target")
    from rich.console import Console

    from calibration import calibrate as run_calibration
    from calibration import check_out, format_coverage, format_offgrid, format_summary
    from calibration.mechanisms import format_table
    from calibration.offgrid import OFFGRID_SEED
    from simkit import registry
    from simkit.profile import PROFILE_ENV, default_profile_path

    try:
        chosen = tuple(registry.resolve(m) for m in models) if models else registry.names()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    path = out or str(default_profile_path())
    try:
        check_out(path)  # before the campaign, not after its minutes
    except ValueError as exc:
        raise click.ClickException(f"--out: {str(exc).removeprefix('out: ')}") from None
    seed = OFFGRID_SEED if offgrid_seed is None else offgrid_seed
    console = Console()
    with _stage_bars(console) as progress:
        try:
            report = run_calibration(path, quick=quick, models=chosen, progress=progress, workers=workers,
                                     offgrid=offgrid, offgrid_seed=seed, mechanisms=mechanisms)
        except (ValueError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from None
    console.print(f"profile: {report.path}   held-out tables (grid, off-grid): {report.csv_path}   "
                  f"({report.elapsed_s:.0f} s, {len(report.profile.failed_runs)} failed real runs)")
    env = os.environ.get(PROFILE_ENV)
    if env and Path(env).resolve() != Path(report.path).resolve():
        console.print(f"note: {PROFILE_ENV}={env} is set, so commands use that profile, not this one",
                      markup=False, highlight=False)
    fit = report.fit
    unit = {n: (" s" if n.endswith("_s") else "") for n in fit.names}  # the work scales are ratios
    prof = report.profile
    speeds = ", ".join(f"{n} {prof[n]:.3g} +- {prof.params[n].sd:.2g}" for n in ("cpu_work_scale", "gil_work_scale"))
    console.print(f"work speeds (actual / asked, median of the runs' own +- their spread): {speeds}")
    console.print("fitted: " + (", ".join(f"{n} = {fit.values[n]:.3g}{unit[n]} (start {fit.start[n]:.3g})"
                                          for n in fit.names) or "nothing (every run measured its own speeds)")
                  + f"; rms log error {fit.rmse_log_start:.3f} -> {fit.rmse_log:.3f}")
    console.print(format_summary(report.summary), markup=False, highlight=False, soft_wrap=True)
    off = report.profile.notes.get("offgrid") or {}
    if report.offgrid_summary is not None:
        console.print(f"\noff-grid: {off.get('points')} points ({off.get('failed')} failed), seed {off.get('seed')}, "
                      f"{off.get('real_run_s', 0):.0f} s of real runs; predicted by the profile written above",
                      markup=False, highlight=False, soft_wrap=True)
        console.print(format_offgrid(report.offgrid_summary), markup=False, highlight=False, soft_wrap=True)
    if report.coverage is not None:
        where = f" ({report.coverage_path})" if report.coverage_path else ""
        console.print(f"\n{format_coverage(report.coverage)}{where}", markup=False, highlight=False, soft_wrap=True)
    if report.mechanism_rows:
        console.print(f"\nmechanisms, each alone, real beside simulated ({report.path.with_suffix('.mechanisms.csv')}):",
                      markup=False, highlight=False, soft_wrap=True)
        console.print(format_table(report.mechanism_rows), markup=False, highlight=False, soft_wrap=True)


def _calibrate_target(target_cmd: str, as_model: str | None, has_gil: bool, path: str | None, startup_timeout_s: float,
                      stop_grace_s: float, quick: bool, out: str | None, models: tuple[str, ...],
                      offgrid: int | None, fit_names: tuple[str, ...], knobs: dict[str, int]) -> None:
    """`calibrate --target`: calibration.calibrate_target with a progress bar, then its summary."""
    from rich.console import Console

    from calibration.target import calibrate_target, format_target, target_grid
    from simkit.profile import PARAM_DOCS
    from simkit.registry import model_help

    if as_model is None:
        raise click.UsageError(f"as: --target needs --as MODEL, the architecture the server has ({model_help()})")
    if models:
        raise click.UsageError("model: --target calibrates one server, named by --as; --model is for realkit's")
    if offgrid:
        raise click.UsageError("offgrid: not with --target (its held-out points are its own grid's)")
    unknown = [n for n in fit_names if n not in PARAM_DOCS]
    if unknown:
        raise click.BadParameter(f"fit: {unknown[0]} is not a profile parameter", param_hint="--fit")
    target = make_target(target_cmd, as_model, has_gil, path, startup_timeout_s, stop_grace_s)
    try:
        target_grid(target, quick=quick, knobs=knobs)  # a bad knob is a usage error before any run
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    console = Console()
    with _stage_bars(console) as progress:
        try:
            cal = calibrate_target(target, quick=quick, out=out, knobs=knobs, fit_names=fit_names, progress=progress)
        except (ValueError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from None
    console.print(format_target(cal), markup=False, highlight=False, soft_wrap=True)
    console.print(f"profile: {cal.path}   held-out table: {cal.csv_path}   ({cal.elapsed_s:.0f} s)",
                  markup=False, highlight=False, soft_wrap=True)
    gil = "" if target.gil else " (set gil = false under [sizing] in the what-if file: this server has no GIL)"
    console.print(f"plan with it: serverlab whatif --profile {cal.path}{gil}", markup=False, highlight=False,
                  soft_wrap=True)
