"""`serverlab simulate`: the same flags as `serverlab measure`, played in the simulator."""

from __future__ import annotations

import click

from serverlab.options import output_options, print_result, scenario_options


@click.command()
@scenario_options
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="cost profile JSON [default: $SERVERLAB_PROFILE, else this host's calibrated profile "
                   "(written by `serverlab calibrate`), else the uncalibrated built-in one, with a warning]")
@click.option("--loadgen-on-server-cores", is_flag=True, help="model the load generator's CPU on the server's cores")
@click.option("--force", is_flag=True, help="run even when the estimated cost is over the simulator's bound "
              "(simkit.sim.MAX_SIM_REQUESTS requests, MAX_SIM_CONNECTIONS connections)")
@click.option("--no-band", is_flag=True, help="one seed, no band: the bare simulated Result")
@output_options
def simulate(scenario, profile_path, loadgen_on_server_cores, force, no_band, as_json, csv_path):
    """Simulate one scenario with a cost profile and print its Result, each figure with its 90% band
    (experiments.intervals: seeds, the profile's parameter uncertainty, its measured validation error)."""
    import functools

    from experiments.intervals import BAND_METRICS, predict
    from simkit.sim import simulate as run

    profile = choose_profile(profile_path)
    run = functools.partial(run, loadgen_on_server_cores=loadgen_on_server_cores, force=force)
    try:
        if no_band:
            result, bands = run(scenario, profile), None
        else:
            result, columns = predict(scenario, profile, simulate=run)
            bands = {m: (columns[f"{m}_lo"], columns[f"{m}_hi"]) for m in BAND_METRICS}
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    print_result(result, as_json, csv_path, bands)


def choose_profile(path: str | None):
    """simkit.profile.resolve_profile for a command: a profile that does not load is a one-line error
    naming it; the built-in profile's warning is one line on stderr."""
    import warnings

    from simkit.profile import UncalibratedProfileWarning, resolve_profile

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UncalibratedProfileWarning)
        try:
            profile = resolve_profile(path)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    for w in caught:
        if issubclass(w.category, UncalibratedProfileWarning):
            click.secho(f"WARNING: {w.message}", fg="red", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return profile
