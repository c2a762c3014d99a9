"""--volume end to end on the mini-cluster: Shifter's cases (reference h.1) with
our path-component rule, sources resolved inside the container with the
user's permissions, symlink tricks in the image, `ro`, mount points only on
the container's own layer, refusals at submit in one line, and failures at
mount time that leave nothing behind.  Then what users do every day (#11):
several --volume options (and their environment form) adding up, an empty
one refused, a step's own --volume refused at srun rather than dropped,
single files, sources relative to the submit directory, and devices only
where the site lists them.

The last tests build containers without Slurm to check the rules for mount
points against random trees."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ci.harness.oci import Dir, File, Symlink
from shifter_core import syscalls, volumes
from shifter_core.container import RootTree, build
from shifter_core.errors import ShifterError
from tests.integration import waiting
from tests.integration.runtime_fixtures import Site, assert_no_container_left, failed_job, push_image

pytestmark = pytest.mark.root
on_cluster = pytest.mark.cluster

TRICKS = [
    Symlink("data", "/etc"),                          # a target leading to /etc
    Symlink("hostetc", "/etc"),                       # a source "reaching" the node's /etc
    Symlink("climb", "../../../../../../etc"),
    Symlink("tmplink", "/tmp"),                       # a target leading into the node's /tmp
    Dir("secret", mode=0o700), File("secret/key", "image secret\n", mode=0o600),
    File("rootonly", "root's\n", mode=0o600),        # a file the user reaches but cannot read
    Symlink("devzero", "/dev/zero"),                  # a device the site does not list, by another name
    Dir("srv"), Dir("srv/data"), File("srv/data/readme", "from the image\n"),
]
ENV_FORM = "SLURM_SPANK__SLURM_SPANK_OPTION_shifter_volume"   # Slurm's environment form of --volume


@pytest.fixture(scope="module")
def image(cluster):
    return push_image(cluster, "shifter-volumes-test", TRICKS)


@pytest.fixture
def source(cluster):
    """A directory of the test user's, with one file in it (the home is a siteFs)."""
    path = cluster.home / f"vol-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    (path / "hello").write_text("hello from the host\n")
    os.chown(path, cluster.uid, -1)
    os.chown(path / "hello", cluster.uid, -1)
    yield path
    shutil.rmtree(path)


def _srun(cluster, image: str, volume: str, script: str, **kwargs):
    return cluster.srun("-N1", "-w", "n1", f"--image={image}", "--autoshift", f"--volume={volume}",
                        "sh", "-c", script, **kwargs)


@on_cluster
def test_user_volumes_mount_where_asked(cluster, image, source):
    """Shifter's accepted targets, plus those only a prefix match refused: all in one job."""
    targets = ["/target1", "/var/tmp", "/mnt", "/opt/myStuff", "/etcetera", "/variable", "/opt/udiImage2"]
    spec = ";".join(f"{source}:{t}" for t in targets) + f';"{source}:/quoted";/srv/data:/from-image:ro'
    script = ("for t in " + " ".join(targets + ["/quoted"]) + "; do cat $t/hello || echo MISSING $t; done;"
              " cat /from-image/readme; echo made-inside > /target1/new;"
              " touch /from-image/x 2>&1 | grep -q 'Read-only' && echo ro-ok;"
              " grep -E ' /(target1|from-image) ' /proc/mounts")
    out = _srun(cluster, image, spec, script).stdout
    assert out.count("hello from the host") == len(targets) + 1, out
    assert "MISSING" not in out and "from the image" in out and "ro-ok" in out
    assert (source / "new").read_text() == "made-inside\n"
    assert (source / "new").stat().st_uid == cluster.uid
    assert re.search(r" /target1 \S+ rw,nosuid,nodev", out), out
    assert re.search(r" /from-image \S+ ro,nosuid,nodev", out), out
    for created in ("/target1", "/etcetera", "/mnt/hello"):
        assert not os.path.exists(created), f"{created} appeared on the node"


