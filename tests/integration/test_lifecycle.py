"""Containers come and go with jobs, whatever happens to the jobs: many jobs in
a row, cancelled ones, a job its prolog refuses, a slurmd restart in the middle."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from shifter_core.container import procfs

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]



def _leftovers(cluster) -> list[str]:
    """Container mounts in any process, holders, loop devices of images, state files."""
    found = []
    udi = f" {cluster.layout.root}/run/udi"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if not procfs.running(int(entry)):
                continue
            if udi in Path(f"/proc/{entry}/mountinfo").read_text():
                found.append(f"process {entry} sees a container mount")
            if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(b"shifter-holder"):
                found.append(f"holder {entry} alive")
        except OSError:
            continue
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [line for line in loops.splitlines() if str(cluster.layout.root) in line]
    found += [str(p) for p in (cluster.layout.root / "run" / "shifter").glob("job*")]
    return found


def _holder_of(cluster, job: int, node: str, timeout: float = 60) -> Path:
    state = cluster.layout.root / "run" / "shifter" / f"job{job}.{node}.state"
    deadline = time.monotonic() + timeout
    while not state.exists():
        assert time.monotonic() < deadline, f"no container for job {job} on {node}"
        time.sleep(0.2)
    return state


def test_hundred_jobs_leave_nothing_behind(cluster, image):
    """100 jobs: most run to completion, every tenth is cancelled while it runs,
    one fails in its prolog (a volume source that does not exist): that one fails,
    and the node stays in service."""
    finished, cancelled = [], []
    script = "#!/bin/sh\nsrun -n1 sh -c 'test -r /etc/os-release'\n"
    long_script = "#!/bin/sh\nsleep 300\n"
    for i in range(100):
        if i % 10 == 5:
            cancelled.append(cluster.sbatch(long_script, "-n1", f"--image={image}", "--autoshift"))
        else:
            finished.append(cluster.sbatch(script, "-n1", f"--image={image}", "--autoshift"))
    broken = cluster.sbatch("#!/bin/sh\ntrue\n", "-N1", "-w", "n3", f"--image={image}",
                            "--volume=/does/not/exist:/data")
    for job in cancelled:                       # cancel each once it runs
        deadline = time.monotonic() + 300
        while cluster.job_state(job) == "PENDING":
            assert time.monotonic() < deadline, f"job {job} never started"
            time.sleep(0.3)
        cluster.run(["scancel", str(job)])
    states = {job: cluster.wait(job, timeout=600) for job in finished + cancelled + [broken]}
    assert all(states[job] == "COMPLETED" for job in finished), states
    assert all(states[job] == "CANCELLED" for job in cancelled), states
    assert states[broken] == "FAILED"
    assert "/does/not/exist does not exist in the container" in cluster.output(broken)
    cluster.assert_idle()
    assert _leftovers(cluster) == []


def test_epilog_cleans_up_after_a_slurmd_restart(cluster, image):
    job = cluster.sbatch("#!/bin/sh\nsleep 300\n", "-N1", "-w", "n2", f"--image={image}", "--autoshift")
    _holder_of(cluster, job, "n2")
    cluster.restart_slurmd("n2")
    result = cluster.srun(f"--jobid={job}", "-N1", f"--image={image}", "--autoshift",
                          "cat", "/etc/os-release")
    assert "shifter-py test image" in result.stdout
    cluster.run(["scancel", str(job)])
    assert cluster.wait(job) == "CANCELLED"
    cluster.assert_idle()
    assert _leftovers(cluster) == []
