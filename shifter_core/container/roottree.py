"""A container's root while root builds it, held by a descriptor.

Everything the prolog creates, writes or mounts inside a container goes
through a RootTree.  Paths are resolved by the kernel from the root's
descriptor (pathsafety: RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS) and must stay
on the container's own layer (RESOLVE_NO_XDEV): a symlink of the image that
points into a node file system bound into the container (/tmp, a home, a
site file system) makes the lookup fail instead of leading root there.  The
result is a descriptor, and root acts relative to it (mkdirat, openat with
O_EXCL|O_NOFOLLOW, fchmod, fchown, unlinkat, move_mount): nothing is looked up
by name twice, so no rename race can redirect it.

Paths the site's layout needs (mount points, /etc, /var, /opt/udiImage) are
`structural`: whatever the image has there that is not a directory (a
symlink, a file) is replaced by an empty directory, as in Shifter, which makes
these before it merges the image's content.  Elsewhere symlinks are followed,
inside the root and on its layer.

Mounts of the container's own (the /dev overlay, the CCM tmpfs) are trees of
their own, reached through `add_submount`.  The files root writes are
remembered, and `verify()` checks at the end that each is still what the
path shows: an image whose paths lead a site file under a mount made later
(its /var a symlink to /tmp) is refused rather than run with the file hidden.
"""
from __future__ import annotations

import errno
import os
import stat

from .. import pathsafety, syscalls
from ..errors import ImageContentError, ShifterError

_STEP_RULES = syscalls.RESOLVE_NO_XDEV | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS


