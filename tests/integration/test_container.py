"""The container of a job on one node, built, entered and destroyed for real
(loop devices, squashfs, overlay, mount namespaces), without Slurm."""
from __future__ import annotations

import os
import pwd
import subprocess
import textwrap
import time

import pytest

from shifter_core import config, container, enter, etcfiles, syscalls
from shifter_core.container import procfs
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


# --- the epilog's search for holders by name --------------------------------------

NOBODY = 65534
SLEEPER = "import ctypes, time; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); time.sleep(300)"   # PR_SET_DUMPABLE 0


def _wait_for(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    return result


def _children(pid: int) -> list[int]:
    return [child for child in procfs.pids() if (procfs.stat(child) or ("", 0, 0))[1] == pid]


def test_a_users_process_named_as_a_holder_is_left_alone(site):
    """Anyone may name a process `shifter-holder:<job>[.<step>]:<node>`, and make it
    non-dumpable so that its files in /proc are root's.  The epilog must neither kill it nor
    end the mount namespace it is in (one of its own here, with a second decoy in it)."""
    decoy_code = (f"import os\n"
                  f"if os.fork() == 0:\n"
                  f"    os.execv('/bin/sleep', ['shifter-holder:601.3:nodeA', '300'])\n"
                  f"os.execv('/usr/bin/python3', ['shifter-holder:601:nodeA', '-c', {SLEEPER!r}])\n")
    decoy = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "setpriv", f"--reuid={NOBODY}",
                              f"--regid={NOBODY}", "--clear-groups", "--", "/usr/bin/python3", "-c", decoy_code])
    step_decoy = None
    try:
        step_decoy = _wait_for(lambda: _children(decoy.pid), "the decoys did not start")[0]
        _wait_for(lambda: procfs.command_name(decoy.pid) == "shifter-holder:601:nodeA"
                  and os.stat(f"/proc/{decoy.pid}/status").st_uid == 0, "the decoy did not hide as root's")
        assert procfs.mount_namespace(decoy.pid) != procfs.mount_namespace(os.getpid())
        assert not container.destroy(site, 601, "nodeA")
        assert procfs.running(decoy.pid) and procfs.running(step_decoy)
    finally:
        _kill_left([step_decoy] if step_decoy else [], "shifter-holder:601.3:nodeA")
        decoy.kill()
        decoy.wait()


def test_the_epilog_never_ends_its_own_mount_namespace(site):
    """A root process named as a holder in the namespace the epilog runs in (the node's,
    on a real node) is killed, as a holder is, but the namespace is not: here a child in
    a namespace of its own plays the epilog, with a bystander beside it."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(reader)
            syscalls.unshare(syscalls.CLONE_NEWNS)
            named = os.fork()
            if named == 0:
                os.execv("/bin/sleep", ["shifter-holder:602:nodeA", "300"])
            bystander = subprocess.Popen(["/bin/sleep", "300"])
            os.write(writer, f"{named} {bystander.pid}\n".encode())
            _wait_for(lambda: procfs.command_name(named) == "shifter-holder:602:nodeA", "no holder-named process")
            container.destroy(site, 602, "nodeA")
            status = 0 if procfs.running(bystander.pid) and not procfs.running(named) else 2
            bystander.kill()
            bystander.wait()
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader) as f:
        started = [int(pid) for pid in f.readline().split()]
    _, status = os.waitpid(child, 0)
    _kill_left(started, "shifter-holder:602:nodeA", "/bin/sleep")
    assert os.waitstatus_to_exitcode(status) == 0, "the epilog's namespace was ended"


def _kill_left(pids: list[int], *names: str) -> None:
    """End what a test started and a failure may have left behind (by pid, while it
    still bears one of the names it was started with)."""
    for pid in pids:
        if procfs.command_name(pid) in names:
            os.kill(pid, 9)
