"""Step side (slurmstepd, remote context): tasks enter the job's container.

task_init_privileged runs in each forked task while it is still root and
single-threaded: it joins the container the prolog built on this node (for a
step of Slurm's PMIx plugin, bringing the step's PMIx directory along:
shifter_core/pmix.py), chroots into it, fixes the environment, and leaves
Slurm to drop to the user and exec the command inside the image.  A task that cannot enter fails: it
never runs on the host instead.  How long entering took goes to the
provenance log, opened before the chroot hides the node's files.

task_init then runs in the same process, already chrooted, as the user, just
before the exec, with the variables Slurm set for this very task (its rank,
PMIx's): the place for the modules' launcher variables (shifter_core/launcher.py)
and user hooks, which Shifter runs as the user inside the container before the
command.
"""
from __future__ import annotations

import os
import time

from .. import container, enter, environ, launcher, pmix, provenance, seam
from ..errors import ContainerError
from . import settings
from .node import node_name

_entered: container.JobContainer | None = None   # this task's container, once it is inside


def task_init_privileged(spank, opts) -> None:
    if not (opts.autoshift or opts.ccm):       # CCM jobs run in their containers
        return
    cfg = settings.site_config(spank)
    job = container.find(cfg, spank.job_id, node_name())
    wanted = spank.getenv(seam.DIGEST_VAR)
    if wanted and wanted != job.digest:
        raise ContainerError(f"this step asks for image {wanted}, but job {job.job_id}'s container"
                             f" holds {job.digest}; one job runs one image")
    env = _task_environment(spank, job)
    argv = spank.argv
    batch_script = argv[0] if spank.step_id == seam.BATCH_STEP and argv else None
    pmix_dir = None
    if (spank.getenv("SLURM_MPI_TYPE") or "").startswith("pmix"):
        pmix_dir = pmix.server_directory(job.job_id, spank.step_id, job.node, job.uid)
    log = provenance.Log.open(cfg.provenance_dir, job.node)
    try:
        started = time.monotonic()
        enter.enter(job, stage=cfg.loop_mount, batch_script=batch_script, pmix_dir=pmix_dir)
        if log is not None:
            log.write(seam.ENTER_EVENT, job.job_id,
                      step="batch" if spank.step_id == seam.BATCH_STEP else spank.step_id,
                      task=spank.local_task_id, digest=job.digest,
                      ms=provenance.milliseconds(enter=(time.monotonic() - started) * 1000))
    finally:
        if log is not None:
            log.close()
    global _entered
    _entered = job
    for name, value in env.items():
        spank.setenv(name, value)


def task_init(spank, opts) -> None:
    """Set the active modules' launcher variables (not in the batch script, which is
    no rank), then run each one's userhook as `/bin/sh <hook>`; a failure fails the task.

    The configuration comes from this process's cache, loaded before the
    chroot (the node's files are out of reach now).  The hook gets the
    task's environment, standard input and output.
    """
    if _entered is None:
        return
    cfg = settings.site_config(spank)
    modules = [cfg.modules[name] for name in _entered.modules if name in cfg.modules]
    if any(module.launcher_env for module in modules) and spank.step_id != seam.BATCH_STEP:
        for name, value in launcher.variables(spank.env, job_id=spank.job_id, step_id=spank.step_id).items():
            spank.setenv(name, value)
    hooks = [(module.name, module.user_hook) for module in modules if module.user_hook]
    if not hooks:
        return
    env = spank.env
    for name, hook in hooks:
        status = _run_as_task(["/bin/sh", hook], env)
        if status != 0:
            raise ContainerError(f"module {name}'s userhook {hook} failed with status {status}; "
                                 "the task does not run")


def _run_as_task(argv: list[str], env: dict[str, str]) -> int:
    """fork and exec `argv`, and wait for it (no subprocess: nothing can be imported here)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _task_environment(spank, job: container.JobContainer) -> dict[str, str]:
    """The variables to set in the task: the prolog's operations (see environ)
    applied to this task's environment."""
    current = spank.env
    final = environ.apply(current, job.env_ops)
    for name in set(current) - set(final):
        spank.unsetenv(name)
    return {k: v for k, v in final.items() if current.get(k) != v}
