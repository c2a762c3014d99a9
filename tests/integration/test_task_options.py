"""--workdir, --entrypoint and --env on the mini-cluster, and their defaults from
the job's environment (SHIFTER_WORKDIR, SHIFTER_ENTRYPOINT, SHIFTER_ENV).

Steps of a job enter through the plugin's C fast path, batch scripts and
--entrypoint steps through its Python: both are exercised.  The test user's
home, where the tests submit from, is bound into every container at its own
path (siteFs); `readable_tmp` is a directory of the nodes that no container
shows."""
from __future__ import annotations

import pytest

from ci.harness import oci
from tests.integration.runtime_fixtures import push_image

pytestmark = [pytest.mark.cluster, pytest.mark.root]

ENTRY = '#!/bin/sh\necho "entry: $# words, first $1"\nexec "$@"\n'


@pytest.fixture(scope="module")
def app_image(cluster):
    """busybox with a WORKDIR, an ENTRYPOINT and an ENV of its own."""
    return push_image(cluster, "taskopts/app",
                      [oci.Dir("opt"), oci.Dir("opt/app"), oci.File("opt/app/entry.sh", ENTRY, mode=0o755)],
                      workdir="/opt/app", entrypoint=["/opt/app/entry.sh"],
                      env=[f"PATH={oci.DEFAULT_PATH}", "LANG=image", "GREETING=image"])


def lines(result) -> list[str]:
    return result.stdout.strip().splitlines()


def test_tasks_start_in_the_submit_directory_else_the_images_workdir_else_root(cluster, app_image, image,
                                                                               readable_tmp):
    home = cluster.srun("-N2", f"--image={app_image}", "--autoshift", "pwd")
    assert lines(home) == [str(cluster.home)] * 2, home.stdout
    elsewhere = cluster.srun("-N1", f"--chdir={readable_tmp}", f"--image={app_image}", "--autoshift", "pwd")
    assert lines(elsewhere) == ["/opt/app"], elsewhere.stdout + elsewhere.stderr
    plain = cluster.srun("-N1", f"--chdir={readable_tmp}", f"--image={image}", "--autoshift", "pwd")
    assert lines(plain) == ["/"], plain.stdout + plain.stderr


def test_workdir_is_entered_or_the_task_fails(cluster, app_image):
    result = cluster.srun("-N2", f"--image={app_image}", "--autoshift", "--workdir=/opt/app", "pwd")
    assert lines(result) == ["/opt/app"] * 2
    missing = cluster.srun("-N1", f"--image={app_image}", "--autoshift", "--workdir=/no/such/dir",
                           "echo", "ran", check=False)
    assert missing.returncode != 0 and "ran" not in missing.stdout
    assert "--workdir=/no/such/dir: No such file or directory in the container" in missing.stderr


def test_a_workdir_that_cannot_apply_is_refused(cluster, app_image):
    """Refused by srun with the reason, before a step exists (test_pinning: also when a
    submit plan could pin the image in C, for sbatch and salloc too)."""
    relative = cluster.srun("-N1", f"--image={app_image}", "--autoshift", "--workdir=app", "echo", "ran",
                            check=False)
    assert relative.returncode != 0 and "ran" not in relative.stdout
    assert "--workdir=app: give an absolute path inside the container" in relative.stderr
    alone = cluster.srun("-N1", "--workdir=/opt", "true", check=False)
    assert alone.returncode != 0 and "--workdir needs --image" in alone.stderr
    assert "--chdir" in alone.stderr


def test_env_keeps_the_hosts_values_over_the_images(cluster, app_image):
    probe = ["sh", "-c", 'echo "$LANG $GREETING"']
    env = {"LANG": "host"}
    image_wins = cluster.srun("-N1", f"--image={app_image}", "--autoshift", *probe, env=env)
    assert lines(image_wins) == ["image image"]
    host_wins = cluster.srun("-N1", f"--image={app_image}", "--autoshift", "--env=LANG,GREETING", *probe, env=env)
    assert lines(host_wins) == ["host image"]      # GREETING: the task has none, the image's stays


def test_entrypoint_runs_in_front_of_the_command(cluster, app_image, image):
    result = cluster.srun("-N2", f"--image={app_image}", "--autoshift", "--entrypoint",
                          "/bin/sh", "-c", 'echo "command in $(pwd) as $(id -u)"')
    assert sorted(lines(result)) == sorted(["entry: 3 words, first /bin/sh",
                                            f"command in {cluster.home} as {cluster.uid}"] * 2), result.stdout
    none = cluster.srun("-N1", f"--image={image}", "--autoshift", "--entrypoint", "echo", "ran", check=False)
    assert none.returncode != 0 and "ran" not in none.stdout
    assert "has no ENTRYPOINT" in none.stderr


def test_defaults_come_from_the_environment_and_options_win(cluster, app_image):
    env = {"SHIFTER_WORKDIR": "/opt/app", "SHIFTER_ENTRYPOINT": "1", "SHIFTER_ENV": "LANG", "LANG": "host"}
    probe = ["/bin/sh", "-c", 'echo "$(pwd) $LANG"']
    result = cluster.srun("-N1", f"--image={app_image}", "--autoshift", *probe, env=env)
    assert lines(result) == ["entry: 3 words, first /bin/sh", "/opt/app host"], result.stdout
    given = cluster.srun("-N1", f"--image={app_image}", "--autoshift", "--workdir=/tmp", *probe,
                         env={**env, "SHIFTER_ENTRYPOINT": "0"})
    assert lines(given) == ["/tmp host"], given.stdout
    host = cluster.srun("-N1", "pwd", env=env)            # no container: the defaults do nothing
    assert lines(host) == [str(cluster.home)]


def test_a_batch_script_and_its_steps_follow_the_same_rules(cluster, app_image, readable_tmp):
    """In an --autoshift batch script srun is the container's, without the plugin's
    options: the variables say what they would."""
    job = cluster.sbatch('#!/bin/sh\necho "batch in $(pwd) $LANG"\nsrun -N1 pwd\n'
                         'cd /usr/bin && srun -N1 pwd\nSHIFTER_WORKDIR=/tmp srun -N1 pwd\n',
                         "-N1", f"--chdir={readable_tmp}", f"--image={app_image}", "--autoshift", "--env=LANG",
                         env={"LANG": "host"})
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    out = [line for line in cluster.output(job).splitlines() if "couldn't chdir" not in line]
    assert out == ["batch in /opt/app host", "/opt/app", "/usr/bin", "/tmp"], cluster.output(job)
