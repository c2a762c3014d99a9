"""Registry image to squashfs: what the gateway's workers run.

    with fetch_image(ref, store=store, settings=settings, credentials=login) as pulled:
        meta = decide_access(pulled.meta, pulled.login_required)     # the caller's policy
        store.publish(meta, pulled.squashfs)

    meta = pull_image(parse("docker:ubuntu:22.04"), store=ImageStore(dir),
                      settings=PipelineSettings(cache_dir=..., scratch_dir=...))

`fetch_image` resolves the reference to a platform manifest (PULLING; then
`info` has the `digest` and, for display, `login_required`), fetches the image config and checks it against the
schema (shifter_core/imageconfig.py) before anything is written; for each layer
missing from the layer cache, it downloads it, verifies it (blob digest and
diff_id) and compresses its files into a squashfs pack, layers in parallel
(PULLING, with byte counts); then it merges the layers and assembles the
squashfs from the packs (CONVERSION) in the scratch directory.  It yields a
PulledImage: the metadata the config gives, `login_required` (the registry
refused anonymous access, so the image is not public), and the built file,
which is removed at exit unless the caller published it.  An image whose
squashfs is already in the store is not built again: two tags of one content
give one image.  `pull_image` publishes the result as it is (public, no
ACL): the library-level call.  Nothing is extracted to disk and nothing
needs root.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import os
import platform as host_platform
import re
import shutil
import tempfile
import threading
import time
import zlib
from typing import BinaryIO, Callable, Iterable, Iterator

import zstandard

from shifter_core.errors import ConfigError, ImageRefError
from shifter_core.imageref import ImageRef
from shifter_core.imagestatus import CONVERSION, PULLING, READY
from shifter_core.imagestore import ImageMeta, ImageStore

from .errors import DigestMismatch, RegistryError
from .layercache import Entry, LayerCache
from .merge import Tree
from .registry import Location, Manifest, Platform, RegistryClient
from .squash import Compressor, Pack, pack_layer, write_image

Progress = Callable[[str, dict], None]
_MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7",
                 "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
GZIP_TYPES = ("application/vnd.oci.image.layer.v1.tar+gzip",
              "application/vnd.docker.image.rootfs.diff.tar.gzip",
              "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
              "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
ZSTD_TYPES = ("application/vnd.oci.image.layer.v1.tar+zstd",
              "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")
PLAIN_TYPES = ("application/vnd.oci.image.layer.v1.tar",
               "application/vnd.oci.image.layer.nondistributable.v1.tar")
STALE_BUILD_SECONDS = 3600
_BUILD_NAME = re.compile(r"^\.[0-9a-f]{64}\..+\.squashfs$")      # see mkstemp in pull_image
STREAM_BUFFER = 1 << 20
INFLATE_LIMIT = 4 << 20          # bytes per decompression step: no gzip bomb in memory


def default_architecture() -> str:
    machine = host_platform.machine()
    return _MACHINE_ARCH.get(machine, machine)


@dataclasses.dataclass
class PipelineSettings:
    """How the pipeline works; the gateway maps imagemanager.json onto it.

    `locations` maps names (as written in references, e.g. "host:port") to
    registries; a reference without a registry uses `default_location`.
    """

    cache_dir: str
    scratch_dir: str
    compressor: str = "zstd"
    compression_level: int | None = 3
    processors: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    architecture: str = dataclasses.field(default_factory=default_architecture)
    locations: dict[str, Location] = dataclasses.field(default_factory=dict)
    default_location: str | None = None
    cache_size_limit: int | None = None
    download_workers: int = 4
    timeout: float = 60
    retries: int = 4

    def location_for(self, registry: str | None) -> Location:
        """The Location serving a reference's registry part."""
        if registry is None:
            if not self.default_location:
                raise ConfigError("no default image location is configured;"
                                  " name the registry in the image reference")
            if self.default_location not in self.locations:
                raise ConfigError(f"the default image location {self.default_location!r}"
                                  " is not among the configured locations")
            return self.locations[self.default_location]
        if registry in self.locations:
            return self.locations[registry]
        return Location.for_host(registry)

    def make_compressor(self) -> Compressor:
        return Compressor(self.compressor, self.compression_level)


@dataclasses.dataclass
class PulledImage:
    """What fetch_image produced, for its caller to publish."""

    meta: ImageMeta                 # from the checked config; access fields at their defaults
    login_required: bool            # the registry refused anonymous access: not public
    squashfs: str | None            # the built file, in or beside the store; None: the store has it


def pull_image(ref: ImageRef, *, store: ImageStore, settings: PipelineSettings,
               credentials: tuple[str, str] | None = None,
               progress: Progress | None = None) -> ImageMeta:
    """Pull `ref` into `store`, published as it is (public, no ACL); its metadata."""
    with fetch_image(ref, store=store, settings=settings, credentials=credentials,
                     progress=progress) as pulled:
        if pulled.squashfs is not None:
            store.publish(pulled.meta, pulled.squashfs)
        elif store.exists(pulled.meta.id):
            return store.read(pulled.meta.id)
        else:
            store.write_metadata(pulled.meta)
    if progress:
        progress(READY, {"id": pulled.meta.id})
    return pulled.meta