@on_cluster
@pytest.mark.parametrize("spec, message", [
    ("/evilPath:/etc", "/etc belongs to the container's setup"),
    ("/x:/etc/passwd", "/etc/passwd is inside /etc"),
    ("/x:/var/log", "/var/log is inside /var"),
    ("/x:/opt", "/opt would hide /opt/udiImage"),
    ("/x:opt", "the target 'opt' must be an absolute path"),
    ("/x:etc", "the target 'etc' must be an absolute path"),
    ("/x:/opt/udiImage/bin", "inside /opt/udiImage"),
    ("/x:/proc/sys", "inside /proc"),
    ("/x:/dev", "/dev belongs to the container's setup"),
    ("/x:/", "would hide /etc"),
    ("/no/to/specified", "give both paths as SOURCE:TARGET"),
    ("/x:/y:rec", "flag rec is reserved to the site configuration"),
    ("/x:/y:ro,rec", "unknown flag 'ro,rec'"),
    ("/x:/y:ro:ro", "flag ro is given twice"),
    ("/x/../etc:/y", "must not contain '..'"),
    ("/x:/y:perNodeCache", "perNodeCache needs a size"),
    ("/x:/y:perNodeCache=size=1G,bs=4M", "a power of two from 1K to 64K"),
    ("/x y:/z", "character ' ' is not allowed"),
])
def test_invalid_volumes_are_refused_at_submit_in_one_line(cluster, image, spec, message):
    for command in (["srun", "-N1", "true"], ["sbatch", "--wrap", "true"]):
        result = cluster.run([command[0], f"--image={image}", f"--volume={spec}", *command[1:]], check=False)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if "shifter: " in line]
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in result.stderr


@on_cluster
def test_symlinks_in_the_image_lead_inside_the_container(cluster, image):
    """/hostetc -> /etc and /climb -> ../../../etc bind the container's /etc, not the node's."""
    out = _srun(cluster, image, "/hostetc:/mnt/e;/climb:/mnt/c",
                "cat /mnt/e/os-release /mnt/c/os-release; ls /mnt/e/debian_version /mnt/c/debian_version"
                " 2>&1; echo done", check=False).stdout
    assert out.count('PRETTY_NAME="shifter-py test image (busybox)"') == 2, out
    assert out.count("No such file") == 2 and "done" in out, "the node's /etc leaked into the container"


@on_cluster
@pytest.mark.parametrize("target, message", [
    ("/data", "--volume target /data leads to /etc in the container, where users cannot mount"),
    ("/tmplink/shifter-test-mountpoint", "leads into a node file system bound into the container"),
    ("/home/shiftertest/shifter-test-mountpoint", "leads into a node file system bound into the container"),
])
def test_targets_that_leave_the_container_layer_fail_the_job(cluster, image, source, target, message):
    _, error = failed_job(cluster, f"--image={image}", "--autoshift", f"--volume={source}:{target}")
    assert message in error
    assert not os.path.exists("/tmp/shifter-test-mountpoint")
    assert not os.path.exists(cluster.home / "shifter-test-mountpoint")


@on_cluster
@pytest.mark.parametrize("volume, message", [
    ("/secret:/mnt/s", "--volume source /secret is not a directory shiftertest can read in the container"),
    ("/does/not/exist:/mnt/x", "--volume source /does/not/exist does not exist in the container"),
    ("/rootonly:/mnt/r", "--volume source /rootonly is not a file shiftertest can read in the container"),
    ("/secret/key:/mnt/k", "--volume source /secret/key cannot be reached: permission denied on the way"),
    ("{source}/hello:/srv/data", "--volume target /srv/data: /srv/data is not a regular file in the container"),
])
def test_sources_are_resolved_with_the_users_permissions(cluster, image, source, volume, message):
    _, error = failed_job(cluster, f"--image={image}", "--autoshift", f"--volume={volume.format(source=source)}")
    assert message in error


@on_cluster
def test_a_failure_at_mount_time_leaves_nothing(cluster, image, source):
    """A cache and a bind are mounted, then the third volume fails: all of it goes."""
    volumes = f"/x:/cache:perNodeCache=size=512M;{source}:/target1;/does/not/exist:/data"
    job, error = failed_job(cluster, f"--image={image}", "--autoshift", f"--volume={volumes}")
    assert "/does/not/exist does not exist in the container" in error
    assert_no_container_left(cluster, job)


# --- what users do every day (#11) ---------------------------------------------

@on_cluster
def test_several_volumes_add_up_with_their_environment_form(cluster, image, source):
    """Every --volume counts, in Slurm's order (#SBATCH lines, the environment
    form, a default from a profile, and the command line): srun mounts them all,
    and so does a batch job, whose prolog, batch script and steps get every one."""
    env = {ENV_FORM: f"{source}:/from-env"}
    srun = cluster.run(["srun", "-N1", "-w", "n1", f"--image={image}", "--autoshift", f"--volume={source}:/one",
                        f"--volume={source}:/two;{source}:/three:ro", "sh", "-c",
                        "cat /from-env/hello /one/hello /two/hello /three/hello; echo $SHIFTER_VOLUME"], env=env)
    assert srun.stdout.count("hello from the host") == 4, srun.stdout
    assert srun.stdout.splitlines()[-1] == f"{source}:/from-env;{source}:/one;{source}:/two;{source}:/three:ro"
    script = (f"#!/bin/sh\n#SBATCH --volume={source}:/in-script\n"
              "cat /from-env/hello /in-script/hello /one/hello && echo $SHIFTER_VOLUME\n"
              "srun cat /from-env/hello /in-script/hello /one/hello\n")
    job = cluster.sbatch(script, "-w", "n1", f"--image={image}", "--autoshift", f"--volume={source}:/one", env=env)
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    out = cluster.output(job)
    assert out.count("hello from the host") == 6, out
    assert f"{source}:/in-script;{source}:/from-env;{source}:/one\n" in out


