"""Registry image to published squashfs: the gateway worker's one call.

    meta = pull_image(parse("docker:ubuntu:22.04"), store=ImageStore(dir),
                      settings=PipelineSettings(cache_dir=..., scratch_dir=...))

Steps (reported through `progress(status, info)`): resolve the reference to
a platform manifest (PULLING), fetch missing layers into the layer cache in
parallel, verifying every byte (PULLING with byte counts), merge the layers
and write the squashfs (CONVERSION), publish it under the manifest digest
(TRANSFER), done (READY).  An image whose digest is already published is
returned at once: two tags of one content give one image.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import platform as host_platform
import shutil
import tarfile
import tempfile
import threading
import zlib
from typing import Callable, Iterable, Iterator

from shifter_core.errors import ConfigError, DigestMismatch, ImageRefError, RegistryError
from shifter_core.imageref import ImageRef
from shifter_core.imagestore import ImageMeta, ImageStore

from .layercache import Entry, LayerCache
from .merge import Tree, member_from_tarinfo
from .registry import Image, Location, Platform, RegistryClient
from .squash import SquashOptions, write_squashfs

Progress = Callable[[str, dict], None]
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
_MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7",
                 "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
GZIP_TYPES = ("application/vnd.oci.image.layer.v1.tar+gzip",
              "application/vnd.docker.image.rootfs.diff.tar.gzip",
              "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
              "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
PLAIN_TYPES = ("application/vnd.oci.image.layer.v1.tar",
               "application/vnd.oci.image.layer.nondistributable.v1.tar")


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

    def location_for(self, registry: str | None) -> tuple[str, Location]:
        """(name, Location) for a reference's registry part."""
        if registry is None:
            if not self.default_location:
                raise ConfigError("no default image location is configured;"
                                  " name the registry in the image reference")
            if self.default_location not in self.locations:
                raise ConfigError(f"the default image location {self.default_location!r}"
                                  " is not among the configured locations")
            return self.default_location, self.locations[self.default_location]
        if registry in self.locations:
            return registry, self.locations[registry]
        return registry, Location.for_host(registry)

    def squash_options(self) -> SquashOptions:
        return SquashOptions(self.compressor, self.compression_level, max(1, self.processors))


def pull_image(ref: ImageRef, *, store: ImageStore, settings: PipelineSettings,
               credentials: tuple[str, str] | None = None,
               progress: Progress | None = None) -> ImageMeta:
    """Pull `ref` into `store` and return its metadata (see module docstring)."""
    report = progress or (lambda status, info: None)
    if ref.type != "docker":
        raise ImageRefError(f"{ref} is not a registry image; only docker: images can be pulled")
    name, location = settings.location_for(ref.registry)
    client = RegistryClient(location, _repository(name, location, ref.repository),
                            image=str(ref), credentials=credentials,
                            timeout=settings.timeout, retries=settings.retries)
    report("PULLING", {"message": "Getting manifest"})
    image = client.resolve(ref.digest or ref.tag, Platform.parse(settings.architecture))
    image_id = image.digest.split(":", 1)[1]
    if store.exists(image_id):
        report("READY", {"id": image_id, "message": "already converted"})
        return store.read(image_id)

    cache = LayerCache(settings.cache_dir, settings.cache_size_limit)
    entries = _fetch_layers(client, image, cache, settings, report)
    try:
        report("CONVERSION", {"message": "Merging layers and writing squashfs"})
        tree = Tree(str(ref))
        tars = []
        for index, entry in enumerate(entries):
            tar = tarfile.open(fileobj=entry.file, mode="r:")
            tars.append(tar)
            tree.apply(index, (member_from_tarinfo(info, (tar, info)) for info in tar))
        os.makedirs(settings.scratch_dir, exist_ok=True)
        fd, built = tempfile.mkstemp(dir=settings.scratch_dir, prefix=f".{image_id}.",
                                     suffix=".squashfs")
        os.close(fd)
        ready = built
        try:
            write_squashfs(tree, built, settings.squash_options(), _open_member)
            report("TRANSFER", {"message": "Publishing image"})
            meta = _image_meta(image)
            ready = _movable_into(built, store.directory)
            store.publish(meta, ready)
        finally:
            for path in {built, ready}:
                if os.path.exists(path):
                    os.unlink(path)
    finally:
        for entry in entries:
            entry.close()
    cache.evict(keep={_cache_key(d) for d in image.diff_ids})
    report("READY", {"id": image_id})
    return meta


