"""Waiting for a condition instead of for a fixed time, which a loaded machine outlasts;
and watching with strace what a command and a node's slurmd start meanwhile."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path


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


def python_opens(trace: str) -> list[str]:
    """Files in an strace output whose opening means a Python interpreter started."""
    return re.findall(r'"([^"]*(?:pyvenv\.cfg|/encodings/__init__\.py|site-packages/shifter_core)[^"]*)"',
                      trace)


def node_server_calls(trace: str) -> list[str]:
    """Connections to a node server (shifter_core/spank/nodeserver.py), which runs Python."""
    return re.findall(r'connect\(.*sun_path="([^"]*/nodeserver\.[^"]*\.sock)"', trace)


def traced(cluster, pid_of_slurmd: int, argv: list[str]) -> tuple[str, str, subprocess.CompletedProcess]:
    """Run `argv` under strace (client side) while a node's slurmd and all its children
    (slurmstepd, prolog, epilog, tasks) are traced too: both traces, and the result."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=cluster.home) as mine:
        os.chown(mine, cluster.uid, -1)
        node_trace, client_trace = f"{tmp}/node", f"{mine}/client"
        with strace(pid_of_slurmd, "openat,open,connect", node_trace):
            result = cluster.run(["strace", "-f", "-qq", "-e", "trace=openat,open", "-o", client_trace, *argv])
            cluster.wait_until_settled()
        return Path(node_trace).read_text(), Path(client_trace).read_text(), result