@on_cluster
@pytest.mark.parametrize("args, env, message", [
    (["--volume="], {}, "--volume is empty: give SOURCE:TARGET[:FLAGS]"),
    (["--volume=/a:/b", "--volume="], {}, "--volume is empty"),
    ([], {ENV_FORM: ""}, "--volume is empty"),
    (["--volume=;"], {}, "--volume=';' names no volume"),
])
def test_an_empty_volume_is_refused_at_submit(cluster, image, args, env, message):
    for command in (["srun", "-N1", "true"], ["sbatch", "--wrap", "true"]):
        result = cluster.run([command[0], f"--image={image}", *args, *command[1:]], env=env, check=False)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if "shifter: " in line]
        assert len(lines) == 1 and message in lines[0], result.stderr


@on_cluster
def test_a_step_that_adds_a_volume_sees_it_and_the_job_does_not(cluster, image, source):
    """The job's volumes (given again or not) keep a step in the job's container; a
    step that adds one gets a container of its own with all of them, never a dropped
    volume, and the job's other steps still see the job's."""
    script = ("#!/bin/sh\n"
              "srun --autoshift cat /one/hello\n"
              f"srun --autoshift --volume={source}:/one cat /one/hello\n"
              f"srun --autoshift --volume={source}:/two cat /one/hello /two/hello; echo step-rc=$?\n"
              "srun --autoshift sh -c 'test -e /two/hello && echo job-sees-two || echo job-does-not'\n")
    job = cluster.sbatch(script, "-w", "n1", f"--image={image}", f"--volume={source}:/one")
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    out = cluster.output(job)
    assert out.count("hello from the host") == 4, out
    assert "step-rc=0" in out and "job-does-not" in out, out


@on_cluster
def test_an_srun_inside_a_job_with_several_volumes_starts_no_python(cluster, image, source):
    """The job's volumes reach its sruns as it passed them on, so an srun that asks
    for nothing else reuses the job's pin in C (spank/fastpath.c)."""
    with tempfile.TemporaryDirectory(dir=cluster.home) as mine:
        os.chown(mine, cluster.uid, -1)
        trace = f"{mine}/trace"
        result = cluster.run(["salloc", "-N1", "-w", "n1", f"--image={image}", "--autoshift",
                              f"--volume={source}:/one", f"--volume={source}/:/two", "strace", "-f", "-qq",
                              "-e", "trace=openat,open", "-o", trace, "srun", "cat", "/one/hello", "/two/hello"])
        assert result.stdout.count("hello from the host") == 2, result.stdout + result.stderr
        assert waiting.python_opens(Path(trace).read_text()) == []


@on_cluster
def test_a_single_file_is_a_volume(cluster, image, source):
    """`$HOME/run.yaml:/opt/app/run.yaml:ro`, as users write it: a file bound on a
    file made on the container's own layer, or over a file of the image."""
    (source / "run.yaml").write_text("steps: 3\n")
    os.chown(source / "run.yaml", cluster.uid, -1)
    relative = source.relative_to(cluster.home)
    command = (f"srun -N1 -w n1 --image={image} --autoshift --volume=$HOME/{relative}/run.yaml:/opt/app/run.yaml:ro"
               f" --volume=$HOME/{relative}/hello:/srv/data/readme"
               " sh -c 'cat /opt/app/run.yaml /srv/data/readme; echo more >> /opt/app/run.yaml;"
               " grep -E \" /(opt/app/run.yaml|srv/data/readme) \" /proc/mounts'")
    result = cluster.run(["sh", "-c", command], check=False)
    out = result.stdout + result.stderr
    assert "steps: 3" in out and "hello from the host" in out and "from the image" not in out, out
    assert "Read-only file system" in out, out
    assert re.search(r" /opt/app/run.yaml \S+ ro,nosuid,nodev", out), out
    assert re.search(r" /srv/data/readme \S+ rw,nosuid,nodev", out), out
    assert (source / "run.yaml").read_text() == "steps: 3\n"
    assert not os.path.exists("/opt/app/run.yaml")


