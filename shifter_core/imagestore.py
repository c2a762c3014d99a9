"""The image directory shared by the gateway (writer) and the nodes (readers).

One image is three files named by its manifest digest's hex part:

    <id>.squashfs   the flattened root filesystem
    <id>.meta       Shifter's `KEY: value` metadata (compatibility)
    <id>.json       our metadata (ImageMeta), written last

`<id>.json` appearing is what publishes an image: it is renamed into place only
after the squashfs is complete, so a reader that finds it also finds the
image.  Ids are validated before they touch a path, so a record can never name
a file outside the directory.  `<id>.json` is checked against the image schema
(shifter_core/imageconfig.py) when it is read, and `.meta` is written only from
values that cannot break its lines.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

from . import files, imageconfig
from .errors import ImageContentError, ImageNotFound

_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_FILE_RE = re.compile(r"^([0-9a-f]{64})\.(squashfs|meta|json)$")
IMAGE_MODE = 0o600
FORMATS = ("squashfs",)


def check_id(image_id: str) -> str:
    """Return `image_id` if it is 64 lower-case hex digits, else raise."""
    if not isinstance(image_id, str) or not _ID_RE.match(image_id):
        raise ImageNotFound(f"invalid image id {image_id!r}")
    return image_id


@dataclasses.dataclass
class ImageMeta:
    """What the runtime needs to know about an image besides its files."""

    digest: str                      # "sha256:<hex>" of the manifest
    format: str = "squashfs"
    env: list[str] = dataclasses.field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    workdir: str | None = None
    user: str | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    arch: str = "amd64"
    os: str = "linux"
    size: int = 0                    # bytes of the squashfs file
    layers: list[dict] = dataclasses.field(default_factory=list)   # {digest, size, mediaType} as pulled
    private: bool = False
    user_acl: list[int] = dataclasses.field(default_factory=list)
    group_acl: list[int] = dataclasses.field(default_factory=list)

    @property
    def id(self) -> str:
        return self.digest.split(":", 1)[1]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "image metadata") -> "ImageMeta":
        """Parse and check `<id>.json`; ImageContentError names the bad field."""
        try:
            data = json.loads(text)
        except ValueError:
            raise ImageContentError(f"{where} is not valid JSON; pull the image again") from None
        try:
            fields = _checked(imageconfig.json_object(data, "top level"))
        except imageconfig.Invalid as invalid:
            raise ImageContentError(f"{where} is unusable: its field {invalid}; pull the image"
                                    " again") from None
        return cls(**fields)

    def may_use(self, uid: int, groups) -> bool:
        return readable_by(self.private, self.user_acl, self.group_acl, uid, groups)

    def to_shifter_meta(self) -> str:
        """Shifter's `.meta` text, readable by its C runtime: one `KEY: value` per line.

        ENTRY and CMD are written as JSON arrays; Shifter's parser expects a
        Python repr, which is identical for lists of simple strings.  A value
        that could end its line early is refused (ImageContentError), whatever
        wrote it into this object.
        """
        lines = [("FORMAT", self.format)]
        if self.entrypoint is not None:
            lines.append(("ENTRY", json.dumps(self.entrypoint)))
        if self.cmd is not None:
            lines.append(("CMD", json.dumps(self.cmd)))
        if self.workdir:
            lines.append(("WORKDIR", self.workdir))
        if self.user:
            lines.append(("USER", self.user))
        if self.private or self.user_acl or self.group_acl:
            lines.append(("USERACL", ",".join(str(int(u)) for u in self.user_acl)))
            lines.append(("GROUPACL", ",".join(str(int(g)) for g in self.group_acl)))
        lines.extend(("ENV", item) for item in self.env)
        try:
            return "".join(f"{key}: {imageconfig.meta_line(value, key)}\n" for key, value in lines)
        except imageconfig.Invalid as invalid:
            raise ImageContentError(f"image {self.digest}: {invalid}; its .meta is not written") from None


def readable_by(private: bool, user_acl, group_acl, uid: int, groups) -> bool:
    """Who may use an image: anyone if it is public and has no ACL, else only those listed.

    The gateway (lookups, lists) and the prolog apply this same rule.
    """
    if not user_acl and not group_acl:
        return not private
    return uid in user_acl or any(gid in group_acl for gid in groups)


_RULES = {
    "digest": imageconfig.digest, "env": imageconfig.env, "entrypoint": imageconfig.argv,
    "cmd": imageconfig.argv, "workdir": imageconfig.workdir, "user": imageconfig.user,
    "labels": imageconfig.labels, "arch": imageconfig.platform_name, "os": imageconfig.platform_name,
    "size": imageconfig.size, "layers": imageconfig.layers, "private": imageconfig.flag,
    "user_acl": imageconfig.ids, "group_acl": imageconfig.ids,
}
_OPTIONAL = {"entrypoint", "cmd", "workdir", "user"}


def _checked(data: dict) -> dict:
    """ImageMeta's fields from `<id>.json`, each checked; unknown keys are ignored."""
    fields = {}
    for name, rule in _RULES.items():
        if name not in data and name != "digest":
            continue
        value = data.get(name)
        fields[name] = None if value is None and name in _OPTIONAL else rule(value, name)
    fmt = data.get("format", "squashfs")
    if fmt not in FORMATS:
        raise imageconfig.Invalid("format", f"is {fmt!r}, not one of {', '.join(FORMATS)}")
    fields["format"] = fmt
    return fields


