"""The container of a job on one node, built, entered and destroyed for real
(loop devices, squashfs, overlay, mount namespaces), without Slurm."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import textwrap

import pytest

from shifter_core import config, container, enter, etcfiles
from shifter_core.imagestore import ImageMeta, ImageStore

pytestmark = pytest.mark.root

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "cat", "id", "ls", "echo", "true", "grep", "stat", "touch", "test")


def _make_image(tmp_path, name: str, release: str, extra=None) -> ImageMeta:
    """A squashfs image in tmp_path/images named by a fake digest."""
    tree = tmp_path / f"tree-{name}"
    (tree / "bin").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "var").mkdir()
    subprocess.run(["cp", BUSYBOX, tree / "bin/busybox"], check=True)
    for applet in APPLETS:
        os.symlink("busybox", tree / "bin" / applet)
    (tree / "etc/os-release").write_text(f'PRETTY_NAME="{release}"\n')
    if extra:
        extra(tree)
    digest = "sha256:" + (name.encode().hex() * 64)[:64]
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    squashfs = images / f".{name}.partial"
    subprocess.run(["mksquashfs", tree, squashfs, "-quiet", "-noappend", "-all-root",
                    "-no-xattrs", "-comp", "zstd", "-Xcompression-level", "3"], check=True,
                   stdout=subprocess.DEVNULL)
    meta = ImageMeta(digest=digest, env=["PATH=/bin", f"IMAGE_NAME={name}"])
    ImageStore(str(images)).publish(meta, str(squashfs))
    return meta


@pytest.fixture
def site(tmp_path):
    (tmp_path / "etc").mkdir()
    home = tmp_path / "home"
    home.mkdir()
    text = textwrap.dedent(f"""\
        udiMount={tmp_path}/udi
        loopMount={tmp_path}/loop
        imagePath={tmp_path}/images
        etcPath={tmp_path}/etc
        runDir={tmp_path}/run
        system=test
        imageGateway=http://127.0.0.1:1
        populateEtcDynamically=1
        mountUdiRootWritable=1
        siteFs={home}:/home
        """)
    path = tmp_path / "udiRoot.conf"
    path.write_text(text)
    os.chmod(path, 0o644)
    os.chmod(tmp_path, 0o755)
    return config.load(str(path))


def _spec(cfg, meta, job_id, node="nodeA"):
    store = ImageStore(cfg.image_path)
    return container.ContainerSpec(
        job_id=job_id, node=node, image=meta, image_file=store.image_path(meta.id),
        user=etcfiles.User.lookup(pwd.getpwnam("nobody").pw_uid), hosts=("nodeA", "nodeA"),
        request=f"docker:test/{job_id}")


def _in_container(job, script: str, *, as_user: bool = True) -> subprocess.CompletedProcess:
    """Run `script` with busybox sh in a child that entered the container the
    way a Slurm task does (setns, chroot, bounding set, no_new_privs, user)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.dup2(write, 1)
            os.dup2(write, 2)
            enter.enter(job)
            if as_user:
                os.setgroups([])
                os.setresgid(job.gid, job.gid, job.gid)
                os.setresuid(job.uid, job.uid, job.uid)
            os.execv("/bin/sh", ["sh", "-c", script])
        finally:
            os._exit(127)
    os.close(write)
    with os.fdopen(read) as f:
        output = f.read()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(script, os.waitstatus_to_exitcode(status), output, "")


def _host_mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if f" {path}" in line]


def _loops_of(path: str) -> list[str]:
    out = subprocess.run(["losetup", "-j", path], capture_output=True, text=True).stdout
    return out.splitlines()


