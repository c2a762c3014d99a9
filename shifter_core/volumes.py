"""--volume and siteFs: Shifter's volume grammar and the policies that bound it.

A specification is `;`-separated entries, each optionally wrapped in double
quotes, each `source:target[:flag]...`.  Flags (names in any case):

    ro            read-only bind
    rec           recursive bind (site only)
    slave         slave propagation (site only)
    private       private propagation (site only)
    perNodeCache=size=<bytes>[,bs=<bytes>][,method=loop][,fs=xfs|ext4]
                  a fresh node-local file system at the target; the source
                  is not used.  bs is its block size; fs defaults to the
                  first type the site allows (xfs unless it says otherwise).

Sizes take Shifter's parseBytes form: a number with an optional 1024-based
unit, `500K`, `500KB`, `1.5g`, `4T`.  In siteFs a bare `path` means
`path:path`.

Where Shifter silently filtered characters and matched forbidden targets by
string prefix, this module refuses: paths are absolute, use only letters,
digits and `_ . + - /`, and contain no `..`; a user's target may neither lie
in nor contain a protected tree (/etc, /var except /var/tmp itself,
/opt/udiImage, /proc, /sys, /dev), compared by whole path components, so
/etcetera is fine and /etc/x is not.  Every refusal is one VolumeError line.

    >>> mounts = parse("/scratch/me:/data:ro;/x:/cache:perNodeCache=size=1G", USER)
    >>> [m.render() for m in mounts]
    ['/scratch/me:/data:ro', '/x:/cache:perNodeCache=size=1073741824,bs=4096,method=loop,fstype=xfs']

A user's source is a path inside the container (image or siteFs content):
the runtime resolves it with `pathsafety.open_inside` under the user's
credentials when it mounts.  It may be a directory, a file, or a device the
site lists (`check_devices`).  At submit a relative source (`./data`) is
made absolute against the container path of the directory the user submits
from (`container_path`: through the siteFs binds that show it).  Entries
given twice are kept once.
"""
from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Callable, Mapping

from .errors import VolumeError

USER = "user"
SITE = "site"

KiB = 1024
MiB = 1024 * KiB
XFS_MIN_SIZE = 300 * MiB          # mkfs.xfs (xfsprogs >= 5.19) refuses smaller
XFS_BLOCK_SIZES = tuple(2 ** n for n in range(10, 17))   # 1 KiB .. 64 KiB
DEFAULT_BLOCK_SIZE = 4 * KiB
# The file systems a cache can be: what each needs at least, and its block sizes
# (ext4 above the 4 KiB page size does not mount on common kernels).
CACHE_FS_TYPES = ("xfs", "ext4")
MIN_SIZES = {"xfs": XFS_MIN_SIZE, "ext4": 16 * MiB}
BLOCK_SIZES = {"xfs": XFS_BLOCK_SIZES, "ext4": (1 * KiB, 2 * KiB, 4 * KiB)}

_PATH_CHARS_RE = re.compile(r"[^A-Za-z0-9_.+\-/]")
_BYTES_RE = re.compile(r"^(\d+(?:\.\d+)?)(?:([kmgtpe])(?:i?b)?|b)?$", re.IGNORECASE | re.ASCII)
_UNITS = "kmgtpe"

# A user's target may not lie inside or contain one of these trees ...
_USER_PROTECTED_TREES = ("/etc", "/var", "/opt/udiImage", "/proc", "/sys", "/dev")
# ... except exactly these paths.
_USER_ALLOWED_TARGETS = ("/var/tmp",)
# The site may bind anywhere but over these.
_SITE_FORBIDDEN_TARGETS = (
    "/", "/opt", "/etc", "/var", "/proc", "/sys", "/dev",
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/shadow",
)
_FLAG_ORDER = ("ro", "rec", "perNodeCache", "slave", "private")
_FLAGS_BY_CONTEXT = {USER: ("ro", "perNodeCache"), SITE: _FLAG_ORDER}


