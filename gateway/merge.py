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
  link target, an entry, whiteout or opaque marker below a symlink (or an
  entry below a file), a hardlink to a path the image does not have or to a
  directory, a bare `.wh.` marker or one used as a directory, a path deeper
  than MAX_DEPTH, a name longer than NAME_MAX bytes, NUL bytes in names or
  symlink targets, an empty symlink target.  Leading `/` is dropped (the
  path then lies inside the image, as tar does).
* Device nodes take part in the merge like any entry (they replace, are
  whited out, can be hardlinked) and are dropped at the end
  (`drop_devices`), with every name linked to them; xattrs are dropped too
  (the reader never keeps them).  Where the result differs from `umoci
  unpack`, it is by this policy only (tests/integration/test_merge_umoci.py).
* Owners are not kept: the squashfs is all root's.  Mode bits, including
  setuid, setgid and sticky, are kept; nodes mount the image nosuid.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

from shifter_core.errors import ImageContentError

MAX_DEPTH = 200                  # real images stay far below; keeps recursion bounded
NAME_MAX = 255                   # bytes per name: what unsquashfs and umoci can create
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

DIR, FILE, SYMLINK, FIFO, DEVICE = "dir", "file", "symlink", "fifo", "device"
HARDLINK = "hardlink"                        # a member kind only, never a node


@dataclasses.dataclass
class Member:
    """One layer entry as the merge needs it (gateway/layertar.py reads them from a tar)."""

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


class Tree:
    """The merged root file system of one image."""

    def __init__(self, image: str = "image"):
        self.image = image
        self.root = Node.directory()
        self.dropped: list[str] = []         # device nodes, once drop_devices ran

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
        named = base[len(WHITEOUT):] if base.startswith(WHITEOUT) else base     # what a marker names
        if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in [*parents, named]):
            raise self._refuse(layer, member.name[:80], f"has a name longer than {NAME_MAX} bytes")
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
        else:
            if member.kind == SYMLINK and (not member.linkname or "\0" in member.linkname):
                raise self._refuse(layer, member.name, "is a symlink with an empty or NUL target")
            node = Node(member.kind, member.mode, member.mtime, size=member.size,
                        target=member.linkname if member.kind == SYMLINK else "",
                        source=member.source)
        parent.children[base] = node
        parent.origin[base] = layer

    def _whiteout(self, layer: int, member: Member, parents: list[str], base: str) -> None:
        """Apply a marker; one below a symlink is refused like any entry there."""
        name = base[len(WHITEOUT):]
        if base != OPAQUE and (not name or name.startswith(WHITEOUT)):
            raise self._refuse(layer, member.name, "is a malformed whiteout")
        directory = self.root
        for depth, part in enumerate(parents):
            directory = directory.children.get(part)
            if directory is None or directory.kind not in (DIR, SYMLINK):
                return                          # nothing there to hide (umoci agrees)
            if directory.kind == SYMLINK:
                where = "/".join(parents[:depth + 1])
                raise self._refuse(layer, member.name, f"would be applied below {where}, a symlink")
        if base == OPAQUE:
            for child in list(directory.children):
                _hide_lower(directory, child, layer)
        elif name in directory.children:
            _hide_lower(directory, name, layer)

    def _hardlink_target(self, layer: int, member: Member) -> Node:
        parts = self._clean(member.linkname, layer, member.name)
        if parts == self._clean(member.name, layer, member.name):
            raise self._refuse(layer, member.name, "is a hardlink to itself")
        target = self.root
        for depth, part in enumerate(parts):
            if target.kind == SYMLINK:
                where = "/".join(parts[:depth])
                raise self._refuse(layer, member.name, f"is a hardlink through {where}, a symlink")
            target = target.children.get(part) if target.kind == DIR else None
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

    def _refuse(self, layer: int, entry: str, why: str) -> ImageContentError:
        return ImageContentError(f"image {self.image}: layer {layer + 1} entry {entry!r} {why};"
                                 " the image is refused")

    # --- reading the result ----------------------------------------------------
    def drop_devices(self) -> None:
        """Remove device nodes (and names hardlinked to them) once all layers are applied.

        Until then they count like any entry, so the directories they sit in
        survive a whiteout of their lower parent, as they would in umoci.
        """
        for path, node in list(self.walk()):
            if node.kind == DEVICE:
                parent, _, name = path.rpartition("/")
                directory = self._lookup(parent.split("/") if parent else [])
                del directory.children[name]
                del directory.origin[name]
                self.dropped.append(path)

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
