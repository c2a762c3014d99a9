"""gateway.queue and gateway.catalog rules on a migrated SQLite database (no services)."""
from __future__ import annotations

import contextlib
import json

import pytest

from gateway import config as gwconfig
from gateway.auth import Caller, may_read
from gateway.catalog import Catalog, ImageView
from gateway.errors import BadRequest
from gateway.db import Database
from gateway.metrics import LookupLog
from gateway.models import Image, Job
from gateway.queue import JobQueue, LostJob
from shifter_core.errors import AccessDenied, ImageNotFound
from shifter_core.imagestatus import EXPIRING, FAILURE, PENDING, PULLING, READY
from shifter_core.imagestore import ImageMeta

DIGEST = "sha256:" + "ab" * 32


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'gw.sqlite'}")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "imagemanager.json"
    path.write_text(json.dumps({
        "Platforms": {"sys": {"accesstype": "local", "admins": ["root"], "local": {"imageDir": "images"}}},
        "PullUpdateTimeout": 100, "ImageExpirationTimeout": 1000, "Metrics": True, "ImportUsers": ["alice"],
        "RetryBackoff": 5, "MaxAttempts": 3, "HeartbeatInterval": 1, "HeartbeatTimeout": 10,
        "LookupCacheSeconds": 0,
    }))
    return gwconfig.load(str(path))


@pytest.fixture
def queue(config, clock):
    return JobQueue(heartbeat_timeout=config.heartbeat_timeout, max_attempts=config.max_attempts,
                    retry_backoff=config.retry_backoff, clock=clock)


@pytest.fixture
def catalog(config, queue, clock, db):
    return Catalog(config, queue, clock=clock, lookup_log=LookupLog(db))


def caller(uid=1000, gid=1000, user="alice", groups=None):
    return Caller(user=user, uid=uid, gid=gid, groups=frozenset(groups or {gid}), system="sys",
                  registry_logins={})


def within(session):
    """Catalog.lookup's connection factory, answering with an open session."""
    return lambda: contextlib.nullcontext(session)


def pull(db, catalog, who=None, tag="busybox:1", users=(), groups=()):
    with db.session() as s:
        result = catalog.request_pull(s, who or caller(), "sys", "docker", tag, list(users), list(groups))
        return type(result), result.pk, result.status


def finish(db, catalog, queue, worker="w1", meta=None):
    with db.session() as s:
        job = queue.claim(s, worker)
    with db.session() as s:
        catalog.record_image(s, job, meta or ImageMeta(digest=DIGEST, env=["A=1"], cmd=["/bin/sh"]))
        queue.succeed(s, job, worker, (meta.id if meta else DIGEST[7:]))
    return job


# -- queue --------------------------------------------------------------------------

def test_one_active_job_per_tag(db, catalog):
    first = pull(db, catalog)
    second = pull(db, catalog, who=caller(uid=2000, user="bob"))
    assert first == second == (Job, first[1], PENDING)
    assert pull(db, catalog, tag="busybox:2")[1] != first[1]


def test_claim_gives_each_job_to_one_worker(db, catalog, queue):
    pull(db, catalog)
    with db.session() as s:
        job = queue.claim(s, "w1")
    with db.session() as s:
        assert queue.claim(s, "w2") is None
    assert job.status == PULLING and job.worker == "w1" and job.attempts == 1


def test_retry_with_exponential_backoff_then_failure(db, catalog, queue, clock):
    pull(db, catalog)
    for attempt, delay in ((1, 5), (2, 10)):
        with db.session() as s:
            job = queue.claim(s, "w1")
            assert job.attempts == attempt
            assert queue.fail(s, job, "w1", "registry down", retryable=True)
        with db.session() as s:
            assert queue.claim(s, "w1") is None          # not yet due
            assert s.get(Job, job.pk).status == PENDING
        clock.now += delay
    with db.session() as s:
        job = queue.claim(s, "w1")
        assert not queue.fail(s, job, "w1", "registry down", retryable=True)
    with db.session() as s:
        job = s.get(Job, job.pk)
        assert job.status == FAILURE and job.status_message == "registry down" and job.credentials is None


def test_permanent_errors_fail_at_once(db, catalog, queue):
    pull(db, catalog)
    with db.session() as s:
        job = queue.claim(s, "w1")
        assert not queue.fail(s, job, "w1", "no such tag", retryable=False)
        assert s.get(Job, job.pk).status == FAILURE


def test_dead_worker_job_is_recovered_and_its_writes_refused(db, catalog, queue, clock):
    pull(db, catalog)
    with db.session() as s:
        job = queue.claim(s, "dead")
    clock.now += 5
    with db.session() as s:
        assert queue.recover(s) == []                    # heartbeat still fresh
    clock.now += 6
    with db.session() as s:
        assert queue.recover(s) == [job.pk]
    with db.session() as s:
        again = queue.claim(s, "alive")
        assert again.pk == job.pk and again.attempts == 2
    with db.session() as s, pytest.raises(LostJob):
        queue.progress(s, job, "dead", status="CONVERSION")
    with db.session() as s, pytest.raises(LostJob):
        queue.succeed(s, job, "dead", DIGEST[7:])


