"""Variables of PyTorch-style launchers, from Slurm's, for every task of a step.

torch.distributed's env:// rendezvous (and torchrun's workers, Lightning,
Accelerate, DeepSpeed) read five variables.  Under srun each task is one
process of the training, so a module with `module_<name>_launcherEnv=pytorch`
gives every task of every step (not the batch script, which is no rank):

    MASTER_ADDR   the first node of the step
    MASTER_PORT   20000 + 100 * (job id mod 100) + (step id mod 100): the same
                  for all tasks of a step, different for the steps of a job
                  and for recent jobs that could share the first node; below
                  Linux's ephemeral ports
    WORLD_SIZE    the step's number of tasks
    RANK          the task's rank in the step (SLURM_PROCID)
    LOCAL_RANK    its rank on its node (SLURM_LOCALID)

The values differ per task, so they are computed in each task (the step's
task_init, shifter_core/spank/step.py) from the variables Slurm set for it;
they replace whatever the task had.

    >>> variables({"SLURM_STEP_NODELIST": "n[3-4]", "SLURM_STEP_NUM_TASKS": "4",
    ...            "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}, job_id=1234, step_id=1)
    {'MASTER_ADDR': 'n3', 'MASTER_PORT': '23401', 'WORLD_SIZE': '4', 'RANK': '2', 'LOCAL_RANK': '0'}
"""
from __future__ import annotations

from collections.abc import Mapping

from . import hostlist
from .errors import ShifterError

KINDS = ("pytorch",)
PORT_BASE = 20000


class LauncherEnvError(ShifterError):
    """Slurm did not give a task what its launcher variables are made of."""


def variables(env: Mapping[str, str], *, job_id: int, step_id: int) -> dict[str, str]:
    """The five variables for the task whose Slurm environment is `env`."""
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    hosts = hostlist.expand(nodes) if nodes else []
    values = {
        "MASTER_ADDR": hosts[0] if hosts else None,
        "MASTER_PORT": str(PORT_BASE + 100 * (job_id % 100) + step_id % 100),
        "WORLD_SIZE": env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS"),
        "RANK": env.get("SLURM_PROCID"),
        "LOCAL_RANK": env.get("SLURM_LOCALID"),
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise LauncherEnvError(f"cannot set {', '.join(missing)} for this task: Slurm gave it no "
                               "SLURM_STEP_NODELIST, SLURM_STEP_NUM_TASKS, SLURM_PROCID or SLURM_LOCALID")
    return values
