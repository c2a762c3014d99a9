"""The container record: what the prolog leaves in runDir for the tasks and the epilog.

One file per job and node, `<runDir>/job<id>.<node>.state`, root-only, written
whole (files.write_atomic).  Line-oriented `key value`, one value per line
with backslash and newline escaped, because the plugin's C fast path reads it
too (spank/seam.c: seam_parse_record):

    shifter-container 1
    job 42
    node n1
    holder <pid> <start time> <mount namespace inode>
    ...
    env set PATH=/usr/bin

The keys, which ones are required and the kind of each value are
shifter_core/seam.py's; `parse` and the C parser accept exactly the same
records (tests/unit/test_seam.py).  A prolog that failed because of the job
writes the same file with a `failed` line instead of a container: every task
of the job on that node then fails with that reason, and the node stays in
service.
"""
from __future__ import annotations

import dataclasses
import os

from .. import files, seam
from ..errors import ContainerError, JobFault
from . import procfs

STATE_MODE = 0o600
_KINDS = dict(seam.RECORD_KEYS)


class SetupFailed(JobFault):
    """The job's prolog failed on this node because of the job; the message is its reason."""


@dataclasses.dataclass
class JobContainer:
    """A container that exists: what tasks and the epilog need to find it."""

    job_id: int
    node: str
    holder_pid: int
    holder_start: int                # /proc/<pid>/stat start time, against pid reuse
    mntns: int                       # inode of the namespace
    root: str
    image_id: str
    digest: str
    uid: int
    gid: int
    workdir: str | None
    modules: list[str]
    timings: dict[str, float]        # milliseconds
    env_ops: list[tuple[str, str, str]]   # environ.operations, for every task
    python: bool = False             # its tasks need the Python path (CCM, module user hooks)
    provenance_log: str | None = None
    step_id: int | None = None       # a step's own container; None: the job's
    volumes: str = ""                # the user's volumes (volumes.render)

    def serves(self, digest: str | None, volumes: str | None, modules: str | None) -> bool:
        """Does this container hold the view a step asks for?  A value the step does not
        give (None, or no digest yet: a job held for its pull) is the job's."""
        return ((not digest or digest == self.digest)
                and (volumes is None or volumes == self.volumes)
                and (modules is None or modules == ",".join(self.modules)))

    def alive(self) -> bool:
        """Is the holder still the process that created this namespace?"""
        return (procfs.start_time(self.holder_pid) == self.holder_start
                and procfs.mount_namespace(self.holder_pid) == self.mntns)

    def namespace_fd(self) -> int:
        """An fd of the namespace, checked after opening against pid reuse."""
        fd = os.open(f"/proc/{self.holder_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        if os.fstat(fd).st_ino != self.mntns or procfs.start_time(self.holder_pid) != self.holder_start:
            os.close(fd)
            raise ContainerError(f"the container of job {self.job_id} on {self.node} is gone")
        return fd

    def save(self, path: str) -> None:
        lines = [f"job {self.job_id}", f"node {self.node}",
                 f"holder {self.holder_pid} {self.holder_start} {self.mntns}", f"root {self.root}",
                 f"image {self.image_id}", f"digest {self.digest}", f"user {self.uid} {self.gid}",
                 f"modules {','.join(self.modules)}", f"python {int(self.python)}"]
        if self.workdir:
            lines.append(f"workdir {seam.escape(self.workdir)}")
        if self.provenance_log:
            lines.append(f"provenance {self.provenance_log}")
        if self.step_id is not None:
            lines.append(f"step {self.step_id}")
        if self.volumes:
            lines.append(f"volumes {seam.escape(self.volumes)}")
        lines += [f"timing {name} {value:.3f}" for name, value in self.timings.items()]
        lines += [f"env {op} {seam.escape(name)}={seam.escape(value)}" for op, name, value in self.env_ops]
        _write(path, lines)

    @classmethod
    def load(cls, path: str) -> "JobContainer":
        """Read a record; SetupFailed if the prolog recorded a failure, ValueError if it
        is not a complete record."""
        with open(path, "rb") as f:
            data = f.read(seam.RECORD_MAX + 1)
        try:
            return parse(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def parse(data: bytes) -> JobContainer:
    """A record's bytes as the C fast path reads them; SetupFailed for a failure record,
    ValueError for anything that is not a record."""
    fields: dict = {"modules": [], "timings": {}, "env_ops": [], "workdir": None, "provenance_log": None,
                    "step_id": None, "volumes": ""}
    reason = None
    seen = set()
    for key, raw in seam.read_lines(data, seam.RECORD_FORMAT, seam.RECORD_MAX):
        if key not in _KINDS:
            raise ValueError(f"unknown key {key!r}")
        try:
            value = seam.read_value(_KINDS[key], raw)
        except ValueError:
            raise ValueError(f"bad {key} line {raw!r}") from None
        seen.add(key)
        if key == "failed":
            reason = value
        elif key == "timing":
            fields["timings"][value[0]] = value[1]
        elif key == "env":
            fields["env_ops"].append(value)
        elif key in _FIELDS:
            names = _FIELDS[key]
            fields.update(zip(names, value) if isinstance(names, tuple) else [(names, value)])
    if reason is not None:
        if not seen.issuperset(seam.FAILURE_REQUIRED):
            raise ValueError("a failure record without its job and node")
        raise SetupFailed(reason)
    if not seen.issuperset(seam.RECORD_REQUIRED):
        raise ValueError(f"missing {', '.join(k for k in seam.RECORD_REQUIRED if k not in seen)}")
    return JobContainer(**fields)


def save_failure(path: str, job_id: int, node: str, reason: str) -> None:
    """Record that the job's container could not be built here, and why (one line)."""
    _write(path, [f"job {int(job_id)}", f"node {node}", f"failed {seam.escape(reason)}"])


def state_path(run_dir: str, job_id: int, node: str, step_id: int | None = None) -> str:
    """Per job *and node* (emulated nodes may share one filesystem); a step's own
    container's has the step in between (node names hold no dot)."""
    if not node or "/" in node or node.startswith("."):
        raise ContainerError(f"invalid node name {node!r}")
    step = "" if step_id is None else f"{seam.STEP_INFIX}{int(step_id)}."
    return os.path.join(run_dir, f"{seam.STATE_PREFIX}{int(job_id)}.{step}{node}{seam.STATE_SUFFIX}")


def _write(path: str, lines: list[str]) -> None:
    text = "\n".join([seam.RECORD_FORMAT, *lines]) + "\n"
    if "\0" in text:
        raise ContainerError("a container record cannot hold a NUL character (the image's workdir or ENV?)")
    files.write_atomic(path, text, STATE_MODE)


_FIELDS = {"job": "job_id", "node": "node", "holder": ("holder_pid", "holder_start", "mntns"), "root": "root",
           "image": "image_id", "digest": "digest", "user": ("uid", "gid"), "modules": "modules",
           "python": "python", "workdir": "workdir", "provenance": "provenance_log", "step": "step_id",
           "volumes": "volumes"}
