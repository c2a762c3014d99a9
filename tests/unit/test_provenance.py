"""Reading the provenance log back (shifter_core/provenance.py): per job and
node rows, filters, damaged lines.  Writing it as root on real nodes is
tested in tests/integration/test_provenance.py."""
from __future__ import annotations

import json
import os

import pytest

from shifter_core import provenance
from shifter_core.errors import ContainerError

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def _setup(job, node, t, digest=DIGEST, user="alice", **ms):
    return {"event": "setup", "time": t, "job": job, "node": node, "user": user, "uid": 1001,
            "request": "docker:busybox:latest", "digest": digest, "pinned": "submit",
            "ms": {"lookup": 12.0, "mount": 5.0, "setup": 20.0, "prolog": 60.0, **ms}}


def _write(directory, node, records, extra=""):
    with open(os.path.join(directory, f"{node}.jsonl"), "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.write(extra)


@pytest.fixture
def logs(tmp_path):
    _write(tmp_path, "n1", [
        _setup(1, "n1", 100.0),
        {"event": "enter", "time": 101.0, "job": 1, "node": "n1", "step": 0, "task": 0, "ms": {"enter": 1.0}},
        {"event": "enter", "time": 101.5, "job": 1, "node": "n1", "step": 0, "task": 1, "ms": {"enter": 3.0}},
        {"event": "teardown", "time": 110.0, "job": 1, "node": "n1", "ms": {"epilog": 4.0}},
        _setup(2, "n1", 200.0, digest=OTHER, user="bob"),
    ], extra='{"event": "setup", "time": 3')            # a line cut short
    _write(tmp_path, "n2", [
        _setup(1, "n2", 100.2),
        {"event": "enter", "time": 101.0, "job": 1, "node": "n2", "step": 0, "task": 0, "ms": {"enter": 2.0}},
        ["not", "a", "record"],
    ])
    return str(tmp_path)


def test_every_node_of_a_job_gets_a_row(logs):
    records, bad = provenance.read(logs)
    assert bad == 2
    rows = provenance.summarize(records, job=1)
    assert [(r.job, r.node) for r in rows] == [(1, "n1"), (1, "n2")]
    n1 = rows[0]
    assert (n1.user, n1.digest, n1.pinned, n1.started, n1.ended, n1.tasks) == \
        ("alice", DIGEST, "submit", 100.0, 110.0, 2)
    assert n1.ms == {"lookup": 12.0, "mount": 5.0, "setup": 20.0, "prolog": 60.0, "enter": 2.0}
    assert rows[1].ms["enter"] == 2.0 and rows[1].ended is None


def test_filters_by_digest_user_and_time(logs):
    records, _ = provenance.read(logs)
    assert {r.job for r in provenance.summarize(records, digest=OTHER)} == {2}
    assert {r.job for r in provenance.summarize(records, user="alice")} == {1}
    assert {r.job for r in provenance.summarize(records, since=150)} == {2}
    assert provenance.summarize(records, job=99) == []


def test_the_table_has_one_line_per_row_and_the_json_the_jobs_records(logs):
    records, _ = provenance.read(logs)
    rows = provenance.summarize(records, job=1)
    lines = provenance.table(rows).splitlines()
    assert lines[0].split()[:3] == ["JOB", "NODE", "USER"]
    assert len(lines) == 3 and lines[1].split()[:3] == ["1", "n1", "alice"]
    assert "2.0" in lines[1] and DIGEST[:19] in lines[1]
    raw = [json.loads(line) for line in provenance.lines_of(records, rows)]
    assert len(raw) == 6 and {r["job"] for r in raw} == {1}


def test_a_missing_directory_has_no_records(tmp_path):
    assert provenance.read(str(tmp_path / "none")) == ([], 0)


def test_no_directory_means_no_log():
    assert provenance.Log.open(None, "n1") is None
    provenance.record(None, "n1", "setup", 1)


@pytest.mark.parametrize("node", ["", "a/b", ".hidden"])
def test_node_names_cannot_escape_the_directory(tmp_path, node):
    with pytest.raises(ContainerError, match="invalid node name"):
        provenance.Log.open(str(tmp_path), node)


def test_a_directory_others_can_write_is_refused(tmp_path):
    os.chmod(tmp_path, 0o777)
    with pytest.raises(ContainerError, match="must not be writable by group or others"):
        provenance.Log.open(str(tmp_path), "n1")


def test_a_symlink_instead_of_the_log_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the log's owner check refuses a non-root directory first")
    os.chmod(tmp_path, 0o700)
    os.symlink("/etc/passwd", tmp_path / "n1.jsonl")
    with pytest.raises(ContainerError, match="cannot open the provenance log"):
        provenance.Log.open(str(tmp_path), "n1")


def test_records_are_appended_as_single_lines(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the log is root's")
    os.chmod(tmp_path, 0o700)
    provenance.record(str(tmp_path), "n1", "setup", 5, user="alice", ms=provenance.milliseconds(mount=1.23456, x=None))
    provenance.record(str(tmp_path), "n1", "teardown", 5)
    records, bad = provenance.read(str(tmp_path))
    assert bad == 0 and [r["event"] for r in records] == ["setup", "teardown"]
    assert records[0]["ms"] == {"mount": 1.235} and records[0]["node"] == "n1"
    assert os.stat(tmp_path / "n1.jsonl").st_mode & 0o777 == 0o600
