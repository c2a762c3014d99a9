"""udiRoot.conf: the site's runtime configuration, in Shifter's format and keys.

The file is `key=value` lines; a line whose first non-blank character is `#` is
a comment, a trailing backslash continues the value on the next line (pieces
joined by one space), values are not quoted, and an empty value means "not
set".  Unlike Shifter, nothing is ignored silently: an unknown key, a module
sub-key in the wrong case or a bad value is a ConfigError naming the file and
line.  What Shifter accepts and we can honour is accepted with a warning in
`UdiRootConfig.warnings`: keys it needed but we do not (tool paths, kernel
modules), a key given twice (Shifter's rule: list keys add up, others take
the later line), the example's `module_<name>_copypath`, cache file systems
we cannot make.

Code that runs as root loads the file with `trusted=True` (the default): it
must be a regular root-owned file that neither group nor others can write,
in directories only root can change.

    >>> cfg = parse("udiMount=/var/udiMount\\nloopMount=/var/udiLoopMount\\n"
    ...             "imagePath=/images\\netcPath=/etc/shifter/etc\\n"
    ...             "system=mycluster\\nimageGateway=http://gw:5000")
    >>> cfg.system, cfg.image_gateway, cfg.default_image_type
    ('mycluster', ('http://gw:5000',), 'docker')

docs/udiRoot.conf.example documents every key.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import stat
from collections.abc import Callable

from . import environ, imageref, launcher, seam, trust, volumes
from .errors import ConfigError, ModuleError, VolumeError

DEFAULT_PATH = seam.DEFAULT_CONFIG
DEFAULT_RUN_DIR = seam.DEFAULT_RUN_DIR
DEFAULT_GATEWAY_TIMEOUT = 60.0
DEFAULT_SSHD_PORT = 1204
DEFAULT_PULL_WAIT = 10.0
DEFAULT_MKFS_EXT4 = "/sbin/mkfs.ext4"


class _Invalid(Exception):
    """A value did not convert; the loader adds file, line and key."""


# --- value converters: str -> typed value, raising _Invalid ----------------

def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise _Invalid(f"{value!r} is not an absolute path")
    if "\0" in value:
        raise _Invalid("a path cannot contain a NUL character")
    return posixpath.normpath(value)


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise _Invalid(f"{value!r} is not a boolean: use 0 or 1")


def _float_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise _Invalid(f"{value!r} is not a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise _Invalid(f"{value!r} must be a positive number of seconds")
    return seconds


def _seconds_or_zero(value: str) -> float:
    """Like _float_seconds, but 0 (do not wait) is allowed."""
    try:
        seconds = float(value)
    except ValueError:
        raise _Invalid(f"{value!r} is not a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise _Invalid(f"{value!r} must be 0 or a positive number of seconds")
    return seconds


def _is_count(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _port(value: str) -> int:
    if not _is_count(value) or not 1 <= int(value) <= 65535:
        raise _Invalid(f"{value!r} is not a TCP port (1-65535)")
    return int(value)


def _group_count(value: str) -> int | None:
    if value.lower() == "unlimited":
        return None
    if not _is_count(value):
        raise _Invalid(f"{value!r} must be a count of groups (0 or more) or 'unlimited'")
    return int(value)


def _byte_size(value: str) -> int:
    try:
        size = volumes.parse_bytes(value)
    except ValueError as error:
        raise _Invalid(str(error)) from None
    if size <= 0:
        raise _Invalid("must be more than 0")
    return size


def _site_volumes(value: str) -> tuple[volumes.VolumeMount, ...]:
    """The grammar and site policy; perNodeCache policy is checked once all keys are read."""
    try:
        return volumes.parse(value, volumes.SITE)
    except VolumeError as error:
        raise _Invalid(str(error)) from None


def _device_paths(value: str) -> tuple[str, ...]:
    """Device files in /dev users may name as a --volume source (userVolumeDevices)."""
    paths = []
    for word in value.split():
        path = _absolute_path(word)
        if not volumes.is_within(path, "/dev") or path == "/dev":
            raise _Invalid(f"{word!r} is not a path below /dev (the container's /dev is the node's)")
        paths.append(path)
    return tuple(paths)


def _words(value: str) -> tuple[str, ...]:
    return tuple(value.split())


def _choice(*allowed: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value not in allowed:
            raise _Invalid(f"{value!r} is not one of {', '.join(allowed)}")
        return value
    return convert


def _gateway_urls(value: str) -> tuple[str, ...]:
    urls = []
    for url in value.split():
        if not re.match(r"^https?://[^/\s]+", url):
            raise _Invalid(f"{url!r} is not an http:// or https:// URL")
        urls.append(url.rstrip("/"))
    return tuple(urls)


def _system_name(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", value):
        raise _Invalid(f"{value!r} must be letters, digits and _ . - (it goes into gateway URLs)")
    return value


_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(name: str) -> str:
    if not _ENV_NAME_RE.match(name):
        raise _Invalid(f"{name!r} is not an environment variable name")
    return name


def _env_assignments(value: str, *, allow_empty: bool) -> dict[str, str]:
    result: dict[str, str] = {}
    for word in value.split():
        name, sep, val = word.partition("=")
        if not sep:
            raise _Invalid(f"{word!r} is not NAME=VALUE")
        _env_name(name)
        if not val and not allow_empty:
            raise _Invalid(f"{word!r} has an empty value, which cannot be appended or prepended")
        if name in result:
            raise _Invalid(f"{name} is given twice")
        result[name] = val
    return result


def _env_set(value: str) -> dict[str, str]:
    return _env_assignments(value, allow_empty=True)


def _env_path_list(value: str) -> dict[str, str]:
    return _env_assignments(value, allow_empty=False)


def _unset_names(value: str) -> tuple[str, ...]:
    """Variable names, or bash's exported functions (BASH_FUNC_module() / BASH_FUNC_module%%)."""
    for word in value.split():
        if not environ.BASH_FUNCTION_RE.match(word):
            _env_name(word)
    return tuple(value.split())


