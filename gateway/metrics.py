"""What the gateway records about its own use, kept in the database.

* `LookupLog`: every lookup with its user (Shifter's `metrics` collection,
  for `/api/metrics`), when `Metrics` is on.
* `Counters`: anonymous counts for Prometheus and the status page: lookups
  by outcome, lookups per image and hour, database errors.
* `add()`: the queue adds job outcomes and durations (histograms) in the
  transaction that changes the job, so a count exists exactly when its
  change does.

Counts live in the database, not in each process, so that every API process
and every worker host adds to one total and any process can answer a scrape
(docs/gateway.md, "Prometheus metrics").

A job start looks one tag up thousands of times a second; a write per lookup
would double what a lookup costs.  So each process keeps what it recorded in
memory for at most FLUSH_SECONDS (or until FLUSH_ROWS lookups accumulate) and
writes it from a background thread.  A crash loses at most that much;
`/api/metrics` and `/metrics` flush their own process first, so they lag the
others by at most FLUSH_SECONDS.  While the database is down, records are
kept (up to MAX_HELD_ROWS lookups) and written when it is back.
"""
from __future__ import annotations

import abc
import atexit
import dataclasses
import json
import logging
import math
import threading
import time

from sqlalchemy import func, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shifter_core.errors import ConfigError

from .db import Database, DatabaseUnavailable
from .models import Counter, ImageUsage, Lookup

FLUSH_SECONDS = 1.0
FLUSH_ROWS = 500
MAX_HELD_ROWS = 100_000     # while the database is down; older rows are dropped
HOUR = 3600
DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A Prometheus counter, or a histogram when it has buckets, kept in `counters`.

    Rows are named `<name>` (counters), or `<name>_bucket` (one row per
    bucket, not cumulative, label `le`) and `<name>_sum` (histograms).
    """

    name: str
    help: str
    buckets: tuple[float, ...] = ()

    def increments(self, value: float = 1, **labels: str) -> dict[tuple[str, str], float]:
        """The rows one event adds to: `value` for a counter, one observation for a histogram."""
        if not self.buckets:
            return {(self.name, labels_key(labels)): value}
        bound = next((b for b in self.buckets if value <= b), math.inf)
        return {(f"{self.name}_bucket", labels_key({**labels, "le": bucket_label(bound)})): 1,
                (f"{self.name}_sum", labels_key(labels)): value}


LOOKUPS = Metric("shifter_gateway_lookups", "Lookups answered, by system and outcome")
JOBS = Metric("shifter_gateway_jobs", "Attempts at pulls, imports and expiries that ended, by system, kind"
              " and outcome (ready, retry, failure, lost)")
PULL_SECONDS = Metric("shifter_gateway_pull_duration_seconds", "Seconds from a worker taking a pull or import"
                      " to its image being READY", DURATION_BUCKETS)
CONVERSION_SECONDS = Metric("shifter_gateway_conversion_duration_seconds", "Seconds a pull spent merging its"
                            " layers and writing its squashfs", DURATION_BUCKETS)
DATABASE_ERRORS = Metric("shifter_gateway_database_errors", "Database statements that failed because the"
                         " database was unavailable, by process (api, worker)")
COUNTED = (LOOKUPS, JOBS, PULL_SECONDS, CONVERSION_SECONDS, DATABASE_ERRORS)


def labels_key(labels: dict[str, str]) -> str:
    """The `counters.labels` text of a label set: one spelling per set."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def bucket_label(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


def add(executor, increments: dict[tuple[str, str], float]) -> None:
    """Add `increments` to their `counters` rows (created at zero).

    Rows are written in key order, so two transactions adding to the same
    rows never deadlock.
    """
    if not increments:
        return
    statement = _insert(executor, Counter).values(
        [{"name": name, "labels": labels, "value": value} for (name, labels), value in sorted(increments.items())])
    executor.execute(statement.on_conflict_do_update(
        index_elements=["name", "labels"], set_={"value": Counter.value + statement.excluded.value}))


def _add_usage(executor, usage: dict[tuple[str, int, str], tuple[int, float]]) -> None:
    statement = _insert(executor, ImageUsage).values(
        [{"system": system, "hour": hour, "image_id": image_id, "lookups": count, "last": last}
         for (system, hour, image_id), (count, last) in sorted(usage.items())])
    executor.execute(statement.on_conflict_do_update(
        index_elements=["system", "hour", "image_id"],
        set_={"lookups": ImageUsage.lookups + statement.excluded.lookups,
              "last": _greatest(executor, ImageUsage.last, statement.excluded.last)}))


