"""`serverlab` console script. Each area owns its subcommands in a module of this package;
this file only assembles them, importing each lazily so `serverlab serve` does not pay for pandas."""

from __future__ import annotations

import importlib

import click

# subcommand -> (module, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serverlab.cmd_serve", "serve"),
    "load": ("serverlab.cmd_real", "load"),
    "measure": ("serverlab.cmd_real", "measure"),
    "simulate": ("serverlab.cmd_sim", "simulate"),
    "calibrate": ("serverlab.cmd_calibrate", "calibrate"),
    "whatif": ("serverlab.cmd_whatif", "whatif"),
    "demo": ("serverlab.cmd_whatif", "demo"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
@click.version_option(package_name="serverlab")
def main() -> None:
    """Real servers, a calibrated simulator, and what-if reports for seven server architectures."""


if __name__ == "__main__":
    main()
