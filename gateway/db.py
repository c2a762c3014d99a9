"""Database engine, sessions and schema migrations.

PostgreSQL in production, SQLite (one file, WAL) as the embedded default.
Connections are not pinged before use (that would double a lookup's round
trips).  When the database has restarted, the first statement on a pooled
connection fails; SQLAlchemy then discards the whole pool, and
`retry_if_reconnected` runs the work once more on a fresh connection.  When
the database is down, work fails with DatabaseUnavailable (HTTP 503).  The
schema belongs to Alembic: `upgrade()` brings any database, empty or old, to
the current revision; nothing calls `create_all`.  `on_unavailable` is
called for each such failure (the database-errors metric).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Callable

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shifter_core.errors import ShifterError

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000


class DatabaseUnavailable(ShifterError):
    """The database cannot be reached or refused the statement."""

    def __init__(self, message: str, *, stale_connection: bool = False):
        super().__init__(message)
        self.stale_connection = stale_connection


def make_engine(uri: str) -> Engine:
    url = make_url(uri)
    if url.get_backend_name() == "sqlite":
        if url.database:
            os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                                  "check_same_thread": False})
        _serialise_sqlite_writers(engine)
        return engine
    return create_engine(url, pool_size=5, max_overflow=10, pool_timeout=10)


def _serialise_sqlite_writers(engine: Engine) -> None:
    """WAL for concurrent readers; every transaction begins IMMEDIATE.

    pysqlite's own deferred BEGIN lets two transactions read, then both try
    to write and one fails at once with "database is locked".  Taking the
    write lock at BEGIN makes writers queue on the busy timeout instead.
    """
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An engine plus a session factory; `session()` commits or rolls back."""

    def __init__(self, uri: str):
        self.uri = uri
        self.engine = make_engine(uri)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.on_unavailable: Callable[[], None] | None = None

    @contextlib.contextmanager
    def session(self):
        """An ORM transaction, committed at the end, rolled back on error."""
        with _unavailable_on_failure(self.on_unavailable):
            session: Session = self._sessions()
            try:
                yield session
                session.commit()
            except BaseException:
                _quiet_rollback(session)
                raise
            finally:
                session.close()

    @contextlib.contextmanager
    def connection(self):
        """An autocommit connection: each statement is its own transaction (the fast lookup path)."""
        with _unavailable_on_failure(self.on_unavailable), \
                self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            yield connection

    @staticmethod
    def retry_if_reconnected(work):
        """work(), run once more if it failed on a connection the database had dropped.

        `work` must be safe to repeat (its transaction was rolled back).
        """
        try:
            return work()
        except DatabaseUnavailable as e:
            if not e.stale_connection:
                raise
            return work()

    def upgrade(self, revision: str = "head") -> None:
        command.upgrade(alembic_config(self.uri), revision)

    def downgrade(self, revision: str) -> None:
        command.downgrade(alembic_config(self.uri), revision)

    def dispose(self) -> None:
        self.engine.dispose()


def lock(session: Session, key: str) -> None:
    """Serialise this transaction with every other that locks `key`, until it ends.

    PostgreSQL: a transaction-scoped advisory lock (it needs no row, so it
    also covers what does not exist yet).  SQLite: every transaction already
    begins IMMEDIATE, holding the database's one write lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": number})


def alembic_config(uri: str) -> AlembicConfig:
    """Alembic settings for `uri`, independent of the working directory."""
    config = AlembicConfig()
    config.set_main_option("script_location", os.path.normpath(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", uri.replace("%", "%%"))
    return config


@contextlib.contextmanager
def _unavailable_on_failure(notify: Callable[[], None] | None):
    """Lost or refused database connections become DatabaseUnavailable (HTTP 503)."""
    try:
        yield
    except DBAPIError as e:
        if isinstance(e, (OperationalError, InterfaceError)) or e.connection_invalidated:
            if notify is not None:
                notify()
            raise DatabaseUnavailable(
                f"the gateway database is unavailable ({_first_line(e.orig)}); retry in a moment",
                stale_connection=e.connection_invalidated) from e
        raise


def _quiet_rollback(session: Session) -> None:
    """Roll back; a connection that is already gone has nothing to roll back."""
    try:
        session.rollback()
    except DBAPIError:
        pass


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
