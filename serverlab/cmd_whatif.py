"""Placeholder: filled in by its issue."""

import click


@click.command()
def whatif():
    """Not built yet."""
    raise click.ClickException("whatif is not built yet")


@click.command()
def demo():
    """Not built yet."""
    raise click.ClickException("demo is not built yet")

