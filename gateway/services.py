"""What the gateway's request handlers share, built once per WSGI application.

`create_app` builds one `Services` and keeps it in `app.extensions`; the
blueprints (api.py, status.py, prometheus.py) reach it through `services()`,
so their views are plain functions rather than closures inside the factory.
"""
from __future__ import annotations

import dataclasses
import threading

from flask import current_app

from .auth import Authenticator
from .catalog import Catalog
from .config import GatewayConfig
from .db import Database
from .metrics import Counters

EXTENSION = "shifter"


@dataclasses.dataclass
class Services:
    config: GatewayConfig
    db: Database
    catalog: Catalog
    authenticator: Authenticator
    counters: Counters
    # set whenever a job is queued, so in-process workers start at once
    job_submitted: threading.Event | None = None

    def in_session(self, work):
        """work(session) in a transaction, repeated once after a database restart."""
        def attempt():
            with self.db.session() as session:
                return work(session)
        return self.db.retry_if_reconnected(attempt)

    def wake_workers(self) -> None:
        if self.job_submitted is not None:
            self.job_submitted.set()


def services() -> Services:
    """The current application's Services."""
    return current_app.extensions[EXTENSION]
