"""Steps with a view of their own, on the mini-cluster: a step whose image (or
volumes) is not its job's container's runs in a container of its own, built on
each of its nodes (by the node server, else by its slurmstepd's Python) and gone
when the step ends, however it ends."""
from __future__ import annotations

import os
import signal
import time

import pytest

from shifter_core.container import procfs
from shifter_core.spank import nodeserver
from tests.integration import waiting
from tests.integration.registry_images import VERSION_FILE, push_image
from tests.integration.runtime_fixtures import assert_in_service, assert_no_container_left

pytestmark = [pytest.mark.cluster, pytest.mark.root]

SHOW = f"echo $(hostname) $(cat /{VERSION_FILE}) uid=$(id -u)"


@pytest.fixture(scope="module")
def images(cluster):
    """Two images told apart by /etc/shifter-test-version (A and B), pulled."""
    pushed = [push_image(cluster, "steps", "v1", version=version) for version in ("A", "B")]
    for image in pushed:
        cluster.run(["shifterimg", "pull", image.descriptor], timeout=300)
    return [image.descriptor for image in pushed]


def _versions(text: str) -> list[tuple[str, str]]:
    """(node, version) of each line SHOW printed, in order."""
    return [tuple(line.split()[:2]) for line in text.splitlines() if line.startswith("n") and "uid=" in line]


def _holders(job_id: int) -> dict[int, str]:
    """The holder processes of the job's step containers: pid -> name."""
    names = {pid: procfs.command_name(pid) or "" for pid in procfs.pids()}
    return {pid: name for pid, name in names.items() if name.startswith(f"shifter-holder:{job_id}.")}


def test_an_allocation_without_image_runs_each_step_in_its_own_image(cluster, images):
    a, b = images
    job = cluster.sbatch(f"#!/bin/sh\nsrun -N2 --image={a} --autoshift sh -c '{SHOW}'\n"
                         f"srun -N2 --image={b} --autoshift sh -c '{SHOW}'\n"
                         "test -e /etc/debian_version && echo batch-on-host\n", "-N2")
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    out = cluster.output(job)
    seen = _versions(out)
    assert [version for _, version in seen] == ["A", "A", "B", "B"], out
    assert len({node for node, _ in seen[:2]}) == 2 and len({node for node, _ in seen[2:]}) == 2, out
    assert f"uid={cluster.uid}" in out and "batch-on-host" in out
    cluster.wait_until_settled()
    assert _holders(job) == {}
    assert_no_container_left(cluster, job)


def test_a_step_of_an_image_job_runs_another_image_and_the_jobs_steps_keep_theirs(cluster, images):
    """The batch script runs on the host here: inside the image (--autoshift) srun is the
    image's, which knows no shifter option (docs/steps.md)."""
    a, b = images
    show = f"sh -c 'echo {{}} $(cat /{VERSION_FILE})'"
    script = (f"#!/bin/sh\nsrun -N1 --autoshift {show.format('job-step')}\n"
              f"srun -N1 --image={b} --autoshift {show.format('own-step')}\n"
              f"srun -N1 --autoshift {show.format('job-step')}\n")
    job = cluster.sbatch(script, "-N1", f"--image={a}")
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    lines = [line for line in cluster.output(job).splitlines() if line.split()[0] in ("job-step", "own-step")]
    assert lines == ["job-step A", "own-step B", "job-step A"], cluster.output(job)
    cluster.wait_until_settled()
    assert_no_container_left(cluster, job)


def test_a_step_of_its_own_image_starts_no_python_in_srun_nor_on_the_node(cluster, images):
    """The second time, traced with strace: salloc and srun pin from the user's submit
    plans in C, the node server builds the step's container and removes it, and the
    tasks enter it through the C fast path; nothing on n1 but the server runs Python."""
    a, b = images
    argv = ["salloc", "-N1", "-w", "n1", f"--image={a}", "srun", f"--image={b}", "--autoshift", "sh", "-c", SHOW]
    first = cluster.run(argv)           # pins in Python, keeps the plans; n1 gets a node server
    assert [version for _, version in _versions(first.stdout)] == ["B"], first.stdout + first.stderr
    cluster.wait_until_settled()
    slurmd = int((cluster.layout.root / "run" / "slurmd-n1.pid").read_text())
    node, client, result = waiting.traced(cluster, slurmd, argv)
    assert [version for _, version in _versions(result.stdout)] == ["B"], result.stdout + result.stderr
    assert waiting.python_opens(client) == [], "salloc or srun started Python"
    assert waiting.python_opens(node) == [], "Python started on n1"
    # the job's prolog and epilog, the step's own container built and removed
    assert len(waiting.node_server_calls(node)) == 4, node
    assert not list((cluster.layout.root / "run" / "shifter").glob("job*"))


def test_without_a_node_server_the_steps_slurmstepd_builds_its_container(cluster, images):
    """A node server steps aside once shifter's code changed on disk (nodeserver.py);
    until a prolog starts the next one, a step's slurmstepd builds and removes its
    own container in its own Python."""
    _, b = images
    module = nodeserver.__file__
    st = os.stat(module)
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        slurmd = int((cluster.layout.root / "run" / "slurmd-n1.pid").read_text())
        node, _, result = waiting.traced(
            cluster, slurmd, ["salloc", "-N1", "-w", "n1", "srun", f"--image={b}", "--autoshift", "sh", "-c", SHOW])
    finally:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [version for _, version in _versions(result.stdout)] == ["B"], result.stdout + result.stderr
    assert waiting.python_opens(node), "slurmstepd did not start Python"
    assert not list((cluster.layout.root / "run" / "shifter").glob("job*"))
    assert not [pid for pid in procfs.pids() if (procfs.command_name(pid) or "").startswith("shifter-holder:")]


