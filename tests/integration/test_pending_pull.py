"""A job submitted while the gateway still pulls its image (holdJobsForPull=1 in
the mini-cluster): sbatch returns at once, the job waits held with the reason
in AdminComment, and runs pinned to the pulled digest once the image is
READY; a pull that fails ends the job with the pull's reason.

The images are made for each test and broken in the registry (one byte of
their own layer), so the gateway's pull keeps failing its digest check and
retrying until the test repairs the layer: the job waits exactly as long as
the test needs, whatever the machine's speed."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from shifter_core import pullhold
from tests.integration.registry_images import job_fields, lookup, push_image

pytestmark = [pytest.mark.cluster, pytest.mark.root]

SCRIPT = "#!/bin/sh\ncat /etc/shifter-test-version\necho digest=$SHIFTER_IMAGE_DIGEST\n"
SUBMIT_LIMIT = 10 + 5      # pullWaitAtSubmit (default 10 s) and some slack: never the whole pull


@pytest.fixture(autouse=True)
def hold_configured(cluster):
    """The cluster must run job_submit.lua and the releaser (ci/harness/cluster.py does)."""
    if not (cluster.layout.etc / "job_submit.lua").exists() or \
            "JobSubmitPlugins=lua" not in (cluster.layout.etc / "slurm.conf").read_text():
        pytest.fail("the mini-cluster runs without job_submit.lua: it was started by an older"
                    " ci/harness/cluster.py; restart it (ci/cluster down; ci/cluster up)")


@dataclasses.dataclass
class Submitted:
    job: int
    stderr: str
    took: float          # seconds sbatch ran
    output: Path         # the job's output file (job ids restart with the cluster: a name of its own)


def _submit(cluster, image, *options: str) -> Submitted:
    name = f"pending-{time.monotonic_ns()}"
    script = cluster.home / f"{name}.sh"
    script.write_text(SCRIPT)
    os.chown(script, cluster.uid, -1)
    script.chmod(0o755)
    started = time.monotonic()
    result = cluster.run(["sbatch", "--parsable", f"--output={cluster.home}/{name}.out",
                          f"--image={image.descriptor}", "--autoshift", *options, str(script)], timeout=120)
    return Submitted(int(result.stdout.strip()), result.stderr, time.monotonic() - started,
                     cluster.home / f"{name}.out")


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout:.0f} s")
        time.sleep(0.3)


def test_a_job_waits_held_for_its_image_then_runs_pinned_to_it(cluster):
    image = push_image(cluster, "pending", "v1", version="pulled-after-submit")
    with image.broken():
        submitted = _submit(cluster, image, "-N2")
        job = submitted.job
        try:
            assert submitted.took < SUBMIT_LIMIT, f"sbatch took {submitted.took:.1f} s: it waited for the pull"
            assert f"shifter: the gateway is pulling {image.descriptor}" in submitted.stderr, submitted.stderr
            fields = job_fields(cluster, job)
            assert fields["JobState"] == "PENDING" and fields["Reason"].startswith("JobHeld"), fields
            assert fields["AdminComment"].startswith(pullhold.waiting(image.descriptor)), fields
            # the reason follows the pull: the gateway's retries show up in it
            waiting = _wait_for(lambda: "attempt" in job_fields(cluster, job).get("AdminComment", ""),
                                30, "the pull's progress never reached AdminComment")
            assert waiting
            refused = cluster.run(["scontrol", "release", str(job)], check=False)
            assert refused.returncode != 0
            assert f"Job is in held state, pending scheduler release for job {job}" in refused.stderr, \
                refused.stderr
            assert job_fields(cluster, job)["JobState"] == "PENDING"
        except BaseException:
            cluster.run(["scancel", str(job)], as_user=False, check=False)
            raise
    try:
        assert cluster.wait(job, timeout=120) == "COMPLETED", submitted.output.read_text()
    finally:
        cluster.run(["scancel", str(job)], as_user=False, check=False)
    digest = lookup(cluster, image.descriptor)
    assert digest == image.digest
    assert submitted.output.read_text().split() == ["pulled-after-submit", f"digest={digest}"]
    fields = job_fields(cluster, job)
    assert pullhold.pinned_digest(fields["Comment"]) == digest
    assert fields["AdminComment"] == pullhold.pinned(image.descriptor, digest)
    cluster.assert_idle()


def test_a_failed_pull_ends_the_job_with_the_pull_reason(cluster):
    image = push_image(cluster, "pending-broken", "v1", version="never")
    image.break_for_good()
    submitted = _submit(cluster, image, "-N1")
    job = submitted.job
    try:
        assert submitted.took < SUBMIT_LIMIT
        state = _wait_for(lambda: cluster.job_state(job) if cluster.job_state(job) != "PENDING" else None,
                          120, "the job still waits for a pull that keeps failing")
    finally:
        cluster.run(["scancel", str(job)], as_user=False, check=False)
    assert state == "CANCELLED"
    fields = job_fields(cluster, job)
    reason = fields["AdminComment"]
    assert reason.startswith(f"shifter: {image.descriptor} could not be pulled: "), fields
    assert "digest" in reason, reason        # the gateway's own words about the damaged blob
    assert not submitted.output.exists(), "the job ran"
    cluster.assert_idle()


def test_a_user_cannot_forge_or_drop_a_pin(cluster):
    forged = "shifter-pin=sha256:" + "0" * 64
    result = cluster.run(["sbatch", f"--comment={forged}", "--output=/dev/null", "--wrap", "true"],
                         check=False)
    assert result.returncode != 0
    assert "may not contain a shifter-pin= token" in result.stderr, result.stderr

    image = push_image(cluster, "pending-forge", "v1", version="x")
    with image.broken():
        job = _submit(cluster, image, "-N1").job
        try:
            refused = cluster.run(["scontrol", "update", f"JobId={job}", f"Comment={forged}"], check=False)
            assert refused.returncode != 0
            assert f"Access/permission denied for job {job}" in refused.stderr, refused.stderr
            allowed = cluster.run(["scontrol", "update", f"JobId={job}", "Comment=my own words"], check=False)
            assert allowed.returncode == 0, allowed.stderr
        finally:
            cluster.run(["scancel", str(job)], as_user=False, check=False)
    cluster.assert_idle()


def test_without_hold_the_submission_is_refused_until_the_image_is_ready(cluster):
    """holdJobsForPull=0 (the default): the pull starts, the submission is refused."""
    image = push_image(cluster, "pending-refused", "v1", version="x")
    site = cluster.layout.root / f"test-nohold-{time.monotonic_ns()}"
    site.mkdir(mode=0o755)
    try:
        udiroot = site / "udiRoot.conf"
        udiroot.write_text(re.sub(r"(?m)^holdJobsForPull=.*$", "holdJobsForPull=0",
                                  (cluster.layout.etc / "udiRoot.conf").read_text()))
        plugstack = site / "plugstack.conf"
        line = (cluster.layout.etc / "plugstack.conf").read_text().strip().splitlines()[-1]
        plugstack.write_text(re.sub(r"config=\S+", f"config={udiroot}", line) + "\n")
        conf = site / "slurm.conf"
        conf.write_text(re.sub(r"(?m)^PlugStackConfig=.*$", f"PlugStackConfig={plugstack}",
                               (cluster.layout.etc / "slurm.conf").read_text()))
        for path in (udiroot, plugstack, conf):
            path.chmod(0o644)
        with image.broken():
            result = cluster.run(["sbatch", f"--image={image.descriptor}", "--output=/dev/null", "--wrap", "true"],
                                 check=False, env={"SLURM_CONF": str(conf)})
    finally:
        for path in site.iterdir():
            path.unlink()
        site.rmdir()
    assert result.returncode != 0
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"sbatch: error: shifter: {image.descriptor} is not ready on ci yet:"
                            " the gateway is pulling it ("), result.stderr
    assert first.endswith(f"submit again once `shifterimg lookup {image.descriptor}` finds it"), first


def test_srun_waits_in_the_queue_for_its_image_then_runs_it(cluster):
    """An interactive command waits like any pending allocation, and runs pinned."""
    image = push_image(cluster, "pending-srun", "v1", version="interactive")
    name = f"pending-srun-{time.monotonic_ns()}"
    with image.broken():
        srun = subprocess.Popen(
            ["/usr/sbin/runuser", "-u", cluster.user, "--", "srun", f"--job-name={name}", "-N1",
             f"--image={image.descriptor}", "--autoshift", "cat", "/etc/shifter-test-version"],
            env=cluster.env, cwd=cluster.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            job = _wait_for(lambda: cluster.run(["squeue", "-h", "-n", name, "-o", "%i"]).stdout.strip(),
                            30, "srun queued no job")
            fields = job_fields(cluster, int(job))
            assert fields["JobState"] == "PENDING" and fields["AdminComment"].startswith(
                pullhold.waiting(image.descriptor)), fields
        except BaseException:
            srun.kill()
            srun.communicate()
            cluster.run(["scancel", "-n", name], as_user=False, check=False)
            raise
    out, err = srun.communicate(timeout=120)
    assert srun.returncode == 0, err
    assert out.split() == ["interactive"]
    assert f"shifter: the gateway is pulling {image.descriptor}" in err
    cluster.assert_idle()
