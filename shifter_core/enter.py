"""Entering a job's container from a task (task_init_privileged).

This is the complete path, taken by the batch step, CCM jobs and jobs with
module user hooks; tasks of other steps enter through the plugin's C fast
path (spank/fastpath.c: fastpath_enter), which follows the same steps from
the record the prolog wrote.  A change here is a change there.

The task is a freshly forked, single-threaded child of slurmstepd, still
root: the one place where setns into a mount namespace works.  After the
chroot it checks the container's marker, empties its capability bounding set
and sets no_new_privs, so once Slurm switches it to the user and execs the
command, nothing in the image (setuid binaries, file capabilities) can make
it privileged again.
"""
from __future__ import annotations

import errno
import fcntl
import os

from . import pathsafety, syscalls
from .container import JobContainer, RootTree, marker
from .errors import ContainerError, ShifterError

_STEP_RULES = syscalls.RESOLVE_NO_XDEV | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS


def enter(job: JobContainer, *, batch_script: str | None = None, stage: str | None = None,
          pmix_dir: str | None = None, launcher: str | None = None) -> None:
    """Join the container of `job` and make it this process's root.

    `batch_script` is the host path of the batch step's script: its
    directory (the job's spool directory) is bound read-only at the same path
    in the container so that slurmstepd can exec it there.  `pmix_dir` is the
    step's PMIx server directory (shifter_core/pmix.py), bound writable at the
    same path, where the PMIx variables of the task name it.  `stage` is
    udiRoot.conf's loopMount, where the container keeps a writable view of its
    own layer.  `launcher` is the --entrypoint launcher (shifter_core/taskopts.py),
    whose directory is bound read-only at the same path.
    """
    fd = job.namespace_fd()
    try:
        syscalls.setns(fd, syscalls.CLONE_NEWNS)
    finally:
        os.close(fd)
    if batch_script:
        _bind_at_same_path(job.root, stage or "", os.path.dirname(batch_script), "the batch script's directory",
                           readonly=True)
    if pmix_dir:
        _bind_at_same_path(job.root, stage or "", pmix_dir, "the step's PMIx directory", readonly=False)
    if launcher:
        _bind_at_same_path(job.root, stage or "", os.path.dirname(launcher), "the entrypoint launcher's directory",
                           readonly=True)
    os.chroot(job.root)
    os.chdir("/")
    marker.check(job.job_id, job.digest)
    syscalls.drop_bounding_set()
    syscalls.set_no_new_privs()


def _bind_at_same_path(root_path: str, stage: str, directory: str, what: str, *, readonly: bool) -> None:
    """Make a node directory Slurm made for the job visible at its node path (idempotent).

    Done here because only a task knows the directory, which Slurm creates
    after the prolog.  Its mount point is made through the container's
    writable view of its own layer (stage/rw, which holds no mount: nothing
    of the node can be reached from it), so a read-only root stays read-only
    for the user's processes all along, and a symlink of the image can lead
    the mount point nowhere but onto that layer.  The tasks of a step on one
    node come here at once: a lock on that view lets one at a time make the
    mount point and bind.
    """
    layer = os.open(f"{stage}/rw", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    root = os.open(root_path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(layer, fcntl.LOCK_EX)       # released when `layer` is closed
        try:
            os.close(RootTree(layer, f"{stage}/rw").directory(directory))
        except (ShifterError, OSError) as error:
            raise ContainerError(f"cannot make {what} {directory} in the container: {error}") from None
        parent_path, name = os.path.split(directory.rstrip("/"))
        parent = pathsafety.open_inside(root, parent_path, own_layer=True, error=ContainerError)
        try:
            try:
                target = syscalls.openat2(parent, name, os.O_PATH | os.O_DIRECTORY, _STEP_RULES)
            except OSError as error:
                if error.errno == errno.EXDEV:
                    return                          # bound already: a mount point
                raise ContainerError(pathsafety.reason(error, directory, own_layer=True)) from None
        finally:
            os.close(parent)
        source = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            syscalls.bind(source, target, shown=directory, readonly=readonly)
        finally:
            os.close(source)
            os.close(target)
    finally:
        os.close(layer)
        os.close(root)
