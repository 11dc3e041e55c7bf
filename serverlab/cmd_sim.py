"""`serverlab simulate`: the same flags as `serverlab measure`, played in the simulator."""

from __future__ import annotations

import click

from serverlab.options import print_result, scenario_options


@click.command()
@scenario_options
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="cost profile JSON [default: the uncalibrated built-in profile]")
@click.option("--loadgen-on-server-cores", is_flag=True, help="model the load generator's CPU on the server's cores")
@click.option("--force", is_flag=True, help="run even when the estimated cost is over the simulator's bound "
              "(simkit.sim.MAX_SIM_REQUESTS requests, MAX_SIM_CONNECTIONS connections)")
@click.option("--json", "as_json", is_flag=True, help="print the Result as one JSON object")
def simulate(scenario, profile_path, loadgen_on_server_cores, force, as_json):
    """Simulate one scenario with a cost profile and print its Result."""
    from simkit.profile import CostProfile
    from simkit.sim import simulate as run

    try:
        profile = CostProfile.load(profile_path) if profile_path else CostProfile.default()
        result = run(scenario, profile, loadgen_on_server_cores=loadgen_on_server_cores, force=force)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    print_result(result, as_json)
