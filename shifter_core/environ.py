"""The environment of a task inside the container.

Order, as in Shifter: the task's own environment, then the image's ENV
(replacing, except for the variables named by --env, whose task value wins
when the task has one), then for each active module its siteEnv, siteEnvAppend,
siteEnvPrepend and siteEnvUnset, then the global ones in the same order, then
the SHIFTER_* variables.  Append and prepend join with ':' and simply set the
variable when it is unset or empty.

The prolog turns that order into a list of operations once per job
(`operations`), stored with the container; each task applies it to its own
environment, in Python (`apply`) or in the C plugin's fast path
(spank/seam.c: seam_apply_env, held to `apply` by tests/unit/test_seam.py).

siteEnvUnset may name a bash function the user exported (Lmod's and
Environment Modules' `module`): Shifter's example writes `BASH_FUNC_module()`,
the name patched bashes of RHEL 6/7 export, while bash itself exports
`BASH_FUNC_module%%` since 2014; either spelling removes both.

    >>> compose({"PATH": "/host/bin"}, ["PATH=/usr/bin"],
    ...         site_env_append={"PATH": "/opt/udiImage/bin"},
    ...         site_env_prepend={"PATH": "/sbin"})["PATH"]
    '/sbin:/usr/bin:/opt/udiImage/bin'
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from . import seam

BASH_FUNCTION_RE = re.compile(r"^BASH_FUNC_([A-Za-z0-9_.:+@-]+)(?:\(\)|%%)$")


def parse_image_env(items: Iterable[str]) -> dict[str, str]:
    """Docker's `ENV` list (`K=V` strings) as a dict; entries without '=' are skipped."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    return env


def _level(site_env: Mapping[str, str] = (), site_env_append: Mapping[str, str] = (),
           site_env_prepend: Mapping[str, str] = (), site_env_unset: Iterable[str] = ()):
    yield from (("set", k, v) for k, v in dict(site_env).items())
    yield from (("append", k, v) for k, v in dict(site_env_append).items())
    yield from (("prepend", k, v) for k, v in dict(site_env_prepend).items())
    yield from (("unset", name, "") for k in site_env_unset for name in unset_names(k))


def unset_names(name: str) -> tuple[str, ...]:
    """The variables siteEnvUnset's `name` removes: an exported bash function in both forms."""
    function = BASH_FUNCTION_RE.match(name)
    if function is None:
        return (name,)
    return (f"BASH_FUNC_{function.group(1)}%%", f"BASH_FUNC_{function.group(1)}()")


def operations(image_env: Iterable[str], *, levels: Iterable[Mapping] = (),
               shifter: Mapping[str, str] = (), **site) -> list[tuple[str, str, str]]:
    """The (operation, name, value) list that turns a task's environment into
    the container's: `levels` are module settings (dicts of siteEnv keywords,
    see `site_settings`), applied before the global `site` settings."""
    ops = [("image", k, v) for k, v in parse_image_env(image_env).items()]
    for level in levels:
        ops.extend(_level(**level))
    ops.extend(_level(**site))
    ops.extend(("set", k, v) for k, v in dict(shifter).items())
    return ops


def apply(env: Mapping[str, str], ops: Iterable[tuple[str, str, str]], keep: Iterable[str] = ()) -> dict[str, str]:
    """`env` after `ops`; the variables named in `keep` (--env) that `env` has keep
    their value over the image's."""
    result = dict(env)
    keep = frozenset(keep)
    for op, name, value in ops:
        if op == "image" and name in keep and name in result:
            continue
        if op in ("set", "image"):
            result[name] = value
        elif op == "unset":
            result.pop(name, None)
        elif op in ("append", "prepend"):
            current = result.get(name)
            if not current:
                result[name] = value
            else:
                result[name] = seam.ENV_JOIN.join((current, value) if op == "append" else (value, current))
        else:
            raise ValueError(f"unknown environment operation {op!r}")
    return result


def compose(task_env: Mapping[str, str], image_env: Iterable[str], *,
            levels: Iterable[Mapping] = (), shifter: Mapping[str, str] = (), **site) -> dict[str, str]:
    """The final environment in one call."""
    return apply(task_env, operations(image_env, levels=levels, shifter=shifter, **site))


def site_settings(source) -> dict:
    """The siteEnv* settings of a config or module object, as keywords of `operations`."""
    return {
        "site_env": source.site_env,
        "site_env_append": source.site_env_append,
        "site_env_prepend": source.site_env_prepend,
        "site_env_unset": source.site_env_unset,
    }
