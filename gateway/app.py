"""The gateway's WSGI application: the REST API, the status page and /metrics.

    api.py          Shifter's REST API under /api/ (munge-authenticated)
    status.py       the read-only status page under /status/ (anonymous, public images only)
    prometheus.py   /metrics, Prometheus text format (anonymous, counts only)

Production:  SHIFTER_GATEWAY_CONFIG=/etc/shifter/imagemanager.json \\
             gunicorn -w 3 -k sync -b 0.0.0.0:8000 --no-control-socket 'gateway.app:create_app()'
"""
from __future__ import annotations

import logging
import os
import threading

from flask import Flask

from . import auth
from .api import api
from .catalog import Catalog
from .config import DEFAULT_PATH, GatewayConfig, load
from .db import Database
from .metrics import Counters, LookupLog
from .prometheus import prometheus
from .queue import JobQueue
from .services import EXTENSION, Services
from .status import status

CONFIG_ENV = "SHIFTER_GATEWAY_CONFIG"

log = logging.getLogger(__name__)


def create_app(config: GatewayConfig | str | None = None, *, db: Database | None = None,
               job_submitted: threading.Event | None = None) -> Flask:
    """The WSGI application.  `config` defaults to $SHIFTER_GATEWAY_CONFIG.

    `job_submitted` is set whenever a job is queued, so in-process workers
    start at once instead of at their next poll.
    """
    if not isinstance(config, GatewayConfig):
        config = load(config or os.environ.get(CONFIG_ENV, DEFAULT_PATH))
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for warning in config.warnings:
        log.warning("configuration: %s", warning)
    db = db or Database(config.database_uri)
    counters = Counters(db, process="api")
    db.on_unavailable = counters.database_error
    app = Flask("shifter-gateway")
    app.json.sort_keys = False
    app.json.compact = True
    app.extensions[EXTENSION] = Services(
        config=config, db=db, catalog=Catalog(config, JobQueue.from_config(config), lookup_log=LookupLog(db)),
        authenticator=auth.Authenticator(config), counters=counters, job_submitted=job_submitted)
    for blueprint in (api, status, prometheus):
        app.register_blueprint(blueprint)
    return app
