"""Step side (slurmstepd, remote context): tasks enter the job's container.

task_init_privileged runs in each forked task while it is still root and
single-threaded: it joins the container the prolog built on this node,
chroots into it, fixes the environment, and leaves Slurm to drop to the user
and exec the command inside the image.  A task that cannot enter fails: it
never runs on the host instead.
"""
from __future__ import annotations

from .. import container, enter, environ
from ..errors import ContainerError
from . import settings
from .node import node_name

BATCH_STEP = 0xFFFFFFFB


def task_init_privileged(spank, opts) -> None:
    if not opts.autoshift:
        return
    cfg = settings.site_config(spank)
    job = container.find(cfg, spank.job_id, node_name())
    wanted = spank.getenv("SHIFTER_IMAGE_DIGEST")
    if wanted and wanted != job.digest:
        raise ContainerError(f"this step asks for image {wanted}, but job {job.job_id}'s container"
                             f" holds {job.digest}; one job runs one image")
    env = _task_environment(spank, cfg, job)
    argv = spank.argv
    batch_script = argv[0] if spank.step_id == BATCH_STEP and argv else None
    enter.enter(job, batch_script=batch_script)
    for name, value in env.items():
        spank.setenv(name, value)


def _task_environment(spank, cfg, job: container.JobContainer) -> dict[str, str]:
    """The variables to set in the task (Shifter's order, see environ)."""
    current = spank.env
    modules = [cfg.modules[name] for name in job.modules if name in cfg.modules]
    final = environ.compose(
        current, job.image_env, levels=[environ.site_settings(m) for m in modules],
        shifter={"SHIFTER_IMAGE": job.image_id, "SHIFTER_IMAGE_DIGEST": job.digest},
        **environ.site_settings(cfg))
    for name in set(current) - set(final):
        spank.unsetenv(name)
    return {k: v for k, v in final.items() if current.get(k) != v}
