"""A job's container on one node: built by the prolog, entered by tasks,
torn down by the epilog.

    record.py    the record in runDir that tasks (Python and C) and the epilog read
    holder.py    the process holding the container's mount namespace; create, find, destroy
    build.py     what goes into the container, in which order, with which flags
    roottree.py  RootTree: every path root touches inside, resolved by the kernel from a descriptor
    marker.py    /var/shifterConfig.json (Shifter's) and /var/shifterMarker (ours)
    procfs.py    what /proc says about the holder

ccm and pernodecache work on a RootTree or a descriptor they are given; this
package does not know them: the prolog hands the build its `extensions`
(objects with `name`, `prepare(tree, cfg, spec)` while root writes its own
files, and `start(tree, cfg, spec)` once the container is complete).
"""
from __future__ import annotations

import dataclasses

from .. import etcfiles
from ..imagestore import ImageMeta
from .holder import HOLDER_NAME, create, destroy, ensure_run_dir, find
from .record import JobContainer, SetupFailed, save_failure, state_path
from .roottree import RootTree

__all__ = ["ContainerSpec", "HOLDER_NAME", "JobContainer", "RootTree", "SetupFailed", "create", "destroy",
           "ensure_run_dir", "find", "record_failure", "save_failure", "state_path"]


@dataclasses.dataclass
class ContainerSpec:
    """Everything the prolog decided about one job's container on this node."""

    job_id: int
    node: str
    image: ImageMeta
    image_file: str
    user: etcfiles.User
    volumes: tuple = ()              # user volumes.VolumeMount, policy-checked
    modules: tuple = ()              # config.Module, already selected
    hosts: tuple[str, ...] = ()      # /var/hostsfile, one line per task
    request: str = ""                # the descriptor the user asked for
    extensions: tuple = ()           # e.g. ccm.Sshd: see the package docstring
    step_id: int | None = None       # a step's own container (holder.py); None: the job's


def record_failure(cfg, job_id: int, node: str, reason: str) -> None:
    """Remember on this node that the job's container could not be built, and why:
    its tasks then fail with that reason (Python and the C fast path)."""
    ensure_run_dir(cfg.run_dir)
    save_failure(state_path(cfg.run_dir, job_id, node), job_id, node, reason)
