"""`shifterimg`: ask the image gateway for images (Shifter's CLI, on click).

    shifterimg images
    shifterimg lookup ubuntu:22.04            # prints the image id only
    shifterimg pull [--user a,b] [--group g] docker:ubuntu:22.04
    shifterimg login [location]
    shifterimg expire docker:ubuntu:22.04     # image administrators
    shifterimg autoexpire                     # image administrators

Settings come from udiRoot.conf (imageGateway, system, gatewayTimeout,
defaultImageType): --config, else $SHIFTER_UDIROOT_CONF, else
/etc/shifter/udiRoot.conf.  Credentials come from the munged at
--munge-socket ($SHIFTER_MUNGE_SOCKET), by default munge's usual socket.  Unlike Shifter's, `pull` exits non-zero when the
pull fails, and prints why.
"""
from __future__ import annotations

import datetime
import getpass
import grp
import json
import pwd
import sys
import time

import click

from shifter_core import config as udiroot
from shifter_core.errors import ShifterError
from shifter_core.gwclient import GatewayClient
from shifter_core.imagestatus import IN_PROGRESS, MISSING, READY
from shifter_core.munge import DEFAULT_SOCKET, Munge

CONFIG_ENV = "SHIFTER_UDIROOT_CONF"
MUNGE_SOCKET_ENV = "SHIFTER_MUNGE_SOCKET"
POLL_INTERVAL = 0.5


def make_client(config_path: str, munge_socket: str = DEFAULT_SOCKET) -> GatewayClient:
    """The gateway client udiRoot.conf describes."""
    cfg = udiroot.load(config_path, trusted=False)
    return GatewayClient(cfg.image_gateway, cfg.system, cfg.gateway_timeout, munge=Munge(munge_socket),
                         ca_file=cfg.gateway_ca_file, default_type=cfg.default_image_type)


def _acl_option(flag: str, what: str):
    return click.option(flag, "acl_" + what, default=None, metavar="LIST",
                        help=f"comma-separated {what.rstrip('s')} names or ids allowed to use the image")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar=CONFIG_ENV, default=udiroot.DEFAULT_PATH, show_default=True,
              help=f"udiRoot.conf to read (also ${CONFIG_ENV})")
@click.option("--munge-socket", envvar=MUNGE_SOCKET_ENV, default=DEFAULT_SOCKET, show_default=True,
              help=f"munged socket that makes credentials (also ${MUNGE_SOCKET_ENV})")
@click.option("-v", "--verbose", is_flag=True, help="print the gateway's answers")
@_acl_option("--user", "users")
@_acl_option("--group", "groups")
@click.pass_context
def cli(ctx, config_path, munge_socket, verbose, acl_users, acl_groups):
    """Pull, look up and list the images of this system's image gateway."""
    ctx.obj = {"config": config_path, "munge_socket": munge_socket, "verbose": verbose,
               "users": acl_users, "groups": acl_groups}


def _client(ctx) -> GatewayClient:
    if "client" not in ctx.obj:
        ctx.obj["client"] = make_client(ctx.obj["config"], ctx.obj["munge_socket"])
    return ctx.obj["client"]


def _verbose(ctx, record) -> None:
    if ctx.obj["verbose"]:
        click.echo(f"Message: {json.dumps(record)}", err=True)


@cli.command()
@click.pass_context
def images(ctx):
    """List the images available on this system."""
    client = _client(ctx)
    records = client.images()
    _verbose(ctx, records)
    rows = []
    for record in records:
        tags = record.get("tag") or []
        for tag in [tags] if isinstance(tags, str) else tags:
            rows.append((tag, record))
    for tag, record in sorted(rows, key=lambda row: row[0]):
        pulled = datetime.datetime.fromtimestamp(record.get("last_pull") or 0).strftime("%Y-%m-%dT%H:%M:%S")
        click.echo(f"{record.get('system', ''):<10} {record.get('itype', ''):<10} {record.get('status', ''):<8} "
                   f"{str(record.get('id', ''))[:10]:<.10}   {pulled} {tag:<30}")


