"""Image descriptors: what a user writes after --image or `shifterimg pull`.

Shifter's form is `[type:]tag`, the type one of `docker`, `custom` or `id`
(default `docker`), or `local:/path`, a directory tree of the node used as the
image where the site allows it (allowLocalChroot).  A docker tag is a Docker reference,
`[registry[:port]/]repository[:tag][@sha256:<hex>]`.  Unlike Shifter, which
silently deletes characters it dislikes, a descriptor that does not parse is
refused with a message that says why: a typo must never select another image.

    >>> ref = parse("docker:127.0.0.1:5000/test/os:1.0")
    >>> ref.registry, ref.repository, ref.tag
    ('127.0.0.1:5000', 'test/os', '1.0')
    >>> str(parse("ubuntu"))
    'docker:ubuntu:latest'
"""
from __future__ import annotations

import dataclasses
import re

from .errors import ImageRefError

TYPES = ("docker", "custom", "id")          # what the gateway serves
LOCAL = "local"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_COMPONENT_RE = re.compile(rf"^{_COMPONENT}$")
_DOMAIN_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_CUSTOM_RE = re.compile(r"^[A-Za-z0-9_.+-]+(?::[\w][\w.-]{0,127})?$", re.ASCII)
_LOCAL_RE = re.compile(r"^/[A-Za-z0-9_.+/-]*$", re.ASCII)
_MAX_NAME = 255


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """A parsed descriptor.

    `registry` is None when the reference names no registry: the gateway then
    uses its default location.  For `id:` references only `digest` is set; a
    `local:` reference keeps its path in `repository` (and local_digest).
    """

    type: str
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    registry: str | None = None

    @property
    def name(self) -> str:
        """`[registry/]repository`, the part before tag and digest."""
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    @property
    def gateway_tag(self) -> str:
        """The descriptor without its type, as Shifter's REST paths carry it."""
        if self.type == LOCAL:
            return self.repository
        if self.type == "id":
            return self.digest.split(":", 1)[1]
        if self.type == "custom":
            return f"{self.repository}:{self.tag}" if self.tag else self.repository
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def image_id(self) -> str | None:
        """The hex image id when the reference pins content, else None."""
        return self.digest.split(":", 1)[1] if self.digest else None

    def __str__(self) -> str:
        return f"{self.type}:{self.gateway_tag}"


def parse(text: str, default_type: str = "docker") -> ImageRef:
    """Parse a descriptor; raise ImageRefError naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ImageRefError("empty image name: give one like docker:ubuntu:22.04")
    text = text.strip()
    if any(c.isspace() for c in text):
        raise ImageRefError(f"invalid image {text!r}: whitespace is not allowed")
    kind, sep, rest = text.partition(":")
    if sep and kind.lower() in (*TYPES, LOCAL):
        kind = kind.lower()
    else:
        kind, rest = default_type, text
        if kind not in TYPES:
            raise ImageRefError(f"defaultImageType {kind!r} is not one of {', '.join(TYPES)}")
    if not rest:
        raise ImageRefError(f"invalid image {text!r}: nothing after {kind}:")
    if kind == "id":
        return _parse_id(text, rest)
    if kind == LOCAL:
        return _parse_local(text, rest)
    if kind == "custom":
        return _parse_custom(text, rest)
    return _parse_docker(text, rest)


def _parse_id(text: str, rest: str) -> ImageRef:
    hexid = rest[len("sha256:"):] if rest.startswith("sha256:") else rest
    if not _HEX_RE.match(hexid):
        raise ImageRefError(f"invalid image {text!r}: an id is 64 lower-case hex digits")
    return ImageRef(type="id", digest=f"sha256:{hexid}")


def _parse_local(text: str, rest: str) -> ImageRef:
    """`local:/path`: an absolute path of letters, digits and _ . + - /, without `..`."""
    if not _LOCAL_RE.match(rest) or ".." in rest.split("/"):
        raise ImageRefError(f"invalid image {text!r}: a local image is an absolute path of letters,"
                            " digits and _ . + - / without '..'")
    path = "/" + "/".join(p for p in rest.split("/") if p not in ("", "."))
    return ImageRef(type=LOCAL, repository=path, digest=local_digest(path))


def local_digest(path: str) -> str:
    """What names a local image's container (its record, marker and provenance): the
    path, hashed; unlike a pulled image's digest it pins the path, not the content."""
    import hashlib

    return "sha256:" + hashlib.sha256(f"local:{path}".encode()).hexdigest()


def _parse_custom(text: str, rest: str) -> ImageRef:
    if not _CUSTOM_RE.match(rest):
        raise ImageRefError(
            f"invalid image {text!r}: custom names use letters, digits and _.+- with an optional :tag"
        )
    name, _, tag = rest.partition(":")
    if not name.strip("."):
        raise ImageRefError(f"invalid image {text!r}: a custom name cannot be only dots")
    return ImageRef(type="custom", repository=name, tag=tag or None)


def _parse_docker(text: str, rest: str) -> ImageRef:
    digest = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or not _HEX_RE.match(hexpart):
            raise ImageRefError(
                f"invalid image {text!r}: a digest is sha256: followed by 64 lower-case hex digits"
            )
    name, tag = rest, None
    last = rest.rfind(":")
    if last > rest.rfind("/"):
        name, tag = rest[:last], rest[last + 1:]
        if not _TAG_RE.match(tag):
            raise ImageRefError(
                f"invalid image {text!r}: tag {tag!r} must be letters, digits, _ . - (at most 128)"
            )
    if not name:
        raise ImageRefError(f"invalid image {text!r}: no repository name")
    registry = None
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN_RE.match(first):
            raise ImageRefError(f"invalid image {text!r}: bad registry host {first!r}")
        registry, name = first, remainder
    if len(name) > _MAX_NAME:
        raise ImageRefError(f"invalid image {text!r}: repository name longer than {_MAX_NAME}")
    for component in name.split("/"):
        if not _COMPONENT_RE.match(component):
            raise ImageRefError(
                f"invalid image {text!r}: repository part {component!r} must be lower-case"
                " letters and digits separated by . _ or -"
            )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(type="docker", registry=registry, repository=name, tag=tag, digest=digest)
