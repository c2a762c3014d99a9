"""Squashfs conversion: layers are compressed once, images are assembled from them.

A squashfs compresses file data in independent blocks (128 KiB) and packs
small files into shared "fragment" blocks; inodes and directories live in
small metadata tables at the end.  So the expensive part, compressing the
data, depends only on the layer, not on the image it ends up in:

* `pack_layer()` turns a layer tar into a *pack*: every regular file's data
  compressed into squashfs data and fragment blocks, plus an index of the
  layer's entries.  The pipeline keeps packs in the layer cache, so a layer
  shared by many images, or a re-pull where only the top layer changed,
  costs no compression.
* `write_image()` writes the squashfs of a merged tree: it copies the blocks
  of the files that survived the merge out of their packs (copy_file_range,
  no recompression), then writes the inode, directory, fragment and id
  tables itself.

Everything is owned by root (one id, 0), there are no xattrs, no device
nodes, and the image is padded to 4 KiB.  Timestamps come from the layers
and the superblock time is 0, so one image always gives the same bytes.
The format is the squashfs 4.0 layout read by Linux and squashfs-tools.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import lzma
import os
import struct
import tarfile
import threading
import zlib
from typing import BinaryIO, Callable, Iterable

import zstandard

from shifter_core.errors import ImageContentError

from . import layertar
from .errors import ConversionError
from .merge import DIR, FIFO, FILE, SYMLINK, Member, Node, Tree

BLOCK_SIZE = 128 * 1024
METADATA_SIZE = 8192
UNCOMPRESSED_BLOCK = 1 << 24          # in data/fragment block size words
UNCOMPRESSED_METADATA = 0x8000        # in metadata block headers
NO_FRAGMENT = 0xFFFFFFFF
NO_TABLE = 0xFFFFFFFFFFFFFFFF
FLAG_NO_XATTRS = 0x0200
MAX_SYMLINK = 4095
PACK_VERSION = 1
PACK_WINDOW = 16                      # blocks in flight per layer being packed

# inode types: basic, and extended where a field outgrows the basic layout
DIR_INODE, FILE_INODE, SYMLINK_INODE, FIFO_INODE = 1, 2, 3, 6
LDIR_INODE, LFILE_INODE = 8, 9
_BASIC_TYPE = {DIR: DIR_INODE, FILE: FILE_INODE, SYMLINK: SYMLINK_INODE, FIFO: FIFO_INODE}

_SUPERBLOCK = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")
_INODE_HEADER = struct.Struct("<HHHHII")            # type, mode, uid, gid, mtime, number
_DIR_INODE = struct.Struct("<IIHHI")                # start, nlink, size, offset, parent
_LDIR_INODE = struct.Struct("<IIIIHHI")             # nlink, size, start, parent, index, offset, xattr
_FILE_INODE = struct.Struct("<IIII")                # blocks_start, fragment, offset, size
_LFILE_INODE = struct.Struct("<QQQIIII")            # start, size, sparse, nlink, frag, offset, xattr
_DIR_HEADER = struct.Struct("<III")                 # count-1, inode block, base inode number
_DIR_ENTRY = struct.Struct("<HhHH")                 # offset, number delta, type, name size-1
_FRAGMENT_ENTRY = struct.Struct("<QII")
_PACK_TAIL = struct.Struct("<Q")


# --- compressors --------------------------------------------------------------

class Compressor:
    """One squashfs compressor at one level, usable from many threads."""

    IDS = {"gzip": 1, "xz": 4, "zstd": 6}
    DEFAULT_LEVELS = {"gzip": 9, "xz": 6, "zstd": 15}

    def __init__(self, name: str, level: int | None = None):
        if name not in self.IDS:
            raise ConversionError(f"squashfs compressor {name!r} is not supported;"
                                  f" use one of {', '.join(sorted(self.IDS))}")
        self.name, self.id = name, self.IDS[name]
        self.level = self.DEFAULT_LEVELS[name] if level is None else level
        limits = {"gzip": (1, 9), "xz": (0, 9), "zstd": (1, 22)}[name]
        if not limits[0] <= self.level <= limits[1]:
            raise ConversionError(f"{name} compression level {self.level} is outside"
                                  f" {limits[0]}..{limits[1]}")
        self._local = threading.local()

    @property
    def key(self) -> str:
        """Names the compressed form, for cache keys."""
        return f"{self.name}{self.level}"

    def compress(self, data: bytes) -> bytes:
        if self.name == "zstd":
            compressor = getattr(self._local, "zstd", None)
            if compressor is None:       # zstandard compressors are not thread-safe
                compressor = self._local.zstd = zstandard.ZstdCompressor(level=self.level)
            return compressor.compress(data)
        if self.name == "gzip":
            return zlib.compress(data, self.level)
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=[
            {"id": lzma.FILTER_LZMA2, "preset": self.level, "dict_size": BLOCK_SIZE}])

    def block(self, data: bytes, uncompressed_flag: int) -> tuple[bytes, int]:
        """(stored bytes, size word): compressed unless that does not make it smaller."""
        packed = self.compress(data)
        if len(packed) < len(data):
            return packed, len(packed)
        return bytes(data), len(data) | uncompressed_flag


# --- packs: a layer's data, compressed once -------------------------------------

@dataclasses.dataclass(frozen=True)
class FileData:
    """Where a regular file's content is inside its pack."""

    start: int                  # pack offset of the first block
    blocks: tuple[int, ...]     # size words, as in the inode
    fragment: int               # index into the pack's fragments, or -1
    fragment_offset: int

    def stored_length(self) -> int:
        return sum(word & (UNCOMPRESSED_BLOCK - 1) for word in self.blocks)