def test_recovery_gives_up_after_max_attempts(db, catalog, queue, clock):
    pull(db, catalog)
    for _ in range(3):
        with db.session() as s:
            job = queue.claim(s, "dying")
        clock.now += 11
        with db.session() as s:
            queue.recover(s)
    with db.session() as s:
        job = s.get(Job, job.pk)
        assert job.status == FAILURE and "stopped responding 3 times" in job.status_message


# -- catalog ------------------------------------------------------------------------

def test_pull_lifecycle_and_lookup(db, catalog, queue, clock):
    pull(db, catalog)
    finish(db, catalog, queue)
    with db.session() as s:
        image = catalog.lookup(within(s), caller(), "sys", "docker", "busybox:1")
        assert image.status == READY and image.env == ["A=1"] and image.tags == ["busybox:1"]
        assert image.expiration == clock.now + 1000
    assert pull(db, catalog)[0] is ImageView             # recent: no new pull
    clock.now += 101
    kind, _, status = pull(db, catalog)                  # stale: pull again (the tag may have moved)
    assert (kind, status) == (Job, PENDING)
    with db.session() as s:                              # the old image stays available meanwhile
        assert catalog.lookup(within(s), caller(), "sys", "docker", "busybox:1").image_id == DIGEST[7:]


def test_bare_name_means_latest_and_bad_names_are_refused(db, catalog):
    with db.session() as s:
        assert catalog.request_pull(s, caller(), "sys", "docker", "busybox", [], []).tag == "busybox:latest"
    with db.session() as s, pytest.raises(BadRequest):
        catalog.request_pull(s, caller(), "sys", "docker", "Bad Name", [], [])
    with db.session() as s, pytest.raises(BadRequest):
        catalog.request_pull(s, caller(), "sys", "custom", "thing", [], [])


def test_failure_is_sticky_for_the_backoff_only(db, catalog, queue, clock):
    pull(db, catalog)
    with db.session() as s:
        job = queue.claim(s, "w1")
        queue.fail(s, job, "w1", "not found", retryable=False)
    assert pull(db, catalog)[2] == FAILURE
    clock.now += 6
    kind, pk, status = pull(db, catalog)
    assert status == PENDING and pk != job.pk
    with db.session() as s:
        assert s.get(Job, job.pk) is None                # only the newest job of a tag is kept


def test_a_failure_is_answered_again_to_its_own_user_only(db, catalog, queue, clock):
    """Another user's refused pull (not on the image's ACL, say) must not fail a pull of
    someone who may make it, for the backoff."""
    pull(db, catalog, who=caller(uid=2000, user="bob"))
    with db.session() as s:
        queue.fail(s, queue.claim(s, "w1"), "w1", "bob is not on its ACL", retryable=False)
    assert pull(db, catalog, who=caller(uid=2000, user="bob"))[2] == FAILURE
    kind, _, status = pull(db, catalog, who=caller())
    assert (kind, status) == (Job, PENDING)


def test_a_login_retries_a_failure_only_if_the_failed_pull_had_none(db, catalog, queue, clock):
    with_login = Caller(user="alice", uid=1000, gid=1000, groups=frozenset({1000}), system="sys",
                        registry_logins={"default": ("alice", "pw")})
    pull(db, catalog)
    with db.session() as s:
        queue.fail(s, queue.claim(s, "w1"), "w1", "give credentials", retryable=False)
    kind, _, status = pull(db, catalog, who=with_login)               # the login may be what was missing
    assert (kind, status) == (Job, PENDING)
    with db.session() as s:
        queue.fail(s, queue.claim(s, "w1"), "w1", "not on its ACL", retryable=False)
    assert pull(db, catalog, who=with_login)[2] == FAILURE           # it had one: no loop of new pulls
    with db.session() as s:
        assert s.query(Job).one().credentials == {}                   # erased, its presence kept


def test_two_tags_one_digest_share_one_image(db, catalog, queue):
    pull(db, catalog, tag="busybox:1")
    finish(db, catalog, queue)
    pull(db, catalog, tag="busybox:stable")
    finish(db, catalog, queue)
    with db.session() as s:
        image = catalog.lookup(within(s), caller(), "sys", "docker", "busybox:stable")
        assert image.tags == ["busybox:1", "busybox:stable"]
        assert s.query(Image).count() == 1


def test_retagging_moves_the_tag(db, catalog, queue, clock):
    pull(db, catalog)
    finish(db, catalog, queue)
    clock.now += 101
    pull(db, catalog)
    other = ImageMeta(digest="sha256:" + "cd" * 32)
    finish(db, catalog, queue, meta=other)
    with db.session() as s:
        assert catalog.lookup(within(s), caller(), "sys", "docker", "busybox:1").image_id == other.id
        assert catalog.lookup(within(s), caller(), "sys", "id", "ab" * 32).tags == []