def id_of_file(name: str) -> str | None:
    """The image id in an image file's name (`<id>.squashfs`, `.meta`, `.json`), else None."""
    match = _FILE_RE.match(name)
    return match.group(1) if match else None


class ImageStore:
    """One system's image directory."""

    def __init__(self, directory: str):
        self.directory = directory

    def image_path(self, image_id: str, fmt: str = "squashfs") -> str:
        return os.path.join(self.directory, f"{check_id(image_id)}.{fmt}")

    def meta_path(self, image_id: str) -> str:
        return os.path.join(self.directory, f"{check_id(image_id)}.json")

    def exists(self, image_id: str) -> bool:
        return os.path.exists(self.meta_path(image_id))

    def ids(self) -> set[str]:
        """Ids of the images that have any of their files here (published or not)."""
        return {image_id for image_id in map(id_of_file, os.listdir(self.directory)) if image_id}

    def read(self, image_id: str) -> ImageMeta:
        """The image's metadata, checked; ImageNotFound if it is not published,
        ImageContentError if its metadata is unusable."""
        try:
            with open(self.meta_path(image_id), "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            raise ImageNotFound(f"image {image_id} is not in {self.directory}") from None
        meta = ImageMeta.from_json(text, f"the metadata of image {image_id}")
        if meta.id != image_id:
            raise ImageNotFound(f"metadata of image {image_id} names another image ({meta.id})")
        return meta

    def publish(self, meta: ImageMeta, squashfs_file: str) -> None:
        """Move a finished squashfs (same filesystem) into place, then its metadata.

        Safe to repeat: a second publish of the same digest replaces the files
        with identical content.
        """
        meta.size = self.put_squashfs(meta.id, squashfs_file, meta.format)
        self.write_metadata(meta)

    def put_squashfs(self, image_id: str, squashfs_file: str, fmt: str = "squashfs") -> int:
        """Move a finished image file into place, unpublished until its metadata follows; its size."""
        os.chmod(squashfs_file, IMAGE_MODE)
        size = os.stat(squashfs_file).st_size
        os.replace(squashfs_file, self.image_path(image_id, fmt))
        return size

    def write_metadata(self, meta: ImageMeta) -> None:
        """(Re)write `<id>.meta` then `<id>.json`, each atomically.

        The gateway uses it alone to change a published image's ACLs.
        """
        self._write_atomic(f"{meta.id}.meta", meta.to_shifter_meta())
        self._write_atomic(f"{meta.id}.json", meta.to_json())

    def remove(self, image_id: str) -> None:
        """Unpublish (metadata first, so readers stop finding it), then delete."""
        check_id(image_id)
        for name in (f"{image_id}.json", f"{image_id}.meta", f"{image_id}.squashfs"):
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass

    def _write_atomic(self, name: str, text: str) -> None:
        files.write_atomic(os.path.join(self.directory, name), text, IMAGE_MODE, durable=True)