class RootTree:
    """The tree of one container (or one of its own mounts) at descriptor `fd`."""

    def __init__(self, fd: int, path: str):
        self.fd = fd                # O_PATH descriptor of the tree's root
        self.path = path            # where it is attached in this mount namespace
        self._submounts: dict[str, RootTree] = {}
        self._written: dict[str, tuple[int, int]] = {}     # path -> (st_dev, st_ino)

    # ---- lookups ------------------------------------------------------------
    def open(self, inside: str, *, flags: int = os.O_PATH, follow: bool = True) -> int:
        """A descriptor of `inside`, on the tree's own layer; ImageContentError if none."""
        tree, rest = self._route(inside)
        return pathsafety.open_inside(tree.fd, rest, flags=flags, own_layer=True, follow=follow,
                                      error=ImageContentError)

    def container_path(self, fd: int) -> str:
        """Where the object at `fd` lies in the container, as its processes will see it."""
        return pathsafety.path_of(self.path, fd)

    def exists(self, inside: str) -> bool:
        """Is there anything (even a dangling symlink) at `inside`, on the own layer?"""
        try:
            os.close(self.open(inside, follow=False))
            return True
        except ShifterError:
            return False

    def add_submount(self, inside: str, fd: int) -> "RootTree":
        """Register a mount of the container's own at `inside` (a tmpfs root writes into)."""
        tree = RootTree(fd, self.path.rstrip("/") + _normal(inside))
        self._submounts[_normal(inside)] = tree
        return tree

    def _route(self, inside: str) -> tuple["RootTree", str]:
        """The tree that holds `inside` (the deepest own mount above it) and the path in it."""
        path = _normal(inside)
        for point in sorted(self._submounts, key=len, reverse=True):
            if path == point or path.startswith(point + "/"):
                return self._submounts[point], path[len(point):] or "/"
        return self, path

    # ---- directories --------------------------------------------------------
    def directory(self, inside: str, *, structural: bool = False, mount_point_ok: bool = False,
                  mode: int = 0o755) -> int:
        """An O_PATH descriptor of directory `inside`, made with its missing parents.

        With `mount_point_ok`, `inside` itself may be a mount point on the layer
        (a user volume over a site file system's mount point); everything above
        it must still be the layer's.
        """
        tree, rest = self._route(inside)
        if tree is not self:
            return tree.directory(rest, structural=structural, mount_point_ok=mount_point_ok, mode=mode)
        names = _components(rest)
        fd = os.dup(self.fd)
        try:
            for index, name in enumerate(names):
                shown = "/" + "/".join(names[:index + 1])
                last = index == len(names) - 1
                child = self._step(fd, name, shown, structural, mount_point_ok and last, mode)
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _step(self, parent: int, name: str, shown: str, structural: bool, mount_point_ok: bool,
              mode: int) -> int:
        """Directory `name` in `parent`: opened, made, replaced or followed, per the rules above."""
        try:
            return syscalls.openat2(parent, name, os.O_PATH | os.O_DIRECTORY, _STEP_RULES)
        except OSError as error:
            failure = error
        if failure.errno == errno.ENOENT:
            os.mkdir(name, mode, dir_fd=parent)
        elif failure.errno == errno.EXDEV and mount_point_ok:
            return syscalls.openat2(parent, name, os.O_PATH | os.O_DIRECTORY,
                                    syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS)
        elif failure.errno in (errno.ELOOP, errno.ENOTDIR) and structural:
            self._remove(parent, name, shown)
            os.mkdir(name, mode, dir_fd=parent)
        elif failure.errno == errno.ELOOP:
            return self._follow(shown)
        else:
            raise ImageContentError(pathsafety.reason(failure, shown, own_layer=True))
        return syscalls.openat2(parent, name, os.O_PATH | os.O_DIRECTORY, _STEP_RULES)

    def _follow(self, shown: str, flags: int = os.O_DIRECTORY) -> int:
        """The directory (or with flags 0, anything) the image's symlink at `shown` leads to,
        on the own layer."""
        rules = pathsafety.BASE_RULES | syscalls.RESOLVE_NO_XDEV
        try:
            return syscalls.openat2(self.fd, shown.lstrip("/"), os.O_PATH | flags, rules)
        except OSError as error:
            if error.errno == errno.ENOENT:
                raise ImageContentError(f"{shown} is a symlink of the image that leads nowhere on the"
                                        " container's own file system") from None
            raise ImageContentError(pathsafety.reason(error, shown, own_layer=True)) from None

    def chmod(self, inside: str, mode: int) -> None:
        fd = self.open(inside, flags=os.O_RDONLY | os.O_DIRECTORY, follow=False)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    # ---- files --------------------------------------------------------------
    def file(self, inside: str) -> int:
        """An O_PATH descriptor of regular file `inside`, made empty (with missing parent
        directories) if missing: the mount point of a file bind.  Symlinks are followed
        as by `directory`; an existing file mount point of the layer is accepted."""
        parent, name = self._parent(inside)
        shown = _normal(inside)
        try:
            try:
                fd = syscalls.openat2(parent, name, os.O_PATH, _STEP_RULES)
            except FileNotFoundError:
                _create_file(parent, name)
                fd = syscalls.openat2(parent, name, os.O_PATH, _STEP_RULES)
            except OSError as error:
                if error.errno == errno.EXDEV:
                    fd = syscalls.openat2(parent, name, os.O_PATH,
                                          syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS)
                elif error.errno == errno.ELOOP:
                    fd = self._follow(shown, 0)
                else:
                    raise ImageContentError(pathsafety.reason(error, shown, own_layer=True)) from None
        finally:
            os.close(parent)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ImageContentError(f"{shown} is not a regular file in the container")
        return fd

    def write(self, inside: str, text: str, mode: int = 0o644, *, owner: tuple[int, int] | None = None) -> None:
        """Replace whatever the image has at `inside` by a new file holding `text`."""
        parent, name = self._parent(inside)
        try:
            self._remove(parent, name, inside)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
            try:
                os.write(fd, text.encode("utf-8", "surrogateescape"))
                if owner is not None:
                    os.fchown(fd, *owner)
                os.fchmod(fd, mode)
                self._remember(inside, os.fstat(fd))
            finally:
                os.close(fd)
        finally:
            os.close(parent)

    def symlink(self, inside: str, target: str) -> None:
        """Replace whatever the image has at `inside` by a symlink to `target`."""
        parent, name = self._parent(inside)
        try:
            self._remove(parent, name, inside)
            os.symlink(target, name, dir_fd=parent)
            self._remember(inside, os.stat(name, dir_fd=parent, follow_symlinks=False))
        finally:
            os.close(parent)

    def read(self, inside: str) -> str:
        """The text of file `inside` (on the own layer)."""
        fd = self.open(inside, flags=os.O_RDONLY)
        with os.fdopen(fd, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()

    def _parent(self, inside: str) -> tuple[int, str]:
        path = _normal(inside)
        head, name = path.rsplit("/", 1)
        if not name:
            raise ImageContentError(f"{inside} names no file")
        return self.directory(head or "/"), name

    def _remove(self, parent: int, name: str, shown: str) -> None:
        """Remove what the image has at `name` in `parent`; a directory is in the way."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise ImageContentError(f"the image has a directory at {_normal(shown)}, where the site puts"
                                    " a file of its own")
        os.unlink(name, dir_fd=parent)

    def _remember(self, inside: str, st: os.stat_result) -> None:
        tree, rest = self._route(inside)
        tree._written[rest] = (st.st_dev, st.st_ino)

    # ---- mounts ---------------------------------------------------------------
    def mount_point(self, inside: str, *, is_dir: bool) -> int:
        """An O_PATH descriptor of a site or system mount point (structural), made if missing."""
        if is_dir:
            return self.directory(inside, structural=True)
        path = _normal(inside)
        head, name = path.rsplit("/", 1)
        parent = self.directory(head or "/", structural=True)
        try:
            try:
                fd = syscalls.openat2(parent, name, os.O_PATH | os.O_NOFOLLOW, _STEP_RULES)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    return fd
                os.close(fd)
                self._remove(parent, name, path)
            _create_file(parent, name)
            return syscalls.openat2(parent, name, os.O_PATH | os.O_NOFOLLOW, _STEP_RULES)
        finally:
            os.close(parent)

    def bind(self, source_fd: int, inside: str, *, is_dir: bool, **flags) -> None:
        """Bind the object at `source_fd` on site or system path `inside` (syscalls.bind's flags)."""
        target = self.mount_point(inside, is_dir=is_dir)
        try:
            syscalls.bind(source_fd, target, shown=inside, **flags)
        finally:
            os.close(target)

    def attach(self, mount_fd: int, inside: str, *, is_dir: bool = True) -> None:
        """Attach a detached mount (a new file system, a bind) at site or system path `inside`."""
        target = self.mount_point(inside, is_dir=is_dir)
        try:
            syscalls.attach(mount_fd, target, shown=inside)
        finally:
            os.close(target)

    # ---- the end of the build -----------------------------------------------------
    def verify(self) -> None:
        """Check that every file root wrote is still what its path shows, on the own layer."""
        for tree in (self, *self._submounts.values()):
            for inside, (dev, ino) in tree._written.items():
                try:
                    fd = tree.open(inside, follow=False)
                except ShifterError:
                    fd = None
                if fd is None:
                    same = False
                else:
                    st = os.fstat(fd)
                    os.close(fd)
                    same = (st.st_dev, st.st_ino) == (dev, ino)
                if not same:
                    raise ImageContentError(
                        f"{tree.path.removeprefix(self.path) + inside}, which the site provides, would be"
                        " hidden: the image's paths lead it under a file system mounted later")


def _create_file(parent: int, name: str) -> None:
    """A new empty file `name` in directory `parent` (a mount point), never through a symlink."""
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=parent))


def _normal(inside: str) -> str:
    """`inside` as an absolute path without empty or `.` components; `..` is refused."""
    names = _components(inside)
    return "/" + "/".join(names)


def _components(inside: str) -> list[str]:
    names = [name for name in inside.split("/") if name not in ("", ".")]
    if ".." in names:
        raise ImageContentError(f"{inside}: '..' is not allowed in a container path")
    return names
