"""Gateway configuration: Shifter's imagemanager.json, with its typos fixed, plus our keys.

A site moving from Shifter keeps its file.  Differences, all deliberate:

* `PullUpdateTimeout` is honoured (Shifter tested for `PullUpdateTime` and so
  always used 300 s); `PullUpdateTime` is accepted as the same key.
* `ConverterOptions` is the key (Shifter tested for `ConvertOptions`, which is
  also accepted).  Only compressor choices are meaningful: images are always
  made root-owned and without xattrs whatever options are given.
* Relative paths are taken relative to the configuration file, not the cwd.
* Keys Shifter never used (`MongoDBURI`, `DefaultOstCount`, ...) are accepted
  and listed in `GatewayConfig.warnings`; unknown keys are errors, so a typo
  never silently falls back to a default.  `examiner`, `Authentication: mock`
  and a `DefaultImageFormat` other than squashfs are refused.

Our keys: `StateDirectory` (default home of the SQLite database, cache and
scratch), `DatabaseURI` (SQLAlchemy URL; PostgreSQL in production),
`Listen`, `HeartbeatInterval`, `HeartbeatTimeout`, `MaxAttempts`,
`RetryBackoff`, `LookupCacheSeconds`, `Compressor`, `CompressionLevel`, `Processors`, `Architecture`,
`CacheSizeLimit`; `Locations.<name>.insecure`; `Platforms.<name>.ssh.port`.
docs/gateway.md lists them all.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex

from shifter_core.errors import ConfigError

from .pipeline import PipelineSettings
from .registry import Location

DEFAULT_PATH = "/etc/shifter/imagemanager.json"
DEFAULT_STATE_DIRECTORY = "/var/lib/shifter-gateway"


@dataclasses.dataclass(frozen=True)
class SshTarget:
    """Where a remote system's image directory is reached (Shifter's `ssh` block)."""

    hosts: tuple[str, ...]
    user: str | None
    key: str | None
    image_dir: str
    port: int | None = None
    ssh_options: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class System:
    """One system (cluster) the gateway serves, Shifter's `Platforms.<name>`: its munged,
    admins and image directory."""

    name: str
    munge_socket: str
    access_type: str                 # "local" or "remote"
    admins: frozenset[str]
    image_dir: str | None = None     # local access
    ssh: SshTarget | None = None     # remote access


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    systems: dict[str, System]
    locations: dict[str, Location]      # registries, by the name references use
    default_location: str | None
    state_directory: str
    database_uri: str
    cache_directory: str
    expand_directory: str
    listen: str = "127.0.0.1:8000"
    worker_threads: int = 1
    log_level: str = "INFO"
    pull_update_timeout: float = 300.0
    image_expiration_timeout: float | None = None
    metrics: bool = False
    import_users: str | frozenset[str] | None = None   # None: import disabled; "all"
    compressor: str | None = None
    compression_level: int | None = None
    processors: int | None = None
    architecture: str | None = None
    cache_size_limit: int | None = None
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 60.0
    max_attempts: int = 3
    retry_backoff: float = 5.0
    lookup_cache_seconds: float = 1.0
    warnings: tuple[str, ...] = ()

    def system(self, name: str) -> System:
        try:
            return self.systems[name]
        except KeyError:
            raise ConfigError(f"system {name!r} is not configured in the gateway's Platforms") from None

    def may_import(self, user: str) -> bool:
        if self.import_users is None:
            return False
        return self.import_users == "all" or user in self.import_users


_UNUSED = {"DefaultLustreReplication", "DefaultOstCount", "MongoDBURI", "MongoDB"}
_LOG_LEVELS = {"debug": "DEBUG", "info": "INFO", "warn": "WARNING", "warning": "WARNING",
               "error": "ERROR", "critical": "CRITICAL"}
_TYPE_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "an object"}
# mksquashfs options a Shifter site may list that change nothing here.
_HARMLESS_SQUASHFS_OPTIONS = {"-no-xattrs", "-all-root", "-noappend"}


def load(path: str = DEFAULT_PATH) -> GatewayConfig:
    """Read and check an imagemanager.json; ConfigError says what to fix."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"gateway configuration {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"gateway configuration {path} is not valid JSON: {e}") from None
    return from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)), origin=path)