@cli.command()
@click.argument("image")
@click.pass_context
def lookup(ctx, image):
    """Print the id of IMAGE (exit 1 if the gateway does not have it)."""
    record = _client(ctx).lookup(image)
    _verbose(ctx, record)
    click.echo(record["id"])


@cli.command()
@click.argument("image")
@_acl_option("--user", "users")
@_acl_option("--group", "groups")
@click.pass_context
def pull(ctx, image, acl_users, acl_groups):
    """Pull IMAGE into the gateway and wait until it is READY or FAILED."""
    client = _client(ctx)
    users = _ids(acl_users or ctx.obj["users"], lambda n: pwd.getpwnam(n).pw_uid, "user")
    groups = _ids(acl_groups or ctx.obj["groups"], lambda n: grp.getgrnam(n).gr_gid, "group")
    progress = _Progress(image, live=sys.stdout.isatty() and not ctx.obj["verbose"])
    while True:
        record = client.pull(image, users, groups)
        _verbose(ctx, record)
        progress.show(record)
        if record.get("status") not in IN_PROGRESS:
            break
        time.sleep(POLL_INTERVAL)
    progress.done()
    if record.get("status") != READY:
        reason = record.get("status_message") or "no reason given"
        raise ShifterError(f"pull of {image} ended with {record.get('status')}: {reason}")


@cli.command()
@click.argument("location", default="default")
@click.pass_context
def login(ctx, location):
    """Store a registry login (for private images) for LOCATION, default "default"."""
    client = _client(ctx)
    click.echo(f"{location} username: ", nl=False, err=True)
    user = _read_line()
    password = getpass.getpass(f"{location} password: ", stream=sys.stderr)
    client.login(location, user, password)
    click.echo(f"Stored the login of {user} for {location} on {client.system}; it is checked at the next pull.",
               err=True)


@cli.command()
@click.argument("image")
@click.pass_context
def expire(ctx, image):
    """Remove IMAGE from this system (image administrators only)."""
    record = _client(ctx).expire(image)
    _verbose(ctx, record)
    click.echo(f"expired {record.get('id', image)}")


@cli.command()
@click.pass_context
def autoexpire(ctx):
    """Remove every image whose expiry has passed (image administrators only)."""
    expired = _client(ctx).autoexpire()
    _verbose(ctx, expired)
    for image_id in expired:
        click.echo(f"expired {image_id}")


class _Progress:
    """Shifter's status line, plus bytes; rewritten in place on a terminal."""

    def __init__(self, image: str, live: bool):
        self.image = image
        self.live = live
        self.last = None

    def show(self, record: dict) -> None:
        status = record.get("status", MISSING)
        line = f"Pulling Image: {self.image}, status: {status}"
        done, total = record.get("bytes_done") or 0, record.get("bytes_total") or 0
        if total:
            line += f", {done / 1e6:.1f}/{total / 1e6:.1f} MB"
        elif done:
            line += f", {done / 1e6:.1f} MB"
        message = record.get("status_message")
        if message and status in IN_PROGRESS:
            line += f" ({message})"
        if self.live:
            stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
            click.echo(f"\r\x1b[2K{stamp} {line}", nl=False)
        elif line != self.last:
            stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
            click.echo(f"{stamp} {line}")
        self.last = line

    def done(self) -> None:
        if self.live:
            click.echo()


def _ids(text: str | None, resolve, what: str) -> list[int]:
    ids = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            number = int(item) if item.isdigit() else resolve(item)
        except KeyError:
            raise ShifterError(f"unknown {what} {item!r}") from None
        if number > 0 and number not in ids:
            ids.append(number)
    return ids


def _read_line() -> str:
    """A line from the terminal (like getpass), or stdin when there is none."""
    try:
        with open("/dev/tty") as tty:
            return tty.readline().strip()
    except OSError:
        return sys.stdin.readline().strip()


def main() -> None:
    try:
        cli(prog_name="shifterimg", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except ShifterError as e:
        click.echo(f"shifterimg: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
