"""`serverlab calibrate [--quick] [--out profiles/HOST.json]`: probes + real runs + fit + held-out
validation, with a progress bar per stage; writes the profile JSON and the held-out table as CSV."""

from __future__ import annotations

import click


@click.command()
@click.option("--quick", is_flag=True, help="a small grid and short runs (about 3 minutes)")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="profile JSON to write [default: profiles/<host>.json]")
@click.option("--model", "models", multiple=True, help="calibrate only these models (repeatable; numbers or names)")
@click.option("--workers", type=int, default=None, help="simulation processes for the fit [default: 2 on 2+ cores]")
def calibrate(quick: bool, out: str | None, models: tuple[str, ...], workers: int | None) -> None:
    """Calibrate the simulator against this box and validate it on held-out points."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from calibration import calibrate as run_calibration
    from calibration import format_summary
    from simkit import registry
    from simkit.profile import default_profile_path

    try:
        chosen = tuple(registry.resolve(m) for m in models) if models else registry.names()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    path = out or str(default_profile_path())
    console = Console()
    with Progress(TextColumn("[bold]{task.fields[stage]:<10}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}"), console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, detail: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(detail, total=max(total, 1), stage=stage)
            bar.update(tasks[stage], description=detail[:70], completed=done, total=max(total, 1))

        try:
            report = run_calibration(path, quick=quick, models=chosen, progress=progress, workers=workers)
        except (ValueError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from None
    console.print(f"profile: {report.path}   held-out table: {report.csv_path}   "
                  f"({report.elapsed_s:.0f} s, {len(report.profile.failed_runs)} failed real runs)")
    fit = report.fit
    unit = {n: (" s" if n.endswith("_s") else "") for n in fit.names}  # the work scales are ratios
    console.print("fitted: " + ", ".join(f"{n} = {fit.values[n]:.3g}{unit[n]} (start {fit.start[n]:.3g})"
                                         for n in fit.names)
                  + f"; rms log error {fit.rmse_log_start:.3f} -> {fit.rmse_log:.3f}")
    console.print(format_summary(report.summary))
