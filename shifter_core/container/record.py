"""The container record: what the prolog leaves in runDir for the tasks and the epilog.

One file per job and node, `<runDir>/job<id>.<node>.state`, root-only, written
whole (files.write_atomic).  Line-oriented `key value`, one value per line
with backslash and newline escaped, because the plugin's C fast path
(spank/fastpath.c) reads it too:

    shifter-container 1
    job 42
    node n1
    holder <pid> <start time> <mount namespace inode>
    ...
    env set PATH=/usr/bin

A prolog that failed because of the job writes the same file with a `failed`
line instead of a container: every task of the job on that node then fails
with that reason, and the node stays in service.
"""
from __future__ import annotations

import dataclasses
import os

from .. import files
from ..errors import ContainerError, JobFault
from . import procfs

STATE_MODE = 0o600
STATE_FORMAT = "shifter-container 1"   # first line of a record; spank/fastpath.c checks it


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
    timings: dict[str, float]
    env_ops: list[tuple[str, str, str]]   # environ.operations, for every task
    python: bool = False             # its tasks need the Python path (CCM, module user hooks)
    provenance_log: str | None = None

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
            lines.append(f"workdir {_escape(self.workdir)}")
        if self.provenance_log:
            lines.append(f"provenance {self.provenance_log}")
        lines += [f"timing {name} {value}" for name, value in self.timings.items()]
        lines += [f"env {op} {_escape(name)}={_escape(value)}" for op, name, value in self.env_ops]
        _write(path, lines)

    @classmethod
    def load(cls, path: str) -> "JobContainer":
        """Read a record; SetupFailed if the prolog recorded a failure, ValueError if it
        is not a complete record."""
        fields: dict = {"modules": [], "timings": {}, "env_ops": [], "workdir": None}
        for key, value in _lines(path):
            if key == "failed":
                raise SetupFailed(_unescape(value))
            if key == "job":
                fields["job_id"] = int(value)
            elif key in ("node", "root", "digest"):
                fields[key] = value
            elif key == "provenance":
                fields["provenance_log"] = value
            elif key == "image":
                fields["image_id"] = value
            elif key == "holder":
                fields["holder_pid"], fields["holder_start"], fields["mntns"] = map(int, value.split())
            elif key == "user":
                fields["uid"], fields["gid"] = map(int, value.split())
            elif key == "modules":
                fields["modules"] = [m for m in value.split(",") if m]
            elif key == "python":
                fields["python"] = value == "1"
            elif key == "workdir":
                fields["workdir"] = _unescape(value)
            elif key == "timing":
                name, number = value.split()
                fields["timings"][name] = float(number)
            elif key == "env":
                op, _, assignment = value.partition(" ")
                name, _, text = assignment.partition("=")
                fields["env_ops"].append((op, _unescape(name), _unescape(text)))
            else:
                raise ValueError(f"{path}: unknown line {key!r}")
        return cls(**fields)


def save_failure(path: str, job_id: int, node: str, reason: str) -> None:
    """Record that the job's container could not be built here, and why (one line)."""
    _write(path, [f"job {int(job_id)}", f"node {node}", f"failed {_escape(reason)}"])


def state_path(run_dir: str, job_id: int, node: str) -> str:
    """Per job *and node*: emulated nodes may share one filesystem."""
    if not node or "/" in node or node.startswith("."):
        raise ContainerError(f"invalid node name {node!r}")
    return os.path.join(run_dir, f"job{int(job_id)}.{node}.state")


def _write(path: str, lines: list[str]) -> None:
    files.write_atomic(path, "\n".join([STATE_FORMAT, *lines]) + "\n", STATE_MODE)


def _lines(path: str):
    with open(path, encoding="utf-8", newline="") as f:    # no newline translation
        lines = f.read().split("\n")
    if lines[0] != STATE_FORMAT:
        raise ValueError(f"{path} is not a container record")
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(" ")
            yield key, value


def _escape(text: str) -> str:
    """One line per value: backslash and newline escaped (spank/fastpath.c: unescape)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(text: str) -> str:
    out, chars = [], iter(text)
    for char in chars:
        if char == "\\":
            char = {"n": "\n", "\\": "\\"}.get(next(chars, ""), "")
        out.append(char)
    return "".join(out)