def test_create_enter_destroy(site, tmp_path):
    meta = _make_image(tmp_path, "alpha", "Alpha Test Image")
    job = container.create(site, _spec(site, meta, 101))
    try:
        assert job.alive()
        assert not _host_mounts_under(str(tmp_path)), "container mounts leaked into the host namespace"
        result = _in_container(job, "cat /etc/os-release; id -u; grep nobody /etc/passwd;"
                                    " cat /var/shifterConfig.json; cat /var/hostsfile;"
                                    " grep -E 'Cap(Eff|Prm|Bnd)|NoNewPrivs' /proc/self/status;"
                                    " ls -d /home")
        assert result.returncode == 0, result.stdout
        out = result.stdout
        assert 'PRETTY_NAME="Alpha Test Image"' in out
        assert f"\n{job.uid}\n" in out
        assert out.split("\n")[3] == ('{"identifier":"%s","user":"nobody","volMap":"","modules":""}'
                                       % meta.id)
        assert "nodeA\nnodeA\n" in out
        for cap in ("CapEff", "CapPrm", "CapBnd"):
            assert f"{cap}:\t0000000000000000" in out
        assert "NoNewPrivs:\t1" in out
        assert job.timings["total"] > 0
    finally:
        assert container.destroy(site, 101, "nodeA")
    assert not job.alive()
    assert not _loops_of(ImageStore(site.image_path).image_path(meta.id))
    assert not os.path.exists(container.state_path(site.run_dir, 101, "nodeA"))
    assert not container.destroy(site, 101, "nodeA"), "a second destroy must find nothing"


def test_two_jobs_two_images_same_node(site, tmp_path):
    alpha = _make_image(tmp_path, "alpha", "Alpha")
    beta = _make_image(tmp_path, "beta", "Beta")
    first = container.create(site, _spec(site, alpha, 201))
    second = container.create(site, _spec(site, beta, 202))
    try:
        assert first.mntns != second.mntns
        assert "Alpha" in _in_container(first, "cat /etc/os-release").stdout
        assert "Beta" in _in_container(second, "cat /etc/os-release").stdout
    finally:
        container.destroy(site, 201, "nodeA")
        container.destroy(site, 202, "nodeA")


def test_image_symlinks_cannot_redirect_site_files(site, tmp_path):
    """An image whose /etc/passwd, /var/run and /tmp point at host paths must
    get the site's files inside the container and leave the host untouched."""
    bait = tmp_path / "bait"
    bait.mkdir()

    def hostile(tree):
        os.symlink(str(bait / "passwd"), tree / "etc/passwd")
        os.symlink(str(bait), tree / "var/run")
        os.symlink(str(bait), tree / "opt")

    meta = _make_image(tmp_path, "hostile", "Hostile", hostile)
    job = container.create(site, _spec(site, meta, 301))
    try:
        out = _in_container(job, "cat /etc/passwd").stdout
        assert out.startswith("nobody:x:")
    finally:
        container.destroy(site, 301, "nodeA")
    assert os.listdir(bait) == []


def test_setuid_and_devices_from_the_image_are_inert(site, tmp_path):
    def privileged(tree):
        (tree / "suid").mkdir()
        (tree / "suid/id").write_bytes(open(BUSYBOX, "rb").read())   # busybox runs argv[0]
        os.chmod(tree / "suid/id", 0o4755)
        (tree / "dev").mkdir()
        os.mknod(tree / "dev/mem-copy", 0o666 | 0o020000, os.makedev(1, 1))
        os.mknod(tree / "devnode", 0o666 | 0o020000, os.makedev(1, 1))

    meta = _make_image(tmp_path, "priv", "Priv", privileged)
    job = container.create(site, _spec(site, meta, 401))
    try:
        out = _in_container(job, "/suid/id -u; cat /devnode; echo rc=$?").stdout
        assert out.splitlines()[0] == str(job.uid)
        assert "rc=0" not in out
    finally:
        container.destroy(site, 401, "nodeA")


def test_failed_setup_leaves_nothing(site, tmp_path):
    meta = _make_image(tmp_path, "gamma", "Gamma")
    spec = _spec(site, meta, 501)
    spec.image_file = str(tmp_path / "images" / "missing.squashfs")
    with pytest.raises(container.SetupFailed, match="image file .* is gone"):
        container.create(site, spec)
    assert not os.path.exists(container.state_path(site.run_dir, 501, "nodeA"))
    assert not container.destroy(site, 501, "nodeA")