@dataclasses.dataclass(frozen=True)
class PerNodeCache:
    """A node-local scratch file system created for the job (`perNodeCache=`)."""

    size: int
    block_size: int = DEFAULT_BLOCK_SIZE
    method: str = "loop"
    fs_type: str = "xfs"

    def render(self) -> str:
        return (
            f"perNodeCache=size={self.size},bs={self.block_size},"
            f"method={self.method},fstype={self.fs_type}"
        )


@dataclasses.dataclass(frozen=True)
class VolumeMount:
    """One validated entry.  `propagation` None means mountPropagationStyle."""

    source: str
    target: str
    read_only: bool = False
    recursive: bool = False
    propagation: str | None = None
    per_node_cache: PerNodeCache | None = None

    def render(self) -> str:
        """The normalised text of this entry; parsing it gives the entry back."""
        flags = []
        if self.read_only:
            flags.append("ro")
        if self.recursive:
            flags.append("rec")
        if self.per_node_cache:
            flags.append(self.per_node_cache.render())
        if self.propagation:
            flags.append(self.propagation)
        return ":".join([self.source, self.target, *flags])


@dataclasses.dataclass(frozen=True)
class CachePolicy:
    """What the site allows for perNodeCache volumes (from udiRoot.conf).

    The default allows anything, so the grammar can be checked on its own.
    `size_limit` bounds the total size of the caches of one specification;
    `fs_types` are the file systems offered, the first one the default;
    `min_sizes` the smallest cache of each (MIN_SIZES on a real site).
    """

    available: bool = True
    size_limit: int | None = None
    fs_types: tuple[str, ...] = CACHE_FS_TYPES
    min_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)


def parse(spec: str, context: str, policy: CachePolicy = CachePolicy(), *,
          base: Callable[[], str] | None = None) -> tuple[VolumeMount, ...]:
    """Parse and check a specification in the USER or SITE context.

    `base` gives the container directory relative sources start from (it may
    raise ValueError with the reason there is none); without it, a relative
    source is refused.
    """
    if context not in _FLAGS_BY_CONTEXT:
        raise ValueError(f"unknown volume context {context!r}")
    if not isinstance(spec, str):
        raise VolumeError("a volume specification must be text like /src:/dst:ro")
    mounts = tuple(dict.fromkeys(_parse_entry(entry.strip(), context, policy.fs_types[0], base)
                                 for entry in spec.split(";") if entry.strip()))
    check_policy(mounts, policy)
    return mounts


def check_devices(mounts, allowed: tuple[str, ...]) -> None:
    """Raise VolumeError for a user's source in /dev that the site does not list in `allowed`.

    The container's /dev is the node's, so these are the node's devices; a
    device met elsewhere is refused on the node (`device_refusal`).
    """
    for mount in mounts:
        if mount.per_node_cache is None and is_within(mount.source, "/dev") and mount.source not in allowed:
            raise VolumeError(f"invalid volume {mount.render()!r}: {device_refusal(mount.source, allowed)}")


def device_refusal(source: str, allowed: tuple[str, ...]) -> str:
    """Why a device source (or any source in /dev) is refused."""
    if allowed:
        return (f"{source} is a device or in /dev, and this site lets --volume bind only "
                f"{', '.join(allowed)} from there (udiRoot.conf userVolumeDevices)")
    return (f"{source} is a device or in /dev, and this site lets --volume bind no device"
            " (udiRoot.conf userVolumeDevices)")


def container_path(host_path: str, binds) -> str | None:
    """Where the site binds `host_path` in a container (siteFs `binds`), or None.

    The bind with the longest source containing the path decides, as the
    deepest mount shows through.
    """
    host_path = posixpath.normpath(host_path)
    covering = [m for m in binds if m.per_node_cache is None and is_within(host_path, m.source)]
    if not covering:
        return None
    bind = max(covering, key=lambda m: len(m.source))
    return posixpath.normpath(bind.target + "/" + host_path[len(bind.source):])