_MODULE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


def _module_names(value: str, separator: str | None) -> tuple[str, ...]:
    names = [word.strip() for word in value.split(separator)] if separator else value.split()
    for name in names:
        if not _MODULE_NAME_RE.match(name):
            raise _Invalid(f"{name!r} is not a module name")
    return tuple(dict.fromkeys(names))


# --- the key tables ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Key:
    """`combine(earlier, later)` merges a key given twice; None: the later line wins."""

    attribute: str
    convert: Callable[[str], object]
    combine: Callable[[object, object], object] | None = None


# Shifter's parser calls its setter once per line: list keys append, the others
# overwrite (module list sub-keys too, except siteFs).  These merge the same way.
def _concat(earlier: tuple, later: tuple) -> tuple:
    return earlier + later


def _merge_set(earlier: dict, later: dict) -> dict:
    return {**earlier, **later}


def _merge_append(earlier: dict, later: dict) -> dict:
    return {**earlier, **{k: f"{earlier[k]}:{v}" if k in earlier else v for k, v in later.items()}}


def _merge_prepend(earlier: dict, later: dict) -> dict:
    return {**earlier, **{k: f"{v}:{earlier[k]}" if k in earlier else v for k, v in later.items()}}


_KEYS: dict[str, _Key] = {
    "udiMount": _Key("udi_mount", _absolute_path),
    "loopMount": _Key("loop_mount", _absolute_path),
    "imagePath": _Key("image_path", _absolute_path),
    "etcPath": _Key("etc_path", _absolute_path),
    "optUdiImage": _Key("opt_udi_image", _absolute_path),
    "sitePreMountHook": _Key("site_pre_mount_hook", _absolute_path),
    "sitePostMountHook": _Key("site_post_mount_hook", _absolute_path),
    "siteFs": _Key("site_fs", _site_volumes, _concat),
    "siteEnv": _Key("site_env", _env_set, _merge_set),
    "siteEnvAppend": _Key("site_env_append", _env_path_list, _merge_append),
    "siteEnvPrepend": _Key("site_env_prepend", _env_path_list, _merge_prepend),
    "siteEnvUnset": _Key("site_env_unset", _unset_names, _concat),
    "allowLibcPwdCalls": _Key("allow_libc_pwd_calls", _boolean),
    "populateEtcDynamically": _Key("populate_etc_dynamically", _boolean),
    "usersToImport": _Key("users_to_import", _words),
    "mountUdiRootWritable": _Key("mount_udi_root_writable", _boolean),
    "allowLocalChroot": _Key("allow_local_chroot", _boolean),
    "maxGroupCount": _Key("max_group_count", _group_count),
    "rootfsType": _Key("rootfs_type", _choice("tmpfs", "ramfs")),
    "mkfsXfsPath": _Key("mkfs_xfs_path", _absolute_path),
    "perNodeCachePath": _Key("per_node_cache_path", _absolute_path),
    "perNodeCacheSizeLimit": _Key("per_node_cache_size_limit", _byte_size),
    "perNodeCacheAllowedFsType": _Key("per_node_cache_allowed_fs_type", _words, _concat),
    "gatewayTimeout": _Key("gateway_timeout", _float_seconds),
    "imageGateway": _Key("image_gateway", _gateway_urls, _concat),
    "system": _Key("system", _system_name),
    "defaultImageType": _Key("default_image_type", _choice(*imageref.TYPES)),
    "mountPropagationStyle": _Key("mount_propagation_style", _choice("private", "slave")),
    "defaultModules": _Key("default_modules", lambda v: _module_names(v, ",")),
    # ours
    seam.RUN_DIR_KEY: _Key("run_dir", _absolute_path),     # the C fast path reads it too
    "sshdPort": _Key("sshd_port", _port),
    "gatewayCaFile": _Key("gateway_ca_file", _absolute_path),
    "holdJobsForPull": _Key("hold_jobs_for_pull", _boolean),
    "pullWaitAtSubmit": _Key("pull_wait_at_submit", _seconds_or_zero),
    "provenanceDir": _Key("provenance_dir", _absolute_path),
    "mkfsExt4Path": _Key("mkfs_ext4_path", _absolute_path),
    "userVolumeDevices": _Key("user_volume_devices", _device_paths, _concat),
}