class Pack:
    """A packed layer opened for reading: its entries and its fragment blocks."""

    def __init__(self, file: BinaryIO, size: int):
        self.file = file
        file.seek(size - _PACK_TAIL.size)
        (index_length,) = _PACK_TAIL.unpack(file.read(_PACK_TAIL.size))
        file.seek(size - _PACK_TAIL.size - index_length)
        index = json.loads(file.read(index_length))
        if index.get("version") != PACK_VERSION:
            raise ConversionError("layer cache entry has an unknown pack version; clear the cache")
        self.block_size = index["block_size"]
        self.fragments: list[tuple[int, int]] = [tuple(f) for f in index["fragments"]]
        self._members = index["members"]

    def members(self, layer: int) -> Iterable[Member]:
        """The layer's entries; a file's source is (layer, FileData), as write_image wants."""
        for name, kind, mode, mtime, size, linkname, data in self._members:
            source = (layer, FileData(data[0], tuple(data[1]), data[2], data[3])) if data else None
            yield Member(name, kind, mode, mtime, size, linkname, source)


class _OrderedWriter:
    """Writes compression results to the pack in submission order."""

    def __init__(self, out, pool: concurrent.futures.Executor, window: int):
        self.out, self.pool, self.window = out, pool, window
        self.pending: collections.deque = collections.deque()
        self.position = 0

    def submit(self, fn: Callable, data: bytes, done: Callable[[int, int], None]) -> None:
        self.pending.append((self.pool.submit(fn, data), done))
        while len(self.pending) > self.window or (self.pending and self.pending[0][0].done()):
            self._write_first()

    def drain(self) -> None:
        while self.pending:
            self._write_first()

    def _write_first(self) -> None:
        future, done = self.pending.popleft()
        stored, word = future.result()
        done(self.position, word)
        self.out.write(stored)
        self.position += len(stored)


def pack_layer(stream: BinaryIO, out, compressor: Compressor,
               pool: concurrent.futures.Executor, image: str = "image",
               block_size: int = BLOCK_SIZE) -> None:
    """Read a layer tar from `stream` and write its pack to `out`.

    Files smaller than a block go into fragment blocks shared by the layer;
    larger files get whole blocks (the last one short).  All-zero blocks are
    stored as holes.  Compression runs on `pool`.
    """
    packer = _Packer(out, compressor, pool, image, block_size)
    try:
        for member, content in layertar.members(stream):
            packer.add(member, content)
    except tarfile.TarError as err:
        raise ImageContentError(f"image {image}: a layer is not a valid tar archive ({err})") \
            from None
    except layertar.Refused as err:
        raise ImageContentError(f"image {image}: a layer entry {err}; the image is refused") \
            from None
    packer.finish()


