"""Test images without Docker: OCI layouts written from Python, pushed with skopeo.

A layer is a list of `Entry` objects written in the given order into a PAX
tar with numeric owners, gzip-compressed without name or timestamp, so the
same entries always give the same digests.  Hostile layers are built the same
way: names are written exactly as given (absolute, with `..`, ...).

    layout = Layout(tmpdir)
    layer = layout.add_layer([Dir("etc"), File("etc/motd", b"hi\\n")])
    layout.add_image([layer], ImageConfig(cmd=["/bin/sh"]), tag="v1")
    layout.push("v1", "127.0.0.1:5000/test/img:v1")

`busybox_image()` builds the small image the cluster demo runs.  From a
shell: `python -m ci.harness.oci busybox 127.0.0.1:<port>/test/busybox:latest`.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from typing import Iterable, Iterator

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_MTIME = 1_700_000_000          # fixed so that layers are reproducible
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SKOPEO = "/usr/bin/skopeo"


# --- layer entries -----------------------------------------------------------

@dataclasses.dataclass
class Entry:
    """One tar member, written as given (no normalisation of the name)."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    source: str | None = None          # read the content from this host file instead
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    mtime: int = DEFAULT_MTIME
    xattrs: dict[str, str] = dataclasses.field(default_factory=dict)

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = self.type
        info.mode = self.mode
        info.uid, info.gid = self.uid, self.gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        info.linkname = self.linkname
        info.devmajor, info.devminor = self.devmajor, self.devminor
        if self.type == tarfile.REGTYPE:
            info.size = os.stat(self.source).st_size if self.source else len(self.data)
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in self.xattrs.items()}
        return info

    def content(self) -> io.IOBase | None:
        if self.type != tarfile.REGTYPE:
            return None
        return open(self.source, "rb") if self.source else io.BytesIO(self.data)


def File(name: str, data: bytes | str = b"", mode: int = 0o644, **kw) -> Entry:
    if isinstance(data, str):
        data = data.encode()
    return Entry(name, tarfile.REGTYPE, data=data, mode=mode, **kw)


def HostFile(name: str, source: str, mode: int | None = None, **kw) -> Entry:
    """A file whose content (and by default mode) comes from the build host."""
    if mode is None:
        mode = stat.S_IMODE(os.stat(source).st_mode)
    return Entry(name, tarfile.REGTYPE, source=source, mode=mode, **kw)


def Dir(name: str, mode: int = 0o755, **kw) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode, **kw)


def Symlink(name: str, target: str, **kw) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target, **kw)


def Hardlink(name: str, target: str, **kw) -> Entry:
    return Entry(name, tarfile.LNKTYPE, linkname=target, **kw)


def Fifo(name: str, mode: int = 0o644, **kw) -> Entry:
    return Entry(name, tarfile.FIFOTYPE, mode=mode, **kw)


def CharDevice(name: str, major: int, minor: int, mode: int = 0o666, **kw) -> Entry:
    return Entry(name, tarfile.CHRTYPE, mode=mode, devmajor=major, devminor=minor, **kw)


def Whiteout(path: str, **kw) -> Entry:
    """Deletes `path` of the lower layers (`dir/.wh.name`)."""
    parent, _, base = path.rstrip("/").rpartition("/")
    return File(f"{parent}/.wh.{base}" if parent else f".wh.{base}", **kw)


def Opaque(directory: str, **kw) -> Entry:
    """Hides everything the lower layers had in `directory`."""
    return File(f"{directory.rstrip('/')}/.wh..wh..opq", **kw)


def entries_from_directory(root: str, *, overlay_upper: bool = False) -> Iterator[Entry]:
    """The tree under `root` as entries, depth first in name order, hardlinks kept.

    With `overlay_upper`, `root` is an overlayfs upper directory: 0:0
    character devices become whiteouts and directories marked
    trusted.overlay.opaque become opaque directories.
    """
    first_name: dict[tuple[int, int], str] = {}

    def walk(rel_dir: str) -> Iterator[Entry]:
        for name in sorted(os.listdir(os.path.join(root, rel_dir))):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(root, rel)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                yield Dir(rel, mode=stat.S_IMODE(st.st_mode), **_owner(st))
                if overlay_upper and _is_opaque(path):
                    yield Opaque(rel)
                yield from walk(rel)
            elif overlay_upper and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                yield Whiteout(rel)
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in first_name:
                yield Hardlink(rel, first_name[(st.st_dev, st.st_ino)], **_owner(st))
            else:
                if st.st_nlink > 1:
                    first_name[(st.st_dev, st.st_ino)] = rel
                yield _leaf_entry(path, rel, st)

    yield from walk("")


