"""Images are pinned at submit: a job runs the digest its tag named when it was
submitted, on every node, even if the tag moves while the job waits, and no
node asks the gateway when the job starts.  Bad --image and --volume values
are refused by sbatch, salloc and srun with one line, before a job exists."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration import waiting
from tests.integration.registry_images import job_fields, lookup, push_image

pytestmark = [pytest.mark.cluster, pytest.mark.root]

REPORT = 'echo "$(hostname) $(cat /etc/shifter-test-version) $SHIFTER_IMAGE_DIGEST"'


@contextlib.contextmanager
def traced_connects(cluster):
    """connect(2) calls of every node's slurmd and all it starts (prolog, slurmstepd,
    tasks) while the block runs, as {node: strace output}."""
    traces: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.ExitStack() as tracing:
            for node in cluster.nodes:
                pid = int((cluster.layout.root / "run" / f"slurmd-{node}.pid").read_text())
                tracing.enter_context(waiting.strace(pid, "connect", f"{tmp}/{node}"))
            yield traces
        traces.update({node: Path(f"{tmp}/{node}").read_text(errors="replace") for node in cluster.nodes})


def _gateway_connects(trace: str, gateway_url: str) -> list[str]:
    host, port = gateway_url.removeprefix("http://").rsplit(":", 1)
    return [line for line in trace.splitlines()
            if f"htons({port})" in line and f'inet_addr("{host}")' in line]


def test_a_tag_moved_while_the_job_waits_still_runs_the_pinned_digest_everywhere(cluster):
    # the gateway pulls a READY tag again only after PullUpdateTimeout (short in the mini-cluster)
    again_after = json.loads((cluster.layout.etc / "imagemanager.json").read_text())["PullUpdateTimeout"]
    old = push_image(cluster, "pinning", "v1", version="old")
    cluster.run(["shifterimg", "pull", old.descriptor], timeout=300)
    assert lookup(cluster, old.descriptor) == old.digest
    job = cluster.sbatch(f"#!/bin/sh\n{REPORT}\nsrun -N3 sh -c '{REPORT}'\n",
                         "-N3", "--hold", f"--image={old.descriptor}", "--autoshift")
    try:
        fields = job_fields(cluster, job)
        assert (fields["JobState"], fields["Reason"]) == ("PENDING", "JobHeldUser"), fields

        new = push_image(cluster, "pinning", "v1", version="new",
                         repository=old.descriptor.removeprefix("docker:").rsplit(":", 1)[0])

        def pulled_again() -> bool:      # the gateway keeps the READY tag until PullUpdateTimeout
            cluster.run(["shifterimg", "pull", old.descriptor], timeout=300)
            return lookup(cluster, old.descriptor) == new.digest
        waiting.until(pulled_again, again_after + 120, "the moved tag was not pulled again", interval=0.5)
        assert new.digest != old.digest

        with traced_connects(cluster) as traces:
            cluster.run(["scontrol", "release", str(job)])
            assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    finally:
        cluster.run(["scancel", str(job)], as_user=False, check=False)
    lines = [line for line in cluster.output(job).splitlines() if re.match(r"^n\d ", line)]
    assert sorted(lines) == sorted([f"n1 old {old.digest}"] * 2 + [f"n2 old {old.digest}",
                                                                  f"n3 old {old.digest}"]), cluster.output(job)
    for node, trace in traces.items():
        assert "connect(" in trace, f"the trace of {node} saw nothing: tracing did not work"
        assert _gateway_connects(trace, cluster.gateway_url) == [], f"{node} asked the gateway"
    cluster.assert_idle()


def test_a_new_job_gets_the_digest_the_tag_names_now(cluster):
    image = push_image(cluster, "pinning-now", "v1", version="first")
    cluster.run(["shifterimg", "pull", image.descriptor], timeout=300)
    result = cluster.srun("-N1", f"--image={image.descriptor}", "--autoshift", "sh", "-c", REPORT)
    assert result.stdout.split()[1:] == ["first", image.digest]


def test_a_new_job_pinned_from_its_plan_gets_the_digest_the_tag_names_now(cluster):
    """The first srun of these options pins in Python and keeps the user's submit plan;
    the next ones pin in C from it (spank/fastpath.c: fastpath_pin), starting no
    Python, and still ask the gateway: a moved tag moves their pin too."""
    again_after = json.loads((cluster.layout.etc / "imagemanager.json").read_text())["PullUpdateTimeout"]
    old = push_image(cluster, "pinning-plan", "v1", version="old")
    cluster.run(["shifterimg", "pull", old.descriptor], timeout=300)
    argv = ["srun", "-N1", f"--image={old.descriptor}", "--autoshift", "sh", "-c", REPORT]
    assert cluster.run(argv).stdout.split()[1:] == ["old", old.digest]              # Python, keeps the plan
    with tempfile.TemporaryDirectory(dir=cluster.home) as mine:
        os.chown(mine, cluster.uid, -1)
        traced = cluster.run(["strace", "-f", "-qq", "-e", "trace=openat,open", "-o", f"{mine}/srun", *argv])
        trace = Path(f"{mine}/srun").read_text()
    assert traced.stdout.split()[1:] == ["old", old.digest]
    assert "pyvenv.cfg" not in trace and "/encodings/" not in trace, "srun started Python"

    new = push_image(cluster, "pinning-plan", "v1", version="new",
                     repository=old.descriptor.removeprefix("docker:").rsplit(":", 1)[0])

    def pulled_again() -> bool:
        cluster.run(["shifterimg", "pull", old.descriptor], timeout=300)
        return lookup(cluster, old.descriptor) == new.digest
    waiting.until(pulled_again, again_after + 120, "the moved tag was not pulled again", interval=0.5)
    assert cluster.run(argv).stdout.split()[1:] == ["new", new.digest]


# --- refused at submit ----------------------------------------------------------

def _no_job_of(cluster) -> bool:
    queue = cluster.run(["squeue", "-h", "-u", cluster.user, "-o", "%j"]).stdout.split()
    return not any(name.startswith("refused-") for name in queue)


def _submit(cluster, command: str, *options: str) -> subprocess.CompletedProcess:
    argv = {
        "sbatch": ["sbatch", "--job-name=refused-batch", "--output=/dev/null", *options, "--wrap", "true"],
        "salloc": ["salloc", "--job-name=refused-alloc", *options, "true"],
        "srun": ["srun", "--job-name=refused-step", *options, "true"],
    }[command]
    return cluster.run(argv, check=False, timeout=60)


BAD_OPTIONS = [
    (("--image=docker:Ubuntu:22.04",),
     "shifter: invalid image 'docker:Ubuntu:22.04': repository part 'Ubuntu' must be lower-case letters"
     " and digits separated by . _ or -"),
    (("--image=docker:busybox:latest", "--volume=/etc:/etc"),
     "shifter: invalid volume '/etc:/etc': /etc belongs to the container's setup"),
    (("--image=docker:busybox:latest", "--volume=/dev/sda:/disk"),
     "shifter: invalid volume '/dev/sda:/disk': /dev/sda is a device or in /dev, and this site lets --volume"
     " bind only /dev/full from there (udiRoot.conf userVolumeDevices)"),
    (("--volume=/scratch:/data",), "shifter: --volume needs --image"),
    (("--image=docker:busybox:latest", "--env=HOME=/x"),
     "shifter: --env=HOME=/x: give variable names separated by ',', e.g. --env=HOME,TERM"),
    (("--image=docker:busybox:latest", "--workdir=app"),
     "shifter: --workdir=app: give an absolute path inside the container"),
]


@pytest.fixture(scope="module")
def busybox(cluster):
    """Pulled, and pinned once with no other option: the user has a submit plan for
    it, which the bad task options must not slip through (they are not in the plan)."""
    cluster.run(["shifterimg", "pull", "docker:busybox:latest"], timeout=300)
    cluster.srun("-N1", "--image=docker:busybox:latest", "true")


@pytest.mark.parametrize("command", ["sbatch", "salloc", "srun"])
@pytest.mark.parametrize("options,message", BAD_OPTIONS,
                         ids=["image", "volume-target", "volume-source", "no-image", "env", "workdir"])
def test_bad_options_are_refused_with_one_line_before_a_job_exists(cluster, busybox, command, options, message):
    result = _submit(cluster, command, *options)
    assert result.returncode != 0
    first = result.stderr.splitlines()[0]
    assert first == f"{command}: error: {message}", result.stderr
    assert "Submitted batch job" not in result.stdout and "Granted job allocation" not in result.stderr
    assert _no_job_of(cluster)


@pytest.mark.parametrize("command", ["sbatch", "salloc", "srun"])
def test_an_image_the_registry_does_not_have_is_refused_at_submit(cluster, command):
    missing = f"docker:test/no-such-image-{command}-{time.monotonic_ns()}:v1"
    result = _submit(cluster, command, f"--image={missing}")
    assert result.returncode != 0
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{command}: error: shifter: {missing} cannot be pulled: "), result.stderr
    assert "not found" in first
    assert _no_job_of(cluster)


def test_the_refusals_say_nothing_else_of_ours(cluster, busybox):
    """Slurm adds its own two lines after ours; the plugin prints exactly one."""
    result = _submit(cluster, "sbatch", "--image=docker:busybox:latest", "--volume=/etc:/etc")
    ours = [line for line in result.stderr.splitlines() if "shifter:" in line and "spank" not in line]
    assert len(ours) == 1, result.stderr
