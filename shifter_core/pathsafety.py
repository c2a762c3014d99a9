"""Resolving a path as the container sees it, by the kernel, from a root descriptor.

Images, users and every directory a user can write decide what the symlinks
in a container's tree point to.  Root therefore never follows a path string
of its own making there: it opens the container root once, and every path
inside it is resolved by openat2(2) from that descriptor with

    RESOLVE_IN_ROOT        an absolute symlink `/x` means `<root>/x`, `..` stops at the root
    RESOLVE_NO_MAGICLINKS  no /proc/<pid>/fd or /proc/<pid>/root jumps out of it
    RESOLVE_NO_XDEV        (own_layer=True) never into another mount: what root creates
                           or writes stays on the container's own file system, out of
                           the node's file systems bound into it

and then acts on the descriptor it got, never on the name again: a rename or
symlink swap after the lookup cannot redirect the action.

    fd = open_inside(root_fd, "/data/in")                   # a user volume's source
    fd = open_inside(root_fd, "/etc", own_layer=True)       # where root writes

Failures are one-line errors naming the container path (VolumeError unless
the caller names another class).
"""
from __future__ import annotations

import errno
import os

from . import syscalls
from .errors import ShifterError, VolumeError

BASE_RULES = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS


def open_inside(root_fd: int, path: str, *, flags: int = os.O_PATH, own_layer: bool = False,
                follow: bool = True, error: type[ShifterError] = VolumeError) -> int:
    """A descriptor of container path `path` below `root_fd`; `error` if there is none.

    `follow=False` opens a final symlink itself (O_NOFOLLOW); components before
    it are always followed inside the root.
    """
    if not path.startswith("/"):
        raise error(f"container path {path!r} must be absolute")
    rules = BASE_RULES | (syscalls.RESOLVE_NO_XDEV if own_layer else 0)
    try:
        return syscalls.openat2(root_fd, path.lstrip("/") or ".", flags | (0 if follow else os.O_NOFOLLOW), rules)
    except OSError as failed:
        raise error(reason(failed, path, own_layer=own_layer)) from None


def reason(error: OSError, path: str, *, own_layer: bool = False) -> str:
    """The one-line reason a lookup of container path `path` failed."""
    reasons = {
        errno.ENOENT: "does not exist in the container",
        errno.EACCES: "cannot be reached: permission denied on the way",
        errno.ENOTDIR: "goes through something that is not a directory",
        errno.ELOOP: "has too many levels of symlinks in the container (a loop?)",
        errno.EXDEV: ("leads into a node file system bound into the container (through a symlink"
                      " of the image or that file system), where root does not write"
                      if own_layer else "leaves the container"),
        errno.ENAMETOOLONG: "is too long",
    }
    return f"{path} {reasons.get(error.errno, f'cannot be looked up: {error.strerror}')}"


def path_of(root_path: str, fd: int) -> str:
    """Where the object open at `fd` lies in the container rooted at `root_path` (for messages
    and policy checks); the kernel's name for it, as seen from this process."""
    host = os.readlink(f"/proc/self/fd/{fd}")
    root = root_path.rstrip("/")
    if host == root:
        return "/"
    if not host.startswith(root + "/"):
        raise VolumeError(f"{host} is not inside the container")
    return host[len(root):]
