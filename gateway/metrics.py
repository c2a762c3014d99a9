"""Lookup metrics (Shifter's `metrics` collection), written in batches.

A job start looks one tag up thousands of times a second; an INSERT per
lookup would double what a lookup costs.  Each API process keeps its rows in
memory for at most FLUSH_SECONDS (or until FLUSH_ROWS accumulate) and writes
them with one multi-row INSERT from a background thread.  A crash loses at
most that much; `/api/metrics` flushes its own process first, so it lags the
others by at most FLUSH_SECONDS.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time

from sqlalchemy import insert

from .db import Database, DatabaseUnavailable
from .models import Lookup

FLUSH_SECONDS = 1.0
FLUSH_ROWS = 500
MAX_HELD_ROWS = 100_000     # while the database is down; older rows are dropped

log = logging.getLogger(__name__)


class LookupLog:
    def __init__(self, db: Database):
        self.db = db
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None

    def record(self, **row) -> None:
        """Queue one lookup: user, uid, system, itype, tag, image_id, time."""
        with self._lock:
            self._rows.append(row)
            full = len(self._rows) >= FLUSH_ROWS
            if self._writer is None:      # started lazily: after gunicorn forked this process
                self._writer = threading.Thread(target=self._run, name="lookup-metrics", daemon=True)
                self._writer.start()
                atexit.register(self.flush)
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return
        try:
            with self.db.connection() as connection:
                connection.execute(insert(Lookup), rows)
        except DatabaseUnavailable as e:
            log.warning("lookup metrics not written yet: %s", e)
            with self._lock:
                self._rows = (rows + self._rows)[-MAX_HELD_ROWS:]

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()
