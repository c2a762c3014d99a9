"""Applying an image's layers, in order, to one tree held in memory.

Nothing is written to disk here: the result is a tree of `Node`s whose file
contents stay wherever the layer reader put them (`Node.source`); the
squashfs writer reads them from there.  The rules (docs/image-pipeline.md):

* `.wh.<name>` deletes `<name>` of the lower layers, `.wh..wh..opq` hides
  everything the lower layers had in its directory; both leave entries of
  their own layer alone, whatever the order inside the tar.
* A new entry replaces whatever was at its path (a directory only merges into
  a directory), so files, symlinks and directories can change type.
* Hardlinks share the node they point at, as it is when the link is applied.
* Hostile entries are refused with ImageContentError: `..` in a name or a
  link target, a write below a symlink (or a file), a hardlink to a path the
  image does not have or to a directory, a bare `.wh.` marker or one used as
  a directory, a path deeper than MAX_DEPTH, NUL bytes in names or symlink
  targets, an empty symlink target.  Leading `/`
  is dropped (the path then lies inside the image, as tar does).
* Device nodes are dropped, and so are xattrs (the reader never keeps them).
* Owners are not kept: the squashfs is all root's.  Mode bits, including
  setuid, setgid and sticky, are kept; nodes mount the image nosuid.
"""
from __future__ import annotations

import dataclasses
import tarfile
from typing import Iterable, Iterator

from shifter_core.errors import ImageContentError

MAX_DEPTH = 200                  # real images stay far below; keeps recursion bounded
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

DIR, FILE, SYMLINK, FIFO = "dir", "file", "symlink", "fifo"
HARDLINK, DEVICE = "hardlink", "device"      # member kinds only; never nodes


@dataclasses.dataclass
class Member:
    """One layer entry as the merge needs it (built from a tar header)."""

    name: str
    kind: str
    mode: int = 0o644
    mtime: int = 0
    size: int = 0
    linkname: str = ""
    source: object = None        # where the content is, for the squashfs writer


@dataclasses.dataclass(eq=False)
class Node:
    """A file system object; hardlinked names share one Node."""

    kind: str
    mode: int
    mtime: int
    size: int = 0
    target: str = ""             # symlink target
    source: object = None
    children: dict[str, "Node"] | None = None      # directories
    origin: dict[str, int] | None = None           # name -> layer that put it there

    @classmethod
    def directory(cls, mode: int = 0o755, mtime: int = 0) -> "Node":
        return cls(DIR, mode, mtime, children={}, origin={})


_TAR_KINDS = {
    tarfile.REGTYPE: FILE, tarfile.AREGTYPE: FILE, tarfile.CONTTYPE: FILE,
    tarfile.DIRTYPE: DIR, tarfile.SYMTYPE: SYMLINK, tarfile.LNKTYPE: HARDLINK,
    tarfile.FIFOTYPE: FIFO, tarfile.CHRTYPE: DEVICE, tarfile.BLKTYPE: DEVICE,
}


def member_from_tarinfo(info: tarfile.TarInfo, source: object = None) -> Member:
    """The merge's view of a tar header; unknown types count as devices (dropped)."""
    kind = _TAR_KINDS.get(info.type, FILE if info.issparse() else DEVICE)
    return Member(name=info.name, kind=kind, mode=info.mode & 0o7777, mtime=int(info.mtime),
                  size=info.size if kind == FILE else 0, linkname=info.linkname,
                  source=source)