def _owner(st: os.stat_result) -> dict:
    return {"uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}


def _leaf_entry(path: str, rel: str, st: os.stat_result) -> Entry:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return HostFile(rel, path, mode=mode, **_owner(st))
    if stat.S_ISLNK(st.st_mode):
        return Symlink(rel, os.readlink(path), **_owner(st))
    if stat.S_ISFIFO(st.st_mode):
        return Fifo(rel, mode=mode, **_owner(st))
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        kind = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        return Entry(rel, kind, mode=mode, devmajor=os.major(st.st_rdev),
                     devminor=os.minor(st.st_rdev), **_owner(st))
    raise ValueError(f"{path}: sockets cannot be put in a layer")


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


# --- the layout --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    diff_id: str | None = None          # layers only: sha256 of the uncompressed tar

    def to_json(self, **extra) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclasses.dataclass
class ImageConfig:
    """The parts of an image config the runtime reads."""

    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    env: list[str] = dataclasses.field(default_factory=lambda: [f"PATH={DEFAULT_PATH}"])
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    workdir: str | None = None
    user: str | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def platform(self) -> dict:
        platform = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            platform["variant"] = self.variant
        return platform

    def to_json(self, diff_ids: list[str]) -> dict:
        runtime = {"Env": self.env}
        for key, value in (("Entrypoint", self.entrypoint), ("Cmd", self.cmd),
                           ("WorkingDir", self.workdir), ("User", self.user),
                           ("Labels", self.labels or None)):
            if value is not None:
                runtime[key] = value
        created = "2023-11-14T22:13:20Z"   # DEFAULT_MTIME, fixed for reproducibility
        return {
            **self.platform(),
            "created": created,
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": created, "created_by": "ci.harness.oci"} for _ in diff_ids],
        }


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what passes through to `target`."""

    def __init__(self, target):
        self.target, self.sha256, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


class Layout:
    """An OCI image layout directory (created if missing)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        index = os.path.join(path, "index.json")
        if os.path.exists(index):
            with open(index) as f:
                self._manifests = json.load(f)["manifests"]
        else:
            self._manifests = []
            self._write_index()

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.path, "blobs", "sha256", digest.split(":", 1)[1])

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(self.blob_path(digest), "wb") as f:
            f.write(data)
        return Descriptor(media_type, digest, len(data))

    def add_json(self, document: dict, media_type: str) -> Descriptor:
        return self.add_blob(json.dumps(document, sort_keys=True).encode(), media_type)

    def add_layer(self, entries: Iterable[Entry], *, compresslevel: int = 6) -> Descriptor:
        """Write entries, in order, as one gzip-compressed PAX tar layer."""
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".layer-")
        try:
            with os.fdopen(fd, "wb") as out:
                compressed = _HashingWriter(out)
                with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                                   compresslevel=compresslevel) as gz:
                    raw = _HashingWriter(gz)
                    with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                        for entry in entries:
                            content = entry.content()
                            try:
                                tar.addfile(entry.tarinfo(), content)
                            finally:
                                if content is not None:
                                    content.close()
            desc = Descriptor(OCI_LAYER_GZIP, compressed.digest, compressed.size, raw.digest)
            os.replace(tmp, self.blob_path(desc.digest))
            return desc
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def add_image(self, layers: list[Descriptor], config: ImageConfig,
                  tag: str | None = None) -> Descriptor:
        """Config and manifest for `layers` (bottom first); tagged if `tag` is given."""
        config_desc = self.add_json(config.to_json([l.diff_id for l in layers]), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [l.to_json() for l in layers],
        }
        desc = self.add_json(manifest, OCI_MANIFEST)
        if tag:
            self.tag(desc, tag, platform=config.platform())
        return desc

    def add_raw_image(self, layers: list[Descriptor], config, tag: str, *,
                      declared_size: int | None = None) -> Descriptor:
        """An image whose config document is `config` exactly as given (for refusals);
        `declared_size` makes the manifest lie about the config's size."""
        config_desc = self.add_blob(json.dumps(config).encode(), OCI_CONFIG)
        declared = config_desc.to_json()
        if declared_size is not None:
            declared["size"] = declared_size
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": declared,
                    "layers": [l.to_json() for l in layers]}
        desc = self.add_json(manifest, OCI_MANIFEST)
        self.tag(desc, tag)
        return desc

    def add_index(self, images: list[tuple[Descriptor, ImageConfig]], tag: str) -> Descriptor:
        """A multi-platform index over manifests made by add_image."""
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [d.to_json(platform=c.platform()) for d, c in images],
        }
        desc = self.add_json(index, OCI_INDEX)
        self.tag(desc, tag)
        return desc

    def tag(self, desc: Descriptor, tag: str, platform: dict | None = None) -> None:
        self._manifests = [m for m in self._manifests
                           if m.get("annotations", {}).get(REF_NAME) != tag]
        entry = desc.to_json(annotations={REF_NAME: tag})
        if platform:
            entry["platform"] = platform
        self._manifests.append(entry)
        self._write_index()

    def _write_index(self) -> None:
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self._manifests}, f, sort_keys=True)

    def push(self, tag: str, destination: str, *, format: str | None = None,
             all_platforms: bool = False, creds: str | None = None,
             ca_dir: str | None = None) -> None:
        """`skopeo copy` the tagged image to `destination` (`host:port/repo:tag`).

        Plain http unless `ca_dir` (a directory holding ca.crt) is given;
        `format` "v2s2" converts to Docker schema 2, default keeps OCI.
        """
        cmd = [SKOPEO, "--insecure-policy", "copy", "--quiet"]
        if format:
            cmd += ["--format", format]
        if all_platforms:
            cmd.append("--all")
        if ca_dir:
            cmd.append(f"--dest-cert-dir={ca_dir}")
        else:
            cmd.append("--dest-tls-verify=false")
        if creds:
            cmd.append(f"--dest-creds={creds}")
        cmd += [f"oci:{self.path}:{tag}", f"docker://{destination}"]
        result = subprocess.run(cmd, capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", "HOME": self.path})
        if result.returncode != 0:
            raise RuntimeError(f"skopeo copy to {destination} failed: {result.stderr.strip()}")


    def push_raw(self, tag: str, url: str, repository: str) -> None:
        """Upload the tagged image with the registry API itself, as it is: skopeo checks
        what it copies and would refuse a manifest that lies (see add_raw_image).
        `url` is an http registry without authentication."""
        entry = next(m for m in self._manifests if m.get("annotations", {}).get(REF_NAME) == tag)
        with open(self.blob_path(entry["digest"]), "rb") as f:
            manifest = f.read()
        document = json.loads(manifest)
        for descriptor in [document["config"], *document["layers"]]:
            with open(self.blob_path(descriptor["digest"]), "rb") as f:
                blob = f.read()
            started = _http("POST", f"{url}/v2/{repository}/blobs/uploads/")
            location = urllib.parse.urljoin(url, started.headers["Location"])
            joiner = "&" if "?" in location else "?"
            _http("PUT", f"{location}{joiner}digest={descriptor['digest']}", blob,
                  {"Content-Type": "application/octet-stream"})
        _http("PUT", f"{url}/v2/{repository}/manifests/{tag}", manifest,
              {"Content-Type": document["mediaType"]})


def _http(method: str, url: str, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        return response


# --- the busybox test image --------------------------------------------------

BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = (
    "[", "awk", "basename", "cat", "chmod", "cp", "cut", "date", "df", "dirname", "du",
    "echo", "env", "expr", "false", "find", "grep", "head", "hostname", "id", "kill",
    "ln", "ls", "mkdir", "mount", "mv", "nproc", "printenv", "ps", "pwd", "readlink",
    "rm", "sed", "seq", "sh", "sleep", "sort", "stat", "tail", "tee", "test", "touch",
    "tr", "true", "uname", "wc", "which", "whoami", "xargs",
)
BUSYBOX_OS_RELEASE = (
    'NAME="shifter-py test image"\n'
    'PRETTY_NAME="shifter-py test image (busybox)"\n'
    "ID=shifter-test\n"
    "VERSION_ID=1\n"
)


def busybox_entries(busybox: str = BUSYBOX) -> list[Entry]:
    """A minimal root: static busybox, applet symlinks, os-release, mount points."""
    entries = [Dir(d) for d in ("bin", "dev", "etc", "home", "proc", "sys", "usr",
                                "usr/bin", "var")]
    entries += [Dir("root", mode=0o700), Dir("tmp", mode=0o1777)]
    entries.append(HostFile("bin/busybox", busybox, mode=0o755))
    entries += [Symlink(f"bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS]
    entries.append(Symlink("usr/bin/env", "/bin/busybox"))
    entries.append(File("etc/os-release", BUSYBOX_OS_RELEASE))
    return entries


def busybox_config(**overrides) -> ImageConfig:
    base = {"cmd": ["/bin/sh"], "labels": {"org.opencontainers.image.title": "shifter-py busybox"}}
    return ImageConfig(**{**base, **overrides})


def busybox_image(layout: Layout, tag: str = "latest", *, busybox: str = BUSYBOX,
                  config: ImageConfig | None = None) -> Descriptor:
    """Build the one-layer busybox image into `layout` under `tag`."""
    layer = layout.add_layer(busybox_entries(busybox))
    return layout.add_image([layer], config or busybox_config(), tag=tag)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ci.harness.oci",
                                     description="Build and push test images.")
    sub = parser.add_subparsers(dest="command", required=True)
    bb = sub.add_parser("busybox", help="build the busybox test image and push it")
    bb.add_argument("destination", help="host:port/repository:tag")
    bb.add_argument("--format", choices=("oci", "v2s2"), default=None)
    bb.add_argument("--creds", help="user:password for the registry")
    bb.add_argument("--ca-dir", help="directory holding the registry's ca.crt (TLS)")
    bb.add_argument("--layout", help="keep the OCI layout in this directory")
    args = parser.parse_args(argv)

    workdir = args.layout or tempfile.mkdtemp(prefix="oci-busybox-")
    try:
        layout = Layout(workdir)
        busybox_image(layout, "build")
        layout.push("build", args.destination, format=args.format, creds=args.creds,
                    ca_dir=args.ca_dir)
    finally:
        if not args.layout:
            shutil.rmtree(workdir)
    print(args.destination)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
