"""Provenance on the mini-cluster: every node records which job ran which
digest, requested as what, by whom, when, and how long the lookup at submit,
the container's mount and setup, the prolog and each task's entry took; an
admin reads it back with `shifter-admin provenance`."""
from __future__ import annotations

import json
import time

import pytest

from tests.integration.registry_images import lookup

pytestmark = [pytest.mark.cluster, pytest.mark.root]



def _provenance(cluster, *options: str) -> str:
    return cluster.run([str(cluster.layout.root.parent / ".venv" / "bin" / "shifter-admin"), "provenance",
                        "--config", str(cluster.layout.etc / "udiRoot.conf"), *options], as_user=False).stdout


def test_each_node_records_the_job_its_image_and_the_phase_timings(cluster, image):
    before = time.time()
    job = cluster.sbatch("#!/bin/sh\nsrun -N3 -n6 true\n", "-N3", "--ntasks-per-node=2", f"--image={image}",
                         "--autoshift")
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    digest = lookup(cluster, image)
    records = [json.loads(line) for line in _provenance(cluster, "--job", str(job), "--json").splitlines()]

    setups = {r["node"]: r for r in records if r["event"] == "setup"}
    assert sorted(setups) == ["n1", "n2", "n3"]
    for node, setup in setups.items():
        assert (setup["user"], setup["uid"], setup["request"], setup["digest"], setup["pinned"]) == \
            (cluster.user, cluster.uid, image, digest, "submit"), setup
        assert setup["nodes"] == "n[1-3]"
        assert before - 1 <= setup["time"] <= time.time()
        assert set(setup["ms"]) == {"lookup", "mount", "setup", "prolog"}, setup
        assert all(value > 0 for value in setup["ms"].values()), setup
        assert setup["ms"]["prolog"] >= setup["ms"]["mount"] + setup["ms"]["setup"]
    assert len({s["ms"]["lookup"] for s in setups.values()}) == 1, "one lookup, at submit"

    enters = [r for r in records if r["event"] == "enter"]
    batch = [r for r in enters if r["step"] == "batch"]
    steps = [r for r in enters if r["step"] == 0]
    assert [r["node"] for r in batch] == ["n1"]
    assert sorted(r["node"] for r in steps) == ["n1", "n1", "n2", "n2", "n3", "n3"]
    assert sorted((r["node"], r["task"]) for r in steps) == [(n, t) for n in ("n1", "n2", "n3") for t in (0, 1)]
    assert all(r["digest"] == digest and 0 < r["ms"]["enter"] < 10_000 for r in enters), enters

    teardowns = [r for r in records if r["event"] == "teardown"]
    assert sorted(r["node"] for r in teardowns) == ["n1", "n2", "n3"]
    assert all(r["time"] >= setups[r["node"]]["time"] and r["ms"]["epilog"] > 0 for r in teardowns)

    table = _provenance(cluster, "--job", str(job)).splitlines()
    assert table[0].split() == ["JOB", "NODE", "USER", "STARTED", "ENDED", "REQUEST", "DIGEST", "PINNED",
                                "LOOKUP", "MOUNT", "SETUP", "PROLOG", "ENTER", "TASKS"]
    rows = [line.split() for line in table[1:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [(str(job), n, cluster.user) for n in ("n1", "n2", "n3")]
    assert [row[-1] for row in rows] == ["3", "2", "2"]      # the batch task and two step tasks on n1


def test_provenance_finds_every_job_that_ran_a_digest(cluster, image):
    first = cluster.sbatch("#!/bin/sh\ntrue\n", "-N1", f"--image={image}")
    second = cluster.sbatch("#!/bin/sh\ntrue\n", "-N1", f"--image={image}")
    assert cluster.wait(first) == cluster.wait(second) == "COMPLETED"
    digest = lookup(cluster, image)
    jobs = {int(line.split()[0]) for line in _provenance(cluster, "--digest", digest).splitlines()[1:]}
    assert {first, second} <= jobs
    mine = {int(line.split()[0]) for line in _provenance(cluster, "--user", cluster.user).splitlines()[1:]}
    assert {first, second} <= mine


def test_the_log_is_root_only(cluster, image):
    job = cluster.sbatch("#!/bin/sh\ntrue\n", "-N1", "-w", "n2", f"--image={image}")
    assert cluster.wait(job) == "COMPLETED"
    log = cluster.layout.root / "log" / "provenance" / "n2.jsonl"
    assert log.stat().st_uid == 0 and log.stat().st_mode & 0o777 == 0o600
    assert log.parent.stat().st_mode & 0o022 == 0
    reading = cluster.run(["cat", str(log)], check=False)
    assert reading.returncode != 0
