"""What root may trust: files that root alone can change.

Root acts on what the configuration, the plugin's own code, hooks, host
trees, runDir and the provenance log say, so each must be owned by root and
writable by nobody else.  `root_only` is that rule, once; the plugin's C
side applies the same one (spank/seam.c: seam_root_only, with the bits of
seam.FOREIGN_WRITE_BITS; tests/unit/test_seam.py holds them together).
"""
from __future__ import annotations

import os
import stat

from . import seam
from .errors import ConfigError, ShifterError


def root_only(st: os.stat_result) -> bool:
    """Owned by root, writable by neither group nor others."""
    return st.st_uid == 0 and not st.st_mode & seam.FOREIGN_WRITE_BITS


def require_root_only(st: os.stat_result, what: str, error: type[ShifterError] = ConfigError) -> None:
    """Raise `error` naming `what` (the file, as the reader knows it) unless `root_only(st)`."""
    if st.st_uid != 0:
        raise error(f"{what} must be owned by root (it is owned by uid {st.st_uid})")
    if not root_only(st):
        raise error(f"{what} must not be writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")


def require_root_owned(path: str, what: str = "file") -> None:
    """Raise ConfigError unless root alone controls `path`.

    The file must be `root_only`, and so must every directory leading to it
    (a sticky directory such as /tmp is allowed if root owns it: nobody else
    can rename root's entries there).  Symlinks on the way must belong to
    root.  The path as written and its symlink-free form are both checked.
    """
    absolute = os.path.abspath(path)
    real = os.path.realpath(absolute)
    st = _stat_or_fail(os.stat, real, what, path)
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file or directory")
    require_root_only(st, f"{what} {path}")
    for directory in _ancestors(absolute) | _ancestors(real):
        dst = _stat_or_fail(os.stat, directory, "directory", directory)
        if not dst.st_mode & stat.S_ISVTX:
            require_root_only(dst, f"directory {directory} holding {what} {path}")
        elif dst.st_uid != 0:
            raise ConfigError(f"directory {directory} holding {what} {path} must be owned by root")
    for component in _ancestors(absolute) | {absolute}:
        lst = _stat_or_fail(os.lstat, component, "path", component)
        if stat.S_ISLNK(lst.st_mode) and lst.st_uid != 0:
            raise ConfigError(f"symlink {component} leading to {what} {path} must be owned by root")


def _ancestors(path: str) -> set[str]:
    """The directories above an absolute normalised path, up to /."""
    result = set()
    while path != "/":
        path = os.path.dirname(path)
        result.add(path)
    return result


def _stat_or_fail(stat_call, path: str, what: str, shown: str) -> os.stat_result:
    try:
        return stat_call(path)
    except OSError as error:
        raise ConfigError(f"cannot check {what} {shown}: {error.strerror}") from None
