"""Site modules (module_<name>_* keys, --module): an MPI library directory and a
GPU's device node and libraries bound by configuration alone, root hooks,
copyPath, user hooks, defaults, `none` and conflicts.

The first tests build containers directly (as the prolog does, without
Slurm) with the fake site software of ci/harness/sitemodules.py; the others
run jobs on the mini-cluster, whose udiRoot.conf configures the same modules.
"""
from __future__ import annotations

import os
import re

import pytest

from ci.harness import sitemodules
from shifter_core.container import SetupFailed
from shifter_core.errors import ConfigError, ContainerError, ModuleError
from tests.integration.runtime_fixtures import Site, assert_no_container_left, run

pytestmark = pytest.mark.root



@pytest.fixture
def site():
    site = Site()
    sitemodules.populate(site.path / "software")
    site.cfg = site.config(**dict(line.split("=", 1)
                                  for line in sitemodules.config_lines(site.path / "software")))
    yield site
    site.cleanup(site.cfg)


def test_mpi_and_gpu_modules_by_configuration_alone(site):
    meta = site.image("mods")
    job = site.create(site.cfg, meta, 21, modules="mpich,gpu")
    out = run(job, "ls /opt/mpich/lib /opt/gpu/lib; stat -c '%F %t:%T' /dev/fakegpu0;"
                   " echo data > /dev/fakegpu0 && echo wrote; cat /etc/fakegpu.conf;"
                   " ls /opt/udiImage/modules/gpu/bin")
    assert "libmpi.so.12" in out and "libcuda.so.1" in out
    assert "character special file 1:3" in out
    assert "wrote" in out, "the GPU device node must be usable in the container"
    assert "fakegpu0 prepared by uid 0" in out, "the root hook runs as root in the container root"
    assert "fake-smi" in out
    assert not os.path.exists("/dev/fakegpu0"), "the device's mount point went to the node's /dev"
    assert job.modules == ["mpich", "gpu"]


def test_container_dev_is_the_nodes_with_its_mounts(site):
    job = site.create(site.cfg, site.image("mods"), 22)
    out = run(job, "ls /dev/null /dev/zero /dev/urandom; grep -E ' /dev/(pts|shm) ' /proc/mounts;"
                   " echo x > /dev/shm/shifter-test-$$ && rm /dev/shm/shifter-test-$$ && echo shm-ok;"
                   " touch /dev/new 2>/dev/null || echo dev-not-writable")
    assert re.search(r" /dev/pts devpts ", out) and re.search(r" /dev/shm tmpfs ", out), out
    assert "shm-ok" in out and "dev-not-writable" in out


def test_only_modules_with_per_task_work_send_tasks_down_the_python_path(site):
    """A user hook or launcher variables are per-task work (Python); other modules
    leave the tasks to the C fast path, which applies their environment."""
    meta = site.image("per-task")
    modules = {"gpu": True, "pytorch": True, "mpich": False}
    for job_id, (name, python) in enumerate(modules.items(), start=41):
        assert site.create(site.cfg, meta, job_id, modules=name).python is python, name


def test_selection_defaults_none_and_conflicts(site):
    cfg = site.config(defaultModules="mpich",
                      **dict(line.split("=", 1) for line in sitemodules.config_lines(site.path / "software")))
    assert [m.name for m in cfg.select_modules(None)] == ["mpich"]
    assert cfg.select_modules("none") == ()
    assert [m.name for m in cfg.select_modules("gpu")] == ["gpu"], "a request replaces the defaults"
    with pytest.raises(ModuleError, match="modules 'mpich' and 'openmpi' conflict: choose one"):
        cfg.select_modules("mpich,openmpi")
    with pytest.raises(ModuleError,
                       match="unknown module 'cuda': this system offers gpu, hookfail, mpich, openmpi, pytorch"):
        cfg.select_modules("cuda")


@pytest.mark.parametrize("key, target", [
    ("module_gpu_roothook", "gpu/roothook.sh"),
    ("module_gpu_copyPath", "gpu/copy/bin/fake-smi"),
    ("module_gpu_copyPath", "gpu/copy"),
])
def test_root_hooks_and_copy_paths_must_be_root_only(site, key, target):
    """Root runs the hook and copies the tree: a file others can write refuses the container."""
    path = site.path / "software" / target
    os.chmod(path, os.stat(path).st_mode | 0o002)
    with pytest.raises(ContainerError, match=rf"{key} .*(writable by group or others|cannot write)"):
        site.create(site.cfg, site.image("mods"), 23, modules="gpu")


def test_a_copy_path_file_of_a_user_is_refused(site):
    os.chown(site.path / "software" / "gpu" / "copy" / "userhook.sh", 65534, -1)
    with pytest.raises(ContainerError, match="module_gpu_copyPath .*/userhook.sh is not one"):
        site.create(site.cfg, site.image("mods"), 24, modules="gpu")