REQUIRED_KEYS = ("udiMount", "loopMount", "imagePath", "etcPath", "system", "imageGateway")

# Keys Shifter knows that shifter-py does not use: accepted, reported, ignored.
_OBSOLETE = {
    "modprobePath": "shifter-py loads no kernel modules",
    "insmodPath": "shifter-py loads no kernel modules",
    "autoLoadKernelModule": "shifter-py loads no kernel modules",
    "kmodBasePath": "shifter-py loads no kernel modules",
    "kmodPath": "shifter-py loads no kernel modules",
    "kmodCacheFile": "shifter-py loads no kernel modules",
    "udiRootPath": "shifter-py runs from its virtualenv (plugstack.conf's venv=)",
    "cpPath": "shifter-py copies and mounts with system calls, not tools",
    "mvPath": "shifter-py copies and mounts with system calls, not tools",
    "chmodPath": "shifter-py copies and mounts with system calls, not tools",
    "ddPath": "shifter-py copies and mounts with system calls, not tools",
    "optionalSshdAsRoot": "the container sshd always runs as the user",
    "nodeContextPrefix": "it has no effect",
    "batchType": "Slurm is the only batch system",
}

_MODULE_KEYS: dict[str, _Key] = {
    "userhook": _Key("user_hook", _absolute_path),
    "roothook": _Key("root_hook", _absolute_path),
    "siteEnv": _Key("site_env", _env_set),
    "siteEnvAppend": _Key("site_env_append", _env_path_list),
    "siteEnvPrepend": _Key("site_env_prepend", _env_path_list),
    "siteEnvUnset": _Key("site_env_unset", _unset_names),
    "siteFs": _Key("site_fs", _site_volumes, _concat),
    "copyPath": _Key("copy_path", _absolute_path),
    "conflict": _Key("conflict", lambda v: _module_names(v, None)),
    "enabled": _Key("enabled", _boolean),
    # ours
    "launcherEnv": _Key("launcher_env", _choice(*launcher.KINDS)),
}
# Shifter's own example writes `copypath`, which Shifter then ignored.
_MODULE_KEY_ALIASES = {"copypath": "copyPath"}


