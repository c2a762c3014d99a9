"""The environment of a task inside the container.

Order, as in Shifter: the task's own environment, then the image's ENV
(replacing), then for each active module its siteEnv, siteEnvAppend,
siteEnvPrepend and siteEnvUnset, then the global ones in the same order, then
the SHIFTER_* variables.  Append and prepend join with ':' and simply set the
variable when it is unset or empty.

    >>> compose({"PATH": "/host/bin"}, ["PATH=/usr/bin"],
    ...         site_env_append={"PATH": "/opt/udiImage/bin"},
    ...         site_env_prepend={"PATH": "/sbin"})["PATH"]
    '/sbin:/usr/bin:/opt/udiImage/bin'
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping


def parse_image_env(items: Iterable[str]) -> dict[str, str]:
    """Docker's `ENV` list (`K=V` strings) as a dict; entries without '=' are skipped."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    return env


def _join(current: str | None, value: str, prepend: bool) -> str:
    if not current:
        return value
    return f"{value}:{current}" if prepend else f"{current}:{value}"


def apply_site(env: dict[str, str], *, site_env: Mapping[str, str] = (),
               site_env_append: Mapping[str, str] = (), site_env_prepend: Mapping[str, str] = (),
               site_env_unset: Iterable[str] = ()) -> None:
    """Apply one level (a module, or the global configuration) in Shifter's order."""
    env.update(dict(site_env))
    for key, value in dict(site_env_append).items():
        env[key] = _join(env.get(key), value, prepend=False)
    for key, value in dict(site_env_prepend).items():
        env[key] = _join(env.get(key), value, prepend=True)
    for key in site_env_unset:
        env.pop(key, None)


def compose(task_env: Mapping[str, str], image_env: Iterable[str], *,
            levels: Iterable[Mapping] = (), shifter: Mapping[str, str] = (), **site) -> dict[str, str]:
    """The final environment: `levels` are module settings (dicts of apply_site
    keyword arguments), applied before the global `site` settings."""
    env = dict(task_env)
    env.update(parse_image_env(image_env))
    for level in levels:
        apply_site(env, **level)
    apply_site(env, **site)
    env.update(dict(shifter))
    return env


def site_settings(source) -> dict:
    """The siteEnv* settings of a config or module object, as apply_site keywords."""
    return {
        "site_env": source.site_env,
        "site_env_append": source.site_env_append,
        "site_env_prepend": source.site_env_prepend,
        "site_env_unset": source.site_env_unset,
    }