def test_private_image_acl(db, catalog, queue):
    pull(db, catalog, who=caller(uid=1000), users=[1001], groups=[3000])
    with db.session() as s:
        job = s.query(Job).one()
        assert job.user_acl == [1000, 1001] and job.group_acl == [1000, 3000]
    finish(db, catalog, queue, meta=ImageMeta(digest=DIGEST, private=True, user_acl=[1000, 1001],
                                              group_acl=[1000, 3000]))
    with db.session() as s:
        for who in (caller(uid=1000), caller(uid=1001, gid=5), caller(uid=7, gid=7, groups={7, 3000})):
            assert catalog.lookup(within(s), who, "sys", "docker", "busybox:1")
        with pytest.raises(ImageNotFound):
            catalog.lookup(within(s), caller(uid=7, gid=7), "sys", "docker", "busybox:1")
        assert catalog.images(s, caller(uid=7, gid=7), "sys") == []
    # an outsider asking for it starts a pull (the registry decides), it is not handed the image
    assert pull(db, catalog, who=caller(uid=7, gid=7))[0] is Job


@pytest.mark.parametrize("private, users, groups, uid, gids, expected", [
    (False, [], [], 9, {9}, True),
    (False, [1], [2], 9, {9}, False),             # an ACL on a public image counts too
    (False, [9], [], 9, {9}, True),
    (True, [], [], 9, {9}, False),                # private without an ACL: older gateways made them
    (True, [9], [], 9, {9}, True),
    (True, [1], [], 9, {9}, False),
    (True, [], [2], 9, {9, 2}, True),
    (True, [1], [2], 9, {9}, False),
])
def test_may_read_truth_table(private, users, groups, uid, gids, expected):
    who = caller(uid=uid, gid=uid, groups=gids)
    assert may_read(who, private, users, groups) is expected


def test_metrics_keep_the_last_lookups_in_order(db, catalog, queue, clock):
    pull(db, catalog)
    finish(db, catalog, queue)
    with db.session() as s:
        for n in range(25):
            clock.now += 1
            catalog.lookup(within(s), caller(uid=1000 + n), "sys", "docker", "busybox:1")
    with db.session() as s:
        rows = catalog.metrics(s, "sys", 20)
        assert [r.uid for r in rows] == list(range(1005, 1025))


def test_expire_and_autoexpire(db, catalog, queue, clock):
    pull(db, catalog)
    finish(db, catalog, queue)
    with db.session() as s:
        assert catalog.autoexpire(s, caller(), "sys") == []
    clock.now += 1001
    with db.session() as s:
        assert catalog.autoexpire(s, caller(), "sys") == [DIGEST[7:]]
    with db.session() as s:
        assert s.query(Image).one().status == EXPIRING
        job = queue.claim(s, "w1")
        assert (job.kind, job.tag) == ("expire", DIGEST[7:])
        with pytest.raises(ImageNotFound):
            catalog.lookup(within(s), caller(), "sys", "docker", "busybox:1")
    with db.session() as s:
        image = catalog.expiring(s, "sys", DIGEST[7:])
        catalog.mark_expired(image)
    kind, _, status = pull(db, catalog)                  # an expired image can be pulled again
    assert (kind, status) == (Job, PENDING)


def test_import_is_gated_by_import_users(db, catalog):
    with db.session() as s:
        job = catalog.request_import(s, caller(), "sys", "custom", "mine", "/tmp/x.sqsh", "squashfs", [], [])
        assert (job.kind, job.itype, job.tag) == ("import", "custom", "mine")
    with db.session() as s, pytest.raises(AccessDenied):
        catalog.request_import(s, caller(user="bob"), "sys", "custom", "mine", "/x", "squashfs", [], [])
    with db.session() as s, pytest.raises(BadRequest):
        catalog.request_import(s, caller(), "sys", "custom", "mine", "relative", "squashfs", [], [])


def test_lookup_cache_keeps_hits_not_misses(db, config, queue, clock):
    import dataclasses
    cached = Catalog(dataclasses.replace(config, lookup_cache_seconds=60, metrics=False), queue, clock=clock)
    with db.session() as s, pytest.raises(ImageNotFound):
        cached.lookup(within(s), caller(), "sys", "docker", "busybox:1")
    pull(db, cached)
    finish(db, cached, queue)
    with db.session() as s:                              # found at once: misses are not remembered
        assert cached.lookup(within(s), caller(), "sys", "docker", "busybox:1").image_id == DIGEST[7:]
    with db.session() as s:
        s.query(Image).delete()
    with db.session() as s:                              # remembered: no database needed
        assert cached.lookup(within(None), caller(), "sys", "docker", "busybox:1").image_id == DIGEST[7:]
        with pytest.raises(ImageNotFound):               # the ACL is still checked per caller
            private = dataclasses.replace(cached._recent.get(("sys", "docker", "busybox:1")), private=True,
                                          user_acl=[1])
            cached._recent.put(("sys", "docker", "busybox:1"), private)
            cached.lookup(within(None), caller(), "sys", "docker", "busybox:1")
