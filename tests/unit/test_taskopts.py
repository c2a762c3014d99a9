"""The task options' pure rules, and the --entrypoint launcher run for real."""
import os
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from shifter_core import taskopts
from shifter_core.errors import TaskOptionError
from shifter_core.spank.bridge import Options


def test_defaults_fill_only_what_was_not_given():
    env = {"SHIFTER_WORKDIR": "/w", "SHIFTER_ENTRYPOINT": "1", "SHIFTER_ENV": "A,B"}
    assert taskopts.with_defaults(Options(image="x"), env) == Options(image="x", workdir="/w", entrypoint=True,
                                                                      env="A,B")
    given_opts = Options(image="x", workdir="/given", env="C")
    assert taskopts.with_defaults(given_opts, env) == Options(image="x", workdir="/given", entrypoint=True, env="C")
    assert taskopts.with_defaults(Options(), {"SHIFTER_ENTRYPOINT": "0", "SHIFTER_WORKDIR": ""}) == Options()


def test_names_of_env_and_what_is_refused():
    assert taskopts.env_names(None) == ()
    assert taskopts.env_names("HOME,TERM") == ("HOME", "TERM")
    for bad in ("", "A,,B", "A=1", ","):
        with pytest.raises(TaskOptionError, match="variable names separated by ','"):
            taskopts.env_names(bad)
    with pytest.raises(TaskOptionError, match="absolute path"):
        taskopts.check(Options(image="x", workdir="rel"))
    taskopts.check(Options(image="x", workdir="/abs", env="A"))


def test_an_image_without_entrypoint_is_refused():
    with pytest.raises(TaskOptionError, match="image sha256:1 has no ENTRYPOINT"):
        taskopts.launcher_environment(None, "/bin/true", "sha256:1")


words = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=8),
                 max_size=4)


@settings(deadline=None, max_examples=30)     # each example runs two programs
@given(words, words)
def test_the_launcher_runs_the_entrypoint_with_the_command(entry_args, command_args):
    """printf '%s\\0' as the entrypoint shows exactly the argv it got."""
    if not os.path.exists(taskopts.LAUNCHER):
        pytest.skip("the launcher is built by ci/setup")
    entrypoint = ["printf", "%s\\0", *entry_args]
    env = {"PATH": os.environ["PATH"], "KEEP": "1",
           **taskopts.launcher_environment(entrypoint, "argv0", "sha256:1")}
    out = subprocess.run([taskopts.LAUNCHER, *command_args], env=env, capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [w.encode() for w in entry_args + ["argv0"] + command_args]
    env.update(taskopts.launcher_environment(["sh", "-c", "env"], "argv0", "sha256:1"))
    shown = subprocess.run([taskopts.LAUNCHER], env=env, capture_output=True, check=True, text=True).stdout
    assert "KEEP=1" in shown and "SHIFTER_RUN" not in shown     # the task's, without the launcher's


def test_the_working_directory_rule(tmp_path):
    here = os.getcwd()
    image_workdir, job_dir = tmp_path / "app", tmp_path / "job"
    image_workdir.mkdir()
    job_dir.mkdir()
    try:
        os.chdir(job_dir)
        taskopts.change_directory(None, str(job_dir), str(image_workdir))       # Slurm got there: stay
        assert os.getcwd() == str(job_dir)
        taskopts.change_directory(None, "/tmp", str(image_workdir))    # the host lacked it, the container not
        assert os.getcwd() == str(job_dir)
        os.chdir("/tmp")                                                        # Slurm's fallback
        taskopts.change_directory(None, "/tmp", str(image_workdir))    # from /tmp, or lacking everywhere
        assert os.getcwd() == "/tmp"
        taskopts.change_directory(None, str(job_dir), str(image_workdir))
        assert os.getcwd() == str(image_workdir)
        os.chdir("/tmp")
        taskopts.change_directory(None, str(job_dir), str(tmp_path / "missing"))
        assert os.getcwd() == "/"
        taskopts.change_directory(str(job_dir), None, None)
        assert os.getcwd() == str(job_dir)
        with pytest.raises(TaskOptionError, match="--workdir=/no/such: No such file or directory in the container"):
            taskopts.change_directory("/no/such", None, None)
        with pytest.raises(TaskOptionError, match="--workdir=job: give an absolute path"):
            taskopts.change_directory("job", None, None)
    finally:
        os.chdir(here)