class _Packer:
    """The state of one pack being written: entries so far, the open fragment block."""

    def __init__(self, out, compressor: Compressor, pool: concurrent.futures.Executor,
                 image: str, block_size: int):
        self.out, self.image, self.block_size = out, image, block_size
        self.writer = _OrderedWriter(out, pool, window=PACK_WINDOW)
        self.compress = lambda data: compressor.block(data, UNCOMPRESSED_BLOCK)
        self.members: list[list] = []
        self.fragments: list[list[int]] = []           # [pack offset, size word]
        self.fragment_buffer = bytearray()
        self.fragment_users: list[list] = []
        self.zero_block = bytes(block_size)

    def add(self, member: Member, content) -> None:
        """Record an entry; a regular file's `content` is read and compressed.

        A file's record is [start, block size words, fragment number, offset
        in the fragment]; the write callbacks fill it in as blocks land.
        """
        record = None
        if member.kind == FILE and member.size:
            if member.size < self.block_size:
                record = self._add_to_fragment(member, content)
            else:
                record = self._add_blocks(member, content)
        self.members.append([member.name, member.kind, member.mode, _u32(member.mtime),
                             member.size, member.linkname, record])

    def finish(self) -> None:
        self._flush_fragment()
        self.writer.drain()
        for record in (m[6] for m in self.members):
            if record is not None and record[0] is None:
                record[0] = 0                        # a file made only of holes
        index = json.dumps({"version": PACK_VERSION, "block_size": self.block_size,
                            "fragments": self.fragments, "members": self.members}).encode()
        self.out.write(index)
        self.out.write(_PACK_TAIL.pack(len(index)))

    def _add_to_fragment(self, member: Member, content) -> list:
        if len(self.fragment_buffer) + member.size > self.block_size:
            self._flush_fragment()
        record = [0, [], -1, len(self.fragment_buffer)]
        self.fragment_buffer += _read_exactly(content, member.size, member.name, self.image)
        self.fragment_users.append(record)
        return record

    def _flush_fragment(self) -> None:
        if not self.fragment_buffer:
            return
        entry = [0, 0]
        self.fragments.append(entry)
        for record in self.fragment_users:
            record[2] = len(self.fragments) - 1

        def done(position: int, word: int) -> None:
            entry[0], entry[1] = position, word

        self.writer.submit(self.compress, bytes(self.fragment_buffer), done)
        self.fragment_buffer.clear()
        self.fragment_users.clear()

    def _add_blocks(self, member: Member, content) -> list:
        record = [None, [], -1, 0]
        words = record[1]
        remaining = member.size
        while remaining:
            data = _read_exactly(content, min(self.block_size, remaining), member.name,
                                 self.image)
            remaining -= len(data)
            words.append(0)                      # a hole unless data is stored below
            if data == self.zero_block:
                continue

            def done(position: int, word: int, slot: int = len(words) - 1) -> None:
                if record[0] is None:            # the first stored block fixes the start
                    record[0] = position
                words[slot] = word

            self.writer.submit(self.compress, data, done)
        return record


def _read_exactly(source, size: int, name: str, image: str) -> bytes:
    data = source.read(size)
    if len(data) != size:
        raise ImageContentError(f"image {image}: layer entry {name!r} is truncated")
    return data


def _u32(value: int) -> int:
    return min(max(int(value), 0), 0xFFFFFFFF)


# --- images: the merged tree, assembled from packs ------------------------------

class _MetadataWriter:
    """A squashfs metadata stream: records cut into 8 KiB blocks, each compressed."""

    def __init__(self, compressor: Compressor):
        self.compressor = compressor
        self.out = bytearray()
        self.buffer = bytearray()
        self.block_starts: list[int] = []

    def reference(self) -> tuple[int, int]:
        """(block start within the table, offset inside the block) of the next byte."""
        return len(self.out), len(self.buffer)

    def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= METADATA_SIZE:
            self._emit(bytes(self.buffer[:METADATA_SIZE]))
            del self.buffer[:METADATA_SIZE]

    def finish(self) -> bytes:
        if self.buffer:
            self._emit(bytes(self.buffer))
            self.buffer.clear()
        return bytes(self.out)

    def _emit(self, block: bytes) -> None:
        stored, word = self.compressor.block(block, UNCOMPRESSED_METADATA)
        self.block_starts.append(len(self.out))
        self.out += struct.pack("<H", word) + stored


