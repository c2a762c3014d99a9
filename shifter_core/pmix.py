"""What `srun --mpi=pmix` needs inside a container: the step's PMIx server directory.

Slurm's mpi/pmix plugin runs a PMIx server in the slurmstepd of each step,
with its directory at <SlurmdSpoolDir>/pmix.<job>.<step>/ (the shared-memory
data store the clients map, rendezvous files), made for the job's user after
the prolog, just before the tasks start.  Each task gets PMIX_* variables
naming it (PMIX_SERVER_TMPDIR) and reaches the server over the node's
loopback, which a container shares.  So a task of such a step, while it
enters the container, binds that directory at the same path (enter.py):
writable (the clients take locks in the data store), nosuid, nodev.  The
client's own directory (spmix_appdir_*) is under Slurm's TmpFS, /tmp by
default, which every container has already.

Root binds it, so the path is never taken from the task's environment (the
user's): it is SlurmdSpoolDir from slurmd's own configuration (the
SLURM_CONF that slurmd puts in slurmstepd's environment, not the job's) with
the job and step ids Slurm gives the plugin.  The spool directory must be
root's and writable by nobody else, so `pmix.<job>.<step>` in it was made by
Slurm for this very step.
"""
from __future__ import annotations

import glob
import os
import shlex
import stat

from . import trust
from .errors import ContainerError

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
DEFAULT_SPOOL_DIR = "/var/spool/slurmd"      # Slurm's default SlurmdSpoolDir
MAX_INCLUDE_DEPTH = 8


def server_directory(job_id: int, step_id: int, node: str, uid: int) -> str | None:
    """The PMIx server directory of this step on this node; None when the step has none
    (it runs another MPI plugin, or none).  ContainerError if it is not what Slurm makes."""
    slurm_conf = os.environ.get("SLURM_CONF", DEFAULT_SLURM_CONF)
    trust.require_root_owned(slurm_conf, "Slurm's configuration")
    spool = slurmd_spool_dir(slurm_conf, node)
    path = os.path.join(spool, f"pmix.{int(job_id)}.{int(step_id)}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ContainerError(f"cannot look at Slurm's PMIx directory {path}: {error.strerror}") from None
    trust.require_root_owned(spool, "SlurmdSpoolDir")
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, uid):
        raise ContainerError(f"{path} is not the directory Slurm's PMIx plugin makes for the step (a directory"
                             " of root or the job's user); the step's PMIx clients cannot be given it")
    return path


def slurmd_spool_dir(slurm_conf: str, node: str) -> str:
    """SlurmdSpoolDir of slurm.conf (and the files it includes), %n and %h expanded, as
    slurmd reads it: keys in any case, several `key=value` on a line, the last one wins."""
    value = _last_value(slurm_conf, "slurmdspooldir", 0) or DEFAULT_SPOOL_DIR
    return value.replace("%n", node).replace("%h", os.uname().nodename)


def _last_value(path: str, key: str, depth: int) -> str | None:
    if depth > MAX_INCLUDE_DEPTH:
        raise ContainerError(f"{path}: Include nested more than {MAX_INCLUDE_DEPTH} deep")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read().replace("\\\n", "")
    except OSError as error:
        raise ContainerError(f"cannot read Slurm's configuration {path}: {error.strerror}") from None
    found = None
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.lower().startswith("include ") or line.lower().startswith("include\t"):
            pattern = line.split(None, 1)[1].strip().strip('"')
            pattern = os.path.join(os.path.dirname(path), pattern)
            for included in sorted(glob.glob(pattern)):
                found = _last_value(included, key, depth + 1) or found
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        for word in words:
            name, sep, value = word.partition("=")
            if sep and name.lower() == key:
                found = value
    return found