@on_cluster
def test_relative_sources_are_made_absolute_at_submit(cluster, image, source):
    """./data and data mean the submit directory's, in the container (the home is a
    siteFs); from a directory no siteFs shows, they are refused with the reason."""
    (source / "data").mkdir()
    (source / "data" / "x").write_text("relative\n")
    os.chown(source / "data", cluster.uid, -1)
    command = (f"cd {source} && srun -N1 -w n1 --image={image} --autoshift --volume='./data:/in;hello:/opt/hello:ro'"
               " sh -c 'cat /in/x /opt/hello; echo $SHIFTER_VOLUME'")
    out = cluster.run(["sh", "-c", command]).stdout
    assert "relative" in out and "hello from the host" in out, out
    assert out.splitlines()[-1] == f"{source}/data:/in;{source}/hello:/opt/hello:ro"
    refused = cluster.run(["sh", "-c", f"cd /tmp && srun -N1 --image={image} --volume=./data:/data true"], check=False)
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if "shifter: " in line]
    assert len(lines) == 1, refused.stderr
    assert ("a relative source starts from the directory you submit from, but /tmp is not on a file system"
            f" the container shows (the site binds {cluster.home}") in lines[0]


@on_cluster
def test_devices_only_where_the_site_lists_them(cluster, image):
    """The mini-cluster lists /dev/full: it works in the container (writes fail with
    ENOSPC, not EACCES: the bind keeps devices); /dev/zero is refused at submit,
    and reached through an image's symlink, on the node."""
    result = _srun(cluster, image, "/dev/full:/opt/full", "echo x > /opt/full; echo done", check=False)
    assert "No space left on device" in result.stderr and "done" in result.stdout, result.stdout + result.stderr
    refused = cluster.srun("-N1", f"--image={image}", "--volume=/dev/zero:/opt/zero", "true", check=False)
    lines = [line for line in refused.stderr.splitlines() if "shifter: " in line]
    assert refused.returncode != 0 and len(lines) == 1, refused.stderr
    assert ("/dev/zero is a device or in /dev, and this site lets --volume bind only /dev/full from there"
            " (udiRoot.conf userVolumeDevices)") in lines[0]
    _, error = failed_job(cluster, f"--image={image}", "--autoshift", "--volume=/devzero:/opt/zero")
    assert error.startswith("--volume source /devzero: /dev/zero is a device or in /dev"), error


# --- mount points on random trees, without Slurm ------------------------------

@pytest.fixture(scope="module")
def site_container():
    """One container whose image holds symlinks and directories to aim targets at."""
    site = Site()
    cfg = site.config(siteFs=f"{site.path}/home:/home")
    os.makedirs(site.path / "home")

    def tree(root):
        os.symlink("/etc", root / "data")
        os.symlink("../../../..", root / "up")
        os.symlink("/home", root / "homelink")
        (root / "srv/deep").mkdir(parents=True)
    job = site.create(cfg, site.image("tricks", tree), 31)
    yield site, cfg, job
    site.cleanup(cfg)


component = st.sampled_from(["data", "up", "homelink", "srv", "deep", "etc", "var", "tmp", "home",
                             "new", "..", ".", "proc", "opt", "udiImage"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(component, min_size=1, max_size=5))
def test_mount_points_are_made_only_on_the_container_layer(site_container, parts):
    """Whatever path a target names, a mount point is created only on the
    container's own layer, never where the policy forbids, never on the node."""
    site, cfg, job = site_container
    target = "/" + "/".join(parts)
    try:
        volumes.parse(f"/x:{target}", volumes.USER)
    except ShifterError:
        return                                   # refused at submit already
    home_before = sorted(os.listdir(site.path / "home"))
    made, error = _mount_point_in(job, cfg.udi_mount, target)
    assert sorted(os.listdir(site.path / "home")) == home_before, "a mount point appeared on the node"
    if error is None:
        inside = "/" + os.path.relpath(made, cfg.udi_mount)
        volumes.parse(f"/x:{inside}", volumes.USER)     # allowed where it really is
    else:
        assert error.startswith("--volume target "), error


def _mount_point_in(job, root: str, target: str) -> tuple[str | None, str | None]:
    """build.user_target(target), called in the container's namespace by a forked
    child; returns (host path, None) or (None, the VolumeError's message)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            fd = job.namespace_fd()
            syscalls.setns(fd, syscalls.CLONE_NEWNS)
            try:
                tree = RootTree(os.open(root, os.O_PATH | os.O_DIRECTORY), root)
                made = os.readlink(f"/proc/self/fd/{build.user_target(tree, target)}")
                on_layer = os.stat(made).st_dev == os.stat(root).st_dev or os.path.ismount(made)
                answer = {"made": made} if os.path.isdir(made) and on_layer else {"error": f"{made} is off"}
            except ShifterError as error:
                answer = {"error": str(error)}
            os.write(write, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        answer = json.loads(f.read())
    os.waitpid(pid, 0)
    return answer.get("made"), answer.get("error")
