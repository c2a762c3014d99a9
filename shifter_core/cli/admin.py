"""shifter-admin: what a site admin runs on a node or login host.

    shifter-admin plugstack [--config /etc/shifter/udiRoot.conf]
        prints the plugstack.conf line that installs this shifter-py
"""
from __future__ import annotations

import os
import sys

import click

from .. import config

PLUGIN_FILE = "shifter_spank.so"


def plugin_path() -> str:
    """The SPANK plugin built next to this package (pip install)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PLUGIN_FILE)


@click.group()
def main() -> None:
    """Administration of shifter-py on this host."""


@main.command()
@click.option("--config", "config_path", default=config.DEFAULT_PATH, show_default=True,
              help="udiRoot.conf the plugin reads.")
def plugstack(config_path: str) -> None:
    """Print the plugstack.conf line for this installation."""
    plugin = plugin_path()
    if not os.path.exists(plugin):
        raise click.ClickException(f"{plugin} is not built: reinstall shifter-py (pip install .)")
    click.echo(f"required {plugin} venv={sys.prefix} config={os.path.abspath(config_path)}")
