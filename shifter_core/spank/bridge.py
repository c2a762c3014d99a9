"""The one entry point from the C plugin into Python, and the SPANK handle.

The plugin (spank/plugin.c) calls `shifter_py_dispatch(call)` for every
callback while a shifter option is in play and its fast path cannot serve.  Here the call becomes a `Spank` object and `Options`, and
goes to the module of its context, after pyxis' layout:

    allocator (sbatch, salloc), local (srun)  -> shifter_core.spank.submit
    job_script (prolog, epilog on each node)  -> shifter_core.spank.node
    remote (slurmstepd, its forked tasks)     -> shifter_core.spank.step

A handler returns nothing on success and raises on failure.  A ShifterError
is logged as its one-line message; anything else with its traceback.  Either
way the callback returns -1, so Slurm fails the job instead of running it
outside its container.  The node server (nodeserver.py) runs the prolog's and
epilog's handlers the same way, through `run`, with the log lines going back
to the plugin (`log_to`).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import traceback   # at the top: a task that fails after its chroot can no longer import

from .. import seam

_ffi = None
_lib = None
_sink = None        # where log lines go instead of Slurm's log (the node server's reply)
_kept = []          # C strings a task's exec still needs (replace_argv0)

CONTEXTS = {"S_CTX_LOCAL": "local", "S_CTX_REMOTE": "remote", "S_CTX_ALLOCATOR": "allocator",
            "S_CTX_JOB_SCRIPT": "job_script", "S_CTX_SLURMD": "slurmd"}
HANDLERS = {"local": "submit", "allocator": "submit", "job_script": "node", "remote": "step"}


class SpankError(Exception):
    """A SPANK API call failed."""


@dataclasses.dataclass(frozen=True)
class Options:
    """The shifter options of this job or step, as the user gave them."""

    image: str | None = None
    volume: str | None = None
    module: str | None = None
    ccm: bool = False
    autoshift: bool = False
    workdir: str | None = None
    entrypoint: bool = False
    env: str | None = None


class Spank:
    """The SPANK handle of one callback, with the calls our handlers use."""

    def __init__(self, handle, context: str, callback: str, args: dict[str, str], started_ns: int = 0):
        self._h = handle
        self.context = context
        self.callback = callback
        self.args = args
        self.started_ns = started_ns      # CLOCK_MONOTONIC when the C plugin took the call

    def elapsed_ms(self) -> float:
        """Time since the plugin took this callback, Python's start-up included."""
        import time
        return (time.monotonic_ns() - self.started_ns) / 1e6

    # items ---------------------------------------------------------------
    def _item(self, item: str, ctype: str):
        box = _ffi.new(ctype + " *")
        self._check(_lib.spank_get_item(self._h, getattr(_lib, item), box), item)
        return box[0]

    @property
    def uid(self) -> int:
        return int(self._item("S_JOB_UID", "uid_t"))

    @property
    def gid(self) -> int:
        return int(self._item("S_JOB_GID", "gid_t"))

    @property
    def job_id(self) -> int:
        return int(self._item("S_JOB_ID", "uint32_t"))

    @property
    def step_id(self) -> int:
        return int(self._item("S_JOB_STEPID", "uint32_t"))

    @property
    def node_id(self) -> int:
        return int(self._item("S_JOB_NODEID", "uint32_t"))

    @property
    def local_task_id(self) -> int:
        return int(self._item("S_TASK_ID", "int"))

    @property
    def argv(self) -> list[str]:
        argc = _ffi.new("int *")
        argv = _ffi.new("char ***")
        self._check(_lib.spank_get_item(self._h, _lib.S_JOB_ARGV, argc, argv), "S_JOB_ARGV")
        return [_ffi.string(argv[0][i]).decode() for i in range(argc[0])]

    def replace_argv0(self, path: str) -> None:
        """Make the task exec `path` with its arguments (SPANK can replace argv's words,
        not add any); the new word is kept alive until the exec."""
        argc = _ffi.new("int *")
        argv = _ffi.new("char ***")
        self._check(_lib.spank_get_item(self._h, _lib.S_JOB_ARGV, argc, argv), "S_JOB_ARGV")
        word = _ffi.new("char[]", path.encode())
        _kept.append(word)
        argv[0][0] = word

    @property
    def env(self) -> dict[str, str]:
        """The job's (task's) environment as Slurm will pass it to exec."""
        envp = _ffi.new("char ***")
        self._check(_lib.spank_get_item(self._h, _lib.S_JOB_ENV, envp), "S_JOB_ENV")
        result = {}
        i = 0
        while envp[0][i] != _ffi.NULL:
            key, sep, value = _ffi.string(envp[0][i]).decode(errors="surrogateescape").partition("=")
            if sep:
                result[key] = value
            i += 1
        return result

    @property
    def supplementary_gids(self) -> list[int]:
        gids = _ffi.new("gid_t **")
        count = _ffi.new("int *")
        self._check(_lib.spank_get_item(self._h, _lib.S_JOB_SUPPLEMENTARY_GIDS, gids, count),
                    "S_JOB_SUPPLEMENTARY_GIDS")
        return [int(gids[0][i]) for i in range(count[0])]

    # environment ---------------------------------------------------------
    def getenv(self, name: str) -> str | None:
        """A variable of the job's environment (remote context)."""
        size = 4096
        while True:
            buf = _ffi.new("char[]", size)
            rc = _lib.spank_getenv(self._h, name.encode(), buf, size)
            if rc == _lib.ESPANK_ENV_NOEXIST:
                return None
            if rc == _lib.ESPANK_NOSPACE and size < 1 << 20:
                size *= 4
                continue
            self._check(rc, f"getenv {name}")
            return _ffi.string(buf).decode()

    def setenv(self, name: str, value: str) -> None:
        self._check(_lib.spank_setenv(self._h, name.encode(), value.encode(), 1), f"setenv {name}")

    def unsetenv(self, name: str) -> None:
        self._check(_lib.spank_unsetenv(self._h, name.encode()), f"unsetenv {name}")

    def job_control_setenv(self, name: str, value: str) -> None:
        """Set a variable the prolog and epilog see as SPANK_<name>."""
        self._check(_lib.spank_job_control_setenv(self._h, name.encode(), value.encode(), 1),
                    f"job_control_setenv {name}")

    def _check(self, rc: int, what: str) -> None:
        if rc != _lib.ESPANK_SUCCESS:
            reason = _ffi.string(_lib.spank_strerror(rc)).decode()
            raise SpankError(f"spank {what} in {self.callback}: {reason}")