class _ImageWriter:
    def __init__(self, tree: Tree, packs: list[Pack], out, compressor: Compressor):
        self.tree, self.packs, self.out, self.compressor = tree, packs, out, compressor
        self.block_size = packs[0].block_size if packs else BLOCK_SIZE
        if any(p.block_size != self.block_size for p in packs):
            raise ConversionError(f"image {tree.image}: layers packed with different block sizes")
        self.numbers: dict[int, int] = {}
        self.links: collections.Counter = collections.Counter()
        self.refs: dict[int, int] = {}
        self.data_start: dict[tuple[int, int], int] = {}
        self.fragment_index: dict[tuple[int, int], int] = {}
        self.fragments: list[tuple[int, int]] = []
        self.inodes = _MetadataWriter(compressor)
        self.directories = _MetadataWriter(compressor)

    def write(self) -> None:
        self._number(self.tree.root)
        end = self._place_data(_SUPERBLOCK.size)
        root_ref = self._write_directory(self.tree.root, len(self.numbers) + 1)
        self.out.seek(end)
        inode_table = self._append(self.inodes.finish())
        directory_table = self._append(self.directories.finish())
        fragment_table = self._lookup_table(
            b"".join(_FRAGMENT_ENTRY.pack(start, word, 0) for start, word in self.fragments))
        id_table = self._lookup_table(struct.pack("<I", 0))
        bytes_used = self.out.tell()
        self.out.write(bytes(-bytes_used % 4096))
        self.out.seek(0)
        self.out.write(_SUPERBLOCK.pack(
            0x73717368, len(self.numbers), 0, self.block_size, len(self.fragments),
            self.compressor.id, self.block_size.bit_length() - 1, FLAG_NO_XATTRS, 1, 4, 0,
            root_ref, bytes_used, id_table, NO_TABLE, inode_table, directory_table,
            fragment_table if self.fragments else NO_TABLE, NO_TABLE))

    # numbering: post-order, the order inodes are written in
    def _number(self, directory: Node) -> None:
        for _, child in _sorted_children(directory):
            self.links[id(child)] += 1
            if child.kind == DIR:
                self._number(child)
            elif id(child) not in self.numbers:
                self.numbers[id(child)] = len(self.numbers) + 1
        self.numbers[id(directory)] = len(self.numbers) + 1

    # data: copy the blocks the surviving files use, in runs, from the packs
    def _place_data(self, position: int) -> int:
        ranges = set()
        for node in self._file_nodes():
            layer, data = node.source
            if data.blocks and data.stored_length():
                ranges.add((layer, data.start, data.start + data.stored_length()))
            if data.fragment >= 0:
                start, word = self.packs[layer].fragments[data.fragment]
                ranges.add((layer, start, start + (word & (UNCOMPRESSED_BLOCK - 1))))
        run = None                      # [layer, source start, source end, destination]
        for layer, start, end in sorted(ranges):
            if run and run[0] == layer and start <= run[2]:
                run[2] = max(run[2], end)
            else:
                if run:
                    position = self._copy(*run)
                run = [layer, start, end, position]
            self.data_start[(layer, start)] = run[3] + start - run[1]
        if run:
            position = self._copy(*run)
        return position

    def _file_nodes(self) -> Iterable[Node]:
        seen = set()
        for _, node in self.tree.walk():
            if node.kind == FILE and node.source is not None and id(node) not in seen:
                seen.add(id(node))
                yield node

    def _copy(self, layer: int, start: int, end: int, destination: int) -> int:
        source, target = self.packs[layer].file.fileno(), self.out.fileno()
        offset, remaining = start, end - start
        while remaining:
            try:
                done = os.copy_file_range(source, target, remaining, offset, destination)
            except OSError:             # e.g. EXDEV on older kernels: copy by hand
                done = os.pwrite(target, os.pread(source, min(remaining, 1 << 20), offset),
                                 destination)
            if done == 0:
                raise ConversionError(f"image {self.tree.image}: layer cache entry is truncated")
            offset, destination, remaining = offset + done, destination + done, remaining - done
        return destination

    # metadata
    def _write_directory(self, directory: Node, parent: int) -> int:
        entries = []
        subdirectories = 0
        number = self.numbers[id(directory)]
        for name, child in _sorted_children(directory):
            if child.kind == DIR:
                subdirectories += 1
                ref = self._write_directory(child, number)
            elif id(child) in self.refs:
                ref = self.refs[id(child)]
            else:
                ref = self.refs[id(child)] = self._write_leaf(child)
            entries.append((name, ref, self.numbers[id(child)], _BASIC_TYPE[child.kind]))
        block, offset = self.directories.reference()
        listing = _listing(entries)
        self.directories.write(listing)
        size = len(listing) + 3
        header = self._header(directory, LDIR_INODE if size > 0xFFFF else DIR_INODE)
        if size > 0xFFFF:
            body = _LDIR_INODE.pack(2 + subdirectories, size, block, parent, 0, offset, 0xFFFFFFFF)
        else:
            body = _DIR_INODE.pack(block, 2 + subdirectories, size, offset, parent)
        return self._write_inode(header + body)

    def _write_leaf(self, node: Node) -> int:
        links = self.links[id(node)]
        if node.kind == SYMLINK:
            target = node.target.encode("utf-8", "surrogateescape")
            if len(target) > MAX_SYMLINK:
                raise ImageContentError(f"image {self.tree.image}: a symlink target is longer"
                                        f" than {MAX_SYMLINK} bytes")
            return self._write_inode(self._header(node, SYMLINK_INODE)
                                     + struct.pack("<II", links, len(target)) + target)
        if node.kind == FIFO:
            return self._write_inode(self._header(node, FIFO_INODE) + struct.pack("<I", links))
        return self._write_file(node, links)

    def _write_file(self, node: Node, links: int) -> int:
        start, fragment, fragment_offset, blocks = 0, NO_FRAGMENT, 0, ()
        if node.source is not None:
            layer, data = node.source
            blocks = data.blocks
            if data.blocks and data.stored_length():
                start = self.data_start[(layer, data.start)]
            if data.fragment >= 0:
                fragment = self._fragment(layer, data.fragment)
                fragment_offset = data.fragment_offset
        words = struct.pack(f"<{len(blocks)}I", *blocks)
        if links == 1 and start < 1 << 32 and node.size < 1 << 32:
            body = _FILE_INODE.pack(start, fragment, fragment_offset, node.size)
            return self._write_inode(self._header(node, FILE_INODE) + body + words)
        body = _LFILE_INODE.pack(start, node.size, 0, links, fragment, fragment_offset, 0xFFFFFFFF)
        return self._write_inode(self._header(node, LFILE_INODE) + body + words)

    def _fragment(self, layer: int, index: int) -> int:
        key = (layer, index)
        if key not in self.fragment_index:
            start, word = self.packs[layer].fragments[index]
            self.fragment_index[key] = len(self.fragments)
            self.fragments.append((self.data_start[(layer, start)], word))
        return self.fragment_index[key]

    def _header(self, node: Node, inode_type: int) -> bytes:
        return _INODE_HEADER.pack(inode_type, node.mode & 0o7777, 0, 0, _u32(node.mtime),
                                  self.numbers[id(node)])

    def _write_inode(self, data: bytes) -> int:
        block, offset = self.inodes.reference()
        self.inodes.write(data)
        return block << 16 | offset

    # tables
    def _append(self, data: bytes) -> int:
        position = self.out.tell()
        self.out.write(data)
        return position

    def _lookup_table(self, data: bytes) -> int:
        """Metadata blocks, then the list of their positions; returns the list's."""
        table = _MetadataWriter(self.compressor)
        table.write(data)
        start = self._append(table.finish())
        return self._append(struct.pack(f"<{len(table.block_starts)}Q",
                                         *(start + s for s in table.block_starts)))


