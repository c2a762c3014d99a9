"""What an image may say about how it runs: one schema, checked wherever it is read.

The gateway checks a registry's image config (the OCI image-spec's types, and
the Docker fields the runtime uses) before anything of the image is written;
the nodes check `<id>.json` (ImageMeta) when a prolog reads it, so an image
published before these checks existed fails its job with one line instead of
crashing the prolog.  Both go through the same field rules below:

* `Env`: a list of `NAME=value` strings; `Entrypoint`, `Cmd`: lists of
  strings (or null); `WorkingDir`: an absolute path; `User`: a string;
  `Labels`: a map of strings; `architecture`, `os`: short names; every
  field may be null or absent where the spec makes it optional.
* Values that reach Shifter's line-based `<id>.meta` (Env, WorkingDir, User)
  carry no line break or other control character; no value carries a NUL
  (it could not reach the process anyway).
* A refusal names the field and what is wrong with it, in one line.
"""
from __future__ import annotations

import dataclasses
import re

from .errors import ImageContentError

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")   # what could break a line of .meta
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")     # architecture, os, variant (32: the database's width)
MAX_PATH = 4096
MAX_ID = 2**32 - 2                                           # uid_t/gid_t, minus the (uid_t)-1 "no id"


class Invalid(Exception):
    """One field breaks the schema: `field` and `why`, turned into an ImageContentError by the caller."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field} {why}")
        self.field, self.why = field, why


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """What the runtime takes from an image config, checked."""

    env: list[str]
    entrypoint: list[str] | None
    cmd: list[str] | None
    workdir: str | None
    user: str | None
    labels: dict[str, str]
    architecture: str
    os: str
    diff_ids: list[str]


def from_image_config(document, image: str) -> RuntimeConfig:
    """Check an OCI/Docker image config document and return what the runtime uses."""
    try:
        return _image_config(document)
    except Invalid as invalid:
        raise ImageContentError(f"image {image} is refused: its config field {invalid}") from None


def _image_config(document) -> RuntimeConfig:
    top = json_object(document, "top level")
    for key in ("created", "author", "variant", "os.version"):
        _optional(top, key, _string)
    _optional(top, "os.features", _strings)
    _optional(top, "history", _objects)
    rootfs = json_object(top.get("rootfs"), "rootfs")
    if rootfs.get("type") != "layers":
        raise Invalid("rootfs.type", f"is {_show(rootfs.get('type'))}, not \"layers\"")
    runtime = _optional(top, "config", json_object) or {}
    for key in ("ExposedPorts", "Volumes"):
        _optional(runtime, key, json_object, f"config.{key}")
    _optional(runtime, "StopSignal", _string, "config.StopSignal")
    return RuntimeConfig(
        env=_optional(runtime, "Env", env, "config.Env") or [],
        entrypoint=_optional(runtime, "Entrypoint", argv, "config.Entrypoint") or None,
        cmd=_optional(runtime, "Cmd", argv, "config.Cmd") or None,
        workdir=_optional(runtime, "WorkingDir", workdir, "config.WorkingDir") or None,
        user=_optional(runtime, "User", user, "config.User") or None,
        labels=_optional(runtime, "Labels", labels, "config.Labels") or {},
        architecture=platform_name(top.get("architecture"), "architecture"),
        os=platform_name(top.get("os"), "os"),
        diff_ids=diff_ids(rootfs.get("diff_ids"), "rootfs.diff_ids"),
    )


# --- field rules (shared with ImageMeta) -----------------------------------------

def env(value, field: str) -> list[str]:
    items = _list(value, field)
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        if not isinstance(item, str) or not item.partition("=")[0] or "=" not in item:
            raise Invalid(where, f"is {_show(item)}, not a NAME=value string")
        meta_line(item, where)
    return list(items)


def argv(value, field: str) -> list[str]:
    items = _list(value, field)
    for index, item in enumerate(items):
        _no_nul(_string(item, f"{field}[{index}]"), f"{field}[{index}]")
    return list(items)


def workdir(value, field: str) -> str:
    text = meta_line(value, field)
    if text and not text.startswith("/"):
        raise Invalid(field, f"is {_show(text)}, not an absolute path")
    if len(text) > MAX_PATH:
        raise Invalid(field, f"is longer than {MAX_PATH} characters")
    return text


def user(value, field: str) -> str:
    return meta_line(value, field)


def labels(value, field: str) -> dict[str, str]:
    mapping = json_object(value, field)
    for key, item in mapping.items():
        where = f"{field}[{key!r}]"
        _no_nul(_string(key, where), where)
        _no_nul(_string(item, where), where)
    return dict(mapping)


def layers(value, field: str) -> list[dict]:
    """The layers an image was pulled from, as ImageMeta keeps them (digest, size, mediaType)."""
    for index, item in enumerate(_objects(value, field)):
        _optional(item, "digest", digest, f"{field}[{index}].digest")
        _optional(item, "size", size, f"{field}[{index}].size")
        _optional(item, "mediaType", _string, f"{field}[{index}].mediaType")
    return [dict(item) for item in value]


def platform_name(value, field: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise Invalid(field, f"is {_show(value)}, not a name like amd64 or linux")
    return value


def diff_ids(value, field: str) -> list[str]:
    return [digest(item, f"{field}[{index}]") for index, item in enumerate(_list(value, field))]


def digest(value, field: str) -> str:
    if not isinstance(value, str) or not DIGEST.match(value):
        raise Invalid(field, f"is {_show(value)}, not a sha256 digest")
    return value


def ids(value, field: str) -> list[int]:
    return [_id(item, f"{field}[{index}]") for index, item in enumerate(_list(value, field))]


def _id(value, field: str) -> int:
    if not _whole(value) or not 0 <= value <= MAX_ID:
        raise Invalid(field, f"is {_show(value)}, not a user or group id")
    return value


def size(value, field: str) -> int:
    if not _whole(value) or value < 0:
        raise Invalid(field, f"is {_show(value)}, not a size in bytes")
    return value


def flag(value, field: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(field, f"is {_show(value)}, not true or false")
    return value


# --- helpers ---------------------------------------------------------------------

def _optional(document: dict, key: str, rule, field: str | None = None):
    value = document.get(key)
    return None if value is None else rule(value, field or key)


def json_object(value, field: str) -> dict:
    if not isinstance(value, dict):
        raise Invalid(field, f"is {_show(value)}, not an object")
    return value


def _objects(value, field: str) -> list[dict]:
    for index, item in enumerate(_list(value, field)):
        json_object(item, f"{field}[{index}]")
    return value


def _strings(value, field: str) -> list[str]:
    for index, item in enumerate(_list(value, field)):
        _string(item, f"{field}[{index}]")
    return value


def _list(value, field: str) -> list:
    if not isinstance(value, list):
        raise Invalid(field, f"is {_show(value)}, not a list")
    return value


def _string(value, field: str) -> str:
    """A string that can be written as UTF-8 (JSON may carry lone surrogates)."""
    if not isinstance(value, str):
        raise Invalid(field, f"is {_show(value)}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(field, "is not valid Unicode") from None
    return value


def _no_nul(text: str, field: str) -> None:
    if "\0" in text:
        raise Invalid(field, "holds a NUL byte")


def meta_line(value, field: str) -> str:
    """A value for one line of Shifter's `.meta`: no line break, no control character."""
    _no_control(_string(value, field), field)
    return value


def _no_control(text: str, field: str) -> None:
    found = CONTROL.search(text)
    if found:
        raise Invalid(field, f"holds the control character {found.group()!r}")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value) -> str:
    """A short description of a wrong value, for a one-line message."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
