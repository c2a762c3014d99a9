"""Provenance: which job ran which image, requested as what, by whom, on which
nodes and when, with the time each phase took.

Each node appends JSON lines to `<provenanceDir>/<node>.jsonl` (udiRoot.conf;
no log without it), one per event:

    setup     the prolog built the job's container: user, request, digest,
              how it was pinned ("submit", or "pull" for a job held until its
              image was pulled), the job's nodes, and in `ms` the lookup at
              submit, the container's mount and setup phases and the prolog
    enter     a task entered it: step, task, `ms.enter` (setns, chroot, checks)
    teardown  the epilog removed it: `ms.epilog`

The lookup is timed by the submitting client and reaches the prolog as the
job-control variable SHIFTER_LOOKUP_MS (seam.LOOKUP_VAR).  A local append-only file because
nodes must not need the gateway, or any other service, while a job starts;
JSON lines so that a site can ship them to its log system.  An admin reads
them back with

    shifter-admin provenance --job 42            one row per node of job 42
    shifter-admin provenance --digest sha256:... every job that ran an image

The log is written as root: a directory or file that is not root's, or a
symlink in their place, is refused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator

from . import seam, trust
from .errors import ContainerError

SUFFIX = ".jsonl"
EVENTS = ("setup", "enter", "teardown")
_PHASES = ("lookup", "mount", "setup", "prolog", "enter")


class Log:
    """This node's provenance log, open for appending.

    Tasks open it before they chroot into the container and write after,
    since from inside the container the host's paths are out of reach.
    """

    def __init__(self, fd: int, node: str):
        self._fd = fd
        self.node = node

    @classmethod
    def open(cls, directory: str | None, node: str) -> "Log | None":
        """The log of `node` in `directory`; None when no directory is configured."""
        if not directory:
            return None
        if not node or "/" in node or node.startswith("."):
            raise ContainerError(f"invalid node name {node!r} for the provenance log")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise ContainerError(f"cannot open the provenance directory {directory}: {error.strerror}") from None
        try:
            trust.require_root_only(os.fstat(dir_fd), f"provenance directory {directory}", ContainerError)
            fd = os.open(node + SUFFIX, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
        except OSError as error:
            raise ContainerError(f"cannot open the provenance log {directory}/{node}{SUFFIX}:"
                                 f" {error.strerror}") from None
        finally:
            os.close(dir_fd)
        try:
            trust.require_root_only(os.fstat(fd), f"provenance log {directory}/{node}{SUFFIX}", ContainerError)
        except ContainerError:
            os.close(fd)
            raise
        return cls(fd, node)

    def write(self, event: str, job: int, **fields) -> None:
        """Append one record; one write(2), so concurrent writers never interleave a line."""
        line = seam.provenance_line(event=event, time=round(time.time(), 3), job=job, node=self.node, **fields)
        try:
            os.write(self._fd, line.encode())
        except OSError as error:
            raise ContainerError(f"cannot write the provenance log of {self.node}: {error.strerror}") from None

    def close(self) -> None:
        os.close(self._fd)


def record(directory: str | None, node: str, event: str, job: int, **fields) -> None:
    """Open, append one record, close: for the prolog and the epilog."""
    log = Log.open(directory, node)
    if log is not None:
        try:
            log.write(event, job, **fields)
        finally:
            log.close()


def milliseconds(**values) -> dict[str, float]:
    """Phase timings rounded for the log; phases that are unknown (None) are left out."""
    return {name: round(float(value), 3) for name, value in values.items() if value is not None}


# ---- reading back ------------------------------------------------------------

def read(directory: str) -> tuple[list[dict], int]:
    """Every record of every node, oldest first, and how many lines could not be read."""
    records, bad = [], 0
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(SUFFIX))
    except FileNotFoundError:
        return [], 0
    for name in names:
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    item = json.loads(line)
                except ValueError:
                    bad += 1      # e.g. a line cut short when a disk filled up
                    continue
                if isinstance(item, dict) and item.get("event") in EVENTS and isinstance(item.get("job"), int):
                    records.append(item)
                else:
                    bad += 1
    records.sort(key=lambda r: r.get("time", 0))
    return records, bad


@dataclasses.dataclass
class Row:
    """What one node did for one job."""

    job: int
    node: str
    user: str = "?"
    request: str = "?"
    digest: str = "?"
    pinned: str = "?"
    started: float | None = None
    ended: float | None = None
    ms: dict[str, float] = dataclasses.field(default_factory=dict)
    tasks: int = 0


def summarize(records: Iterable[dict], *, job: int | None = None, digest: str | None = None,
              user: str | None = None, since: float | None = None) -> list[Row]:
    """One Row per job and node, for the jobs that match every filter given; jobs in the
    order they started, a job's nodes by name."""
    rows: dict[tuple[int, str], Row] = {}
    enters: dict[tuple[int, str], list[float]] = {}
    for item in records:
        key = (item["job"], str(item.get("node", "?")))
        row = rows.setdefault(key, Row(job=key[0], node=key[1]))
        ms = item.get("ms") if isinstance(item.get("ms"), dict) else {}
        if item["event"] == "setup":
            row.user = str(item.get("user", "?"))
            row.request = str(item.get("request", "?"))
            row.digest = str(item.get("digest", "?"))
            row.pinned = str(item.get("pinned", "?"))
            row.started = item.get("time")
            row.ms.update({k: v for k, v in ms.items() if k in _PHASES})
        elif item["event"] == "enter":
            row.tasks += 1
            if isinstance(ms.get("enter"), (int, float)):
                enters.setdefault(key, []).append(float(ms["enter"]))
        else:
            row.ended = item.get("time")
    for key, values in enters.items():
        rows[key].ms["enter"] = round(_median(values), 3)
    matching_jobs = {r.job for r in rows.values()
                     if (job is None or r.job == job) and (digest is None or r.digest == digest)
                     and (user is None or r.user == user) and (since is None or (r.started or 0) >= since)}
    first: dict[int, float] = {}
    for r in rows.values():
        first[r.job] = min(first.get(r.job, float("inf")), r.started or 0)
    return sorted((r for r in rows.values() if r.job in matching_jobs),
                  key=lambda r: (first[r.job], r.job, r.node))


def table(rows: list[Row]) -> str:
    """The rows as aligned text, times in local time, phases in milliseconds."""
    header = ["JOB", "NODE", "USER", "STARTED", "ENDED", "REQUEST", "DIGEST", "PINNED",
              *(p.upper() for p in _PHASES), "TASKS"]
    lines = [header]
    for r in rows:
        lines.append([str(r.job), r.node, r.user, _when(r.started), _when(r.ended), r.request,
                      r.digest[:19], r.pinned, *(_ms(r.ms.get(p)) for p in _PHASES), str(r.tasks)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def lines_of(records: Iterable[dict], rows: list[Row]) -> Iterator[str]:
    """The raw records of the jobs in `rows`, as JSON lines (for --json)."""
    jobs = {r.job for r in rows}
    for item in records:
        if item["job"] in jobs:
            yield json.dumps(item, sort_keys=True)
