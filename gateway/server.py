"""`shifter-gateway`: run the image gateway.

Embedded default, one command (SQLite unless DatabaseURI says otherwise):

    shifter-gateway --config imagemanager.json [--listen 0.0.0.0:8000]

migrates the database, settles the image directories against it
(gateway/reconcile.py), then serves the API with gunicorn (one process,
threads) and runs WorkerThreads pull workers inside the same process.

Production (PostgreSQL; as many API processes and worker hosts as needed):

    shifter-gateway --config imagemanager.json migrate
    SHIFTER_GATEWAY_CONFIG=imagemanager.json \\
        gunicorn -w 3 -k sync -b 0.0.0.0:8000 --no-control-socket 'gateway.app:create_app()'
    shifter-gateway --config imagemanager.json worker [--system NAME] [--threads N]

A worker process settles its systems' image directories when it starts, and
on SIGTERM puts its running jobs back in the queue and exits.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

import click
from gunicorn.app.base import BaseApplication

from shifter_core.errors import ShifterError

from .config import DEFAULT_PATH, GatewayConfig, load
from .db import Database
from .metrics import Counters
from .reconcile import reconcile
from .worker import Worker

log = logging.getLogger(__name__)

API_THREADS = 16
GUNICORN_TIMEOUT = 120


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", default=DEFAULT_PATH, show_default=True,
              help="imagemanager.json (Shifter's keys plus ours, see docs/gateway.md)")
@click.option("--listen", default=None, help="HOST:PORT for the API (default: Listen from the config)")
@click.pass_context
def cli(ctx: click.Context, config_path: str, listen: str | None) -> None:
    """The shifter-py image gateway; without a command, runs API and workers together."""
    try:
        ctx.obj = load(config_path)
    except ShifterError as e:
        raise click.ClickException(str(e))
    logging.basicConfig(level=ctx.obj.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve, listen=listen)


@cli.command()
@click.option("--listen", default=None, help="HOST:PORT for the API (default: Listen from the config)")
@click.pass_obj
def serve(config: GatewayConfig, listen: str | None) -> None:
    """API and WorkerThreads workers in one process (the embedded default)."""
    _migrate(config)
    _settle(config, None)
    _EmbeddedServer(config, listen or config.listen).run()


@cli.command()
@click.option("--system", "systems", multiple=True, help="only work for this system (repeatable)")
@click.option("--threads", type=int, default=None, help="worker threads (default: WorkerThreads)")
@click.pass_obj
def worker(config: GatewayConfig, systems: tuple[str, ...], threads: int | None) -> None:
    """Pull workers only, for production next to gunicorn."""
    for system in systems:
        config.system(system)
    _settle(config, list(systems) or None)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    workers = _start_workers(config, threads or config.worker_threads, stop, None, list(systems) or None)
    stop.wait()
    for thread in workers:
        thread.join()


@cli.command()
@click.option("--downgrade", "revision", default=None, help="downgrade to this revision instead")
@click.pass_obj
def migrate(config: GatewayConfig, revision: str | None) -> None:
    """Create or upgrade the database schema (Alembic)."""
    _migrate(config, downgrade_to=revision)


def _migrate(config: GatewayConfig, downgrade_to: str | None = None) -> None:
    db = Database(config.database_uri)
    try:
        if downgrade_to:
            db.downgrade(downgrade_to)
        else:
            db.upgrade()
    finally:
        db.dispose()


def _settle(config: GatewayConfig, systems: list[str] | None) -> None:
    """Make the image directories agree with the database before any work starts."""
    db = Database(config.database_uri)
    try:
        reconcile(config, db, systems)
    except ShifterError as error:
        log.warning("image directories not checked against the database at start: %s", error)
    finally:
        db.dispose()


def _start_workers(config: GatewayConfig, count: int, stop: threading.Event, wake: threading.Event | None,
                   systems: list[str] | None) -> list[threading.Thread]:
    db = Database(config.database_uri)
    db.on_unavailable = Counters(db, process="worker").database_error
    threads = []
    for n in range(count):
        w = Worker(config, db, systems=systems)
        thread = threading.Thread(target=w.run, args=(stop, wake), name=f"pull-worker-{n}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


class _EmbeddedServer(BaseApplication):
    """gunicorn with one process whose threads serve the API and run the workers."""

    def __init__(self, config: GatewayConfig, listen: str):
        self.gateway_config = config
        self.listen = listen
        self.stop = threading.Event()
        self.wake = threading.Event()
        super().__init__()

    def load_config(self):
        settings = {
            "bind": self.listen, "workers": 1, "worker_class": "gthread", "threads": API_THREADS,
            "timeout": GUNICORN_TIMEOUT, "post_worker_init": self._start, "worker_exit": self._stop,
            "loglevel": self.gateway_config.log_level.lower(), "proc_name": "shifter-gateway",
            "control_socket_disable": True,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app
        return create_app(self.gateway_config, job_submitted=self.wake)

    def _start(self, _worker):
        _start_workers(self.gateway_config, self.gateway_config.worker_threads, self.stop, self.wake, None)

    def _stop(self, _server, _worker):
        self.stop.set()


def main() -> None:
    try:
        cli(prog_name="shifter-gateway")
    except ShifterError as e:
        click.echo(f"shifter-gateway: {e}", err=True)
        sys.exit(1)
