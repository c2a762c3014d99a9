"""What a container's tasks do: --workdir, --entrypoint, --env (docs/task-options.md).

These options change nothing of the job's container, only how each task
starts in it, so they are not part of the pin (seam.PINNED_OPTIONS) and every
step may give its own.  A step that does not give one takes its default from
the job's environment, SHIFTER_WORKDIR, SHIFTER_ENTRYPOINT, SHIFTER_ENV
(seam.TASK_OPTION_DEFAULTS: spank/plugin.c reads them in slurmstepd), so a
user's profile can set them; a plain job is never affected.

Working directory.  Slurm 22.05 itself chdir()s every task to the job's
directory (srun's, sbatch's, or --chdir) as the user, *after*
task_init_privileged, so inside the container by then, and goes to /tmp
(with an error line) when the container lacks it.  The plugin therefore moves
the task in task_init, the last callback before exec, as the user: no root
code resolves a path the user chose, and the chroot bounds where it leads.

Entrypoint.  Slurm lets a plugin replace the words of a task's argv, not add
any, and task_init runs before Slurm's TaskProlog, limits and exec.  So the
task's argv[0] becomes a small static launcher (spank/entrypoint.c), bound
into the container read-only at its own path, which execs the image's
ENTRYPOINT followed by the command, after all of Slurm's steps.
"""
from __future__ import annotations

import dataclasses
import os

from . import seam
from .errors import TaskOptionError

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libexec", "shifter-entrypoint")


def with_defaults(opts, environment):
    """`opts` with each task option not given taken from `environment` (as plugin.c does)."""
    values = {}
    for name, variable in seam.TASK_OPTION_DEFAULTS:
        given = getattr(opts, name)
        value = environment.get(variable, "")
        if not given and value and not (name in seam.FLAGS and value == "0"):
            values[name] = True if name in seam.FLAGS else value
    return dataclasses.replace(opts, **values) if values else opts


def check(opts) -> None:
    """Refuse what no task could honour, at submit rather than in every task."""
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise TaskOptionError(f"--workdir={opts.workdir}: {seam.WORKDIR_RELATIVE}")
    env_names(opts.env)


def env_names(text: str | None) -> tuple[str, ...]:
    """--env=NAME[,NAME...] as names; TaskOptionError for an empty or malformed one."""
    if text is None:
        return ()
    names = tuple(text.split(seam.ENV_NAMES_SEPARATOR))
    bad = [name for name in names if not name or "=" in name]
    if bad:
        raise TaskOptionError(f"--env={text}: give variable names separated by ',', e.g. --env=HOME,TERM")
    return names


def launcher_environment(entrypoint: list[str] | None, argv0: str, image: str) -> dict[str, str]:
    """The variables that tell the launcher what to exec (spank/entrypoint.c reads them)."""
    if not entrypoint:
        raise TaskOptionError(f"--entrypoint: image {image} has no ENTRYPOINT")
    return {seam.ENTRYPOINT_VAR: "\n".join(seam.escape(word) for word in entrypoint), seam.ARGV0_VAR: argv0}


def change_directory(workdir: str | None, submit_dir: str | None, image_workdir: str | None) -> None:
    """Move this task (the user's, chrooted) to its working directory.

    An explicit `workdir` must be entered, or the task fails.  Otherwise the
    task stays where Slurm put it, unless Slurm could not enter the job's
    directory in the container: it is then in /tmp while the host had that
    directory (`submit_dir`, where slurmstepd started the task on the host;
    /tmp too if the host lacked it), and it goes to the image's WORKDIR,
    else to /.
    """
    if workdir is not None:
        if not workdir.startswith("/"):
            raise TaskOptionError(f"--workdir={workdir}: {seam.WORKDIR_RELATIVE}")
        try:
            os.chdir(workdir)
        except OSError as error:
            raise TaskOptionError(f"--workdir={workdir}: {error.strerror} in the container") from None
        return
    try:
        if os.getcwd() != seam.SLURM_CHDIR_FALLBACK or submit_dir in (None, seam.SLURM_CHDIR_FALLBACK):
            return
    except OSError:
        return
    for directory in (image_workdir, "/"):
        if directory:
            try:
                os.chdir(directory)
                return
            except OSError:
                continue
