"""shifter-admin: what a site admin runs on a node or login host.

    shifter-admin plugstack [--config /etc/shifter/udiRoot.conf]
        prints the plugstack.conf line that installs this shifter-py
    shifter-admin check-config [--config ...]
        reads udiRoot.conf as the plugin does and prints its warnings
    shifter-admin release-held-jobs [--config ...] [--interval 2] [--once]
        the daemon that starts jobs held until their image is pulled
    shifter-admin provenance [--job N] [--digest sha256:...] [--user U] [--json]
        which jobs ran which image, where, when, and how long each phase took
    shifter-admin udiimage DIR
        builds optUdiImage: this host's OpenSSH, runnable in any image (for --ccm)
    shifter-admin image-orphans [--gateway-config imagemanager.json] [--system S] [--remove]
        on the gateway host: image files the gateway's database does not know (and
        metadata that differs from it, READY images whose files are gone); --remove settles them
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


@main.command("check-config")
@click.option("--config", "config_path", default=config.DEFAULT_PATH, show_default=True,
              help="udiRoot.conf to check.")
def check_config(config_path: str) -> None:
    """Read udiRoot.conf as the plugin does; print each warning (a key given twice,
    an obsolete Shifter key ...), which jobs never show, and fail on an error."""
    from ..errors import ShifterError

    try:
        cfg = config.load(config_path)
    except ShifterError as error:
        raise click.ClickException(str(error)) from None
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}")
    click.echo(f"{config_path}: usable, {len(cfg.warnings)} warning(s)")


@main.command("release-held-jobs")
@click.option("--config", "config_path", default=config.DEFAULT_PATH, show_default=True,
              help="udiRoot.conf of the cluster.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between two looks at the held jobs.")
@click.option("--once", is_flag=True, help="Look once and exit.")
def release_held_jobs(config_path: str, interval: float, once: bool) -> None:
    """Release (or end) jobs held until their image is pulled; runs as root."""
    from .. import releaser
    from ..errors import ShifterError

    try:
        releaser.main(config_path, interval, once)
    except ShifterError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option("--config", "config_path", default=config.DEFAULT_PATH, show_default=True,
              help="udiRoot.conf naming provenanceDir.")
@click.option("--dir", "directory", help="Read this provenance directory instead.")
@click.option("--job", type=int, help="Only this job.")
@click.option("--digest", help="Only jobs that ran this image (sha256:...).")
@click.option("--user", help="Only jobs of this user.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON records.")
def provenance(config_path: str, directory: str | None, job: int | None, digest: str | None,
               user: str | None, as_json: bool) -> None:
    """Which jobs ran which image, on which nodes, when, with phase timings (ms)."""
    from .. import provenance as records
    from ..errors import ShifterError

    if directory is None:
        try:
            directory = config.load(config_path).provenance_dir
        except ShifterError as error:
            raise click.ClickException(str(error)) from None
        if not directory:
            raise click.ClickException(f"{config_path} sets no provenanceDir: no provenance is recorded")
    found, unreadable = records.read(directory)
    rows = records.summarize(found, job=job, digest=digest, user=user)
    if as_json:
        for line in records.lines_of(found, rows):
            click.echo(line)
    else:
        click.echo(records.table(rows))
    if unreadable:
        click.echo(f"shifter-admin: {unreadable} line(s) of {directory} could not be read", err=True)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
def udiimage(directory: str) -> None:
    """Build DIR for udiRoot.conf's optUdiImage: the sshd --ccm runs in containers."""
    from pathlib import Path

    from .. import udiimage as bundle
    from ..errors import ShifterError

    target = Path(directory).absolute()
    try:
        bundle.build(target)
    except ShifterError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"built {target}; set optUdiImage={target} in udiRoot.conf")


@main.command("image-orphans")
@click.option("--gateway-config", "config_path", default="/etc/shifter/imagemanager.json", show_default=True,
              help="The gateway's imagemanager.json (its database and image directories).")
@click.option("--system", "systems", multiple=True, help="Only this system (repeatable).")
@click.option("--remove", is_flag=True, help="Settle what is found: remove unknown files, rewrite"
              " metadata from the database, mark READY images without files EXPIRED.")
def image_orphans(config_path: str, systems: tuple[str, ...], remove: bool) -> None:
    """Image files the gateway's database does not know, and what else disagrees with it."""
    from gateway import config as gateway_config      # the gateway host only: nodes never get here
    from gateway.db import Database
    from gateway.reconcile import reconcile

    from ..errors import ShifterError

    try:
        config = gateway_config.load(config_path)
        for system in systems:
            config.system(system)
        db = Database(config.database_uri)
        try:
            findings = reconcile(config, db, list(systems) or None, apply=remove)
        finally:
            db.dispose()
    except ShifterError as error:
        raise click.ClickException(str(error)) from None
    for finding in findings:
        click.echo(f"{finding.system}\t{finding.image_id}\t{finding.what}{'' if not remove else ' (settled)'}")
    if not findings:
        click.echo("the image directories agree with the database")
