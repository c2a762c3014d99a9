"""The schema is Alembic's: upgrade from an empty database and downgrade to nothing,
on PostgreSQL (production) and SQLite (embedded default); the result matches the models."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from gateway.db import Database, alembic_config
from gateway.models import Base
from tests.integration.gateway_fixtures import postgres  # noqa: F401

TABLES = {"images", "tags", "jobs", "lookups", "image_usage", "counters"}


def differences(db: Database) -> list:
    with db.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'gateway.sqlite'}")
    else:
        db = Database(request.getfixturevalue("postgres").create_database(f"migrations_{tmp_path.name}"[:60]))
    yield db
    db.dispose()


def test_upgrade_from_empty_then_downgrade_to_nothing(empty_database):
    db = empty_database
    assert set(inspect(db.engine).get_table_names()) == set()
    head = ScriptDirectory.from_config(alembic_config(db.uri)).get_current_head()

    db.upgrade()
    assert current_revision(db) == head
    assert TABLES <= set(inspect(db.engine).get_table_names())
    assert differences(db) == []                        # the models are exactly what migrations make

    db.downgrade("base")
    assert current_revision(db) is None
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}

    db.upgrade()                                        # and back up again
    assert differences(db) == []


def test_every_revision_downgrades_and_upgrades(empty_database):
    db = empty_database
    script = ScriptDirectory.from_config(alembic_config(db.uri))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    for revision in revisions:
        db.upgrade(revision)
        assert current_revision(db) == revision
    for previous in reversed([None] + revisions[:-1]):
        db.downgrade(previous or "base")
        assert current_revision(db) == previous


def _job(status: str, tag: str = "busybox:1") -> dict:
    return {"kind": "pull", "system": "s", "itype": "docker", "tag": tag, "status": status, "status_message": "",
            "bytes_done": 0, "bytes_total": 0, "user": "u", "uid": 1, "gid": 1, "user_acl": "[]",
            "group_acl": "[]", "attempts": 0, "not_before": 0.0, "created": 0.0}


def _insert(connection, table: str, row: dict) -> None:
    names = ", ".join(f'"{name}"' for name in row)
    connection.execute(text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in row)})"), row)


def test_status_page_revision_keeps_rows_and_the_one_active_job_rule(empty_database):
    """0002 adds columns with values for old rows; its downgrade (which rebuilds the jobs
    table on SQLite) keeps the partial unique index that allows one active job per tag."""
    db = empty_database
    db.upgrade("0001")
    image = {"system": "s", "itype": "docker", "image_id": "a" * 64, "status": "READY", "format": "squashfs",
             "env": "[]", "labels": "{}", "size": 1, "private": False, "user_acl": "[]", "group_acl": "[]",
             "last_pull": 0.0}
    with db.engine.begin() as connection:
        _insert(connection, "images", image)
        _insert(connection, "jobs", _job("READY"))
    db.upgrade()
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT layers FROM images")).scalar() in ("[]", [])
        assert connection.execute(text("SELECT public, started FROM jobs")).one() == (None, None)
    db.downgrade("0001")
    with db.engine.begin() as connection:
        _insert(connection, "jobs", _job("FAILURE"))              # finished jobs of one tag may pile up
        _insert(connection, "jobs", _job("PENDING"))
    with pytest.raises(IntegrityError), db.engine.begin() as connection:
        _insert(connection, "jobs", _job("PULLING"))              # a second active one may not
    assert {c["name"] for c in inspect(db.engine).get_columns("jobs")}.isdisjoint({"public", "started"})