def _c_string(message: str):
    return _ffi.new("char[]", message.encode(errors="replace"))


def log_error(message: str) -> None:
    _log("error", message)


def log_info(message: str) -> None:
    _log("info", message)


def log_debug(message: str) -> None:
    _log("debug", message)


def log_exception() -> None:
    """The exception being handled, with its traceback, as error lines."""
    for line in traceback.format_exc().rstrip().splitlines():
        log_error(f"shifter: {line}")


def log_to(sink) -> None:
    """Send log lines to `sink(level, message)` rather than to Slurm's log."""
    global _sink
    _sink = sink


def _log(level: str, message: str) -> None:
    if _sink is not None:
        _sink(level, message)
    else:
        getattr(_lib, f"slurm_{level}")(b"%s", _c_string(message))


def _plugin_args(call) -> dict[str, str]:
    args = {}
    for i in range(call.argc):
        key, sep, value = _ffi.string(call.argv[i]).decode().partition("=")
        args[key] = value if sep else ""
    return args


def _options(call) -> Options:
    values = {}
    for i, name in enumerate(seam.OPTION_NAMES):
        if not call.set[i]:
            continue
        if name in seam.FLAGS:
            values[name] = True
        elif call.value[i] != _ffi.NULL:
            values[name] = _ffi.string(call.value[i]).decode()
    return Options(**values)


def _context_name(number: int) -> str:
    for const, name in CONTEXTS.items():
        if getattr(_lib, const) == number:
            return name
    return "error"


def dispatch(call) -> int:
    """One callback from the plugin."""
    callback = _ffi.string(call.callback).decode()
    spank = Spank(call.spank, _context_name(call.context), callback, _plugin_args(call), call.started_ns)
    rc = run(spank, _options(call))
    if spank.context == "job_script":
        from . import nodeserver   # later prologs and epilogs on this node need no Python start

        nodeserver.start(spank)
    return rc


def run(spank: Spank, opts: Options) -> int:
    """Route a callback to its context module's handler of the same name; its rc."""
    from ..errors import ShifterError

    module_name = HANDLERS.get(spank.context)
    if module_name is None:
        return 0
    module = importlib.import_module(f"shifter_core.spank.{module_name}")
    handler = getattr(module, spank.callback, None)
    if handler is None:
        return 0
    try:
        handler(spank, opts)
    except ShifterError as error:
        log_error(f"shifter: {error}")
        return -1
    return 0


def _on_exception(exc_type, exc_value, tb) -> None:
    lines = traceback.format_exception(exc_type, exc_value, tb)
    for line in "".join(lines).rstrip().splitlines():
        log_error(f"shifter: {line}")


def check_code_is_trusted() -> None:
    """Everything Python may import from runs as root here: refuse a path
    that a user could write to (the plugin checked the venv itself already)."""
    from .. import trust
    from ..errors import ShifterError

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in dict.fromkeys([package] + [p for p in sys.path if p and os.path.exists(p)]):
        try:
            trust.require_root_owned(path, "Python import path")
        except ShifterError as error:
            raise ShifterError(f"refusing to run the plugin: {error}") from None


def install(ffi, lib) -> None:
    """Attach the extern "Python" entry point; called by the cffi init code."""
    global _ffi, _lib
    _ffi, _lib = ffi, lib
    try:
        check_code_is_trusted()
    except Exception as error:
        log_error(f"shifter: {error}")
        raise

    @ffi.def_extern(error=-1, onerror=_on_exception)
    def shifter_py_dispatch(call):
        return dispatch(call)