class Tree:
    """The merged root file system of one image."""

    def __init__(self, image: str = "image"):
        self.image = image
        self.root = Node.directory()
        self.dropped: list[str] = []         # device nodes and the like, for the log

    # --- applying layers -----------------------------------------------------
    def apply(self, layer: int, members: Iterable[Member]) -> None:
        """Apply layer number `layer` (bottom is 0)."""
        for member in members:
            self._apply(layer, member)

    def _apply(self, layer: int, member: Member) -> None:
        parts = self._clean(member.name, layer, member.name)
        if not parts:
            if member.kind == DIR:
                self.root.mode, self.root.mtime = member.mode, member.mtime
            return
        *parents, base = parts
        if any(part.startswith(WHITEOUT) for part in parents):
            raise self._refuse(layer, member.name, "has a whiteout marker as a directory")
        if base.startswith(WHITEOUT):
            self._whiteout(layer, member, parents, base)
            return
        parent = self._directory(parents, layer, member)
        existing = parent.children.get(base)
        if member.kind == DIR:
            if existing is not None and existing.kind == DIR:
                existing.mode, existing.mtime = member.mode, member.mtime
                parent.origin[base] = layer
                return
            node = Node.directory(member.mode, member.mtime)
        elif member.kind == HARDLINK:
            node = self._hardlink_target(layer, member)
        elif member.kind == DEVICE:
            self.dropped.append("/".join(parts))
            self._remove(parent, base)
            return
        else:
            if member.kind == SYMLINK and (not member.linkname or "\0" in member.linkname):
                raise self._refuse(layer, member.name, "is a symlink with an empty or NUL target")
            node = Node(member.kind, member.mode, member.mtime, size=member.size,
                        target=member.linkname if member.kind == SYMLINK else "",
                        source=member.source)
        parent.children[base] = node
        parent.origin[base] = layer

    def _whiteout(self, layer: int, member: Member, parents: list[str], base: str) -> None:
        directory = self._lookup(parents)
        if directory is None or directory.kind != DIR:
            return
        if base == OPAQUE:
            for name in list(directory.children):
                _hide_lower(directory, name, layer)
            return
        name = base[len(WHITEOUT):]
        if not name or name.startswith(WHITEOUT):
            raise self._refuse(layer, member.name, "is a malformed whiteout")
        if name in directory.children:
            _hide_lower(directory, name, layer)

    def _hardlink_target(self, layer: int, member: Member) -> Node:
        parts = self._clean(member.linkname, layer, member.name)
        target = self._lookup(parts) if parts else None
        if target is None:
            raise self._refuse(layer, member.name,
                               f"is a hardlink to {member.linkname!r}, which is not in the image")
        if target.kind == DIR:
            raise self._refuse(layer, member.name, "is a hardlink to a directory")
        return target

    # --- paths -----------------------------------------------------------------
    def _clean(self, name: str, layer: int, entry: str) -> list[str]:
        if "\0" in name:
            raise self._refuse(layer, entry, "has a NUL byte in a name")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(layer, entry, "leaves the image root ('..')")
        if len(parts) > MAX_DEPTH:
            raise self._refuse(layer, entry, f"is nested deeper than {MAX_DEPTH} directories")
        return parts

    def _lookup(self, parts: list[str]) -> Node | None:
        """The node at `parts`, never following symlinks; None if absent."""
        node = self.root
        for part in parts:
            if node.kind != DIR:
                return None
            node = node.children.get(part)
            if node is None:
                return None
        return node

    def _directory(self, parts: list[str], layer: int, member: Member) -> Node:
        """The directory at `parts`, created (mode 0755) where missing."""
        node = self.root
        for depth, part in enumerate(parts):
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = Node.directory(mtime=member.mtime)
                node.origin[part] = layer
            elif child.kind != DIR:
                where = "/".join(parts[:depth + 1])
                what = "a symlink" if child.kind == SYMLINK else f"a {child.kind}"
                raise self._refuse(layer, member.name, f"would be written below {where}, {what}")
            node = child
        return node

    @staticmethod
    def _remove(directory: Node, name: str) -> None:
        directory.children.pop(name, None)
        directory.origin.pop(name, None)

    def _refuse(self, layer: int, entry: str, why: str) -> ImageContentError:
        return ImageContentError(f"image {self.image}: layer {layer + 1} entry {entry!r} {why};"
                                 " the image is refused")

    # --- reading the result ----------------------------------------------------
    def walk(self) -> Iterator[tuple[str, Node]]:
        """(path, node) depth first in name order, the root as ""."""
        yield "", self.root
        yield from _walk(self.root, "")


def _hide_lower(directory: Node, name: str, layer: int) -> None:
    """Remove `name` and what is below it, as far as layers below `layer` put it there.

    A directory survives if this layer put something inside it, whatever the
    order of the entries in the tar.
    """
    child = directory.children[name]
    if child.kind == DIR:
        for sub in list(child.children):
            _hide_lower(child, sub, layer)
        if child.children:
            return
    if directory.origin[name] < layer:
        del directory.children[name]
        del directory.origin[name]


def _walk(directory: Node, prefix: str) -> Iterator[tuple[str, Node]]:
    for name in sorted(directory.children):
        node = directory.children[name]
        path = f"{prefix}/{name}" if prefix else name
        yield path, node
        if node.kind == DIR:
            yield from _walk(node, path)
