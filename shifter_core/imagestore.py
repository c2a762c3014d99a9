"""The image directory shared by the gateway (writer) and the nodes (readers).

One image is three files named by its manifest digest's hex part:

    <id>.squashfs   the flattened root filesystem
    <id>.meta       Shifter's `KEY: value` metadata (compatibility)
    <id>.json       our metadata (ImageMeta), written last

`<id>.json` appearing is what publishes an image: it is renamed into place only
after the squashfs is complete, so a reader that finds it also finds the
image.  Ids are validated before they touch a path, so a record can never name
a file outside the directory.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

from . import files
from .errors import ImageNotFound

_ID_RE = re.compile(r"^[0-9a-f]{64}$")
IMAGE_MODE = 0o600


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
    def from_json(cls, text: str) -> "ImageMeta":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_shifter_meta(self) -> str:
        """Shifter's `.meta` text, readable by its C runtime.

        ENTRY and CMD are written as JSON arrays; Shifter's parser expects a
        Python repr, which is identical for lists of simple strings.
        """
        lines = [f"FORMAT: {self.format}"]
        if self.entrypoint is not None:
            lines.append(f"ENTRY: {json.dumps(self.entrypoint)}")
        if self.cmd is not None:
            lines.append(f"CMD: {json.dumps(self.cmd)}")
        if self.workdir:
            lines.append(f"WORKDIR: {self.workdir}")
        if self.user:
            lines.append(f"USER: {self.user}")
        if self.private:
            lines.append("USERACL: " + ",".join(str(u) for u in self.user_acl))
            lines.append("GROUPACL: " + ",".join(str(g) for g in self.group_acl))
        lines.extend(f"ENV: {item}" for item in self.env)
        return "\n".join(lines) + "\n"


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

    def read(self, image_id: str) -> ImageMeta:
        """The image's metadata; ImageNotFound if it is not published."""
        try:
            with open(self.meta_path(image_id), encoding="utf-8") as f:
                meta = ImageMeta.from_json(f.read())
        except FileNotFoundError:
            raise ImageNotFound(f"image {image_id} is not in {self.directory}") from None
        if meta.id != image_id:
            raise ImageNotFound(f"metadata of image {image_id} names another image ({meta.id})")
        return meta

    def publish(self, meta: ImageMeta, squashfs_file: str) -> None:
        """Move a finished squashfs (same filesystem) into place, then its metadata.

        Safe to repeat: a second publish of the same digest replaces the files
        with identical content.
        """
        os.chmod(squashfs_file, IMAGE_MODE)
        meta.size = os.stat(squashfs_file).st_size
        os.replace(squashfs_file, self.image_path(meta.id, meta.format))
        self.write_metadata(meta)

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
