"""Placeholder: filled in by its issue."""

import click


@click.command()
def calibrate():
    """Not built yet."""
    raise click.ClickException("calibrate is not built yet")