def test_a_step_whose_image_cannot_be_set_up_fails_with_the_reason_and_the_node_stays(cluster, images):
    """A step's own container that cannot be built (its image file is gone from the
    node's image directory) fails that step, with the reason in srun's stderr."""
    victim = push_image(cluster, "steps-broken", "v1", version="C")
    cluster.run(["shifterimg", "pull", victim.descriptor], timeout=300)
    image_id = victim.digest.split(":", 1)[1]
    squashfs = cluster.layout.images / f"{image_id}.squashfs"
    assert squashfs.exists(), sorted(os.listdir(cluster.layout.images))
    hidden = squashfs.with_suffix(".hidden")
    squashfs.rename(hidden)
    try:
        job = cluster.sbatch(f"#!/bin/sh\nsrun -N1 -w n3 --image={victim.descriptor} --autoshift echo ran\n"
                             "echo after: $?\n", "-N1", "-w", "n3")
        assert cluster.wait(job) == "COMPLETED", cluster.output(job)
        out = cluster.output(job)
        assert "ran" not in out.split(), out
        assert [line for line in out.splitlines() if f"step {job}.0 cannot run on n3: " in line], out
        assert "after: 0" not in out
    finally:
        hidden.rename(squashfs)
    assert_in_service(cluster, "n3")
    cluster.wait_until_settled()
    assert _holders(job) == {}


@pytest.mark.parametrize("how", ["scancel", "slurmd restarted", "slurmstepd killed"])
def test_a_steps_container_goes_when_the_step_ends_however_it_ends(cluster, images, how):
    """A step's container goes with its step; if its slurmstepd is killed (and cannot
    end it), with the job: the job's epilog ends what is left, even for a job
    without any shifter option."""
    _, b = images
    job = cluster.sbatch(f"#!/bin/sh\nsrun -N1 -w n2 --image={b} --autoshift sleep 300\nsleep 300\n",
                         "-N1", "-w", "n2")
    try:
        holders = waiting.until(lambda: _holders(job), 60, "the step's container was never built")
        assert list(holders.values()) == [f"shifter-holder:{job}.0:n2"]
        if how == "scancel":
            cluster.run(["scancel", f"{job}.0"])
        elif how == "slurmstepd killed":
            os.kill(_stepd(job, 0), signal.SIGKILL)
            cluster.run(["scancel", str(job)])
            cluster.wait(job)
            # the srun whose step died is orphaned, out of Slurm's reach (proctrack/linuxproc)
            for pid in _sruns(b):
                os.kill(pid, signal.SIGKILL)
            waiting.until(lambda: not _sruns(b), 30, "the orphaned srun did not end")
        else:
            cluster.restart_slurmd("n2")
            time.sleep(1)
            assert _holders(job) == holders, "a slurmd restart must leave a running step's container"
            cluster.run(["scancel", f"{job}.0"])
        waiting.until(lambda: not _holders(job), 60, f"the step's container outlived the step ({how})")
        if how != "slurmstepd killed":
            assert cluster.job_state(job) == "RUNNING"
    finally:
        cluster.run(["scancel", str(job)], check=False)
    cluster.wait(job)
    cluster.wait_until_settled()
    assert_no_container_left(cluster, job)


def _sruns(image: str) -> list[int]:
    """The srun processes this test's batch script started (the image names them)."""
    return [pid for pid in procfs.pids()
            if procfs.command_name(pid) == "srun" and image in _cmdline(pid) and procfs.state(pid) not in (None, "Z")]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stepd(job_id: int, step: int) -> int:
    """The pid of slurmstepd for one step (its title is `slurmstepd: [<job>.<step>]`)."""
    title = f"slurmstepd: [{job_id}.{step}]"
    found = [pid for pid in procfs.pids() if procfs.command_name(pid) == title]
    assert found, f"no slurmstepd for step {job_id}.{step}"
    return found[0]


def test_a_step_whose_pin_srun_export_dropped_runs_only_the_jobs_image(cluster, images):
    """srun --export=NONE keeps the SHIFTER_ variables that carry srun's pin from the
    step: a step that asks for another image than its job's fails, saying so, in an
    allocation without image and in a job with one (never in the job's image instead);
    one that asks for the job's image runs in it."""
    a, b = images
    result = cluster.run(["salloc", "-N1", "-w", "n1", "srun", "--export=NONE", f"--image={b}", "--autoshift",
                          "true"], check=False)
    assert result.returncode != 0
    reason = "srun --export=NONE (or a list without the SHIFTER_ variables) drops it"
    assert reason in result.stderr, result.stderr
    show = f"/bin/sh -c 'echo {{}} $(cat /{VERSION_FILE})'"
    job = cluster.sbatch(f"#!/bin/sh\nsrun -N1 --export=NONE --image={b} --autoshift {show.format('other')}\n"
                         f"srun -N1 --export=NONE --image={a} --autoshift {show.format('same')}\n",
                         "-N1", "-w", "n1", f"--image={a}")
    cluster.wait(job)
    out = cluster.output(job)
    assert reason in out and "other" not in out, out
    assert "same A" in out, out
    assert_in_service(cluster, "n1")