def check_policy(mounts, policy: CachePolicy) -> None:
    """Raise VolumeError if the perNodeCache volumes among `mounts` break `policy`."""
    total = 0
    for mount in mounts:
        cache = mount.per_node_cache
        if cache is None:
            continue
        total += cache.size
        refusal = None
        min_size = policy.min_sizes.get(cache.fs_type, 0)
        if not policy.available:
            refusal = "perNodeCache is not available on this system"
        elif cache.fs_type not in policy.fs_types:
            refusal = f"this system offers perNodeCache as {' or '.join(policy.fs_types)}, not {cache.fs_type}"
        elif cache.size < min_size:
            refusal = f"perNodeCache size must be at least {format_bytes(min_size)} for {cache.fs_type}"
        elif policy.size_limit is not None and cache.size > policy.size_limit:
            refusal = f"perNodeCache size exceeds the site's limit of {format_bytes(policy.size_limit)}"
        if refusal:
            raise VolumeError(f"invalid volume {mount.render()!r}: {refusal}")
    if policy.size_limit is not None and total > policy.size_limit:
        raise VolumeError(
            f"the perNodeCache volumes total {format_bytes(total)}, more than the site's"
            f" limit of {format_bytes(policy.size_limit)}"
        )


def render(mounts) -> str:
    """A specification for `mounts` (entries in the given order)."""
    return ";".join(mount.render() for mount in mounts)


def signature(mounts) -> str:
    """Order-independent identity of a set of mounts, as in Shifter's shifterConfig.json."""
    return ";".join(sorted(mount.render() for mount in mounts))


def parse_bytes(text: str) -> int:
    """Shifter's size syntax: `5` bytes, `500K`/`500KB`/`500KiB` = 512000, `1.5G` ..."""
    match = _BYTES_RE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size like 512M, 10G or 1.5T")
    number, unit = match.group(1), (match.group(2) or "").lower()
    scale = 1024 ** (_UNITS.index(unit) + 1) if unit else 1
    if number.isdigit():
        return int(number) * scale
    import decimal   # rare (fractional sizes); kept off the plugin's start-up

    return int(decimal.Decimal(number) * scale)


def format_bytes(size: int) -> str:
    """A size for messages: the largest exact 1024-based unit, else bytes."""
    for power, unit in reversed(list(enumerate(_UNITS.upper(), 1))):
        if size >= 1024 ** power and size % 1024 ** power == 0:
            return f"{size // 1024 ** power}{unit}"
    return f"{size} bytes"


def _parse_entry(entry: str, context: str, default_fs: str, base: Callable[[], str] | None) -> VolumeMount:
    text = entry
    if len(entry) >= 2 and entry[0] == entry[-1] == '"':
        entry = entry[1:-1]

    def fail(reason: str) -> VolumeError:
        return VolumeError(f"invalid volume {text!r}: {reason}")

    tokens = entry.split(":")
    if len(tokens) == 1:
        if context == USER:
            raise fail("give both paths as SOURCE:TARGET")
        tokens.append(tokens[0])
    source = _clean_path(_absolute_source(tokens[0], base, fail), "source", fail)
    target = _clean_path(tokens[1], "target", fail)
    flags = _parse_flags(tokens[2:], context, fail, default_fs)
    mount = VolumeMount(
        source=source,
        target=target,
        read_only="ro" in flags,
        recursive="rec" in flags,
        propagation="slave" if "slave" in flags else "private" if "private" in flags else None,
        per_node_cache=flags.get("perNodeCache"),
    )
    reason = _target_refusal(target, context)
    if reason:
        raise fail(reason)
    return mount


def _absolute_source(path: str, base: Callable[[], str] | None, fail) -> str:
    """A relative source joined to `base()` (`..` allowed, resolved by name); others as given."""
    if base is None or not path or path.startswith("/"):
        return path
    try:
        directory = base()
    except ValueError as error:
        raise fail(f"a relative source starts from the directory you submit from, but {error}") from None
    bad = _PATH_CHARS_RE.search(directory)
    if bad:
        raise fail(f"a relative source starts from the directory you submit from, {directory} in the"
                   f" container, and a volume path cannot hold its character {bad.group()!r}")
    return posixpath.normpath(posixpath.join(directory, path))


