"""--image and --autoshift on the 3-node mini-cluster: jobs run inside the
image as the user, a Python failure fails the job, jobs without shifter
options never start Python."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration import waiting

pytestmark = [pytest.mark.cluster, pytest.mark.root]

REPORT = 'echo "$(hostname) $(grep PRETTY_NAME /etc/os-release) uid=$(id -u)"'


def _node_lines(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines() if re.match(r"^n\d ", line)}


def test_sbatch_autoshift_runs_script_and_steps_inside_the_image(cluster, image):
    job = cluster.sbatch(f"#!/bin/sh\necho batch: $(grep PRETTY_NAME /etc/os-release) uid=$(id -u)\n"
                         f"srun -N3 sh -c '{REPORT}'\n", "-N3", f"--image={image}", "--autoshift")
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    out = cluster.output(job)
    assert f'batch: PRETTY_NAME="shifter-py test image (busybox)" uid={cluster.uid}' in out
    lines = _node_lines(out)
    assert sorted(lines) == ["n1", "n2", "n3"], out
    for line in lines.values():
        assert 'PRETTY_NAME="shifter-py test image (busybox)"' in line
        assert line.endswith(f"uid={cluster.uid}")
    cluster.assert_idle()


def test_sbatch_export_none_still_runs_the_script_and_steps_inside_the_image(cluster, image):
    """With --export=NONE the batch step gets neither the job's options nor SHIFTER_*, only
    Slurm's SLURM_SPANK_ copy of the job-control environment: it must still run in the
    image, never on the host (and its steps too, which inherit --export=NONE)."""
    job = cluster.sbatch("#!/bin/sh\necho batch: $(grep PRETTY_NAME /etc/os-release)\n"
                         # the image's srun (the harness's slurm module; no PATH here)
                         "/opt/slurm/bin/srun -N1 /bin/sh -c 'echo step: $(grep PRETTY_NAME /etc/os-release)'\n",
                         "-N1", "--export=NONE", f"--image={image}", "--autoshift")
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    out = cluster.output(job)
    for who in ("batch", "step"):
        assert f'{who}: PRETTY_NAME="shifter-py test image (busybox)"' in out, out


def test_srun_tasks_have_no_privileges(cluster, image):
    result = cluster.srun("-N3", f"--image={image}", "--autoshift", "sh", "-c",
                          "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status")
    fields = re.findall(r"^(\w+):\s+(\w+)$", result.stdout, re.M)
    assert len(fields) == 12, result.stdout
    for name, value in fields:
        assert value == ("1" if name == "NoNewPrivs" else "0000000000000000"), (name, value)


def test_image_without_autoshift_runs_tasks_on_the_host_with_the_pin(cluster, image):
    result = cluster.srun("-N1", f"--image={image}", "sh", "-c",
                          "echo $SHIFTER_IMAGE_DIGEST; test -e /etc/debian_version && echo host")
    digest, where = result.stdout.split()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert where == "host"


def _container_state(cluster, job_id: int, node: str) -> Path:
    return cluster.layout.root / "run" / "shifter" / f"job{job_id}.{node}.state"


def test_python_exception_in_task_hook_fails_the_step_and_never_runs_it_on_the_host(cluster, image):
    """Corrupt the job's container record so task_init_privileged raises a
    plain Python exception (not one of ours): the plugin's C fast path does
    not accept the record and hands the step to Python, whose reading of it
    raises; the step must fail and its command must not run at all, inside
    or outside the container."""
    marker = cluster.home / "ran-anyway"
    marker.unlink(missing_ok=True)
    job = cluster.sbatch("#!/bin/sh\nsleep 300\n", "-N1", "-w", "n1", f"--image={image}")
    try:
        state = _container_state(cluster, job, "n1")
        deadline = time.monotonic() + 60
        while not state.exists():
            assert time.monotonic() < deadline, "the prolog built no container"
            time.sleep(0.2)
        good = state.read_text()
        state.write_text(re.sub(r"(?m)^holder .*$", "holder corrupt", good))   # not three numbers
        result = cluster.srun(f"--jobid={job}", "-N1", f"--image={image}", "--autoshift",
                              "touch", str(marker), check=False)
        state.write_text(good)
    finally:
        cluster.run(["scancel", str(job)], as_user=False)
        cluster.wait(job)
    assert result.returncode != 0
    assert "task_init_privileged" in result.stderr or "shifter" in result.stderr, result.stderr
    assert not marker.exists(), "the task ran although its shifter hook failed"
    assert re.search(r"ValueError: .*job\d+\.n1\.state: bad holder line 'corrupt'", cluster.log("slurmd-n1"))
    cluster.assert_idle()


def test_python_that_cannot_start_fails_the_submission(cluster, image, readable_tmp):
    """A plugin whose venv cannot run Python refuses the job with a clear line (once it
    needs Python: with no submit plan for the options, srun pins in Python)."""
    (cluster.home / ".udiRoot" / "submit-plans").unlink(missing_ok=True)
    bad_venv = readable_tmp / "venv"
    (bad_venv / "bin").mkdir(parents=True)
    env = cluster.client_env_with_plugstack(
        readable_tmp, re.sub(r"venv=\S+", f"venv={bad_venv}", cluster.plugstack_line()))
    marker = cluster.home / "ran-without-python"
    marker.unlink(missing_ok=True)
    result = cluster.srun("-N1", f"--image={image}", "--autoshift", "touch", str(marker),
                          check=False, env=env)
    assert result.returncode != 0
    assert f"shifter: cannot start Python from {bad_venv}" in result.stderr, result.stderr
    assert not marker.exists()
    plain = cluster.srun("-N1", "true", env=env, check=False)
    assert plain.returncode == 0, "jobs without shifter options must not need Python"


def test_srun_without_shifter_options_starts_no_python(cluster, image):
    """Traced with strace: srun, and on the node slurmd with every process it
    forks (slurmstepd, the prolog and epilog, the task), open no file that
    Python opens when it starts, nor ask the node server.  The same job with
    --image does, which shows that the check can see a Python start."""
    pid = int((cluster.layout.root / "run" / "slurmd-n1.pid").read_text())
    # --exclusive: no other job may start on n1 while the trace watches it
    node, client, _ = waiting.traced(cluster, pid, ["srun", "--exclusive", "-N1", "-w", "n1", "true"])
    assert "slurmstepd" in node or "slurm" in node, "the node trace saw nothing"
    assert waiting.python_opens(client) == []
    assert waiting.python_opens(node) == [] and waiting.node_server_calls(node) == []
    node, client, _ = waiting.traced(cluster, pid, ["srun", "-N1", "-w", "n1", f"--image={image}", "true"])
    assert waiting.python_opens(client) and (waiting.python_opens(node) or waiting.node_server_calls(node))


def test_no_container_remains_after_jobs(cluster, image):
    """Every container is gone once the jobs ended: no mount of any process
    shows the container paths, no loop device, no holder process."""
    cluster.assert_idle()
    udi = str(cluster.layout.root / "run")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                mounts = Path(f"/proc/{entry}/mountinfo").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            assert f" {udi}/udi" not in mounts, f"process {entry} still sees a container mount"
            assert not cmdline.startswith(b"shifter-holder"), f"holder {entry} still alive"
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(cluster.layout.root / "images") not in loops
    assert not list((cluster.layout.root / "run" / "shifter").glob("job*"))


def test_a_typo_in_the_plugin_arguments_stops_every_job(cluster, readable_tmp):
    env = cluster.client_env_with_plugstack(readable_tmp, cluster.plugstack_line() + " enable_cmm=0")
    result = cluster.srun("-N1", "true", env=env, check=False)
    assert result.returncode != 0
    assert "bad plugin argument 'enable_cmm=0'" in result.stderr, result.stderr


def test_the_callers_python_variables_do_not_reach_the_plugin(cluster, image):
    """PYTHONHOME pointing nowhere and a PYTHONPATH with a shifter_core that
    raises on import change nothing: the plugin's Python ignores them."""
    evil = cluster.home / "evil-python"
    (evil / "shifter_core").mkdir(parents=True, exist_ok=True)
    (evil / "shifter_core" / "__init__.py").write_text("raise SystemExit('the caller picked the code')\n")
    subprocess.run(["chown", "-R", f"{cluster.uid}", str(evil)], check=True)
    env = {"PYTHONHOME": "/nonexistent", "PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil)}
    result = cluster.srun("-N1", f"--image={image}", "--autoshift", "grep", "PRETTY_NAME", "/etc/os-release",
                          env=env)
    assert "shifter-py test image" in result.stdout
    assert cluster.srun("-N1", "true", env=env).returncode == 0
    shutil.rmtree(evil)
