"""Fake site software for the mini-cluster, bound into containers by site modules.

What a site would bind from its own installation (an MPI library directory,
a GPU driver's device nodes and libraries), made small enough to build at
every `ci/cluster up`, and the udiRoot.conf lines that configure it:

    mpich, openmpi   an "MPI" directory each (lib/libmpi.so.*, bin/<version tool>),
                     mounted read-only under /opt; the two conflict
    gpu              a "GPU driver": the device node /dev/fakegpu0 (it behaves as
                     /dev/null: character device 1:3), a library directory, a tool
                     copied in with copyPath, a root hook and a user hook
    hookfail         a user hook that fails, so its task must not run
    pytorch          no software: the launcher variables (MASTER_ADDR ...) of
                     PyTorch-style training in every task (module_pytorch_launcherEnv)

Everything is root-owned and writable by root alone, as the runtime demands of
what root binds, copies and runs.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

FAKE_GPU_DEVICE = (1, 3)          # the numbers of /dev/null: writing to it is harmless


def _file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _mpi(directory: Path, name: str, soname: str, tool: str) -> None:
    _file(directory / "lib" / soname, f"fake {name} library\n")
    _file(directory / "bin" / tool, f'#!/bin/sh\necho "{name} version 0.0-fake from $0"\n', 0o755)


def populate(directory: Path) -> None:
    """(Re)create the fake site software under `directory`."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o755, parents=True)
    directory.chmod(0o755)
    _mpi(directory / "mpich", "mpich", "libmpi.so.12", "mpichversion")
    _mpi(directory / "openmpi", "openmpi", "libmpi.so.40", "ompi_info")
    gpu = directory / "gpu"
    (gpu / "dev").mkdir(mode=0o755, parents=True)
    os.mknod(gpu / "dev" / "fakegpu0", 0o666 | stat.S_IFCHR, os.makedev(*FAKE_GPU_DEVICE))
    (gpu / "dev" / "fakegpu0").chmod(0o666)
    _file(gpu / "lib" / "libcuda.so.1", "fake GPU driver library\n")
    _file(gpu / "copy" / "bin" / "fake-smi",
          '#!/bin/sh\necho "GPU 0: fake GPU on $(stat -c %t:%T /dev/fakegpu0)"\n', 0o755)
    _file(gpu / "copy" / "userhook.sh",
          'echo "gpu userhook: uid=$(id -u) CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"\n')
    _file(gpu / "roothook.sh", 'echo "fakegpu0 prepared by uid $(id -u)" > etc/fakegpu.conf\n')
    _file(directory / "hookfail" / "userhook.sh", 'echo "hookfail: refusing" >&2\nexit 3\n')


def config_lines(directory: Path) -> list[str]:
    """The module_<name>_* lines of udiRoot.conf for the software under `directory`."""
    gpu = directory / "gpu"
    return [
        f"module_mpich_siteFs={directory}/mpich:/opt/mpich:ro",
        "module_mpich_siteEnvPrepend=PATH=/opt/mpich/bin LD_LIBRARY_PATH=/opt/mpich/lib",
        "module_mpich_conflict=openmpi",
        f"module_openmpi_siteFs={directory}/openmpi:/opt/openmpi:ro",
        "module_openmpi_siteEnvPrepend=PATH=/opt/openmpi/bin LD_LIBRARY_PATH=/opt/openmpi/lib",
        f"module_gpu_siteFs={gpu}/dev/fakegpu0:/dev/fakegpu0;{gpu}/lib:/opt/gpu/lib:ro",
        "module_gpu_siteEnv=CUDA_VISIBLE_DEVICES=0",
        "module_gpu_siteEnvPrepend=LD_LIBRARY_PATH=/opt/gpu/lib PATH=/opt/udiImage/modules/gpu/bin",
        f"module_gpu_copyPath={gpu}/copy",
        f"module_gpu_roothook={gpu}/roothook.sh",
        "module_gpu_userhook=/opt/udiImage/modules/gpu/userhook.sh",
        f"module_hookfail_copyPath={directory}/hookfail",
        "module_hookfail_userhook=/opt/udiImage/modules/hookfail/userhook.sh",
        "module_pytorch_launcherEnv=pytorch",
    ]
