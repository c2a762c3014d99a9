"""What a container says about itself, in its /var: Shifter's file and ours.

/var/shifterConfig.json is Shifter's, byte for byte (its four keys, its order,
compact, one line), for the tools and checks written for Shifter.

/var/shifterMarker is ours: which job and which image digest the container
was built for.  A task that has joined the container's namespace and chrooted
into it reads it back, in Python (`check` below) and in C (spank/fastpath.c,
with seam_marker_matches, held to `matches` by tests/unit/test_seam.py), and
refuses to run unless both fields are its own: the last line of defence
against entering the wrong container.  `key value` lines, as the container
record.

    shifter-marker 1
    job 42
    digest sha256:...
"""
from __future__ import annotations

import json
import os

from .. import seam, syscalls, volumes
from ..errors import ContainerError

SHIFTER_CONFIG = "/var/shifterConfig.json"
_READ_RULES = (syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_XDEV | syscalls.RESOLVE_NO_SYMLINKS
               | syscalls.RESOLVE_NO_MAGICLINKS)


def write(tree, spec) -> None:
    """Write both files into the container being built (`tree`: a RootTree)."""
    shifter = {"identifier": spec.image.id, "user": spec.user.name,
               "volMap": volumes.signature(spec.volumes),
               "modules": "".join(f"{m.name}," for m in spec.modules)}
    tree.write(SHIFTER_CONFIG, json.dumps(shifter, separators=(",", ":")) + "\n")
    job, digest = seam.MARKER_FIELDS
    tree.write(seam.MARKER, f"{seam.MARKER_FORMAT}\n{job} {spec.job_id}\n{digest} {spec.image.digest}\n")


def check(job_id: int, digest: str) -> None:
    """Fail closed unless this process, chrooted, sees the container of `job_id` and `digest`."""
    root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        fd = syscalls.openat2(root, seam.MARKER.lstrip("/"), os.O_RDONLY, _READ_RULES)
        with os.fdopen(fd, "rb") as f:
            data = f.read(seam.MARKER_MAX + 1)
    except OSError as error:
        raise ContainerError(f"not inside the container of job {job_id}: cannot read {seam.MARKER}:"
                             f" {error.strerror}") from None
    finally:
        os.close(root)
    ok, found = matches(data, job_id, digest)
    if not ok:
        raise ContainerError(f"not inside the container of job {job_id} ({digest}): {found}")


def matches(data: bytes, job_id: int, digest: str) -> tuple[bool, str]:
    """Does the marker's text name this job and digest?  And what it names, for a message."""
    try:
        text = data.decode()
    except ValueError:
        text = "\0"
    if len(data) > seam.MARKER_MAX or "\0" in text:
        return False, f"no readable {seam.MARKER.lstrip('/')}"
    lines = text.split("\n")
    fields = dict(line.partition(" ")[::2] for line in lines[1:] if line)
    job, their_digest = (fields.get(name, "?") for name in seam.MARKER_FIELDS)
    ok = lines[0] == seam.MARKER_FORMAT and job == str(job_id) and their_digest == digest
    return ok, f"this one belongs to job {job} ({their_digest})"
