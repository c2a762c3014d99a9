"""Debian images for tests and benchmarks: debootstrap once, apt layers on top, cached.

    base = debian.base_tree()                                 # bookworm minbase
    upper = debian.apt_layer(base, ("python3",))              # what `apt-get install` added
    lower = [layout.add_layer(oci.entries_from_directory(base)),
             layout.add_layer(oci.entries_from_directory(upper, overlay_upper=True))]

Both are built as root (debootstrap, chroot, an overlay mount) inside a private
mount namespace, so nothing stays mounted when a step fails, from Debian's
mirror (the one network this machine reaches besides PyPI).  They are kept
under CACHE (the checkout's .cache/debian, gitignored) under names that say what
made them, and are complete once their `.complete` marker exists: building
the MPI image costs about two minutes once, then nothing.

`mpi_layout()` is the image of the MPI tests: Debian's Open MPI (built on
PMIx 4, as Slurm's mpi/pmix_v4 plugin on the nodes), mpi4py and Python,
as an OCI layout cached whole (compressing its layers takes longer than
the registry push and the gateway's conversion together).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile

from ci.harness import oci

CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".cache", "debian")
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
              "LC_ALL": "C", "HOME": "/root"}
MPI_PACKAGES = ("python3-mpi4py", "openmpi-bin")
MPI_TAG = "mpi"
MPI_NAME = "shifter/mpi:bookworm"       # in the cluster's registry: docker:shifter/mpi:bookworm


class DebianImageError(RuntimeError):
    """A Debian tree could not be built (debootstrap or apt-get failed: the mirror, the disk)."""


def base_tree(cache: str = CACHE) -> str:
    """debootstrap --variant=minbase of SUITE, without the downloaded packages, apt
    lists, device nodes and resolv.conf (what an image must not carry)."""
    root = os.path.join(cache, f"{SUITE}-minbase")
    with _building(root) as done:
        if done:
            return root
        os.makedirs(os.path.join(cache, "debs"), exist_ok=True)
        _run(["/usr/sbin/debootstrap", "--variant=minbase", f"--cache-dir={cache}/debs", SUITE, root, MIRROR],
             timeout=900)
        archives = os.path.join(root, "var/cache/apt/archives")
        for name in os.listdir(archives):
            if name.endswith(".deb"):
                os.unlink(os.path.join(archives, name))
        for directory in ("var/lib/apt/lists", "dev"):
            shutil.rmtree(os.path.join(root, directory))
            os.mkdir(os.path.join(root, directory))
        if os.path.lexists(os.path.join(root, "etc/resolv.conf")):
            os.unlink(os.path.join(root, "etc/resolv.conf"))
    return root


def apt_layer(base: str, packages: tuple[str, ...], cache: str = CACHE) -> str:
    """The overlay upper directory `apt-get install --no-install-recommends <packages>`
    leaves over `base`: real whiteouts and opaque directories, as Docker's layers have."""
    key = hashlib.sha256(f"{base}\n{MIRROR}\n{' '.join(sorted(packages))}".encode()).hexdigest()[:16]
    upper = os.path.join(cache, f"apt-{key}")
    with _building(upper) as done:
        if done:
            return upper
        os.makedirs(upper)
        with open(f"{upper}.packages", "w") as f:
            f.write(" ".join(packages) + "\n")
        work = tempfile.mkdtemp(prefix="overlay-", dir=cache)
        try:
            merged, workdir = os.path.join(work, "merged"), os.path.join(work, "work")
            os.makedirs(merged)
            os.makedirs(workdir)
            script = f"""set -e
mount -t overlay overlay -o lowerdir={base},upperdir={upper},workdir={workdir} {merged}
mount --bind /dev {merged}/dev
mount -t proc proc {merged}/proc
cp /etc/resolv.conf {merged}/etc/resolv.conf
chroot {merged} apt-get -q update
chroot {merged} apt-get -q install -y --no-install-recommends {' '.join(packages)}
chroot {merged} apt-get clean
rm -rf {merged}/var/lib/apt/lists/* {merged}/etc/resolv.conf
"""
            # the namespace dies with the shell: its mounts go, also after a failure
            _run(["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script], timeout=1800)
        finally:
            shutil.rmtree(work)
    return upper


def push_mpi_image(registry: str, cache: str = CACHE) -> str:
    """Push the MPI image to `registry` (host:port) as MPI_NAME; return its descriptor."""
    mpi_layout(cache).push(MPI_TAG, f"{registry}/{MPI_NAME}")
    return f"docker:{MPI_NAME}"


def mpi_layout(cache: str = CACHE) -> oci.Layout:
    """An OCI layout holding tag MPI_TAG: SUITE with MPI_PACKAGES."""
    base = base_tree(cache)
    upper = apt_layer(base, MPI_PACKAGES, cache)
    path = os.path.join(cache, f"oci-{os.path.basename(upper)}")
    with _building(path) as done:
        if not done:
            layout = oci.Layout(path)
            layers = [layout.add_layer(oci.entries_from_directory(base), compresslevel=1),
                      layout.add_layer(oci.entries_from_directory(upper, overlay_upper=True), compresslevel=1)]
            config = oci.ImageConfig(cmd=["/usr/bin/python3"],
                                     env=[f"PATH={oci.DEFAULT_PATH}", "LANG=C.UTF-8"])
            layout.add_image(layers, config, tag=MPI_TAG)
    return oci.Layout(path)


@contextlib.contextmanager
def _building(path: str):
    """Yield True when `path` is complete; otherwise build it under a lock (one builder per
    cache) and mark it complete if the block succeeds, or remove what it left if not."""
    marker = f"{path}.complete"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(os.path.join(os.path.dirname(path), ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(marker):
            yield True
            return
        shutil.rmtree(path, ignore_errors=True)
        try:
            yield False
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        open(marker, "w").close()


def _run(argv: list[str], timeout: float) -> None:
    result = subprocess.run(argv, env=CHROOT_ENV, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise DebianImageError(f"{' '.join(argv[:3])} failed ({result.returncode}):\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
