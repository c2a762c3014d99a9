"""The plugin's own arguments (from its plugstack.conf line) and the site
configuration they point to, loaded once per process.

    required <venv>/lib/python3.11/site-packages/shifter_core/shifter_spank.so \
        venv=/opt/shifter/venv config=/etc/shifter/udiRoot.conf

The plugin (spank/plugin.c) refuses unknown arguments when it loads; the
values are checked here, at the first callback that needs Python, naming the
argument: a typo in plugstack.conf must not silently turn a feature off.  The
names are seam.PLUGIN_ARGUMENTS, which the C side shares.
"""
from __future__ import annotations

import dataclasses
import functools

from .. import config, seam
from ..errors import ConfigError

_PATHS = dict(seam.PLUGIN_ARGUMENTS)
_BOOLEANS = {"0": False, "1": True, "no": False, "yes": True, "false": False, "true": True}


@dataclasses.dataclass(frozen=True)
class PluginArgs:
    venv: str
    config: str = config.DEFAULT_PATH
    enable_ccm: bool = True


def parse_args(args: dict[str, str]) -> PluginArgs:
    values: dict = {}
    for key, value in args.items():
        if key not in _PATHS:
            raise ConfigError(f"plugstack.conf: unknown plugin argument {key!r}"
                              f" (known: {', '.join(name + '=' for name in _PATHS)})")
        if _PATHS[key]:
            if not value.startswith("/"):
                raise ConfigError(f"plugstack.conf: {key}= needs an absolute path, got {value!r}")
            values[key] = value
        else:
            if value.lower() not in _BOOLEANS:
                raise ConfigError(f"plugstack.conf: {key}= takes 0 or 1, got {value!r}")
            values[key] = _BOOLEANS[value.lower()]
    if "venv" not in values:
        raise ConfigError("plugstack.conf: venv= is required")
    return PluginArgs(**values)


@functools.lru_cache(maxsize=None)
def _load(path: str) -> config.UdiRootConfig:
    return config.load(path)


def site_config(spank) -> config.UdiRootConfig:
    """udiRoot.conf named by the plugin arguments, checked to be root-owned."""
    return _load(parse_args(spank.args).config)
