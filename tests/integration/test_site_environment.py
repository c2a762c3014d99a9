"""The tasks' environment on the mini-cluster: siteEnvUnset drops the bash
functions a user exported (Lmod's `module` and `ml`) in both spellings bash
uses, and siteEnvAppend adds to a variable, in the tasks of a step (set up by
the plugin's C) and in a batch script (by its Python) alike.

The cluster's udiRoot.conf says `siteEnvUnset=BASH_FUNC_module() BASH_FUNC_ml%%`
(ci/harness/cluster.py), the first spelling being the one Shifter's example uses,
and `siteEnvAppend=MANPATH=/opt/site/man`.
The image's shell (busybox ash) would not pass such names on to its children,
so the probes read the environment a task started with."""
from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.root, pytest.mark.cluster]

FUNCTIONS = {
    "BASH_FUNC_module%%": '() {  eval "$($LMOD_CMD bash "$@")"\n}',      # bash since 2014
    "BASH_FUNC_ml()": '() {  eval "$($LMOD_DIR/ml_cmd "$@")"\n}',        # RHEL 6/7's patched bash
    "BASH_FUNC_mine%%": "() {  echo mine\n}",                            # not named by the site
}


def functions_in(text: str) -> list[str]:
    return re.findall(r"(?m)^BASH_FUNC_[^=]*", text)


def manpaths_in(text: str) -> list[str]:
    return re.findall(r"(?m)^MANPATH=(.*)$", text)


def test_the_tasks_of_a_step_lose_the_sites_bash_functions(cluster, image):
    out = cluster.srun("-N2", f"--image={image}", "--autoshift", "env", env=FUNCTIONS).stdout
    assert functions_in(out) == ["BASH_FUNC_mine%%"] * 2, out
    assert manpaths_in(out) == ["/opt/site/man"] * 2, out
    out = cluster.srun("-N1", f"--image={image}", "--autoshift", "env", env={"MANPATH": "/usr/man"}).stdout
    assert manpaths_in(out) == ["/usr/man:/opt/site/man"], out
    host = cluster.srun("-N1", "env", env=FUNCTIONS).stdout          # without an image: all of them
    assert sorted(functions_in(host)) == sorted(FUNCTIONS), host


def test_a_batch_script_loses_them_too(cluster, image):
    submitted = cluster.run(["sbatch", "--parsable", f"--output={cluster.home}/slurm-%j.out", "-N1",
                             f"--image={image}", "--autoshift", "--wrap=tr '\\0' '\\n' < /proc/$$/environ"],
                            env=FUNCTIONS)
    job = int(submitted.stdout.strip().split(";")[0])
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    assert functions_in(cluster.output(job)) == ["BASH_FUNC_mine%%"], cluster.output(job)
    assert manpaths_in(cluster.output(job)) == ["/opt/site/man"], cluster.output(job)
