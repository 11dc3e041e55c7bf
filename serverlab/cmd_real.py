"""Placeholder: filled in by its issue."""

import click


@click.command()
def load():
    """Not built yet."""
    raise click.ClickException("load is not built yet")


@click.command()
def measure():
    """Not built yet."""
    raise click.ClickException("measure is not built yet")

