"""Entering a job's container from a task (task_init_privileged).

This is the complete path, taken by the batch step, CCM jobs and jobs with
module user hooks; tasks of other steps enter through the plugin's C fast
path (spank/fastpath.c: fastpath_enter), which follows the same steps from
the record the prolog wrote.  A change here is a change there.

The task is a freshly forked, single-threaded child of slurmstepd, still
root: the one place where setns into a mount namespace works.  After the
chroot it empties its capability bounding set and sets no_new_privs, so once
Slurm switches it to the user and execs the command, nothing in the image
(setuid binaries, file capabilities) can make it privileged again.
"""
from __future__ import annotations

import json
import os

from . import container as containers
from . import pathsafety, syscalls
from .errors import ContainerError


def enter(job: containers.JobContainer, *, batch_script: str | None = None) -> None:
    """Join the container of `job` and make it this process's root.

    `batch_script` is the host path of the batch step's script: its
    directory (the job's spool directory) is bound at the same path in the
    container so that slurmstepd can exec it there.
    """
    fd = job.namespace_fd()
    try:
        syscalls.setns(fd, syscalls.CLONE_NEWNS)
    finally:
        os.close(fd)
    if batch_script:
        _bind_spool_dir(job.root, os.path.dirname(batch_script))
    os.chroot(job.root)
    os.chdir("/")
    check_marker(job)
    syscalls.drop_bounding_set()
    syscalls.set_no_new_privs()


def check_marker(job: containers.JobContainer) -> None:
    """Fail closed unless this process now sees the pinned image's container."""
    try:
        with open("/" + containers.CONFIG_MARKER, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError) as error:
        raise ContainerError(f"not inside the container of job {job.job_id}: {error}") from None
    if marker.get("digest") != job.digest or marker.get("job") != job.job_id:
        raise ContainerError(
            f"not inside the container of job {job.job_id}: it holds {marker.get('digest')},"
            f" the job is pinned to {job.digest}")


def _bind_spool_dir(root: str, spool_dir: str) -> None:
    """Make the job's spool directory visible at its host path (idempotent).

    Done here because only the batch task knows the directory, which Slurm
    creates after the prolog.  A read-only root is made writable for the
    time it takes to create the mount point.
    """
    target = pathsafety.resolve(root, spool_dir, missing_ok=True)
    if os.path.ismount(target):
        return
    readonly = os.statvfs(root).f_flag & os.ST_RDONLY
    if readonly:
        syscalls.mount(None, root, None, syscalls.MS_REMOUNT | containers.ROOT_FLAGS)
    try:
        os.makedirs(target, 0o755, exist_ok=True)
    finally:
        if readonly:
            syscalls.mount(None, root, None,
                           syscalls.MS_REMOUNT | containers.ROOT_FLAGS | syscalls.MS_RDONLY)
    syscalls.bind(spool_dir, pathsafety.resolve(root, spool_dir), readonly=True)
