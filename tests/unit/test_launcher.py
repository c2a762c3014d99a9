"""The launcher variables (shifter_core/launcher.py) and the module key that asks for them."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from shifter_core import launcher
from shifter_core.errors import ConfigError
from tests.unit.test_config import parse

STEP = {"SLURM_STEP_NODELIST": "n[2-3],gpu07", "SLURM_JOB_NODELIST": "n[1-3],gpu07",
        "SLURM_STEP_NUM_TASKS": "6", "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}


def test_a_tasks_variables_come_from_its_step():
    assert launcher.variables(STEP, job_id=4217, step_id=3) == {
        "MASTER_ADDR": "n2", "MASTER_PORT": "21703", "WORLD_SIZE": "6", "RANK": "5", "LOCAL_RANK": "1"}


def test_without_step_variables_the_jobs_are_used():
    env = {k: v for k, v in STEP.items() if not k.startswith("SLURM_STEP_")}
    values = launcher.variables(env, job_id=1, step_id=0)
    assert (values["MASTER_ADDR"], values["WORLD_SIZE"]) == ("n1", "8")


@pytest.mark.parametrize("dropped, named", [
    (("SLURM_PROCID",), "RANK"),
    (("SLURM_LOCALID",), "LOCAL_RANK"),
    (("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"), "WORLD_SIZE"),
    (("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"), "MASTER_ADDR"),
])
def test_a_missing_slurm_variable_is_an_error_naming_what_cannot_be_set(dropped, named):
    env = {k: v for k, v in STEP.items() if k not in dropped}
    with pytest.raises(launcher.LauncherEnvError, match=f"cannot set {named} for this task"):
        launcher.variables(env, job_id=1, step_id=0)


@given(job=st.integers(0, 2**32 - 1), step=st.integers(0, 2**32 - 1))
def test_ports_are_below_the_ephemeral_range_and_differ_between_steps(job, step):
    port = int(launcher.variables(STEP, job_id=job, step_id=step)["MASTER_PORT"])
    assert 20000 <= port < 30000
    other = int(launcher.variables(STEP, job_id=job, step_id=(step + 1) % 2**32)["MASTER_PORT"])
    assert other != port


def test_the_module_key_names_the_kind_and_makes_tasks_take_the_python_path():
    cfg = parse("module_torch_launcherEnv=pytorch\nmodule_plain_siteEnv=A=1\n")
    assert cfg.modules["torch"].launcher_env == "pytorch" and cfg.modules["torch"].per_task
    assert cfg.modules["plain"].launcher_env is None and not cfg.modules["plain"].per_task
    with pytest.raises(ConfigError, match="'mpi' is not one of pytorch"):
        parse("module_torch_launcherEnv=mpi\n")
