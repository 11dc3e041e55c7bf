"""Placeholder: filled in by its issue."""

import click


@click.command()
def serve():
    """Not built yet."""
    raise click.ClickException("serve is not built yet")