def _clean_path(path: str, role: str, fail) -> str:
    if not path:
        raise fail(f"the {role} path is empty")
    bad = _PATH_CHARS_RE.search(path)
    if bad:
        raise fail(f"character {bad.group()!r} is not allowed in the {role} (use letters, digits and _ . + - /)")
    if not path.startswith("/"):
        raise fail(f"the {role} {path!r} must be an absolute path")
    if ".." in path.split("/"):
        raise fail(f"the {role} must not contain '..'")
    return posixpath.normpath("/" + path.lstrip("/"))


def _parse_flags(tokens: list[str], context: str, fail, default_fs: str) -> dict:
    names = {name.lower(): name for name in _FLAG_ORDER}
    flags: dict = {}
    for token in tokens:
        raw_name, has_value, value = token.partition("=")
        name = names.get(raw_name.lower())
        if not raw_name:
            raise fail("empty flag (two ':' in a row or a trailing ':')")
        if name is None:
            raise fail(f"unknown flag {raw_name!r} (flags are {', '.join(_FLAG_ORDER)}, each after its own ':')")
        if name not in _FLAGS_BY_CONTEXT[context]:
            raise fail(f"flag {name} is reserved to the site configuration")
        if name in flags:
            raise fail(f"flag {name} is given twice")
        if name == "perNodeCache":
            if not has_value:
                raise fail("perNodeCache needs a size, e.g. perNodeCache=size=10G")
            flags[name] = _parse_cache(value, fail, default_fs)
        elif has_value:
            raise fail(f"flag {name} takes no value")
        else:
            flags[name] = True
    if "slave" in flags and "private" in flags:
        raise fail("flags slave and private exclude each other")
    return flags


def _parse_cache(text: str, fail, default_fs: str) -> PerNodeCache:
    options: dict[str, str] = {}
    for item in text.split(","):
        key, has_value, value = item.partition("=")
        key = {"fstype": "fs"}.get(key.lower(), key.lower())
        if not has_value or not value:
            raise fail(f"perNodeCache option {item!r} is not key=value")
        if key not in ("size", "bs", "method", "fs"):
            raise fail(f"unknown perNodeCache option {key!r} (size, bs, method, fs)")
        if key in options:
            raise fail(f"perNodeCache option {key} is given twice")
        options[key] = value
    if "size" not in options:
        raise fail("perNodeCache needs a size, e.g. perNodeCache=size=10G")
    try:
        size = parse_bytes(options["size"])
        block_size = parse_bytes(options.get("bs", str(DEFAULT_BLOCK_SIZE)))
    except ValueError as error:
        raise fail(f"perNodeCache: {error}") from None
    if size <= 0:
        raise fail("perNodeCache size must be more than 0")
    if options.get("method", "loop").lower() != "loop":
        raise fail("perNodeCache method must be loop")
    fs_type = options.get("fs", default_fs).lower()
    if fs_type not in CACHE_FS_TYPES:
        raise fail(f"perNodeCache fs must be {' or '.join(CACHE_FS_TYPES)}")
    sizes = BLOCK_SIZES[fs_type]
    if block_size not in sizes:
        raise fail(f"perNodeCache bs is the {fs_type} block size: a power of two from "
                   f"{format_bytes(sizes[0])} to {format_bytes(sizes[-1])}")
    return PerNodeCache(size=size, block_size=block_size, fs_type=fs_type)


def is_within(path: str, tree: str) -> bool:
    """True if `path` is `tree` or below it, comparing whole components."""
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _target_refusal(target: str, context: str) -> str | None:
    if context == SITE:
        if target in _SITE_FORBIDDEN_TARGETS:
            return f"the site cannot bind over {target}"
        return None
    if target in _USER_ALLOWED_TARGETS:
        return None
    for tree in _USER_PROTECTED_TREES:
        if target == tree:
            return f"{target} belongs to the container's setup"
        if is_within(target, tree):
            return f"{target} is inside {tree}, which belongs to the container's setup"
        if is_within(tree, target):
            return f"{target} would hide {tree}, which belongs to the container's setup"
    return None
