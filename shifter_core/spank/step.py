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
PMIx's): the place for the working directory (shifter_core/taskopts.py), the
modules' launcher variables (shifter_core/launcher.py) and user hooks, which
Shifter runs as the user inside the container before the command.

A step whose view (image, volumes, modules, as its srun pinned them) is not the
job's container's, or whose job has none, gets a container of its own, built
before any task exists and torn down when the step ends (container/holder.py).
The plugin's C has the node server do both (step_prolog, step_epilog: no Python
starts in slurmstepd) and its tasks enter through the C fast path; where it cannot
(no node server yet, a PMIx or --entrypoint step), it sends the step here and
init_post_opt and exit do it in slurmstepd.  Either way this module decides again
whether the job's container serves.
"""
from __future__ import annotations

import os
import time

from .. import container, enter, environ, imageref, launcher, pmix, provenance, seam, taskopts
from ..errors import ContainerError, JobFault, ShifterError, internal_error, one_line
from ..imagestore import ImageStore
from . import settings
from .bridge import log_error, log_exception
from .node import container_spec, node_name

_entered: container.JobContainer | None = None   # this task's container, once it is inside
_own: container.JobContainer | None = None       # the step's own container, built here
_own_failure: str | None = None                  # why it could not be built
_submit_dir: str | None = None                   # where slurmstepd started this task on the host


def init_post_opt(spank, opts) -> None:
    """Build the step's own container here, in slurmstepd, when the plugin's C could
    not have the node server do it (step_prolog).  A failure fails the step's tasks
    (task_init_privileged), with the reason: failing here would not fail srun."""
    global _own, _own_failure
    _own, _own_failure = _built(spank, opts)
    if _own_failure is not None:
        log_error(f"shifter: {_cannot_run(spank, _own_failure)}")


def step_prolog(spank, opts) -> None:
    """The node server builds the step's own container (spank/plugin.c: own_container
    asks).  The message of a failure is the line the plugin shows for each of the
    step's tasks."""
    _, failure = _built(spank, opts)
    if failure is not None:
        raise JobFault(_cannot_run(spank, failure))


def step_epilog(spank, opts) -> None:
    """The node server (or slurmstepd, when the server is gone) removes the step's own
    container that step_prolog built."""
    container.destroy(settings.site_config(spank), spank.job_id, node_name(), spank.step_id)


def exit(spank, opts) -> None:      # noqa: A001 - the SPANK callback's name
    """The step ended: its own container goes (slurmstepd, once, after every task)."""
    if _own is not None:
        step_epilog(spank, opts)


def _built(spank, opts) -> tuple[container.JobContainer | None, str | None]:
    """The step's own container (None when the job's serves), or why it cannot be built:
    a fault of the step, or a bug of ours it ran into, fails that step only."""
    try:
        return _own_container(spank, opts), None
    except ShifterError as error:
        return None, one_line(str(error))
    except Exception as error:      # noqa: BLE001 - see the docstring
        log_exception()
        return None, internal_error(error)


def _own_container(spank, opts) -> container.JobContainer | None:
    """The step's own container, built on this node, when its view (as its srun
    pinned it) is not its job's container's; None when the job's serves."""
    if not opts.autoshift or opts.ccm or spank.step_id == seam.BATCH_STEP:
        return None
    cfg = settings.site_config(spank)
    node = node_name()
    try:
        job = container.find(cfg, spank.job_id, node)
    except container.SetupFailed:
        return None                             # the job failed here: so do its steps
    except ContainerError:
        job = None                              # none, or gone: the step needs its own
    except Exception:                           # noqa: BLE001 - an unreadable record: the tasks'
        return None                             # own find fails them with the reason
    request = spank.getenv(seam.REQUEST_VAR)
    if opts.image and not request:
        # srun --export=NONE (or a list without SHIFTER_*) left the step's pin behind: only
        # the job's own image, as Slurm's copy of the job-control environment names it, runs
        if job is not None and _is_jobs_image(cfg, opts.image, spank.getenv(f"SLURM_SPANK_{seam.REQUEST_VAR}")):
            return None
        raise JobFault(f"the pin srun made for --image={opts.image} is not in the step's environment:"
                       " srun --export=NONE (or a list without the SHIFTER_ variables) drops it;"
                       " run steps with an image of their own with --export=ALL")
    digest, volume, module = (spank.getenv(name) for name in (seam.DIGEST_VAR, seam.VOLUME_VAR, seam.MODULE_VAR))
    if job is not None and job.serves(digest, volume, module):
        return None
    image = request or opts.image
    if not image:
        raise JobFault("this step asks for a container but names no image (--image)")
    spec, _ = container_spec(
        cfg, job_id=spank.job_id, node=node, uid=spank.uid, request=image, image=image,
        digest=digest or "", pending=None, volume=volume or "", module=module, step_id=spank.step_id)
    return container.create(cfg, spec)


