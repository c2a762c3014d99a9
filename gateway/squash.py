"""Writing a merged tree as a squashfs image, without extracting it to disk.

The tree is streamed as one tar (root-owned entries, no xattrs, no devices)
into tar2sqfs from squashfs-tools-ng.
"""
from __future__ import annotations

import dataclasses
import subprocess
import tarfile
from typing import BinaryIO, Callable

from shifter_core.errors import ConversionError

from .merge import DIR, FIFO, SYMLINK, Tree

TAR2SQFS = "/usr/bin/tar2sqfs"
COMPRESSORS = ("zstd", "gzip", "xz", "lz4", "lzo", "lzma")


@dataclasses.dataclass(frozen=True)
class SquashOptions:
    compressor: str = "zstd"
    level: int | None = 3
    processors: int = 2

    def __post_init__(self):
        if self.compressor not in COMPRESSORS:
            raise ConversionError(f"squashfs compressor {self.compressor!r} is not one of"
                                  f" {', '.join(COMPRESSORS)}")


def write_squashfs(tree: Tree, output: str, options: SquashOptions,
                   open_source: Callable[[object], BinaryIO]) -> None:
    """Write `tree` to the squashfs file `output`; `open_source` reads a file's data."""
    cmd = [TAR2SQFS, "--quiet", "--force", "--no-xattr", "--no-skip",
           "--compressor", options.compressor, "--num-jobs", str(options.processors)]
    if options.level is not None and options.compressor in ("zstd", "gzip", "xz", "lzma"):
        cmd += ["--comp-extra", f"level={options.level}"]
    cmd.append(output)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _stream(tree, tar, open_source)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    stderr = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        raise ConversionError(f"image {tree.image}: tar2sqfs failed: {stderr or proc.returncode}")


def _stream(tree: Tree, tar: tarfile.TarFile, open_source) -> None:
    first_name: dict[int, str] = {}
    for path, node in tree.walk():
        info = tarfile.TarInfo(path or ".")
        info.mode, info.mtime = node.mode, node.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if node.kind == DIR:
            info.type = tarfile.DIRTYPE
        elif node.kind == SYMLINK:
            info.type, info.linkname = tarfile.SYMTYPE, node.target
        elif node.kind == FIFO:
            info.type = tarfile.FIFOTYPE
        elif id(node) in first_name:
            info.type, info.linkname = tarfile.LNKTYPE, first_name[id(node)]
        else:
            first_name[id(node)] = path
            info.size = node.size
            with open_source(node.source) as data:
                tar.addfile(info, data)
            continue
        tar.addfile(info)
