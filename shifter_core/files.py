"""Writing a file so that readers see the old content or the new, never half.

The gateway publishes image metadata this way and the prolog its container
records: a reader (a node, a task, the C plugin) must not find a file cut
short by a crash or read it while it is written.
"""
from __future__ import annotations

import os


def write_atomic(path: str, text: str, mode: int, *, durable: bool = False) -> None:
    """Write `text` to a new file beside `path`, then rename it over `path`.

    `durable` also fsyncs the data first, for files that must survive a
    machine crash (published images), not for per-job state in /run.
    """
    tmp = f"{path}.tmp.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