@contextlib.contextmanager
def fetch_image(ref: ImageRef, *, store: ImageStore, settings: PipelineSettings,
                credentials: tuple[str, str] | None = None,
                progress: Progress | None = None) -> Iterator[PulledImage]:
    """Resolve, check and convert `ref` (see module docstring)."""
    report = progress or (lambda status, info: None)
    if ref.type != "docker":
        raise ImageRefError(f"{ref} is not a registry image; only docker: images can be pulled")
    location = settings.location_for(ref.registry)
    platform = Platform.parse(settings.architecture)
    compressor = settings.make_compressor()
    client = RegistryClient(location, location.repository_path(ref.repository),
                            image=str(ref), credentials=credentials,
                            timeout=settings.timeout, retries=settings.retries)
    report(PULLING, {"message": "Getting manifest"})
    manifest = client.resolve(ref.digest or ref.tag, platform)
    report(PULLING, {"message": "Resolved manifest", "digest": manifest.digest,
                     "login_required": client.login_required})
    client.load_config(manifest)
    meta = _image_meta(manifest)
    try:                             # built before: one digest always gives the same file
        meta.size = os.stat(store.image_path(meta.id, meta.format)).st_size
    except FileNotFoundError:
        pass
    else:
        yield PulledImage(meta, client.login_required, None)
        return
    cache = LayerCache(settings.cache_dir, settings.cache_size_limit)
    with contextlib.ExitStack() as cleanup:
        packs = _fetch_layers(client, manifest, cache, compressor, settings, report, cleanup)
        report(CONVERSION, {"message": "Merging layers and writing squashfs"})
        os.makedirs(settings.scratch_dir, exist_ok=True)
        _remove_stale_builds(settings.scratch_dir)
        fd, built = tempfile.mkstemp(dir=settings.scratch_dir, prefix=f".{meta.id}.",
                                     suffix=".squashfs")
        os.close(fd)
        cleanup.callback(_unlink_if_there, built)
        convert(packs, built, compressor, str(ref))
        meta.size = os.stat(built).st_size
        ready = _movable_into(built, store.directory)
        cleanup.callback(_unlink_if_there, ready)
        cache.evict(keep={_cache_key(diff_id, compressor) for diff_id in manifest.diff_ids})
        yield PulledImage(meta, client.login_required, ready)


def convert(packs: list[Pack], output: str, compressor: Compressor, image: str) -> Tree:
    """Merge the layers' packs (bottom first) and write the image's squashfs to `output`."""
    tree = Tree(image)
    for index, pack in enumerate(packs):
        tree.apply(index, pack.members(index))
    tree.drop_devices()
    write_image(tree, packs, output, compressor)
    return tree


# --- layers ------------------------------------------------------------------

def _cache_key(diff_id: str, compressor: Compressor) -> str:
    """A layer's pack is named by its diff_id and the compression used."""
    return f"{diff_id.split(':', 1)[1]}.{compressor.key}"


def _fetch_layers(client: RegistryClient, manifest: Manifest, cache: LayerCache,
                  compressor: Compressor, settings: PipelineSettings, report: Progress,
                  open_entries: contextlib.ExitStack) -> list[Pack]:
    """Every layer's pack, from the cache or downloaded and packed; all verified."""
    total = sum(int(layer.get("size", 0)) for layer in manifest.layers)
    done = [0]
    lock = threading.Lock()

    def count(nbytes: int) -> None:
        with lock:
            done[0] += nbytes
            current = done[0]
        report(PULLING, {"message": "Pulling layers", "bytes": current, "total": total})

    def fetch(layer: dict, diff_id: str, pool: concurrent.futures.Executor) -> Entry:
        key = _cache_key(diff_id, compressor)
        with cache.lock(key):
            entry = cache.open(key)
            if entry is not None:
                count(int(layer.get("size", 0)))
                return entry

            def produce(out: BinaryIO) -> None:
                chunks = client.blob_chunks(layer.get("digest", ""), size=layer.get("size"),
                                            progress=count)
                raw = _LayerStream(chunks, layer.get("mediaType", ""), diff_id, client.image)
                pack_layer(io.BufferedReader(raw, STREAM_BUFFER), out, compressor, pool,
                           client.image)
                raw.finish()

            return cache.insert(key, produce)

    workers = max(1, min(settings.download_workers, len(manifest.layers)))
    entries: list[Entry | None] = [None] * len(manifest.layers)
    error = None
    with concurrent.futures.ThreadPoolExecutor(max(1, settings.processors)) as compress_pool, \
            concurrent.futures.ThreadPoolExecutor(workers) as fetch_pool:
        futures = {fetch_pool.submit(fetch, layer, diff_id, compress_pool): index
                   for index, (layer, diff_id) in enumerate(zip(manifest.layers, manifest.diff_ids))}
        for future in concurrent.futures.as_completed(futures):
            if future.cancelled():
                continue
            try:
                entries[futures[future]] = open_entries.enter_context(future.result())
            except BaseException as err:     # keep the first, stop what has not started
                if error is None:
                    error = err
                    for other in futures:
                        other.cancel()
    if error is not None:
        raise error
    return [Pack(entry.file, entry.size) for entry in entries]


