"""Resolving a path as the container sees it, without leaving the container.

A user's --volume source and target name paths inside the container, where
the image and siteFs decide what symlinks point to.  Following them on the
host would let `/data -> /etc` reach the host's /etc.  Like Shifter's
shifter_realpath (and the kernel's openat2 RESOLVE_IN_ROOT), this walks the
path one component at a time with the container root as `/`: an absolute
symlink `/x` means `<root>/x`, and `..` at the root stays at the root.

The walk holds an O_PATH descriptor for each step and opens the next
component relative to it without following symlinks, so renaming or
swapping a directory during the walk cannot redirect it.  The final object
is checked to still lie inside the root.  Run it with the user's
credentials so it only passes through directories the user may search.

    resolve(root, "/data/in")            -> "<root>/scratch/me/in"
    with open_resolved(root, "/data/in") as fd: mount("/proc/self/fd/%d" % fd, ...)

Failures are VolumeErrors naming the container path.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from .errors import VolumeError

MAX_SYMLINKS = 40   # as the kernel's path walk


def resolve(root: str, path: str, *, missing_ok: bool = False) -> str:
    """The host path of container path `path` under `root`.

    With `missing_ok`, trailing components that do not exist yet are
    appended as written (they cannot be symlinks), so the caller can create
    them; without it a missing component is an error.
    """
    with _walk(root, path, missing_ok=missing_ok) as (fd, missing):
        host = _fd_path(fd)
    return os.path.join(host, *missing) if missing else host


@contextlib.contextmanager
def open_resolved(root: str, path: str) -> Iterator[int]:
    """An O_PATH descriptor of container path `path`, closed on exit.

    Mounting `/proc/self/fd/<fd>` uses exactly the object that was checked,
    even if the path is changed afterwards.
    """
    with _walk(root, path, missing_ok=False) as (fd, _missing):
        yield fd


@contextlib.contextmanager
def _walk(root: str, path: str, *, missing_ok: bool):
    if not path.startswith("/"):
        raise VolumeError(f"container path {path!r} must be absolute")
    try:
        root_fd = os.open(os.path.realpath(root), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise VolumeError(f"cannot open the container root {root}: {error.strerror}") from None
    stack = [root_fd]                     # descriptors of the resolved directories
    names: list[str] = []                 # their names, for messages
    pending = _components(path)
    missing: list[str] = []
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            if name == ".":
                continue
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            shown = "/" + "/".join(names + [name])
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except FileNotFoundError:
                if not missing_ok or ".." in pending:
                    raise VolumeError(f"{shown} does not exist in the container") from None
                missing = [part for part in [name] + pending if part != "."]
                break
            except OSError as error:
                raise _failure(error, shown) from None
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                links += 1
                try:
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                if links > MAX_SYMLINKS:
                    raise VolumeError(f"{path} has too many levels of symlinks in the container (a loop?)")
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                    names.clear()
                pending = _components(target) + pending
                continue
            stack.append(fd)
            names.append(name)
            if pending and not stat.S_ISDIR(mode):
                raise VolumeError(f"{shown} is not a directory in the container")
        _check_inside(stack[0], stack[-1], path)
        yield stack[-1], missing
    finally:
        for fd in stack:
            os.close(fd)


def _components(path: str) -> list[str]:
    """The names in `path`; a trailing slash becomes "." so it still demands a directory."""
    parts = [part for part in path.split("/") if part]
    if parts and path.endswith("/"):
        parts.append(".")
    return parts


def _failure(error: OSError, shown: str) -> VolumeError:
    if error.errno == errno.EACCES:
        return VolumeError(f"permission denied looking up {shown} in the container")
    if error.errno == errno.ENOTDIR:
        return VolumeError(f"{shown} is not a directory in the container")
    return VolumeError(f"cannot look up {shown} in the container: {error.strerror}")


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _check_inside(root_fd: int, fd: int, path: str) -> None:
    """Refuse an object that was moved out of the root while we walked to it."""
    root, host = _fd_path(root_fd), _fd_path(fd)
    if not (host == root or host.startswith(root.rstrip("/") + "/")):
        raise VolumeError(f"{path} leads outside the container")
