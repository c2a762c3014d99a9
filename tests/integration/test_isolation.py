"""Containers on the real cluster are isolated from each other and from the
node, and what an image ships cannot give a task privileges."""
from __future__ import annotations

import re
import time

import pytest

from ci.harness import oci

pytestmark = [pytest.mark.cluster, pytest.mark.root]


def _push_variant(cluster, tmp_path, name: str, release: str, extra=()) -> str:
    """A busybox image with its own os-release (and `extra` entries), pulled
    through the gateway; returns its descriptor."""
    layout = oci.Layout(str(tmp_path / name))
    entries = [e for e in oci.busybox_entries() if e.name != "etc/os-release"]
    entries += [oci.File("etc/os-release", f'PRETTY_NAME="{release}"\n'), *extra]
    layout.add_image([layout.add_layer(entries)], oci.busybox_config(), tag="v1")
    layout.push("v1", f"{cluster.registry}/isolation/{name}:v1")
    image = f"docker:isolation/{name}:v1"
    cluster.run(["shifterimg", "pull", image], timeout=300)
    return image


def test_two_jobs_with_two_images_share_a_node(cluster, tmp_path):
    first = _push_variant(cluster, tmp_path, "first", "Isolation First")
    second = _push_variant(cluster, tmp_path, "second", "Isolation Second")
    script = "#!/bin/sh\nfor i in $(seq 40); do grep PRETTY_NAME /etc/os-release; sleep 0.1; done\n"
    jobs = [cluster.sbatch(script, "-n1", "-w", "n1", f"--image={image}", "--autoshift")
            for image in (first, second)]
    deadline = time.monotonic() + 60
    while not all(cluster.job_state(job) == "RUNNING" for job in jobs):
        assert time.monotonic() < deadline, "the two jobs never ran at the same time"
        time.sleep(0.2)
    with open("/proc/self/mountinfo") as f:
        host_mounts = f.read()
    assert "/run/udi" not in host_mounts and "squashfs" not in host_mounts
    for job in jobs:
        assert cluster.wait(job) == "COMPLETED"
    outputs = [set(cluster.output(job).split()) for job in jobs]
    assert outputs[0] == {'PRETTY_NAME="Isolation'} | {'First"'}
    assert outputs[1] == {'PRETTY_NAME="Isolation'} | {'Second"'}


def test_setuid_root_and_device_nodes_in_an_image_give_nothing(cluster, tmp_path):
    busybox = oci.BUSYBOX
    image = _push_variant(cluster, tmp_path, "privileged", "Privileged", [
        oci.Dir("suid"),
        oci.HostFile("suid/id", busybox, mode=0o4755),           # busybox runs its argv[0]
        oci.CharDevice("dev/mem-again", 1, 1),
        oci.CharDevice("devnode", 1, 1),
    ])
    result = cluster.srun("-N1", f"--image={image}", "--autoshift", "sh", "-c",
                          "/suid/id -u; cat /devnode >/dev/null 2>&1; echo open=$?;"
                          " ls /dev/mem-again 2>&1; echo ls=$?", check=False)
    lines = result.stdout.split()
    assert lines[0] == str(cluster.uid), result.stdout + result.stderr
    assert "open=0" not in lines
    assert re.search(r"open=\d+", result.stdout)