@dataclasses.dataclass(frozen=True)
class Module:
    """A site module (`module_<name>_*` keys) a job can switch on with --module.

    `user_hook` is a path inside the container, run as the user before the
    task; `root_hook` a host path run as root while the container is built;
    `copy_path` a host directory copied to /opt/udiImage/modules/<name>/;
    `launcher_env` the launcher variables its tasks get (shifter_core/launcher.py).
    """

    name: str
    user_hook: str | None = None
    root_hook: str | None = None
    site_env: dict[str, str] = dataclasses.field(default_factory=dict)
    site_env_append: dict[str, str] = dataclasses.field(default_factory=dict)
    site_env_prepend: dict[str, str] = dataclasses.field(default_factory=dict)
    site_env_unset: tuple[str, ...] = ()
    site_fs: tuple[volumes.VolumeMount, ...] = ()
    copy_path: str | None = None
    conflict: tuple[str, ...] = ()
    enabled: bool = True
    launcher_env: str | None = None

    @property
    def per_task(self) -> bool:
        """Does each task need the Python path (a user hook to run, variables to compute)?"""
        return bool(self.user_hook or self.launcher_env)


@dataclasses.dataclass(frozen=True)
class UdiRootConfig:
    """udiRoot.conf as typed attributes; see docs/udiRoot.conf.example."""

    udi_mount: str
    loop_mount: str
    image_path: str
    etc_path: str
    system: str
    image_gateway: tuple[str, ...]
    opt_udi_image: str | None = None
    site_pre_mount_hook: str | None = None
    site_post_mount_hook: str | None = None
    site_fs: tuple[volumes.VolumeMount, ...] = ()
    site_env: dict[str, str] = dataclasses.field(default_factory=dict)
    site_env_append: dict[str, str] = dataclasses.field(default_factory=dict)
    site_env_prepend: dict[str, str] = dataclasses.field(default_factory=dict)
    site_env_unset: tuple[str, ...] = ()
    allow_libc_pwd_calls: bool = False
    populate_etc_dynamically: bool = False
    users_to_import: tuple[str, ...] = ()
    mount_udi_root_writable: bool = False
    allow_local_chroot: bool = False
    max_group_count: int | None = 0
    rootfs_type: str = "tmpfs"
    mkfs_xfs_path: str | None = None
    per_node_cache_path: str | None = None
    per_node_cache_size_limit: int | None = None
    per_node_cache_allowed_fs_type: tuple[str, ...] = ("xfs",)
    mkfs_ext4_path: str = DEFAULT_MKFS_EXT4
    gateway_timeout: float = DEFAULT_GATEWAY_TIMEOUT
    default_image_type: str = "docker"
    mount_propagation_style: str = "private"
    default_modules: tuple[str, ...] = ()
    modules: dict[str, Module] = dataclasses.field(default_factory=dict)
    run_dir: str = DEFAULT_RUN_DIR
    sshd_port: int = DEFAULT_SSHD_PORT
    gateway_ca_file: str | None = None
    hold_jobs_for_pull: bool = False
    pull_wait_at_submit: float = DEFAULT_PULL_WAIT
    provenance_dir: str | None = None
    user_volume_devices: tuple[str, ...] = ()
    path: str | None = None
    warnings: tuple[str, ...] = ()

    def mkfs_path(self, fs_type: str) -> str | None:
        """The mkfs that makes perNodeCache file systems of `fs_type` (None: not configured)."""
        return {"xfs": self.mkfs_xfs_path, "ext4": self.mkfs_ext4_path}[fs_type]

    def cache_policy(self) -> volumes.CachePolicy:
        """perNodeCache needs perNodeCachePath and the mkfs of an allowed type (xfs:
        mkfsXfsPath); the first type with its mkfs is the default; the limit bounds
        one job's total."""
        offered = tuple(fs for fs in self.per_node_cache_allowed_fs_type if self.mkfs_path(fs))
        return volumes.CachePolicy(
            available=bool(self.per_node_cache_path and offered),
            size_limit=self.per_node_cache_size_limit,
            fs_types=offered or self.per_node_cache_allowed_fs_type,
            min_sizes=volumes.MIN_SIZES,
        )

    def user_volumes(self, spec: str, base=None) -> tuple[volumes.VolumeMount, ...]:
        """Parse a user's --volume under this site's policy (caches, devices); VolumeError
        says what is wrong.  `base`: see volumes.parse (relative sources, at submit)."""
        mounts = volumes.parse(spec, volumes.USER, self.cache_policy(), base=base)
        volumes.check_devices(mounts, self.user_volume_devices)
        return mounts

    def select_modules(self, request: str | None = None) -> tuple[Module, ...]:
        """The modules a job gets for `--module=<request>`, in the order asked.

        No request means `defaultModules`; `none` means no module at all; a
        comma-separated list replaces the defaults.  Raises ModuleError for
        an unknown, disabled or conflicting module.
        """
        if request is None or not request.strip():
            names = self.default_modules
        elif request.strip() == "none":
            names = ()
        else:
            try:
                names = _module_names(request, ",")
            except _Invalid as error:
                raise ModuleError(f"invalid --module: {error}") from None
        _check_selection(self.modules, names)
        return tuple(self.modules[name] for name in names)


