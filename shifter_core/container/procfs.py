"""What /proc says about processes: how the runtime tells a live holder from a reused pid."""
from __future__ import annotations

import os


def pids():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; the command name may hold spaces and ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """Field 22, the start time in clock ticks since boot: with the pid, names one process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def mount_namespace(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def command_name(pid: int) -> str | None:
    """argv[0] of a process (what the holder renames itself to)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return None