class _LayerStream(io.RawIOBase):
    """A layer blob read as its uncompressed tar, checked against the diff_id at the end."""

    def __init__(self, chunks: Iterable[bytes], media_type: str, diff_id: str, image: str):
        self._pieces = _decompressed(chunks, media_type, image)
        self._piece, self._offset = b"", 0
        self._hasher = hashlib.sha256()
        self.diff_id, self.image = diff_id, image

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset >= len(self._piece):
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._hasher.update(piece)
            self._piece, self._offset = piece, 0
        count = min(len(buffer), len(self._piece) - self._offset)
        buffer[:count] = self._piece[self._offset:self._offset + count]
        self._offset += count
        return count

    def finish(self) -> None:
        """Read what the tar reader left (end padding), then check the whole."""
        for piece in self._pieces:
            self._hasher.update(piece)
        if "sha256:" + self._hasher.hexdigest() != self.diff_id:
            raise DigestMismatch(f"image {self.image}: a layer does not uncompress to its"
                                 f" diff_id {self.diff_id}")


def _decompressed(chunks: Iterable[bytes], media_type: str, image: str) -> Iterator[bytes]:
    if media_type in PLAIN_TYPES:
        return iter(chunks)
    if media_type in GZIP_TYPES:
        return _gunzip(chunks, image)
    if media_type in ZSTD_TYPES:
        return _unzstd(chunks, image)
    raise RegistryError(f"image {image}: layer type {media_type!r} is not supported")


def _gunzip(chunks: Iterable[bytes], image: str) -> Iterator[bytes]:
    inflater = zlib.decompressobj(wbits=47)     # gzip (or zlib) header
    try:
        for data in chunks:
            while data:
                out = inflater.decompress(data, INFLATE_LIMIT)
                if out:
                    yield out
                if not inflater.eof:
                    data = inflater.unconsumed_tail
                elif inflater.unused_data.strip(b"\0"):
                    data = inflater.unused_data        # another gzip member follows
                    inflater = zlib.decompressobj(wbits=47)
                else:
                    data = b""                         # zero padding after the last member
        tail = inflater.flush()
        if tail:
            yield tail
    except zlib.error as err:
        raise RegistryError(f"image {image}: a layer is not valid gzip ({err})") from None


def _unzstd(chunks: Iterable[bytes], image: str) -> Iterator[bytes]:
    source = _ChunkReader(chunks)
    try:
        yield from zstandard.ZstdDecompressor().read_to_iter(
            source, read_size=STREAM_BUFFER, write_size=INFLATE_LIMIT)
    except zstandard.ZstdError as err:
        raise RegistryError(f"image {image}: a layer is not valid zstd ({err})") from None


class _ChunkReader:
    """`read(n)` over an iterator of byte strings."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._rest = b""

    def read(self, size: int = -1) -> bytes:
        while not self._rest:
            self._rest = next(self._chunks, None)
            if self._rest is None:
                self._rest = b""
                return b""
        data, self._rest = self._rest[:size], self._rest[size:]
        return data


# --- results -----------------------------------------------------------------

def _image_meta(manifest: Manifest) -> ImageMeta:
    config = manifest.config
    return ImageMeta(digest=manifest.digest, env=config.env, entrypoint=config.entrypoint,
                     cmd=config.cmd, workdir=config.workdir, user=config.user,
                     labels=config.labels, arch=config.architecture, os=config.os,
                     layers=[{key: layer[key] for key in ("digest", "size", "mediaType") if key in layer}
                             for layer in manifest.layers])


def _unlink_if_there(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_stale_builds(scratch_dir: str) -> None:
    """Squashfs files a crashed worker left in the scratch directory (over an hour old)."""
    cutoff = time.time() - STALE_BUILD_SECONDS
    for name in os.listdir(scratch_dir):
        if _BUILD_NAME.match(name):
            path = os.path.join(scratch_dir, name)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)


def _movable_into(path: str, directory: str) -> str:
    """`path` itself if it can be renamed into `directory`, else a copy there."""
    if os.stat(path).st_dev == os.stat(directory).st_dev:
        return path
    fd, copy = tempfile.mkstemp(dir=directory, prefix=".incoming.", suffix=".squashfs")
    os.close(fd)
    try:
        shutil.copyfile(path, copy)
    except BaseException:
        os.unlink(copy)
        raise
    return copy
