"""perNodeCache: a private file system per job and node, for fast scratch I/O.

`--volume=/x:/cache:perNodeCache=size=10G[,bs=4K][,fs=ext4]` gives the job,
on every node, a new XFS (or ext4, where perNodeCacheAllowedFsType allows it)
at /cache owned by the user: small files and fsyncs stay on the node instead
of hitting the shared file system.  As in Shifter, the source is not used
(Shifter issue #261) and root gets no cache.

The file system lives in a sparse file created 0600 and O_EXCL in the site's
perNodeCachePath, formatted with mkfsXfsPath (mkfsExt4Path) and loop-mounted read-write,
nosuid, nodev inside the job's mount namespace.  The file is unlinked right
after the mount: only the loop device still holds it, so its blocks return
to the node's file system when the namespace dies with the job, and a crashed
node leaves no file to clean up.  Should the prolog die between creating and
unlinking it, `discard` removes what is left (the epilog calls it).

    mount(target_fd, volume, spec, cfg)   # in the prolog, for each cache volume
    discard(cfg, job_id, node)            # in the epilog
"""
from __future__ import annotations

import os

from . import syscalls, trust, volumes
from .errors import ContainerError, VolumeError

FILE_PREFIX = "perNodeCache"
MKFS_TIMEOUT = 60.0
MOUNT_FLAGS = syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
_TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def mount(target: int, volume: volumes.VolumeMount, spec, cfg) -> None:
    """Create the cache of `volume` and mount it on the directory open at `target`."""
    cache = volume.per_node_cache
    user = spec.user
    if user.uid == 0 or user.gid == 0:
        raise VolumeError("perNodeCache is not available to root (uid or gid 0)")
    volumes.check_policy((volume,), cfg.cache_policy())
    directory = _cache_directory(cfg)
    _require_space(directory, cache.size)
    import tempfile   # as subprocess below: only jobs with a cache pay for these imports

    fd, path = tempfile.mkstemp(prefix=f"{_job_prefix(spec.job_id, spec.node)}uid{user.uid}.",
                                suffix=f".{cache.fs_type}", dir=directory)
    try:
        os.ftruncate(fd, cache.size)
        _make_fs(cfg.mkfs_path(cache.fs_type), cache, fd, volume.target)
        try:
            cache_fs = syscalls.loop_mount(fd, cache.fs_type, MOUNT_FLAGS, shown=path)
        except OSError as error:
            raise ContainerError(f"cannot mount the perNodeCache at {volume.target}: "
                                 f"{error.strerror}") from None
    finally:
        os.close(fd)
        os.unlink(path)
    try:
        root = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cache_fs)
        try:
            os.fchown(root, user.uid, user.gid)
        finally:
            os.close(root)
        syscalls.attach(cache_fs, target, shown=volume.target)
    finally:
        os.close(cache_fs)


def discard(cfg, job_id: int, node: str) -> list[str]:
    """Remove backing files a failed prolog of this job left on this node; return them."""
    directory = cfg.per_node_cache_path
    try:
        names = os.listdir(directory) if directory else []
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if name.startswith(_job_prefix(job_id, node)):
            path = os.path.join(directory, name)
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _job_prefix(job_id: int, node: str) -> str:
    """Backing files are named per job *and node*: emulated nodes may share one directory."""
    return f"{FILE_PREFIX}.job{int(job_id)}.{node}."


def _cache_directory(cfg) -> str:
    """perNodeCachePath, created 0700 if missing; root alone may change it."""
    directory = cfg.per_node_cache_path
    os.makedirs(directory, mode=0o700, exist_ok=True)
    trust.require_root_owned(directory, "perNodeCachePath")
    return directory


def _require_space(directory: str, size: int) -> None:
    """The file is sparse, but the job may fill it: the space must be free now."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < size:
        raise VolumeError(f"a perNodeCache of {volumes.format_bytes(size)} does not fit on this node: "
                          f"its cache file system has {free / 1024 ** 3:.1f} GiB free; ask for less")


def _make_fs(mkfs: str, cache: volumes.PerNodeCache, fd: int, shown: str) -> None:
    """mkfs on the open file, with the block size the user chose (Shifter issue #289).

    Neither mkfs discards blocks (the file is sparse already); ext4 keeps no
    blocks for root, who never writes into a user's cache.  A subprocess is
    fine here: only jobs asking for a cache pay for it.
    """
    import subprocess

    device = f"/proc/self/fd/{fd}"
    if cache.fs_type == "xfs":
        trust.require_root_owned(mkfs, "mkfsXfsPath")
        argv = [mkfs, "-q", "-K", "-b", f"size={cache.block_size}", device]
    else:
        trust.require_root_owned(mkfs, "mkfsExt4Path")
        argv = [mkfs, "-q", "-t", "ext4", "-b", str(cache.block_size), "-m", "0", "-E", "nodiscard", device]
    try:
        result = subprocess.run(
            argv,
            pass_fds=(fd,), env={"PATH": _TOOL_PATH, "LC_ALL": "C"}, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=MKFS_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ContainerError(f"cannot create the perNodeCache at {shown}: {mkfs} took more than "
                             f"{MKFS_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ContainerError(f"cannot create the perNodeCache at {shown}: {mkfs} failed"
                             + (f": {detail[-1]}" if detail else f" with status {result.returncode}"))
