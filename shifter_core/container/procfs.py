"""What /proc says about processes: how the runtime tells a live holder from a reused pid.

The one reader of /proc/<pid>/stat on the Python side (the harness and the
tests use it too); spank/seam.c: seam_start_time is the C side's, held to
`parse_start_time` by tests/unit/test_seam.py.
"""
from __future__ import annotations

import os

from .. import seam


def pids():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _stat(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def _fields(text: str) -> list[str] | None:
    """Fields 3 (state) on; the command name before them may hold spaces and ')'."""
    end = text.rfind(")")
    if end < 0 or text[end + 1:end + 2] != " ":
        return None
    return text[end + 2:].split(" ")


def parse_start_time(text: str) -> int | None:
    """Field 22 of a stat line, the start time in clock ticks since boot."""
    fields = _fields(text)
    index = seam.START_TIME_FIELD - 3
    if fields is None or len(fields) <= index:
        return None
    return seam.uint(fields[index])


def start_time(pid: int) -> int | None:
    """With the pid, names one process."""
    text = _stat(pid)
    return parse_start_time(text) if text is not None else None


def state(pid: int) -> str | None:
    """R, S, D, Z...; None when there is no such process."""
    found = stat(pid)
    return found[0] if found else None


def stat(pid: int) -> tuple[str, int, int | None] | None:
    """(state, parent pid, start time) of a process; None when there is none."""
    text = _stat(pid)
    fields = _fields(text) if text is not None else None
    if not fields or len(fields) < 2 or seam.uint(fields[1]) is None:
        return None
    return fields[0], int(fields[1]), parse_start_time(text)


def running(pid: int) -> bool:
    """Alive and not a zombie (PID 1 of these machines may not reap)."""
    return state(pid) not in (None, "Z", "X")


def mount_namespace(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def uids(pid: int) -> tuple[int, ...] | None:
    """Real, effective, saved and file-system uid of a process, from its status (not
    from who owns its files in /proc: root, for any process that made itself
    non-dumpable)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return tuple(int(field) for field in line.split()[1:])
    except (OSError, ValueError):
        pass
    return None


def command_name(pid: int) -> str | None:
    """argv[0] of a process (what the holder renames itself to)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return None
