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
import os

from .. import config, seam
from ..errors import ConfigError

_PATHS = dict(seam.PLUGIN_ARGUMENTS)
_loaded: dict[str, tuple[tuple, config.UdiRootConfig]] = {}      # path -> (its stat, the config)
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


def load_config(path: str) -> config.UdiRootConfig:
    """udiRoot.conf at `path`, checked to be root-owned; read again only once it changed
    (the node server serves many jobs), and from memory once it is out of reach (a task
    after its chroot)."""
    try:
        st = os.stat(path)
    except OSError:
        if path in _loaded:
            return _loaded[path][1]
        return config.load(path)            # says why, as a ConfigError
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if _loaded.get(path, (None,))[0] != version:
        _loaded[path] = (version, config.load(path))
    return _loaded[path][1]


def site_config(spank) -> config.UdiRootConfig:
    """udiRoot.conf named by the plugin arguments."""
    return load_config(parse_args(spank.args).config)
