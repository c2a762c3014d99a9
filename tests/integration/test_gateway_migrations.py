"""The schema is Alembic's: upgrade from an empty database and downgrade to nothing,
on PostgreSQL (production) and SQLite (embedded default); the result matches the models."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from gateway.db import Database, alembic_config
from gateway.models import Base
from tests.integration.gateway_fixtures import postgres  # noqa: F401

TABLES = {"images", "tags", "jobs", "lookups"}


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
