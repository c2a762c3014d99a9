"""Waiting for a condition instead of for a fixed time, which a loaded machine outlasts."""
from __future__ import annotations

import contextlib
import subprocess
import time


def until(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition()` until it is true (and return it); AssertionError naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} after {timeout:.0f} s"
        time.sleep(interval)
    return result


@contextlib.contextmanager
def strace(pid: int, syscalls: str, output: str):
    """strace -f of `pid` and all it starts from now on, written to `output`: attached when
    the block starts, detached (its output complete) when it ends."""
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", f"trace={syscalls}", "-o", output, "-p", str(pid)],
                              stderr=subprocess.DEVNULL)
    try:
        until(lambda: _tracer_of(pid) == tracer.pid or tracer.poll() is not None, 30, f"strace not attached to {pid}")
        assert tracer.poll() is None, f"strace of {pid} failed"
        yield
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)


def _tracer_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("TracerPid:"))
    except (OSError, StopIteration):
        return None
