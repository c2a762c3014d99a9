"""The status page's choices on a migrated SQLite database, through Flask's test client:
what is public, the usage charts, and that no user, ACL or private image reaches the HTML."""
from __future__ import annotations

import pytest

from gateway import public
from gateway.app import create_app
from gateway.status import chart, duration, size
from shifter_core.imagestatus import CONVERSION
from shifter_core.imagestore import ImageMeta
from tests.unit.test_gateway_queue import caller, catalog, clock, config, db, pull, queue  # noqa: F401

PUBLIC = ImageMeta(digest="sha256:" + "11" * 32, env=["A=1"], cmd=["/bin/sh"], labels={"x": "<i>y</i>"},
                   layers=[{"digest": "sha256:" + "22" * 32, "size": 1234, "mediaType": "tar+gzip"}])
PRIVATE = ImageMeta(digest="sha256:" + "33" * 32, private=True, user_acl=[4242], group_acl=[4343])
RESTRICTED = ImageMeta(digest="sha256:" + "44" * 32, user_acl=[4244])           # public, with an ACL


def publish(db, catalog, queue, tag: str, meta: ImageMeta, who="secret-user") -> None:
    pull(db, catalog, who=caller(user=who), tag=tag)
    with db.session() as s:
        job = queue.claim(s, "w1")
        catalog.record_image(s, job, meta)
        queue.succeed(s, job, "w1", meta.id)


@pytest.fixture
def app(config, db):
    return create_app(config, db=db)


@pytest.fixture
def site(db, catalog, queue, clock):
    """A public image, a private one, one with an ACL, a public pull converting, an unresolved pull,
    a failed public pull, a public pull refused by an image's ACL."""
    publish(db, catalog, queue, "public/app:1", PUBLIC)
    publish(db, catalog, queue, "private/thing:1", PRIVATE)
    publish(db, catalog, queue, "public/restricted:1", RESTRICTED)
    pull(db, catalog, who=caller(user="secret-user"), tag="public/restricted:2")
    with db.session() as s:
        refused = queue.claim(s, "w1")
        queue.progress(s, refused, "w1", public=True, image_id=RESTRICTED.id)
        queue.fail(s, refused, "w1", f"image {RESTRICTED.id} may only be pulled again by ...", retryable=False)
    for tag in ("public/converting:1", "unknown/yet:1", "public/broken:1"):
        pull(db, catalog, who=caller(user="secret-user"), tag=tag)
    with db.session() as s:
        converting = queue.claim(s, "w1")
        queue.progress(s, converting, "w1", public=True, bytes_done=50, bytes_total=100)
        queue.progress(s, converting, "w1", status=CONVERSION)
        queue.claim(s, "w1")                              # unknown/yet: not resolved, so not known public
        broken = queue.claim(s, "w1")
        queue.progress(s, broken, "w1", public=True)
        queue.fail(s, broken, "w1", "layer 1 entry '../x' leaves the image root", retryable=False)


def test_only_public_images_pulls_and_failures_are_selected(db, site, clock):
    with db.session() as s:
        images = public.images(s, "sys", clock.now)
        queue = public.queue(s, "sys")
        failures = public.failures(s, "sys", clock.now)
        assert public.image(s, "sys", PRIVATE.id, clock.now) is None
        assert public.image(s, "sys", RESTRICTED.id, clock.now) is None
        detail = public.image(s, "sys", PUBLIC.id, clock.now)
    assert [(i.image_id, i.tags) for i in images] == [(PUBLIC.id, ["public/app:1"])]
    assert [(p.tag, p.status) for p in queue.pulls] == [("public/converting:1", CONVERSION)]
    assert queue.others == 1                                   # the pull not resolved yet
    assert [(f.tag, f.reason) for f in failures] == [("public/broken:1",
                                                       "layer 1 entry '../x' leaves the image root")]
    assert detail.env == ["A=1"] and detail.layers == PUBLIC.layers and len(detail.usage.counts) == 7 * 24


def test_the_page_shows_no_user_acl_or_private_image(app, site):
    client = app.test_client()
    pages = [client.get("/status/"), client.get("/status/sys/queue"), client.get(f"/status/sys/images/{PUBLIC.id}/")]
    for page in pages:
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        for secret in ("secret-user", "private/thing", PRIVATE.id, "4242", "4343", "unknown/yet",
                       "public/restricted", RESTRICTED.id, "4244"):
            assert secret not in text
    assert "public/app:1" in pages[0].get_data(as_text=True)
    assert "&lt;i&gt;y&lt;/i&gt;" in pages[2].get_data(as_text=True)          # labels are text, not markup
    hidden = client.get(f"/status/sys/images/{PRIVATE.id}/")
    assert hidden.status_code == 404 and PRIVATE.id[:12] in hidden.get_data(as_text=True)
    assert client.get("/status/elsewhere/queue").status_code == 404


def test_browsers_are_sent_to_the_page_and_programs_get_shifters_answer(app):
    client = app.test_client()
    assert client.get("/", headers={"Accept": "text/html,*/*;q=0.8"}).headers["Location"] == "/status/"
    for accept in ("*/*", None):
        answer = client.get("/", headers={"Accept": accept} if accept else {})
        assert answer.status_code == 200 and answer.get_data(as_text=True) == "{lookup,pull,expire,list}\n"


def test_chart_bars_scale_to_the_busiest_period():
    usage = public.Usage(start=86400 * 10, period=86400, counts=[0, 5, 10, 0], last=86400 * 12.5)
    drawn = chart(usage, width=40, height=20)
    assert [(bar.x, bar.height) for bar in drawn.bars] == [(11.0, 10.0), (21.0, 20.0)]
    assert all(bar.y + bar.height == 20 for bar in drawn.bars)
    assert drawn.bars[1].title == "1970-01-13: 10 lookups"
    assert drawn.summary == "15 lookups in the last 4 days, at most 10 per day"


def test_numbers_for_people():
    assert [size(n) for n in (0, 999, 1000, 1_500_000, 2 * 10**15)] == ["0 B", "999 B", "1.0 kB", "1.5 MB",
                                                                         "2000.0 TB"]
    assert [duration(s) for s in (-1, 59, 60, 7200, 90000)] == ["0 s", "59 s", "1 min", "2 h", "1 d"]