def _sorted_children(directory: Node) -> list[tuple[bytes, Node]]:
    """A directory's entries in squashfs order (by name bytes); the merge bounded the names."""
    return sorted(((name.encode("utf-8", "surrogateescape"), child)
                   for name, child in directory.children.items()), key=lambda item: item[0])


def _listing(entries: list[tuple[bytes, int, int, int]]) -> bytes:
    """A directory's entries in runs sharing an inode block and a base number."""
    data = bytearray()
    i = 0
    while i < len(entries):
        block, base = entries[i][1] >> 16, entries[i][2]
        j = i + 1
        while (j < len(entries) and j - i < 256 and entries[j][1] >> 16 == block
               and -32768 <= entries[j][2] - base <= 32767):
            j += 1
        data += _DIR_HEADER.pack(j - i - 1, block, base)
        for name, ref, number, kind in entries[i:j]:
            data += _DIR_ENTRY.pack(ref & 0xFFFF, number - base, kind, len(name) - 1) + name
        i = j
    return bytes(data)


def write_image(tree: Tree, packs: list[Pack], output: str, compressor: Compressor) -> None:
    """Write the squashfs of `tree`, whose file sources are (layer number, FileData)."""
    with open(output, "w+b", buffering=0) as out:
        _ImageWriter(tree, packs, out, compressor).write()
