"""A self-contained Slurm client directory, as a site's /opt/slurm, for use inside images.

With `sbatch --autoshift` the batch script runs inside the image, so the
`srun` it calls must exist there.  Debian spreads Slurm over /usr, so this
builds one directory that works in any image of the same architecture:

    bin/<command>      sh wrappers: run the real binary through the bundled loader
    libexec/<command>  srun, sbatch, scontrol, squeue, scancel, sinfo
    lib/               every shared library they and the plugins need, and ld.so
    lib/slurm/         the Slurm plugins (PluginDir) and libslurmfull.so
    etc/slurm.conf     the cluster's slurm.conf with PluginDir pointing into the
                       bundle and no PlugStackConfig (no shifter plugin in images)

udiRoot.conf's module `slurm` binds it at /opt/slurm, with /run/munge beside it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from shifter_core import hostbundle

PREFIX = "/opt/slurm"
STAMP = ".built-from"
COMMANDS = ("srun", "sbatch", "scontrol", "squeue", "scancel", "sinfo")
# Plugin types that only slurmctld, slurmd or slurmstepd load.  Some pull in large
# libraries (hdf5 and curl for profiling, rrd with X11 for sensors) that a client in
# an image never needs.  Their "none" variants stay: clients may load what the
# configuration names.
DAEMON_PLUGIN_TYPES = (
    "accounting_storage", "acct_gather_energy", "acct_gather_filesystem", "acct_gather_interconnect",
    "acct_gather_profile", "burst_buffer", "cgroup", "ext_sensors", "gpu", "job_submit", "jobcomp",
    "node_features", "power", "preempt", "priority", "proctrack", "sched", "site_factor", "slurmctld",
    "task",
)


def build(target: Path, cluster_slurm_conf: str) -> None:
    """(Re)build the bundle in `target` from the host's Slurm and the cluster's slurm.conf text."""
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("bin", "libexec", "lib/slurm", "etc"):
        (staging / sub).mkdir(parents=True)
    binaries = [Path(shutil.which(command, path="/usr/bin")) for command in COMMANDS]
    plugin_dir = hostbundle.libraries(binaries[0])["libslurmfull.so"].parent
    plugins = [p for p in sorted(plugin_dir.glob("*.so")) if _wanted_by_clients(p) and hostbundle.loads(p)]

    libraries = hostbundle.all_libraries(binaries + plugins)
    loader = hostbundle.loader(libraries)
    for name, path in libraries.items():
        if path.parent != plugin_dir:
            shutil.copy2(path, staging / "lib" / name)
    for plugin in plugins:
        shutil.copy2(plugin, staging / "lib" / "slurm" / plugin.name)

    library_path = f"{PREFIX}/lib:{PREFIX}/lib/slurm"
    for binary in binaries:
        shutil.copy2(binary, staging / "libexec" / binary.name)
        # slurmstepd sets SLURM_CONF to the host's path after the plugin has built the
        # task's environment, so the wrapper, not the module's siteEnv, has the last word
        hostbundle.write_wrapper(staging / "bin" / binary.name, f"{PREFIX}/libexec/{binary.name}",
                                 loader_path=f"{PREFIX}/lib/{loader.name}", library_path=library_path,
                                 exports={"SLURM_CONF": f"{PREFIX}/etc/slurm.conf"})
    (staging / "etc" / "slurm.conf").write_text(container_slurm_conf(cluster_slurm_conf), encoding="utf-8")
    (staging / STAMP).write_text(_stamp(cluster_slurm_conf), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def container_slurm_conf(cluster_slurm_conf: str) -> str:
    """The cluster's slurm.conf for clients inside images: bundled plugins, no plugin stack."""
    kept = [line for line in cluster_slurm_conf.splitlines()
            if not line.startswith(("PlugStackConfig=", "PluginDir="))]
    return "\n".join(kept + [f"PluginDir={PREFIX}/lib/slurm"]) + "\n"


def _wanted_by_clients(plugin: Path) -> bool:
    return plugin.stem.endswith("_none") or not plugin.stem.startswith(DAEMON_PLUGIN_TYPES)


def up_to_date(target: Path, cluster_slurm_conf: str) -> bool:
    """True when `target` was built by this code from the installed Slurm for this slurm.conf."""
    try:
        return (target / STAMP).read_text(encoding="utf-8") == _stamp(cluster_slurm_conf)
    except OSError:
        return False


def _stamp(cluster_slurm_conf: str) -> str:
    """What the bundle depends on: the host's srun, the configuration and the code that builds it."""
    srun = Path(shutil.which("srun", path="/usr/bin")).stat()
    digest = hashlib.sha256(container_slurm_conf(cluster_slurm_conf).encode())
    for module in (__file__, hostbundle.__file__):
        digest.update(Path(module).read_bytes())
    return f"srun {srun.st_size} {srun.st_mtime_ns}\n{digest.hexdigest()}\n"


def run_in_minimal_root(bundle: Path, uid: int, gid: int, passwd_line: str, group_line: str,
                        command: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `command` as uid:gid in a throw-away root holding only busybox and the bundle.

    This checks the bundle needs nothing from the host's /usr.  The mounts live in
    a private mount namespace that ends with the command; the root is removed after.
    """
    with tempfile.TemporaryDirectory(prefix="shifter-slurmclient-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        for sub in ("bin", "etc", "tmp", "opt/slurm", "run/munge"):
            (root / sub).mkdir(parents=True)
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        os.symlink("busybox", root / "bin" / "sh")
        (root / "etc" / "passwd").write_text(f"root:x:0:0:root:/:/bin/sh\n{passwd_line}\n")
        (root / "etc" / "group").write_text(f"root:x:0:\n{group_line}\n")
        (root / "tmp").chmod(0o1777)
        script = (f"/usr/bin/mount --bind {bundle} {root}/opt/slurm && "
                  f"/usr/bin/mount --bind /run/munge {root}/run/munge && "
                  f'exec /usr/sbin/chroot --userspec={uid}:{gid} {root} "$@"')
        return subprocess.run(
            ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh", *command],
            capture_output=True, text=True, timeout=timeout, cwd="/",
            env={"PATH": f"{PREFIX}/bin:/bin", "SLURM_CONF": f"{PREFIX}/etc/slurm.conf", "HOME": "/tmp"})
