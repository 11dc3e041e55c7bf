"""Placeholder: filled in by its issue."""

import click


@click.command()
def simulate():
    """Not built yet."""
    raise click.ClickException("simulate is not built yet")