# --- reading ----------------------------------------------------------------

def load(path: str = DEFAULT_PATH, *, trusted: bool = True) -> UdiRootConfig:
    """Read and parse udiRoot.conf; with `trusted`, refuse a file root does not control."""
    try:
        if trusted:
            text = _read_trusted(path)
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    return parse(text, source=path)


def _read_trusted(path: str) -> str:
    trust.require_root_owned(path, "configuration file")
    fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, encoding="utf-8") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"configuration file {path} is not a regular file")
        trust.require_root_only(st, f"configuration file {path}")
        return handle.read()


def _logical_lines(text: str, source: str):
    """Yield (line number, key, value) with comments dropped and continuations joined.

    Lines end at newlines only and lose seam.CONFIG_BLANKS at both ends, as
    the C fast path reads runDir (spank/seam.c: seam_run_dir).
    """
    pieces: list[str] = []
    start = 0
    if "\0" in text:
        raise ConfigError(f"{source}: the file holds a NUL character")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()                 # no line after the last newline
    for number, raw in enumerate(lines, 1):
        line = raw.strip(seam.CONFIG_BLANKS)
        if not pieces:
            if not line or line.startswith("#"):
                continue
            start = number
        if line.endswith("\\"):
            pieces.append(line[:-1].strip(seam.CONFIG_BLANKS))
            continue
        pieces.append(line)
        yield start, *_split_key(" ".join(p for p in pieces if p), source, start)
        pieces = []
    if pieces:
        raise ConfigError(f"{source}:{start}: the value continues past the end of the file (trailing \\)")


def _split_key(line: str, source: str, number: int) -> tuple[str, str]:
    key, sep, value = line.partition("=")
    key, value = key.strip(seam.CONFIG_BLANKS), value.strip(seam.CONFIG_BLANKS)
    if not sep:
        raise ConfigError(f"{source}:{number}: expected key=value, found {line!r}")
    if not key:
        raise ConfigError(f"{source}:{number}: a line starts with '=': the key is missing")
    return key, value


def _unknown(key: str, known, source: str, number: int, what: str = "key") -> ConfigError:
    import difflib   # only on this error path: the plugin starts faster

    close = difflib.get_close_matches(key, list(known), n=1)
    if not close:
        lowered = {k.lower(): k for k in known}
        close = [lowered[key.lower()]] if key.lower() in lowered else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{source}:{number}: unknown {what} {key!r}{hint}")


_MODULE_KEY_RE = re.compile(r"^module_([^_]+)_(.+)$")


def parse(text: str, *, source: str = "udiRoot.conf") -> UdiRootConfig:
    """Parse udiRoot.conf text; `source` names the file in error messages."""
    values: dict[str, object] = {}
    module_values: dict[str, dict[str, object]] = {}
    seen: dict[str, int] = {}
    warnings: list[str] = []
    for number, key, value in _logical_lines(text, source):
        module_match = _MODULE_KEY_RE.match(key)
        if module_match:
            name, sub = module_match.groups()
            if not _MODULE_NAME_RE.match(name):
                raise ConfigError(f"{source}:{number}: {name!r} is not a module name (letters, digits, . and -)")
            if sub in _MODULE_KEY_ALIASES:
                sub = _MODULE_KEY_ALIASES[sub]
                warnings.append(f"{source}:{number}: {key} is read as module_{name}_{sub} "
                                f"(Shifter ignored this spelling)")
                key = f"module_{name}_{sub}"
            spec = _MODULE_KEYS.get(sub)
            if spec is None:
                raise _unknown(sub, _MODULE_KEYS, source, number, f"module {name} sub-key")
            target = module_values.setdefault(name, {"name": name})
        elif key in _OBSOLETE:
            spec, target = None, None
        else:
            spec = _KEYS.get(key)
            if spec is None:
                raise _unknown(key, list(_KEYS) + list(_OBSOLETE), source, number)
            target = values
        if key in seen:
            rule = "the values add up" if spec and spec.combine else "this later line wins"
            warnings.append(f"{source}:{number}: {key} is also set on line {seen[key]}: {rule}, as in Shifter")
        seen[key] = number
        if spec is None:
            warnings.append(f"{source}:{number}: {key} is obsolete and ignored: {_OBSOLETE[key]}")
        elif not value:
            if not spec.combine:
                target.pop(spec.attribute, None)
        else:
            try:
                converted = spec.convert(value)
            except _Invalid as error:
                raise ConfigError(f"{source}:{number}: {key}: {error}") from None
            if spec.combine and spec.attribute in target:
                converted = spec.combine(target[spec.attribute], converted)
            target[spec.attribute] = converted
    return _assemble(values, module_values, seen, warnings, source)


