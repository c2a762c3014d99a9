"""The layer cache the gateway's workers share: verified files, named by layer digest.

An entry is whatever the pipeline keeps of one layer, stored under a key
derived from the layer's digest.  Entries are:

* inserted atomically: written under tmp/, sealed with a trailer holding the
  sha256 of the content, then renamed into entries/;
* verified on every reuse against that trailer (a torn write after a crash,
  or bit rot, makes the entry count as missing and it is rebuilt);
* safe under concurrent pulls: `lock(key)` (flock) makes the second worker
  wait for the first and then reuse its entry instead of downloading again;
* bounded: `evict()` removes the least recently used entries above the size
  limit.  Removing an entry another worker has open is harmless: it keeps
  reading its open file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import struct
import tempfile
import time
from typing import BinaryIO, Callable, Iterator

from shifter_core.errors import ConfigError

MAGIC = b"SHIFTLC1"
TRAILER = struct.Struct("<8s32sQ")          # magic, sha256 of content, content length
STALE_TMP_SECONDS = 3600
_KEY_RE = re.compile(r"^[0-9a-z][0-9a-z._-]{0,200}$")
_READ = 4 * 1024 * 1024


class Entry:
    """An open, verified cache entry; read it through `file` up to `size`."""

    def __init__(self, file: BinaryIO, size: int):
        self.file, self.size = file, size

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Entry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LayerCache:
    def __init__(self, directory: str, size_limit: int | None = None):
        self.directory = directory
        self.size_limit = size_limit
        for sub in ("entries", "tmp", "locks"):
            try:
                os.makedirs(os.path.join(directory, sub), mode=0o700, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"cannot create the layer cache in {directory}:"
                                  f" {err.strerror}") from None

    def path(self, key: str) -> str:
        if not _KEY_RE.match(key):
            raise ValueError(f"invalid cache key {key!r}")
        return os.path.join(self.directory, "entries", key)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-key lock (blocking) across check-and-insert."""
        lock_path = os.path.join(self.directory, "locks", key)
        self.path(key)      # validates the key
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:        # not removed by eviction while we waited
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)

    def open(self, key: str) -> Entry | None:
        """The verified entry, or None if it is absent or damaged (then removed)."""
        path = self.path(key)
        try:
            file = open(path, "rb")
        except FileNotFoundError:
            return None
        try:
            size = _verify(file)
            if size is None:
                _unlink(path)
                file.close()
                return None
            os.utime(file.fileno())          # mtime = last use, for eviction
            file.seek(0)
            return Entry(file, size)
        except BaseException:
            file.close()
            raise

    def insert(self, key: str, produce: Callable[[BinaryIO], None]) -> Entry:
        """Let `produce` write a new entry; it appears only if `produce` returns.

        Returns the entry open for reading (no second verification needed).
        """
        final = self.path(key)
        fd, tmp = tempfile.mkstemp(dir=os.path.join(self.directory, "tmp"), prefix=f"{key}.")
        raw = os.fdopen(fd, "w+b")
        try:
            writer = _SealingWriter(raw)
            produce(writer)
            writer.seal()
            os.replace(tmp, final)
        except BaseException:
            raw.close()
            _unlink(tmp)
            raise
        raw.seek(0)
        return Entry(raw, writer.size)

    def evict(self, keep: set[str] = frozenset()) -> list[str]:
        """Remove least recently used entries until the cache fits its limit."""
        entries_dir = os.path.join(self.directory, "entries")
        self._remove_stale_tmp()
        if self.size_limit is None:
            return []
        entries = []
        for name in os.listdir(entries_dir):
            try:
                st = os.stat(os.path.join(entries_dir, name))
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, name))
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, name in sorted(entries):
            if total <= self.size_limit:
                break
            if name in keep:
                continue
            _unlink(os.path.join(entries_dir, name))
            self._remove_lock(name)
            total -= size
            removed.append(name)
        return removed

    def _remove_lock(self, key: str) -> None:
        lock_path = os.path.join(self.directory, "locks", key)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _unlink(lock_path)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        finally:
            os.close(fd)

    def _remove_stale_tmp(self) -> None:
        tmp_dir = os.path.join(self.directory, "tmp")
        cutoff = time.time() - STALE_TMP_SECONDS
        for name in os.listdir(tmp_dir):
            path = os.path.join(tmp_dir, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    _unlink(path)
            except FileNotFoundError:
                pass


def stored_bytes(directory: str) -> int | None:
    """Bytes of the entries of the cache in `directory`; None if this host has none."""
    total = 0
    try:
        with os.scandir(os.path.join(directory, "entries")) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):       # evicted meanwhile
                    total += entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return None
    return total


class _SealingWriter:
    """File wrapper that hashes what is written and appends the trailer."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size

    def seal(self) -> None:
        self.raw.write(TRAILER.pack(MAGIC, self.sha256.digest(), self.size))
        self.raw.flush()


def _verify(file: BinaryIO) -> int | None:
    """Content length if the trailer matches the content, else None."""
    end = file.seek(0, os.SEEK_END)
    if end < TRAILER.size:
        return None
    file.seek(end - TRAILER.size)
    magic, digest, size = TRAILER.unpack(file.read(TRAILER.size))
    if magic != MAGIC or size != end - TRAILER.size:
        return None
    file.seek(0)
    hasher, remaining = hashlib.sha256(), size
    while remaining:
        chunk = file.read(min(_READ, remaining))
        if not chunk:
            return None
        hasher.update(chunk)
        remaining -= len(chunk)
    return size if hasher.digest() == digest else None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