# --- layers ------------------------------------------------------------------

def _cache_key(diff_id: str) -> str:
    return diff_id.replace(":", "-") + ".tar"


def _fetch_layers(client: RegistryClient, image: Image, cache: LayerCache,
                  settings: PipelineSettings, report: Progress) -> list[Entry]:
    """Every layer as an open, verified cache entry (uncompressed tar)."""
    total = sum(int(layer.get("size", 0)) for layer in image.layers)
    done = [0]
    lock = threading.Lock()

    def count(nbytes: int) -> None:
        with lock:
            done[0] += nbytes
            current = done[0]
        report("PULLING", {"message": "Pulling layers", "bytes": current, "total": total})

    def fetch(layer: dict, diff_id: str) -> Entry:
        key = _cache_key(diff_id)
        with cache.lock(key):
            entry = cache.open(key)
            if entry is not None:
                count(int(layer.get("size", 0)))
                return entry
            chunks = client.blob_chunks(layer.get("digest", ""), size=layer.get("size"),
                                        progress=count)
            with cache.create(key) as out:
                _decompress_into(chunks, layer.get("mediaType", ""), diff_id, out, client.image)
            entry = cache.open(key)
        if entry is None:
            raise RegistryError(f"image {client.image}: layer {diff_id} vanished from the cache"
                                " while it was being used; pull again")
        return entry

    workers = max(1, min(settings.download_workers, len(image.layers)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(fetch, layer, diff_id)
                   for layer, diff_id in zip(image.layers, image.diff_ids)]
        entries, error = [], None
        for future in futures:
            try:
                entries.append(future.result())
            except BaseException as err:           # keep the first, close the rest
                error = error or err
    if error is not None:
        for entry in entries:
            entry.close()
        raise error
    return entries


def _decompress_into(chunks: Iterable[bytes], media_type: str, diff_id: str, out,
                     image: str) -> None:
    """Write the uncompressed layer to `out`, checking it against `diff_id`."""
    hasher = hashlib.sha256()
    for data in _decompressed(chunks, media_type, image):
        hasher.update(data)
        out.write(data)
    if "sha256:" + hasher.hexdigest() != diff_id:
        raise DigestMismatch(f"image {image}: a layer does not uncompress to its diff_id {diff_id}")


def _decompressed(chunks: Iterable[bytes], media_type: str, image: str) -> Iterator[bytes]:
    if media_type in PLAIN_TYPES:
        yield from chunks
        return
    if media_type not in GZIP_TYPES:
        raise RegistryError(f"image {image}: layer type {media_type!r} is not supported")
    inflater = zlib.decompressobj(wbits=47)     # gzip or zlib header
    try:
        for chunk in chunks:
            while chunk:
                yield inflater.decompress(chunk)
                chunk = inflater.unused_data if inflater.eof else b""
                if inflater.eof:
                    inflater = zlib.decompressobj(wbits=47)   # next gzip member
        yield inflater.flush()
    except zlib.error as err:
        raise RegistryError(f"image {image}: a layer is not valid gzip ({err})") from None


def _open_member(source):
    tar, info = source
    return tar.extractfile(info)


# --- results -----------------------------------------------------------------

def _image_meta(image: Image) -> ImageMeta:
    runtime = image.config.get("config") or {}
    return ImageMeta(
        digest=image.digest,
        env=list(runtime.get("Env") or []),
        entrypoint=runtime.get("Entrypoint") or None,
        cmd=runtime.get("Cmd") or None,
        workdir=runtime.get("WorkingDir") or None,
        user=runtime.get("User") or None,
        labels=dict(runtime.get("Labels") or {}),
        arch=image.config.get("architecture", "amd64"),
        os=image.config.get("os", "linux"),
    )


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


def _repository(location_name: str, location: Location, repository: str) -> str:
    """Docker Hub keeps official images under library/."""
    host = location.base_url().split("://", 1)[1]
    hub = location_name in DOCKER_HUB_HOSTS or host in DOCKER_HUB_HOSTS
    return f"library/{repository}" if hub and "/" not in repository else repository