def _assemble(values, module_values, seen, warnings, source) -> UdiRootConfig:
    missing = [key for key in REQUIRED_KEYS if _KEYS[key].attribute not in values]
    if missing:
        raise ConfigError(f"{source}: required key{'s' if len(missing) > 1 else ''} missing: {', '.join(missing)}")

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{source}:{seen.get(key, '?')}: {key}: {message}")

    if "per_node_cache_allowed_fs_type" in values:
        values["per_node_cache_allowed_fs_type"] = _cache_fs_types(
            values["per_node_cache_allowed_fs_type"], f"{source}:{seen['perNodeCacheAllowedFsType']}", warnings)

    modules = {name: Module(**fields) for name, fields in module_values.items()}
    config = UdiRootConfig(**values, path=source, warnings=tuple(warnings))
    for key, mounts in [("siteFs", config.site_fs)] + [
        (f"module_{m.name}_siteFs", m.site_fs) for m in modules.values()
    ]:
        try:
            volumes.check_policy(mounts, config.cache_policy())
        except VolumeError as error:
            raise fail(key, str(error)) from None
    if "none" in modules:
        raise ConfigError(f"{source}: 'none' cannot be a module name: --module=none means no modules")
    for module in modules.values():
        for other in module.conflict:
            if other not in modules:
                raise fail(f"module_{module.name}_conflict", f"module {other!r} is not defined")
    modules = _cross_link_conflicts(modules)
    defaults = values.get("default_modules", ())
    try:
        _check_selection(modules, defaults)
    except ModuleError as error:
        raise fail("defaultModules", str(error)) from None
    return dataclasses.replace(config, modules=modules)


def _cache_fs_types(listed: tuple[str, ...], where: str, warnings: list[str]) -> tuple[str, ...]:
    """perNodeCacheAllowedFsType without the types we cannot make (warned), xfs if none is left."""
    known = tuple(dict.fromkeys(fs.lower() for fs in listed if fs.lower() in volumes.CACHE_FS_TYPES))
    unknown = [fs for fs in listed if fs.lower() not in volumes.CACHE_FS_TYPES]
    if unknown:
        kept = " ".join(known) if known else "xfs, the default"
        warnings.append(f"{where}: perNodeCacheAllowedFsType: shifter-py cannot make {' '.join(unknown)} caches "
                        f"(it makes {' and '.join(volumes.CACHE_FS_TYPES)}); keeping {kept}")
    return known or ("xfs",)


def _cross_link_conflicts(modules: dict[str, Module]) -> dict[str, Module]:
    """Make conflicts symmetric: if a conflicts with b, b conflicts with a."""
    linked = {name: list(module.conflict) for name, module in modules.items()}
    for name, module in modules.items():
        for other in module.conflict:
            if name not in linked[other]:
                linked[other].append(name)
    return {
        name: dataclasses.replace(module, conflict=tuple(linked[name]))
        for name, module in modules.items()
    }


def _check_selection(modules: dict[str, Module], names: tuple[str, ...]) -> None:
    for name in names:
        if name not in modules:
            offered = ", ".join(sorted(n for n, m in modules.items() if m.enabled)) or "none"
            raise ModuleError(f"unknown module {name!r}: this system offers {offered}")
        if not modules[name].enabled:
            raise ModuleError(f"module {name!r} is disabled on this system")
    for index, name in enumerate(names):
        for other in names[index + 1:]:
            if other in modules[name].conflict:
                raise ModuleError(f"modules {name!r} and {other!r} conflict: choose one")