def _is_jobs_image(cfg, image: str, job_request: str | None) -> bool:
    try:
        return bool(job_request) and str(imageref.parse(image, cfg.default_image_type)) == job_request
    except ShifterError:
        return False


def _cannot_run(spank, reason: str) -> str:
    return f"step {spank.job_id}.{spank.step_id} cannot run on {node_name()}: {reason}"


def task_init_privileged(spank, opts) -> None:
    if not (opts.autoshift or opts.ccm):       # CCM jobs run in their containers
        return
    if _own_failure is not None:
        raise JobFault(_cannot_run(spank, _own_failure))
    cfg = settings.site_config(spank)
    job = _own or container.find(cfg, spank.job_id, node_name())
    wanted = spank.getenv(seam.DIGEST_VAR)
    if wanted and wanted != job.digest:
        raise ContainerError(f"this step asks for image {wanted}, but the container it would enter"
                             f" holds {job.digest}")
    env = _task_environment(spank, job, taskopts.env_names(opts.env))
    argv = spank.argv
    batch_script = argv[0] if spank.step_id == seam.BATCH_STEP and argv else None
    if opts.entrypoint:
        request = spank.getenv(seam.REQUEST_VAR) or job.digest     # normalised: str(ImageRef)
        local = request.startswith(f"{imageref.LOCAL}:")           # a tree of the node's: no ENTRYPOINT
        entrypoint = None if local else ImageStore(cfg.image_path).read(job.image_id).entrypoint
        env.update(taskopts.launcher_environment(entrypoint, argv[0], request))
    pmix_dir = None
    if (spank.getenv("SLURM_MPI_TYPE") or "").startswith("pmix"):
        pmix_dir = pmix.server_directory(job.job_id, spank.step_id, job.node, job.uid)
    log = provenance.Log.open(cfg.provenance_dir, job.node)
    global _submit_dir
    try:
        _submit_dir = os.getcwd()
    except OSError:
        _submit_dir = None
    try:
        started = time.monotonic()
        enter.enter(job, stage=cfg.loop_mount, batch_script=batch_script, pmix_dir=pmix_dir,
                    launcher=taskopts.LAUNCHER if opts.entrypoint else None)
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
    if opts.entrypoint:
        spank.replace_argv0(taskopts.LAUNCHER)


def task_init(spank, opts) -> None:
    """Set the active modules' launcher variables (not in the batch script, which is
    no rank), then run each one's userhook as `/bin/sh <hook>`; a failure fails the task.

    The configuration comes from this process's cache, loaded before the
    chroot (the node's files are out of reach now).  The hook gets the
    task's environment, standard input and output.
    """
    if _entered is None:
        return
    taskopts.change_directory(opts.workdir, _submit_dir, _entered.workdir)
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


def _task_environment(spank, job: container.JobContainer, keep: tuple[str, ...]) -> dict[str, str]:
    """The variables to set in the task: the prolog's operations (see environ)
    applied to this task's environment, whose variables named in `keep` (--env)
    keep their value over the image's."""
    current = spank.env
    final = environ.apply(current, job.env_ops, keep)
    for name in set(current) - set(final):
        spank.unsetenv(name)
    return {k: v for k, v in final.items() if current.get(k) != v}
