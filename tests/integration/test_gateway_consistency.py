"""The image directory agrees with the database after any failure or crash (gateway/reconcile.py),
on gunicorn + PostgreSQL + worker processes.  Failures are real: PostgreSQL triggers refuse or
stall the worker's record of an image, and workers are killed with SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from ci.harness.oci import Layout, busybox_config, busybox_image
from gateway.models import Image, Job
from gateway.pipeline import PipelineSettings, pull_image
from gateway.registry import Location
from shifter_core.imageref import parse
from shifter_core.imagestatus import EXPIRED, FAILURE, READY
from shifter_core.imagestore import ImageStore
from tests.integration.gateway_fixtures import client, deploy, munged, postgres, registry  # noqa: F401

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)
STALL_KEY = 424242


def push(registry, tmp_path, name: str) -> str:
    layout = Layout(str(tmp_path / f"layout-{name.replace('/', '-')}"))
    busybox_image(layout, "1", config=busybox_config(labels={"test": name}))
    layout.push("1", f"{registry.host}/{name}:1")
    return f"{registry.host}/{name}:1"


def finished(gw, munged, image, timeout=120, **acl) -> dict:
    gw_client = client(gw, munged)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = gw_client.pull(image, **acl)
        if record["status"] in (READY, FAILURE):
            return record
        time.sleep(0.2)
    raise AssertionError(f"pull of {image} did not finish: {record}\n{gw.log()}")


def files(gw) -> dict[str, set[str]]:
    """Image id -> extensions of its files in the image directory."""
    found: dict[str, set[str]] = {}
    directory = os.path.join(gw.workdir, "images")
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        image_id, _, ext = name.partition(".")
        found.setdefault(image_id, set()).add(ext)
    return found


def rows(engine) -> dict[str, tuple]:
    with Session(engine) as session:
        return {i.image_id: (i.status, i.private, i.user_acl) for i in session.scalars(select(Image))}


def assert_agree(gw, engine) -> None:
    """Every READY image has its files with the metadata its row holds, and nothing else is there."""
    ready = {image_id: acl for image_id, (status, _, acl) in rows(engine).items() if status == READY}
    assert set(files(gw)) == set(ready), (files(gw), rows(engine))
    for image_id, acl in ready.items():
        with open(os.path.join(gw.workdir, "images", f"{image_id}.json")) as f:
            assert json.load(f)["user_acl"] == acl


def worker_logs(gw) -> str:
    return "".join(worker.log() for worker in gw.workers)


def sql(engine, *statements: str) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def trigger(engine, when: str, action: str) -> None:
    """Make PostgreSQL run `action` before a write to the images table that matches `when`."""
    sql(engine, f"""CREATE FUNCTION test_interfere() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN IF {when} THEN {action}; END IF; RETURN NEW; END $$""",
        "CREATE TRIGGER test_interfere BEFORE INSERT OR UPDATE ON images FOR EACH ROW"
        " EXECUTE FUNCTION test_interfere()")


def test_a_pull_whose_record_fails_leaves_no_file(deploy, munged, registry, tmp_path):
    gw, engine = deploy(MaxAttempts=2)
    trigger(engine, "TG_OP = 'INSERT'", "RAISE EXCEPTION 'test: no new images today'")
    record = finished(gw, munged, push(registry, tmp_path, "test/refused-by-db"))
    assert record["status"] == FAILURE and record["attempts"] == 2, record
    assert "no new images today" in record["status_message"]
    assert files(gw) == {} and rows(engine) == {}
    assert "\n" not in record["status_message"] and "[SQL" not in record["status_message"]
    assert "unknown files, settled" in worker_logs(gw)


def test_an_acl_change_whose_record_fails_keeps_the_published_metadata(deploy, munged, registry, tmp_path):
    gw, engine = deploy(MaxAttempts=1)
    image = push(registry, tmp_path, "test/acl-kept")
    first = finished(gw, munged, image, user_acl=[1000])          # root pulls: [0, 1000]
    assert first["status"] == READY and first["userACL"] == [0, 1000]
    trigger(engine, "TG_OP = 'UPDATE' AND NEW.user_acl::text <> OLD.user_acl::text",
            "RAISE EXCEPTION 'test: ACLs are frozen'")
    second = finished(gw, munged, image, user_acl=[2000])
    assert second["status"] == FAILURE and "ACLs are frozen" in second["status_message"]
    assert rows(engine)[first["id"]][2] == [0, 1000]
    assert_agree(gw, engine)
    meta = open(os.path.join(gw.workdir, "images", f"{first['id']}.meta")).read()
    assert "USERACL: 0,1000\n" in meta


def test_a_worker_killed_between_its_files_and_its_commit(deploy, munged, registry, tmp_path):
    """The worker stalls inside the transaction that records the image, its files written, and is
    killed: the next worker gives the job up (MaxAttempts 1) and removes the files."""
    gw, engine = deploy(MaxAttempts=1)
    trigger(engine, "TG_OP = 'INSERT'", f"PERFORM pg_advisory_xact_lock({STALL_KEY})")
    with engine.connect() as holder:
        holder.execute(text(f"SELECT pg_advisory_lock({STALL_KEY})"))
        gw_client = client(gw, munged)
        gw_client.pull(push(registry, tmp_path, "test/crash"))
        deadline = time.monotonic() + 60
        while not any("json" in exts for exts in files(gw).values()):
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        gw.workers[0].stop(signal.SIGKILL)
        holder.execute(text(f"SELECT pg_advisory_unlock({STALL_KEY})"))
        holder.commit()
    (image_id,) = files(gw)
    assert rows(engine) == {}                                   # published on disk, unknown to the database
    gw.add_worker()
    deadline = time.monotonic() + 60
    while files(gw):
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.2)
    with Session(engine) as session:
        job = session.scalars(select(Job)).one()
        assert job.status == FAILURE and "stopped responding" in job.status_message
    assert f"image {image_id} on testsys: unknown files, settled" in worker_logs(gw)


def admin(gw, *args: str) -> str:
    result = subprocess.run([os.path.join(BIN, "shifter-admin"), "image-orphans", "--gateway-config",
                             gw.config_path, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_what_a_crash_left_is_listed_by_shifter_admin_and_settled_at_start(deploy, munged, registry,
                                                                           tmp_path):
    gw, engine = deploy(workers=0)
    gw.add_worker()
    kept = finished(gw, munged, push(registry, tmp_path, "test/kept"))
    gone = finished(gw, munged, push(registry, tmp_path, "test/gone"))
    gw.workers[0].stop()
    images = os.path.join(gw.workdir, "images")
    store = ImageStore(images)
    # what crashes leave: an image published but never recorded, metadata written but not
    # committed, files lost under a READY row, a temporary file of an interrupted write
    settings = PipelineSettings(cache_dir=str(tmp_path / "cache"), scratch_dir=str(tmp_path / "scratch"),
                                locations={registry.host: Location(registry.url, insecure=True)})
    orphan = pull_image(parse(f"docker:{push(registry, tmp_path, 'test/orphan')}"), store=store,
                        settings=settings)
    changed = store.read(kept["id"])
    changed.user_acl = [999]
    store.write_metadata(changed)
    for ext in ("json", "meta", "squashfs"):
        os.unlink(os.path.join(images, f"{gone['id']}.{ext}"))
    stale = os.path.join(images, f"{kept['id']}.json.tmp.1.abcd")
    open(stale, "w").close()
    os.utime(stale, (time.time() - 7200,) * 2)

    listed = admin(gw)
    assert f"testsys\t{orphan.id}\tunknown files\n" in listed
    assert f"testsys\t{kept['id']}\tmetadata differs\n" in listed
    assert f"testsys\t{gone['id']}\tfiles missing\n" in listed
    assert f"testsys\t{os.path.basename(stale)}\tstale temporary file\n" in listed
    assert os.path.exists(store.image_path(orphan.id))            # listing changes nothing

    gw.add_worker()                                               # a worker settles at start
    deadline = time.monotonic() + 30
    while os.path.exists(store.image_path(orphan.id)) or os.path.exists(stale):
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.2)
    assert rows(engine)[gone["id"]][0] == EXPIRED
    assert store.read(kept["id"]).user_acl == []
    assert_agree(gw, engine)
    assert admin(gw) == "the image directories agree with the database\n"

    again = pull_image(parse(f"docker:{push(registry, tmp_path, 'test/orphan2')}"), store=store,
                       settings=settings)
    assert admin(gw, "--remove") == f"testsys\t{again.id}\tunknown files (settled)\n"
    assert not os.path.exists(store.image_path(again.id))