def test_a_failing_root_hook_fails_the_container(site):
    (site.path / "software" / "gpu" / "roothook.sh").write_text("echo no GPU here >&2; exit 2\n")
    with pytest.raises(SetupFailed, match="module_gpu_roothook .*roothook.sh failed with status 2: no GPU here"):
        site.create(site.cfg, site.image("mods"), 25, modules="gpu")


def test_an_unknown_module_key_is_a_config_error(site):
    with pytest.raises(ConfigError, match="unknown module gpu sub-key 'copyPaths' .*did you mean copyPath"):
        site.config(module_gpu_copyPaths=str(site.path))


def test_copypath_as_shifters_example_writes_it_copies(site):
    """Shifter's example spells the key `copypath`, which Shifter ignored; here it is copyPath."""
    lines = dict(line.split("=", 1) for line in sitemodules.config_lines(site.path / "software"))
    lines["module_gpu_copypath"] = lines.pop("module_gpu_copyPath")
    cfg = site.config(**lines)
    assert any("module_gpu_copypath is read as module_gpu_copyPath" in w for w in cfg.warnings)
    job = site.create(cfg, site.image("mods"), 26, modules="gpu")
    assert "fake-smi" in run(job, "ls /opt/udiImage/modules/gpu/bin")


# --- on the mini-cluster ------------------------------------------------------

@pytest.mark.cluster
def test_a_job_uses_mpi_and_gpu_through_modules(cluster, image):
    """sbatch --module=slurm,mpich,gpu: the batch script and an srun step in it see
    the MPI directory, the GPU device and libraries, the environment, the root
    hook's work, and the user hook runs as the user before each of them."""
    script = ("#!/bin/sh\necho batch: PATH=$PATH LD_LIBRARY_PATH=$LD_LIBRARY_PATH\n"
              "mpichversion\nsrun -n1 sh -c 'fake-smi; echo step uid=$(id -u) cvd=$CUDA_VISIBLE_DEVICES;"
              " echo data > /dev/fakegpu0 && echo gpu-write-ok; cat /etc/fakegpu.conf;"
              " ls /opt/mpich/lib /opt/gpu/lib'\n")
    job = cluster.sbatch(script, "-N1", f"--image={image}", "--autoshift", "--module=slurm,mpich,gpu")
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    out = cluster.output(job)
    assert out.count(f"gpu userhook: uid={cluster.uid} CUDA_VISIBLE_DEVICES=0") == 2, out
    assert out.index("gpu userhook") < out.index("batch:")
    assert "LD_LIBRARY_PATH=/opt/gpu/lib:/opt/mpich/lib" in out
    assert re.search(r"PATH=/opt/udiImage/modules/gpu/bin:/opt/mpich/bin:/opt/slurm/bin:", out), out
    assert "mpich version 0.0-fake from /opt/mpich/bin/mpichversion" in out
    assert "GPU 0: fake GPU on 1:3" in out and f"step uid={cluster.uid} cvd=0" in out
    assert "gpu-write-ok" in out and "fakegpu0 prepared by uid 0" in out
    assert "libmpi.so.12" in out and "libcuda.so.1" in out
    assert_no_container_left(cluster, job)


@pytest.mark.cluster
def test_defaults_none_and_a_request_replacing_them(cluster, image):
    probe = "test -d /opt/slurm && echo slurm-module; test -d /opt/mpich && echo mpich-module; echo end"
    runs = {request: cluster.srun("-N1", f"--image={image}", "--autoshift", *args, "sh", "-c", probe).stdout
            for request, args in [("default", []), ("none", ["--module=none"]),
                                  ("mpich", ["--module=mpich"])]}
    assert runs["default"].split() == ["slurm-module", "end"]
    assert runs["none"].split() == ["end"]
    assert runs["mpich"].split() == ["mpich-module", "end"]


@pytest.mark.cluster
@pytest.mark.parametrize("request_, message", [
    ("mpich,openmpi", "modules 'mpich' and 'openmpi' conflict: choose one"),
    ("openmpi,gpu,mpich", "modules 'openmpi' and 'mpich' conflict: choose one"),
    ("cuda", "unknown module 'cuda': this system offers"),
    ("gpu_x", "invalid --module"),
])
def test_conflicting_and_unknown_modules_are_refused_at_submit(cluster, image, request_, message):
    for command in (["srun", "-N1", "true"], ["sbatch", "--wrap", "true"]):
        result = cluster.run([command[0], f"--image={image}", f"--module={request_}", *command[1:]],
                             check=False)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if "shifter: " in line]
        assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.cluster
def test_a_failing_user_hook_fails_the_task_before_it_runs(cluster, image):
    marker = cluster.home / f"hook-ran-{os.getpid()}"
    result = cluster.srun("-N1", f"--image={image}", "--autoshift", "--module=hookfail",
                          "touch", str(marker), check=False)
    assert result.returncode != 0
    assert "hookfail: refusing" in result.stderr
    assert ("module hookfail's userhook /opt/udiImage/modules/hookfail/userhook.sh failed with status 3"
            in result.stderr), result.stderr
    assert not marker.exists(), "the task ran although its module's user hook failed"
