"""Submit plans: what a pinning srun, sbatch or salloc decided, so that the next one
with the same options pins its job without starting Python.

Pinning a new job costs the submitting command more in starting Python and
importing the submit code than in asking the gateway.  All it decides but the
digest is a function of its options and of udiRoot.conf: the image reference
as normalised, the gateways and the lookup's path, the volumes and modules it
exports.  So after each pin done in Python (submit.py) the plan is kept in the
user's home (seam.PLANS_FILE, the newest few); the plugin's C
(spank/fastpath.c: fastpath_pin) finds the plan for the same options and
the same udiRoot.conf (device, inode, size, times), asks the gateway for the
digest itself (munge, plain HTTP) and exports the same variables.  The lookup
happens for every job: a plan never pins an old digest.  The same plan serves an srun
starting a step inside a job: the C then reuses the job's pin when the step asks
for the job's image (as submit.py does) and marks a step whose view is not the
job's (seam.OWN_VIEW_VAR).  Anything else (no plan, another configuration,
https gateways, --ccm, an image the gateway does not have, a job held for its
pull) goes to Python as before.

The file is the user's own and only steers the user's own submissions, whose
every choice the prolog checks again on each node.

    shifter-plans 1
    plan docker:ubuntu:22.04\\x1f\\x1f\\x1f0\\x1f1     (the options, escaped)
    config 2049 1311 812 1733500000000000000 1733500000000000000
    lookup /api/lookup/ci/docker/ubuntu%3A22.04/
    gateway gw1 5000 /
    timeout 60000
    munge /run/munge/munge.socket.2
    request docker:ubuntu:22.04
    export SHIFTER_MODULE=mpich
    ...
"""
from __future__ import annotations

import os
import pwd
import urllib.parse

from .. import files, seam

_KINDS = dict(seam.PLAN_KEYS)


def plans_path() -> str:
    """The calling user's plans file (their home from the password database, as the C finds it)."""
    return os.path.join(pwd.getpwuid(os.getuid()).pw_dir, seam.PLANS_FILE)


def read(data: bytes) -> list[list[tuple[str, object]]]:
    """The plans of a plans file, oldest first, as (key, value) lines; ValueError if the file
    is not one (spank/seam.c: seam_find_plan reads it alike)."""
    plans: list[list[tuple[str, object]]] = []
    for key, raw in seam.read_lines(data, seam.PLANS_FORMAT, seam.PLANS_MAX):
        if key not in _KINDS:
            raise ValueError(f"unknown key {key!r}")
        if key == "plan":
            plans.append([])
        elif not plans:
            raise ValueError("a line before any plan")
        value = seam.read_value(_KINDS[key], raw)
        if key == "export" and "=" not in value:
            raise ValueError(f"export without '=': {raw!r}")
        plans[-1].append((key, value))
    for plan in plans:
        keys = [key for key, _ in plan]
        if not set(seam.PLAN_REQUIRED) <= set(keys) or keys.count("gateway") > seam.PLAN_GATEWAYS \
                or keys.count("export") > seam.PLAN_EXPORTS:
            raise ValueError("an incomplete plan, or one with too many gateways or exports")
    return plans


def find(data: bytes, options: str) -> dict | None:
    """The newest plan for `options` as a dict (gateway and export: lists), or None."""
    try:
        plans = read(data)
    except ValueError:
        return None
    for plan in reversed(plans):
        if plan[0][1] == options:
            found: dict = {"gateway": [], "export": []}
            for key, value in plan:
                if key in found and isinstance(found[key], list):
                    found[key] = found[key] + [value]
                else:
                    found[key] = value
            return found
    return None


def save(cfg, options: str, lookup_path: str, munge_socket: str, export: dict[str, str]) -> None:
    """Keep the plan of a pin just done in Python, unless the C could not follow it (https).

    `export` is what the pin exported; the variables the C sets itself (from its
    own lookup, and whether a step has a view of its own) are left out.  Never
    fails the submission: a plan is a shortcut.
    """
    gateways = [urllib.parse.urlsplit(url) for url in cfg.image_gateway]
    if any(g.scheme != "http" or not g.hostname for g in gateways) or len(gateways) > seam.PLAN_GATEWAYS:
        return
    try:
        st = os.stat(cfg.path)
        path = plans_path()
        lines = [("plan", options),
                 ("config", f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"),
                 ("lookup", lookup_path),
                 *(("gateway", f"{g.hostname} {g.port or 80} {g.path.rstrip('/') or '/'}") for g in gateways),
                 ("timeout", str(int(cfg.gateway_timeout * 1000))), ("munge", munge_socket),
                 ("request", export[seam.REQUEST_VAR]),
                 *(("export", f"{name}={value}") for name, value in export.items() if name not in _SET_BY_C)]
        _write(path, lines, options)
    except (OSError, ValueError, KeyError):
        return


def _write(path: str, plan: list[tuple[str, str]], options: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        return                              # not the user's own: no plans there
    try:
        with open(path, "rb") as f:
            kept = [p for p in read(f.read(seam.PLANS_MAX + 1)) if p[0][1] != options]
    except (OSError, ValueError):
        kept = []
    text = render([*kept[-(seam.PLANS_KEPT - 1):], plan])
    if len(text.encode()) <= seam.PLANS_MAX:
        files.write_atomic(path, text, 0o600)


def render(plans: list[list[tuple[str, object]]]) -> str:
    """A plans file holding `plans` (as `read` gives them back)."""
    return "\n".join([seam.PLANS_FORMAT, *(f"{key} {_render(key, value)}" for plan in plans
                                           for key, value in plan)]) + "\n"


def _render(key: str, value) -> str:
    if _KINDS[key] == "escaped":
        return seam.escape(value)
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


# what the C sets itself (spank/fastpath.c: fastpath_pin)
_SET_BY_C = (seam.REQUEST_VAR, seam.IMAGE_VAR, seam.IMAGE_TYPE_VAR, seam.DIGEST_VAR, seam.LOOKUP_VAR,
             seam.OWN_VIEW_VAR)