def _dialect(executor) -> str:
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    return bind.dialect.name


def _insert(executor, model):
    """INSERT with ON CONFLICT: the gateway's two databases spell it alike, SQLAlchemy does not."""
    dialects = {"postgresql": postgresql, "sqlite": sqlite}
    name = _dialect(executor)
    if name not in dialects:
        raise ConfigError(f"the gateway supports PostgreSQL and SQLite databases, not {name}")
    return dialects[name].insert(model)


def _greatest(executor, a, b):
    return func.greatest(a, b) if _dialect(executor) == "postgresql" else func.max(a, b)


class _Batches(abc.ABC):
    """Records kept in memory and written by a background thread (see the module docstring)."""

    def __init__(self, db: Database):
        self.db = db
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None

    def _started(self) -> None:
        """Start the writer (under the lock): lazily, so after gunicorn forked this process."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
            self._writer.start()
            atexit.register(self.flush)

    def flush(self) -> None:
        with self._lock:
            batch = self._take()
        if not batch:
            return
        try:
            self._write(batch)
        except DatabaseUnavailable as e:
            log.warning("%s not written yet: %s", type(self).__name__, e)
            with self._lock:
                self._keep(batch)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()

    @abc.abstractmethod
    def _take(self):
        """What was recorded since the last flush (under the lock); falsy if nothing."""

    @abc.abstractmethod
    def _write(self, batch) -> None:
        """Write a batch to the database."""

    @abc.abstractmethod
    def _keep(self, batch) -> None:
        """Hold a batch the database refused, to write it with the next one (under the lock)."""


class LookupLog(_Batches):
    """Each lookup with its user, for `/api/metrics`."""

    def __init__(self, db: Database):
        super().__init__(db)
        self._rows: list[dict] = []

    def record(self, **row) -> None:
        """Queue one lookup: user, uid, system, itype, tag, image_id, time."""
        with self._lock:
            self._rows.append(row)
            full = len(self._rows) >= FLUSH_ROWS
            self._started()
        if full:
            self.flush()

    def _take(self) -> list[dict]:
        rows, self._rows = self._rows, []
        return rows

    def _write(self, rows: list[dict]) -> None:
        with self.db.connection() as connection:
            connection.execute(insert(Lookup), rows)

    def _keep(self, rows: list[dict]) -> None:
        self._rows = (rows + self._rows)[-MAX_HELD_ROWS:]


class Counters(_Batches):
    """Lookups by outcome, lookups per image and hour, database errors of this process.

        counters = Counters(db, process="api")
        db.on_unavailable = counters.database_error
    """

    def __init__(self, db: Database, process: str):
        super().__init__(db)
        self.process = process
        self._counts: dict[tuple[str, tuple], float] = {}
        self._usage: dict[tuple[str, int, str], tuple[int, float]] = {}

    def lookup(self, system: str, outcome: str, image_id: str | None = None) -> None:
        """One lookup answered; a found one (`image_id`) also counts for its image this hour."""
        key = (LOOKUPS.name, (("outcome", outcome), ("system", system)))
        now = time.time()
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            if image_id is not None:
                usage_key = (system, int(now // HOUR), image_id)
                count, _ = self._usage.get(usage_key, (0, 0.0))
                self._usage[usage_key] = (count + 1, now)
            self._started()

    def database_error(self) -> None:
        key = (DATABASE_ERRORS.name, (("process", self.process),))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            self._started()

    def _take(self):
        counts, usage = self._counts, self._usage
        self._counts, self._usage = {}, {}
        return (counts, usage) if counts or usage else None

    def _write(self, batch) -> None:
        counts, usage = batch
        with self.db.session() as session:
            add(session, {(name, labels_key(dict(labels))): value for (name, labels), value in counts.items()})
            if usage:
                _add_usage(session, usage)

    def _keep(self, batch) -> None:
        counts, usage = batch
        for key, value in counts.items():
            self._counts[key] = self._counts.get(key, 0) + value
        for key, (count, last) in usage.items():
            held, held_last = self._usage.get(key, (0, 0.0))
            self._usage[key] = (count + held, max(last, held_last))
