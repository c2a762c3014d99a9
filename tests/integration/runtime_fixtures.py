"""Helpers for building real containers without Slurm (volumes, perNodeCache, modules).

A `Site` is a scratch directory that any user can traverse (so that user
volume sources are resolved with the user's own permissions, as on a node),
holding a udiRoot.conf, an image directory and whatever the test adds.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from shifter_core import config, container, etcfiles
from shifter_core.imagestore import ImageStore
from tests.integration.test_container import _in_container, _make_image  # noqa: F401 (re-exported)

MKFS_XFS = shutil.which("mkfs.xfs", path="/usr/sbin:/sbin:/usr/bin:/bin")
MKFS_EXT4 = shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:/usr/bin:/bin")
EXTRA_APPLETS = ("dd", "df", "mkdir", "rm", "sync", "head", "wc")


class Site:
    """A scratch site: `path` is root-owned 0755; `config(**keys)` writes udiRoot.conf."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="shifter-site-"))
        os.chmod(self.path, 0o755)
        (self.path / "etc").mkdir()
        (self.path / "images").mkdir()
        self._jobs: list[int] = []

    def config(self, **keys: str) -> config.UdiRootConfig:
        lines = {
            "udiMount": f"{self.path}/udi", "loopMount": f"{self.path}/loop",
            "imagePath": f"{self.path}/images", "etcPath": f"{self.path}/etc",
            "runDir": f"{self.path}/run", "system": "test", "imageGateway": "http://127.0.0.1:1",
            "populateEtcDynamically": "1", "mountUdiRootWritable": "1",
        }
        lines.update(keys)
        conf = self.path / "udiRoot.conf"
        conf.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
        os.chmod(conf, 0o644)
        return config.load(str(conf))

    def image(self, name: str, extra=None):
        """A busybox image (with a few more applets), published in this site's image dir."""
        def content(tree):
            for applet in EXTRA_APPLETS:
                if not os.path.lexists(tree / "bin" / applet):
                    os.symlink("busybox", tree / "bin" / applet)
            if extra:
                extra(tree)
        return _make_image(self.path, name, f"{name} test image", content)

    def create(self, cfg, meta, job_id: int, *, user: str = "nobody", volumes: str = "",
               modules: str | None = None, account: etcfiles.User | None = None):
        """Build a container as the prolog would; remembered for `cleanup`."""
        self._jobs.append(job_id)
        spec = container.ContainerSpec(
            job_id=job_id, node="nodeA", image=meta,
            image_file=ImageStore(cfg.image_path).image_path(meta.id),
            user=account or etcfiles.User.lookup(pwd.getpwnam(user).pw_uid),
            volumes=cfg.user_volumes(volumes), modules=cfg.select_modules(modules),
            hosts=("nodeA",), request=f"docker:test/{job_id}")
        return container.create(cfg, spec)

    def cleanup(self, cfg) -> None:
        for job_id in self._jobs:
            container.destroy(cfg, job_id, "nodeA")
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.path)], check=True)


def run(job, script: str, *, as_user: bool = True) -> str:
    """Run `script` in the container as a task would; return its output, failing on non-zero."""
    result = _in_container(job, script, as_user=as_user)
    assert result.returncode == 0, result.stdout
    return result.stdout


def mounts_under(path: str, *, besides=None) -> list[str]:
    """Lines of any process's mountinfo that mention `path`, except processes
    inside the container `besides` (there they belong)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if besides is not None and os.stat(f"/proc/{entry}/ns/mnt").st_ino == besides.mntns:
                    continue
                with open(f"/proc/{entry}/mountinfo") as f:
                    found += [line for line in f if f" {path}" in line]
            except OSError:
                pass
    return found


def loop_backing_files() -> dict[str, str]:
    """Every attached loop device and the file behind it (" (deleted)" once unlinked)."""
    devices = {}
    for name in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                devices[f"/dev/{name}"] = f.read().rstrip("\n")
        except OSError:
            pass
    return devices


# --- on the mini-cluster ------------------------------------------------------

FAILING_NODE = "n3"      # jobs whose prolog is meant to fail run here, and the node is resumed


def push_image(cluster, name: str, extra_entries: list, **config) -> str:
    """Push a busybox image with `extra_entries` (and `config`: oci.ImageConfig's fields)
    to the cluster's registry, pull it through the gateway, and return its descriptor
    (docker:<name>:latest)."""
    from ci.harness import oci
    with tempfile.TemporaryDirectory(prefix="oci-") as tmp:
        layout = oci.Layout(tmp)
        layer = layout.add_layer(oci.busybox_entries() + list(extra_entries))
        layout.add_image([layer], oci.busybox_config(**config), tag="build")
        layout.push("build", f"{cluster.registry}/{name}:latest")
    descriptor = f"docker:{name}:latest"
    cluster.run(["shifterimg", "pull", descriptor], timeout=300)
    return descriptor


def failed_job(cluster, *sbatch_args: str) -> tuple[int, str]:
    """Submit a job whose prolog must refuse it on FAILING_NODE; return its id and the reason.

    A failure the job caused fails the job, not the node: the job ends FAILED
    (not requeued, not held), its batch script never runs, the reason is in its
    output file and its AdminComment, and the node stays in service."""
    job = cluster.sbatch("#!/bin/sh\necho the job ran\n", "-w", FAILING_NODE, *sbatch_args)
    assert cluster.wait(job) == "FAILED", cluster.job_fields(job)
    assert_in_service(cluster, FAILING_NODE)
    output = cluster.output(job)
    assert "the job ran" not in output, output
    prefix = f"shifter: job {job} cannot run on {FAILING_NODE}: "
    reasons = [line.split(prefix, 1)[1].strip() for line in output.splitlines() if prefix in line]
    assert reasons, f"no reason in the output of job {job}:\n{output}"
    assert cluster.job_fields(job)["AdminComment"] == f"shifter: {reasons[0]}"
    return job, reasons[0]


def assert_in_service(cluster, node: str, timeout: float = 30) -> None:
    """`node` takes jobs (other sessions' jobs may be running on it): not drained,
    not down, responding (a resumed node may show `idle*` until slurmctld pings it)."""
    deadline = time.monotonic() + timeout
    while (state := cluster.node_states()[node]) not in ("idle", "mixed", "allocated"):
        assert time.monotonic() < deadline, f"{node} is {state}"
        time.sleep(0.3)


def assert_no_container_left(cluster, job_id: int) -> None:
    """Job `job_id` has no holder left (nor one of its steps), no process outside the containers of
    other live jobs sees a container mount, and no cache file or loop device remains."""
    holders = {pid: _cmdline(pid) for pid in os.listdir("/proc")
               if pid.isdigit() and _cmdline(pid).startswith("shifter-holder:")}
    assert not [c for c in holders.values() if c.startswith((f"shifter-holder:{job_id}:", f"shifter-holder:{job_id}."))]
    others = {os.stat(f"/proc/{pid}/ns/mnt").st_ino for pid in holders if os.path.exists(f"/proc/{pid}")}
    udi = str(cluster.layout.run / "udiMount")
    for pid in os.listdir("/proc"):
        try:
            if not pid.isdigit() or os.stat(f"/proc/{pid}/ns/mnt").st_ino in others:
                continue
            with open(f"/proc/{pid}/mountinfo") as f:
                assert not [line for line in f if f" {udi}" in line], f"process {pid} sees a container"
        except OSError:
            pass
    cache = str(cluster.layout.node_cache)
    assert not [f for f in loop_backing_files().values() if f.startswith(cache + "/")]
    assert not os.path.isdir(cache) or os.listdir(cache) == []


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""
