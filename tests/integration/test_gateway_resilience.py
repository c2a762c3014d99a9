"""The gateway under concurrency and failure, on gunicorn + PostgreSQL + worker processes:
eight concurrent pulls make one conversion; a worker killed mid-pull is replaced
and never leaves a READY image without its file; PostgreSQL restarting makes
requests fail cleanly and the service recovers by itself."""
from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import time

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from ci.harness.oci import File, Layout, busybox_config, busybox_entries
from gateway.models import Image, Job
from shifter_core.imagestatus import READY, RUNNING
from shifter_core.munge import Munge
from tests.integration import waiting
from tests.integration.gateway_fixtures import (SYSTEM, client, deploy, munged, postgres,  # noqa: F401
                                                push_busybox, registry)

pytestmark = pytest.mark.slow


def wait_ready(gw_client, image, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = gw_client.pull(image)
        if record["status"] in ("READY", "FAILURE"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"{image} not ready: {record}")


def assert_every_ready_image_has_its_files(engine, image_dir):
    with Session(engine) as session:
        for image in session.scalars(select(Image).where(Image.status == READY)):
            for ext in ("squashfs", "meta", "json"):
                assert os.path.exists(os.path.join(image_dir, f"{image.image_id}.{ext}")), image.image_id


def test_eight_concurrent_pulls_make_one_conversion(deploy, munged, registry, tmp_path):
    gw, engine = deploy(workers=2)
    image = push_busybox(registry, str(tmp_path / "layout"), "test/concurrent")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        records = list(pool.map(lambda _: wait_ready(client(gw, munged), image), range(8)))
    assert {r["status"] for r in records} == {"READY"}
    assert len({r["id"] for r in records}) == 1
    with Session(engine) as session:
        jobs = list(session.scalars(select(Job).where(Job.tag == image)))
    assert len(jobs) == 1 and jobs[0].attempts == 1
    started = re.findall(rf"job \d+: pull docker:{re.escape(image)} ", gw.log())
    assert len(started) == 1, gw.log()
    assert_every_ready_image_has_its_files(engine, os.path.join(gw.workdir, "images"))


def big_image(registry, workdir: str) -> str:
    """busybox plus 96 MB that does not compress: long enough to be killed mid-pull."""
    layout = Layout(workdir)
    base = layout.add_layer(busybox_entries())
    bulk = layout.add_layer([File("bulk.bin", os.urandom(96 << 20))], compresslevel=1)
    layout.add_image([base, bulk], busybox_config(), tag="big")
    layout.push("big", f"{registry.host}/test/big:big")
    return f"{registry.host}/test/big:big"


def test_worker_killed_mid_pull_is_recovered(deploy, munged, registry, tmp_path):
    gw, engine = deploy()
    image = big_image(registry, str(tmp_path / "layout"))
    gw_client = client(gw, munged)
    assert gw_client.pull(image)["status"] == "PENDING"
    deadline = time.monotonic() + 60
    job = None
    while time.monotonic() < deadline:
        with Session(engine) as session:
            job = session.scalars(select(Job).where(Job.tag == image)).one()
        if job.status in RUNNING:
            break
        time.sleep(0.02)
    assert job.status in RUNNING, job.status
    gw.workers[0].stop(signal.SIGKILL)
    killed_during = job.status

    with Session(engine) as session:
        assert session.scalars(select(Job).where(Job.tag == image)).one().status != READY
        assert session.scalars(select(Image)).all() == []
    record = gw_client.pull(image)
    assert record["status"] in RUNNING + ("PENDING",)   # still the same job, not a new one
    gw.add_worker()                                     # a new worker recovers it after HeartbeatTimeout
    record = wait_ready(gw_client, image)
    assert record["status"] == "READY", record
    with Session(engine) as session:
        job = session.scalars(select(Job).where(Job.tag == image)).one()
        assert job.attempts == 2
    assert "stopped responding" in gw.log() or "requeued" in gw.log(), (killed_during, gw.log())
    assert_every_ready_image_has_its_files(engine, os.path.join(gw.workdir, "images"))


def test_a_worker_stops_on_sigterm_and_puts_its_pull_back(deploy, munged, registry, tmp_path):
    gw, engine = deploy()
    image = big_image(registry, str(tmp_path / "layout"))
    gw_client = client(gw, munged)
    gw_client.pull(image)
    deadline = time.monotonic() + 60
    while running_job(engine, image) is None:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.02)
    worker = gw.workers[0]
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=60)                      # it stops, it does not finish the pull first
    with Session(engine) as session:
        job = session.scalars(select(Job).where(Job.tag == image)).one()
        assert (job.status, job.worker, job.attempts) == ("PENDING", None, 0), job.status_message
        assert session.scalars(select(Image)).all() == []
    assert os.listdir(os.path.join(gw.workdir, "images")) == []
    gw.add_worker()
    assert wait_ready(gw_client, image)["status"] == "READY"
    with Session(engine) as session:
        assert session.scalars(select(Job).where(Job.tag == image)).one().attempts == 1


def running_job(engine, image):
    with Session(engine) as session:
        job = session.scalars(select(Job).where(Job.tag == image)).one_or_none()
    return job if job is not None and job.status in RUNNING and job.bytes_done else None


def test_postgres_restart(deploy, munged, registry, postgres, tmp_path):
    gw, engine = deploy()
    first = push_busybox(registry, str(tmp_path / "a"), "test/before-restart")
    assert wait_ready(client(gw, munged), first)["status"] == "READY"
    path = f"/api/lookup/{SYSTEM}/docker/{requests.utils.quote(first, safe='')}/"

    def lookup():
        return requests.get(gw.url + path, headers={"authentication": Munge(munged.socket).encode()}, timeout=20)

    assert lookup().status_code == 200
    worker_log = gw.workers[0].log
    noticed_before = worker_log().count("database is unavailable")
    postgres.stop()
    time.sleep(1.2)         # past LookupCacheSeconds of every API process: a clock condition
    try:
        for _ in range(3):
            response = lookup()
            assert response.status_code == 503
            assert response.headers["Content-Type"] == "application/json"
            assert "database is unavailable" in response.json()["message"]
        waiting.until(lambda: worker_log().count("database is unavailable") > noticed_before, 60,
                      "the worker never noticed the database was gone")
        assert gw.workers[0].running() and gw.api.running()
    finally:
        postgres.start()
    assert lookup().status_code == 200                  # no gateway restart needed
    second = push_busybox(registry, str(tmp_path / "b"), "test/after-restart")
    assert wait_ready(client(gw, munged), second)["status"] == "READY"
