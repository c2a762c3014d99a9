"""Reading a layer's tar the way Go's archive/tar does (umoci, registries, scanners).

An image is only safe to check if everyone reads the same files out of it, so
where Python's tarfile and Go's archive/tar disagree, we read as Go does:

* GNU's sparse files in PAX headers (formats 0.0, 0.1 and 1.0): the real name
  is `GNU.sparse.name` and the real size `GNU.sparse.size` (else
  `GNU.sparse.realsize`), whatever order the records come in.  Python lets a
  later `path` record win, so GNU tar's sparse files with long or non-ASCII
  names landed at `GNUSparseFile.<pid>/<name>`.
* On any other member, `GNU.sparse.*` records mean nothing (Python applied
  them anyway: a plain member could carry a hidden second name or size).
* Records that one reader would take for a sparse file and the other not
  refuse the layer, and so do what umoci refuses: tar types other than those
  of files, links, directories, FIFOs and devices (GNU's `D`, `V`, old-style
  sparse `S`, contiguous `7`, ...) and global PAX headers (Python applies
  their records to every later member, Go to none).

    for member, content in members(stream):   # merge.Member, file object or None
"""
from __future__ import annotations

import tarfile
from typing import BinaryIO, Iterator

from .merge import DEVICE, DIR, FIFO, FILE, HARDLINK, SYMLINK, Member

SPARSE = "GNU.sparse."
_KINDS = {
    tarfile.REGTYPE: FILE, tarfile.AREGTYPE: FILE, tarfile.DIRTYPE: DIR, tarfile.SYMTYPE: SYMLINK,
    tarfile.LNKTYPE: HARDLINK, tarfile.FIFOTYPE: FIFO, tarfile.CHRTYPE: DEVICE, tarfile.BLKTYPE: DEVICE,
}


class Refused(Exception):
    """A layer entry no reader agrees on; the message completes "a layer entry ..."."""


def members(stream: BinaryIO) -> Iterator[tuple[Member, BinaryIO | None]]:
    """The layer's entries as the merge sees them, with a regular file's content."""
    tar = tarfile.open(fileobj=stream, mode="r|", tarinfo=_GoTarInfo)
    for info in tar:
        kind = _KINDS.get(info.type)
        if kind is None:
            raise Refused(f"{info.name!r} has tar type {info.type.decode('latin-1')!r}; layers may only"
                          " hold files, links, directories, FIFOs and devices (types 0 to 6)")
        member = Member(name=info.name, kind=kind, mode=info.mode & 0o7777, mtime=int(info.mtime),
                        size=info.size if kind == FILE else 0, linkname=info.linkname)
        yield member, tar.extractfile(info) if kind == FILE else None


class _GoTarInfo(tarfile.TarInfo):
    """TarInfo whose PAX records are applied as Go applies them (see module docstring)."""

    def _proc_member(self, tarfile_):
        if self.type == tarfile.XGLTYPE:
            raise Refused(f"{self.name!r} is a global PAX header, whose records tar readers apply"
                          " differently")
        return super()._proc_member(tarfile_)

    def _apply_pax_info(self, pax_headers, encoding, errors):
        sparse = {k: v for k, v in pax_headers.items() if k.startswith(SPARSE)}
        plain = {k: v for k, v in pax_headers.items() if not k.startswith(SPARSE)}
        super()._apply_pax_info(plain, encoding, errors)
        self.pax_headers = dict(pax_headers)
        if not sparse:
            return
        python, go = _python_reads_sparse(sparse), _go_reads_sparse(sparse)
        if python != go or _ambiguous(sparse) or (self.sparse is not None) != python:
            raise Refused(f"{self.name!r} has GNU sparse records that tar readers disagree on")
        if not go:
            return                                      # a plain member: Go ignores them
        size, realsize = sparse.get(SPARSE + "size"), sparse.get(SPARSE + "realsize")
        if size is not None and realsize is not None and size != realsize:
            raise Refused(f"{self.name!r} is a sparse file with two different sizes")
        try:
            self.size = int(size if size is not None else realsize)
        except (TypeError, ValueError):
            raise Refused(f"{self.name!r} is a sparse file without a valid size") from None
        if sparse.get(SPARSE + "name"):
            self.path = sparse[SPARSE + "name"].rstrip("/")


def _python_reads_sparse(records: dict) -> bool:
    """tarfile's test (TarInfo._proc_pax): a map (0.1), a size (0.0), or version 1.0."""
    return (SPARSE + "map" in records or SPARSE + "size" in records
            or (records.get(SPARSE + "major"), records.get(SPARSE + "minor")) == ("1", "0"))


def _go_reads_sparse(records: dict) -> bool:
    """archive/tar's test (readGNUSparsePAXHeaders): a known version, else a map
    (Go gathers 0.0's offset/numbytes pairs into the map)."""
    version = (records.get(SPARSE + "major"), records.get(SPARSE + "minor"))
    if version in (("1", "0"), ("0", "0"), ("0", "1")):
        return True
    if version != (None, None):
        return False
    return SPARSE + "map" in records or SPARSE + "offset" in records or SPARSE + "numbytes" in records


def _ambiguous(records: dict) -> bool:
    """Sparse records both readers accept but parse differently: a map or 0.x size beside
    version 1.0 (Python reads 0.x), an explicit map beside 0.0's pairs (Go reads the pairs)."""
    version_1 = (records.get(SPARSE + "major"), records.get(SPARSE + "minor")) == ("1", "0")
    has_map = SPARSE + "map" in records
    has_pairs = SPARSE + "offset" in records or SPARSE + "numbytes" in records
    return (version_1 and (has_map or SPARSE + "size" in records)) or (has_map and has_pairs)