def from_dict(data: dict, base_dir: str, origin: str = "gateway configuration") -> GatewayConfig:
    reader = _Reader(data, origin, base_dir)
    return reader.config()


class _Reader:
    """Walks the JSON once, consuming keys, so leftovers can be reported as typos."""

    def __init__(self, data, origin: str, base_dir: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: the top level must be a JSON object")
        self.data = dict(data)
        self.origin = origin
        self.base_dir = base_dir
        self.warnings: list[str] = []

    def config(self) -> GatewayConfig:
        d = self.data
        take = self._take
        for key in sorted(_UNUSED & d.keys()):
            d.pop(key)
            self.warnings.append(f"{key} is not used by this gateway and is ignored")
        if "examiner" in d:
            raise ConfigError(f"{self.origin}: examiner is not supported; remove it")
        auth = take(d, "Authentication", str, "munge")
        if auth != "munge":
            raise ConfigError(f"{self.origin}: Authentication must be munge (mock is for Shifter's own tests)")
        fmt = take(d, "DefaultImageFormat", str, "squashfs")
        if fmt != "squashfs":
            raise ConfigError(f"{self.origin}: DefaultImageFormat {fmt!r} is not supported; use squashfs")
        state = self._path(take(d, "StateDirectory", str, DEFAULT_STATE_DIRECTORY))
        pull_timeout = take(d, "PullUpdateTimeout", (int, float), None)
        alias = take(d, "PullUpdateTime", (int, float), None)
        if pull_timeout is not None and alias is not None and pull_timeout != alias:
            raise ConfigError(f"{self.origin}: PullUpdateTimeout and PullUpdateTime disagree; keep one")
        pull_timeout = pull_timeout if pull_timeout is not None else alias
        converter = take(d, "ConverterOptions", dict, None)
        converter_alias = take(d, "ConvertOptions", dict, None)
        if converter is not None and converter_alias is not None:
            raise ConfigError(f"{self.origin}: give ConverterOptions or ConvertOptions, not both")
        compressor, level, processors = self._converter_options(converter or converter_alias or {})
        log_level = take(d, "LogLevel", str, "info")
        if log_level.lower() not in _LOG_LEVELS:
            raise ConfigError(f"{self.origin}: LogLevel {log_level!r} is not one of {', '.join(_LOG_LEVELS)}")
        locations = self._locations(take(d, "Locations", dict, {}))
        default_location = take(d, "DefaultImageLocation", str, None)
        if default_location is not None and default_location not in locations:
            raise ConfigError(f"{self.origin}: DefaultImageLocation {default_location!r} is not in Locations")
        systems = self._systems(take(d, "Platforms", dict, None))
        config = GatewayConfig(
            systems=systems,
            locations=locations,
            default_location=default_location,
            state_directory=state,
            database_uri=take(d, "DatabaseURI", str, f"sqlite:///{os.path.join(state, 'gateway.sqlite')}"),
            cache_directory=self._path(take(d, "CacheDirectory", str, os.path.join(state, "cache"))),
            expand_directory=self._path(take(d, "ExpandDirectory", str, os.path.join(state, "scratch"))),
            listen=take(d, "Listen", str, "127.0.0.1:8000"),
            worker_threads=self._positive(take(d, "WorkerThreads", int, 1), "WorkerThreads"),
            log_level=_LOG_LEVELS[log_level.lower()],
            pull_update_timeout=float(pull_timeout if pull_timeout is not None else 300),
            image_expiration_timeout=self._duration(take(d, "ImageExpirationTimeout", (str, int, float), None)),
            metrics=take(d, "Metrics", bool, False),
            import_users=self._import_users(d.pop("ImportUsers", None)),
            compressor=take(d, "Compressor", str, compressor),
            compression_level=take(d, "CompressionLevel", int, level),
            processors=take(d, "Processors", int, processors),
            architecture=take(d, "Architecture", str, None),
            cache_size_limit=take(d, "CacheSizeLimit", int, None),
            heartbeat_interval=float(take(d, "HeartbeatInterval", (int, float), 5.0)),
            heartbeat_timeout=float(take(d, "HeartbeatTimeout", (int, float), 60.0)),
            max_attempts=self._positive(take(d, "MaxAttempts", int, 3), "MaxAttempts"),
            retry_backoff=float(take(d, "RetryBackoff", (int, float), 5.0)),
            lookup_cache_seconds=float(take(d, "LookupCacheSeconds", (int, float), 1.0)),
            warnings=tuple(self.warnings),
        )
        self._no_leftovers(d, "")
        if config.heartbeat_timeout <= 2 * config.heartbeat_interval:
            raise ConfigError(f"{self.origin}: HeartbeatTimeout must exceed twice HeartbeatInterval")
        return config

    # -- sections -----------------------------------------------------------

    def _locations(self, section: dict) -> dict[str, Location]:
        result = {}
        for name, raw in section.items():
            where = f"Locations.{name}"
            d = self._object(raw, where)
            remotetype = self._take(d, "remotetype", str, "dockerv2", where)
            if remotetype != "dockerv2":
                raise ConfigError(f"{self.origin}: {where}.remotetype {remotetype!r} is not supported; use dockerv2")
            if d.pop("authentication", None) is not None:
                self.warnings.append(f"{where}.authentication is not used and is ignored")
            url = self._take(d, "url", str, f"https://{name}", where).rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{self.origin}: {where}.url must start with http:// or https://")
            auth_method = self._take(d, "authMethod", str, "token", where)
            if auth_method not in ("token", "basic"):
                raise ConfigError(f"{self.origin}: {where}.authMethod must be token or basic")
            ca = self._take(d, "sslcacert", str, None, where)
            result[name] = Location(
                url=url,
                insecure=self._take(d, "insecure", bool, url.startswith("http://"), where),
                ca_file=self._path(ca) if ca else None,
                auth_method=auth_method,
            )
            self._no_leftovers(d, where + ".")
        return result

    def _systems(self, section: dict | None) -> dict[str, System]:
        if not section:
            raise ConfigError(f"{self.origin}: Platforms must name at least one system")
        result = {}
        for name, raw in section.items():
            where = f"Platforms.{name}"
            d = self._object(raw, where)
            for key in ("usergroupService", "mountCommand", "use_external", "policy_file"):
                if d.pop(key, None) is not None:
                    self.warnings.append(f"{where}.{key} is not used and is ignored")
            access = self._take(d, "accesstype", str, "local", where)
            admins = self._take(d, "admins", list, [], where)
            socket = self._take(d, "mungeSocketPath", str, "/run/munge/munge.socket.2", where)
            local = self._take(d, "local", dict, None, where)
            ssh = self._take(d, "ssh", dict, None, where)
            hosts = self._take(d, "host", list, [], where)
            image_dir, target = None, None
            if access == "local":
                if not local or "imageDir" not in local:
                    raise ConfigError(f"{self.origin}: {where} is local and needs local.imageDir")
                image_dir = self._path(self._take(local, "imageDir", str, None, where + ".local"))
                self._no_leftovers(local, where + ".local.")
            elif access == "remote":
                if not ssh or "imageDir" not in ssh or not hosts:
                    raise ConfigError(f"{self.origin}: {where} is remote and needs host and ssh.imageDir")
                target = self._ssh_target(ssh, hosts, where + ".ssh")
            else:
                raise ConfigError(f"{self.origin}: {where}.accesstype must be local or remote")
            result[name] = System(
                name=name, munge_socket=self._path(socket), access_type=access,
                admins=frozenset(str(a) for a in admins), image_dir=image_dir, ssh=target,
            )
            self._no_leftovers(d, where + ".")
        return result

    def _ssh_target(self, d: dict, hosts: list, where: str) -> SshTarget:
        def options(key):
            value = self._take(d, key, (str, list), [], where)
            return tuple(shlex.split(value) if isinstance(value, str) else (str(v) for v in value))

        key = self._take(d, "key", str, None, where)
        if d.pop("scpCmdOptions", None) is not None:
            self.warnings.append(f"{where}.scpCmdOptions is not used (files are streamed over ssh) and is ignored")
        target = SshTarget(
            hosts=tuple(str(h) for h in hosts),
            user=self._take(d, "username", str, None, where),
            key=self._path(key) if key else None,
            image_dir=self._take(d, "imageDir", str, None, where),
            port=self._take(d, "port", int, None, where),
            ssh_options=options("sshCmdOptions"),
        )
        if not os.path.isabs(target.image_dir):
            raise ConfigError(f"{self.origin}: {where}.imageDir must be an absolute path on the remote host")
        self._no_leftovers(d, where + ".")
        return target

    # -- values -------------------------------------------------------------

    def _converter_options(self, options: dict) -> tuple[str | None, int | None, int | None]:
        compressor = level = processors = None
        for fmt, value in options.items():
            if fmt != "squashfs":
                raise ConfigError(f"{self.origin}: ConverterOptions.{fmt}: only squashfs images are made")
            args = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
            it = iter(args)
            for arg in it:
                if arg in _HARMLESS_SQUASHFS_OPTIONS:
                    continue
                if arg in ("-comp", "-Xcompression-level", "-processors"):
                    operand = next(it, None)
                    if operand is None:
                        raise ConfigError(f"{self.origin}: ConverterOptions: {arg} needs a value")
                    if arg == "-comp":
                        compressor = operand
                    else:
                        try:
                            number = int(operand)
                        except ValueError:
                            raise ConfigError(f"{self.origin}: ConverterOptions: {arg} {operand!r} is not a number") from None
                        if arg == "-processors":
                            processors = number
                        else:
                            level = number
                    continue
                raise ConfigError(
                    f"{self.origin}: ConverterOptions: {arg} is not supported (only -comp,"
                    " -Xcompression-level and -processors; images are always root-owned without xattrs)")
        return compressor, level, processors

    def _import_users(self, value) -> str | frozenset[str] | None:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        if value == "all":
            return "all"
        if isinstance(value, list):
            return frozenset(str(v) for v in value)
        raise ConfigError(f"{self.origin}: ImportUsers must be \"all\", \"none\" or a list of user names")

    def _duration(self, value) -> float | None:
        """Seconds from a number or Shifter's "D:H:M:S" text."""
        if value is None:
            return None
        if isinstance(value, (int, float)):
            return float(value)
        parts = value.split(":")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if not numbers or len(numbers) > 4:
            raise ConfigError(f"{self.origin}: ImageExpirationTimeout {value!r} must be seconds or D:H:M:S")
        seconds = 0.0
        for number, unit in zip(reversed(numbers), (1, 60, 3600, 86400)):
            seconds += number * unit
        return seconds

    def _positive(self, value: int, key: str) -> int:
        if value < 1:
            raise ConfigError(f"{self.origin}: {key} must be at least 1")
        return value

    def _path(self, value: str) -> str:
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(value)))

    def _object(self, raw, where: str) -> dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.origin}: {where} must be a JSON object")
        return dict(raw)

    def _take(self, d: dict, key: str, kind, default, where: str = ""):
        if key not in d:
            return default
        value = d.pop(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            value = None
        if not isinstance(value, kinds):
            names = " or ".join(_TYPE_NAMES[k] for k in kinds)
            label = f"{where}.{key}" if where else key
            raise ConfigError(f"{self.origin}: {label} must be {names}")
        return value

    def _no_leftovers(self, d: dict, prefix: str) -> None:
        if d:
            keys = ", ".join(prefix + k for k in sorted(d))
            raise ConfigError(f"{self.origin}: unknown key(s) {keys}; see docs/gateway.md")


def pipeline_settings(config: GatewayConfig):
    """The pull pipeline's settings (gateway.pipeline.PipelineSettings) from this configuration."""
    optional = {
        "compressor": config.compressor, "compression_level": config.compression_level,
        "processors": config.processors, "architecture": config.architecture,
        "cache_size_limit": config.cache_size_limit,
    }
    return PipelineSettings(
        cache_dir=config.cache_directory,
        scratch_dir=config.expand_directory,
        locations=dict(config.locations),
        default_location=config.default_location,
        **{key: value for key, value in optional.items() if value is not None},
    )
