"""What a container says about itself, in its /var: Shifter's file and ours.

/var/shifterConfig.json is Shifter's, byte for byte (its four keys, its order,
compact, one line), for the tools and checks written for Shifter.

/var/shifterMarker is ours: which job and which image digest the container
was built for.  A task that has joined the container's namespace and chrooted
into it reads it back, in Python (`check` below) and in C
(spank/fastpath.c), and refuses to run unless both fields are its own: the
last line of defence against entering the wrong container.  `key value` lines,
as the container record.

    shifter-marker 1
    job 42
    digest sha256:...
"""
from __future__ import annotations

import json
import os

from .. import syscalls, volumes
from ..errors import ContainerError

SHIFTER_CONFIG = "/var/shifterConfig.json"
MARKER = "/var/shifterMarker"
MARKER_FORMAT = "shifter-marker 1"
_READ_RULES = (syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_XDEV | syscalls.RESOLVE_NO_SYMLINKS
               | syscalls.RESOLVE_NO_MAGICLINKS)


def write(tree, spec) -> None:
    """Write both files into the container being built (`tree`: a RootTree)."""
    shifter = {"identifier": spec.image.id, "user": spec.user.name,
               "volMap": volumes.signature(spec.volumes),
               "modules": "".join(f"{m.name}," for m in spec.modules)}
    tree.write(SHIFTER_CONFIG, json.dumps(shifter, separators=(",", ":")) + "\n")
    tree.write(MARKER, f"{MARKER_FORMAT}\njob {spec.job_id}\ndigest {spec.image.digest}\n")


def check(job_id: int, digest: str) -> None:
    """Fail closed unless this process, chrooted, sees the container of `job_id` and `digest`."""
    root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        fd = syscalls.openat2(root, MARKER.lstrip("/"), os.O_RDONLY, _READ_RULES)
        with os.fdopen(fd, encoding="utf-8") as f:
            lines = f.read(4096).split("\n")
    except (OSError, ValueError) as error:
        raise ContainerError(f"not inside the container of job {job_id}: cannot read {MARKER}: {error}") from None
    finally:
        os.close(root)
    fields = dict(line.partition(" ")[::2] for line in lines[1:] if line)
    if lines[0] != MARKER_FORMAT or fields.get("job") != str(job_id) or fields.get("digest") != digest:
        raise ContainerError(
            f"not inside the container of job {job_id} ({digest}): this one belongs to job "
            f"{fields.get('job', '?')} ({fields.get('digest', '?')})")
