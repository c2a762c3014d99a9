"""The plugin's own arguments (from its plugstack.conf line) and the site
configuration they point to, loaded once per process.

    required /path/to/_spank.so venv=/opt/shifter/venv config=/etc/shifter/udiRoot.conf

An unknown argument or a bad value is an error at the first callback that
needs Python, naming the argument: a typo in plugstack.conf must not silently
turn a feature off.
"""
from __future__ import annotations

import dataclasses
import functools

from .. import config
from ..errors import ConfigError

_BOOLEANS = {"0": False, "1": True, "no": False, "yes": True, "false": False, "true": True}


@dataclasses.dataclass(frozen=True)
class PluginArgs:
    venv: str
    config: str = config.DEFAULT_PATH
    enable_ccm: bool = True


def parse_args(args: dict[str, str]) -> PluginArgs:
    values: dict = {}
    for key, value in args.items():
        if key in ("venv", "config"):
            if not value.startswith("/"):
                raise ConfigError(f"plugstack.conf: {key}= needs an absolute path, got {value!r}")
            values[key] = value
        elif key == "enable_ccm":
            if value.lower() not in _BOOLEANS:
                raise ConfigError(f"plugstack.conf: enable_ccm= takes 0 or 1, got {value!r}")
            values[key] = _BOOLEANS[value.lower()]
        else:
            raise ConfigError(f"plugstack.conf: unknown plugin argument {key!r}"
                              " (known: venv=, config=, enable_ccm=)")
    if "venv" not in values:
        raise ConfigError("plugstack.conf: venv= is required")
    return PluginArgs(**values)


@functools.lru_cache(maxsize=None)
def _load(path: str) -> config.UdiRootConfig:
    return config.load(path)


def site_config(spank) -> config.UdiRootConfig:
    """udiRoot.conf named by the plugin arguments, checked to be root-owned."""
    return _load(parse_args(spank.args).config)
