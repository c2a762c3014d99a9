"""Counters and histograms: what the queue and the API processes add to the `counters`
table, and how /metrics renders it (prometheus_client's own parser reads the result)."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from gateway import metrics, prometheus
from gateway.db import Database
from gateway.models import Counter, ImageUsage
from shifter_core.imagestatus import CONVERSION, TRANSFER
from shifter_core.imagestore import ImageMeta
from tests.unit.test_gateway_queue import catalog, clock, config, db, pull, queue  # noqa: F401


def rows(db) -> dict[tuple[str, str], float]:
    with db.session() as s:
        return {(c.name, c.labels): c.value for c in s.query(Counter)}


def rendered(db) -> dict[tuple[str, tuple], float]:
    with db.session() as s:
        text = generate_latest(prometheus._Families(prometheus.counted(s))).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_an_observation_lands_in_the_first_bucket_that_holds_it(seconds):
    counts = metrics.PULL_SECONDS.increments(seconds, system="s")
    (bucket, labels), = [key for key in counts if key[0].endswith("_bucket")]
    bound = float(json.loads(labels)["le"])
    assert seconds <= bound and all(b < seconds for b in metrics.DURATION_BUCKETS if b < bound)
    assert counts[("shifter_gateway_pull_duration_seconds_sum", '{"system":"s"}')] == seconds


def test_label_sets_have_one_spelling():
    assert metrics.labels_key({"b": "2", "a": "1"}) == metrics.labels_key({"a": "1", "b": "2"})
    assert metrics.bucket_label(math.inf) == "+Inf" and metrics.bucket_label(5) == "5.0"


def test_a_pull_counts_its_outcome_duration_and_conversion(db, catalog, queue, clock):
    pull(db, catalog)
    with db.session() as s:
        job = queue.claim(s, "w1")
    clock.now += 3
    with db.session() as s:
        queue.progress(s, job, "w1", status=CONVERSION)
    clock.now += 1.5
    with db.session() as s:
        queue.progress(s, job, "w1", status=TRANSFER)
        queue.progress(s, job, "w1", status=TRANSFER, bytes_done=1)      # no phase change: nothing counted
    clock.now += 1
    with db.session() as s:
        catalog.record_image(s, job, META)
        queue.succeed(s, job, "w1", META.id)
    samples = rendered(db)
    assert samples[("shifter_gateway_jobs_total", (("kind", "pull"), ("outcome", "ready"), ("system", "sys")))] == 1
    pull_le = {labels[1][1]: v for (name, labels), v in samples.items()
               if name == "shifter_gateway_pull_duration_seconds_bucket"}
    assert pull_le["5.0"] == 0 and pull_le["10.0"] == 1 and pull_le["+Inf"] == 1        # 5.5 s, cumulative
    assert samples[("shifter_gateway_pull_duration_seconds_sum", (("kind", "pull"), ("system", "sys")))] == 5.5
    conversion = ("shifter_gateway_conversion_duration_seconds_bucket", (("le", "2.0"), ("system", "sys")))
    assert samples[conversion] == 1
    assert samples[("shifter_gateway_conversion_duration_seconds_count", (("system", "sys"),))] == 1


def test_retries_failures_and_lost_jobs_are_counted(db, catalog, queue, clock):
    pull(db, catalog)
    with db.session() as s:
        job = queue.claim(s, "w1")
        assert queue.fail(s, job, "w1", "registry down", retryable=True)
    clock.now += 10
    with db.session() as s:
        job = queue.claim(s, "w1")
    clock.now += 60                                   # the worker died
    with db.session() as s:
        assert queue.recover(s) == [job.pk]
    with db.session() as s:
        job = queue.claim(s, "w2")
        assert not queue.fail(s, job, "w2", "no such tag", retryable=False)
    outcomes = {labels: value for (name, labels), value in rows(db).items() if name == metrics.JOBS.name}
    assert outcomes == {metrics.labels_key({"system": "sys", "kind": "pull", "outcome": outcome}): 1.0
                        for outcome in ("retry", "lost", "failure")}


def test_counters_batch_lookups_and_usage_per_hour(db, monkeypatch, no_writer_thread):
    counters = metrics.Counters(db, process="api")
    monkeypatch.setattr(metrics.time, "time", lambda: 7200.0 + 10)
    for _ in range(3):
        counters.lookup("sys", "found", "a" * 64)
    counters.lookup("sys", "not_found")
    counters.database_error()
    counters.flush()
    counters.lookup("sys", "found", "a" * 64)
    counters.flush()
    samples = rendered(db)
    assert samples[("shifter_gateway_lookups_total", (("outcome", "found"), ("system", "sys")))] == 4
    assert samples[("shifter_gateway_lookups_total", (("outcome", "not_found"), ("system", "sys")))] == 1
    assert samples[("shifter_gateway_database_errors_total", (("process", "api"),))] == 1
    with db.session() as s:
        usage = s.execute(select(ImageUsage.hour, ImageUsage.lookups, ImageUsage.last)).all()
    assert [tuple(row) for row in usage] == [(2, 4, 7210.0)]


def test_counts_refused_by_the_database_are_kept_for_the_next_write(tmp_path, no_writer_thread):
    db = Database(f"sqlite:///{tmp_path / 'not-migrated-yet.sqlite'}")
    try:
        counters = metrics.Counters(db, process="api")
        counters.lookup("sys", "found", "b" * 64)
        counters.flush()                         # no such table: DatabaseUnavailable, the counts are held
        counters.lookup("sys", "found", "b" * 64)
        db.upgrade()
        counters.flush()
        assert rendered(db)[("shifter_gateway_lookups_total", (("outcome", "found"), ("system", "sys")))] == 2
    finally:
        db.dispose()


META = ImageMeta(digest="sha256:" + "cd" * 32)


@pytest.fixture
def no_writer_thread(monkeypatch):
    """Flushes happen when the test says so, not from the background thread."""
    monkeypatch.setattr(metrics._Batches, "_started", lambda self: None)
