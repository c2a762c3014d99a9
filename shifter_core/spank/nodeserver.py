"""The node server: a warm Python per node that runs the job prolog and epilog,
and builds and removes the containers of steps with a view of their own.

Starting Python and importing the node's code cost a prolog more than building
the container did, once per job and node, and again in the epilog.  So the
first prolog or epilog on a node runs in the plugin's own Python, as before,
and then starts this server; later ones ask it over a unix socket in runDir
(spank/fastpath.c: fastpath_serve).  It forks a child per request, which runs
the same handler (shifter_core.spank.node, or for a step's step_prolog and
step_epilog shifter_core.spank.step) with the request's environment and
relays its log lines and its result.  A step's slurmstepd sends the step's
own variables as the environment, and its step.

    shifter-request 1                  the plugin's request (spank/seam.c writes it)
    callback job_prolog
    job 42
    uid 1001
    started <CLOCK_MONOTONIC ns when the plugin took the call>
    step 3                             (step_prolog and step_epilog only)
    arg config=/etc/shifter/udiRoot.conf
    option image=docker:ubuntu:22.04
    option autoshift
    env SLURM_JOB_ID=42
    ...

    info shifter: job 42 on n1 runs ...    the reply: log lines, then the result
    rc 0                                   (seam.SERVED_OK, SERVED_FAILED or NOT_SERVED)

Only root may connect (runDir is root's, and the server checks the peer).  The
server lives as long as the slurmd whose prolog started it, and steps aside
(answers NOT_SERVED, so the plugin runs Python itself, and exits) once any of
its modules changed on disk; a changed udiRoot.conf is simply read again.
"""
from __future__ import annotations

import fcntl
import importlib
import os
import select
import signal
import socket
import struct
import sys
import traceback

from .. import seam
from ..container import procfs
from . import bridge, settings

_LISTEN_BACKLOG = 64
_REAP_INTERVAL = 5.0     # seconds between collecting finished children when idle
_serving = False         # this process is the server or one of its children


class Request:
    """A job_script callback, as the plugin sent it."""

    def __init__(self, callback: str, job_id: int, uid: int, started_ns: int, args: dict[str, str],
                 options: bridge.Options, env: dict[str, str], step_id: int | None = None):
        self.callback, self.job_id, self.uid, self.started_ns = callback, job_id, uid, started_ns
        self.args, self.options, self.env, self.step_id = args, options, env, step_id


def parse_request(data: bytes) -> Request:
    """The plugin's request (spank/seam.c: seam_request_text); ValueError if it is not one."""
    kinds = dict(seam.REQUEST_KEYS)
    fields: dict = {"arg": [], "option": [], "env": []}
    for key, raw in seam.read_lines(data, seam.REQUEST_FORMAT, seam.REQUEST_MAX):
        if key not in kinds:
            raise ValueError(f"unknown key {key!r}")
        value = seam.read_value(kinds[key], raw)
        if key in ("arg", "option", "env"):
            fields[key].append(value.partition("="))
        else:
            fields[key] = value
    callback = fields.get("callback")
    if callback not in seam.SERVER_CALLBACKS or not {"job", "uid", "started"} <= set(fields) \
            or ("step" in fields) != callback.startswith("step_"):
        raise ValueError("an incomplete request")
    options = {}
    for name, equals, value in fields["option"]:
        if name not in seam.OPTION_NAMES:
            raise ValueError(f"unknown option {name!r}")
        if name in seam.FLAGS or equals:
            options[name] = True if name in seam.FLAGS else value
    return Request(callback, fields["job"], fields["uid"], fields["started"],
                   {key: value for key, _, value in fields["arg"]}, bridge.Options(**options),
                   {name: value for name, equals, value in fields["env"] if equals}, fields.get("step"))


def reply_line(key: str, text: str) -> bytes:
    """One line of the reply (spank/seam.c: seam_reply_line reads it)."""
    return f"{key} {seam.escape(text)}\n".encode()


class Call(bridge.Spank):
    """What the handlers use of a SPANK handle, from a request: a step's go to the
    step's module (its context is slurmstepd's), the others to the node's."""

    def __init__(self, request: Request):
        context = "job_script" if request.step_id is None else "remote"
        super().__init__(None, context, request.callback, request.args, request.started_ns)
        self._request = request

    @property
    def job_id(self) -> int:
        return self._request.job_id

    @property
    def uid(self) -> int:
        return self._request.uid

    @property
    def step_id(self) -> int:
        if self._request.step_id is None:
            raise bridge.SpankError(f"{self.callback} is no step's")
        return self._request.step_id

    def getenv(self, name: str) -> str | None:
        """A variable of the request's environment (the step's own, for a step)."""
        return self._request.env.get(name)


def serving() -> bool:
    """Is this process the node server, or one of its children?"""
    return _serving


def socket_path(run_dir: str, node: str) -> str:
    return os.path.join(run_dir, f"{seam.SERVER_PREFIX}{node}{seam.SERVER_SUFFIX}")


# -- starting one ----------------------------------------------------------------------------

def start(spank) -> None:
    """After a prolog or epilog that ran in the plugin's own Python: start this node's
    server, unless one runs (or this process is one) or its slurmd cannot be told."""
    from ..errors import ShifterError
    from .node import node_name

    if _serving:
        return
    try:
        path = socket_path(settings.site_config(spank).run_dir, node_name())
        _start(path, settings.parse_args(spank.args).config)
    except (ShifterError, OSError) as error:
        bridge.log_debug(f"shifter: no node server: {error}")


def _start(path: str, config_path: str) -> None:
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return                          # a server runs
        slurmd = os.getppid()               # the prolog is slurmd's child: the server lives as long
        if os.path.basename(procfs.command_name(slurmd) or "") != "slurmd":
            return
        watch = os.pidfd_open(slurmd)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                if os.path.lexists(path):
                    os.unlink(path)         # a dead server's: the lock was free
                listener.bind(path)
                os.chmod(path, 0o600)
                listener.listen(_LISTEN_BACKLOG)
                if os.fork() == 0:
                    _exec_server(listener.fileno(), lock, watch, config_path)
        finally:
            os.close(watch)
    finally:
        os.close(lock)


def _exec_server(listener: int, lock: int, watch: int, config_path: str) -> None:
    """In the forked child: a fresh Python with the plugin's import path runs `main`."""
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        for fd in (listener, lock, watch):
            os.set_inheritable(fd, True)
        boot = (f"import sys; sys.path[:] = {sys.path!r}; from shifter_core.spank import nodeserver; "
                f"nodeserver.main({listener}, {lock}, {watch}, {config_path!r})")
        os.execve(sys.executable, [sys.executable, "-I", "-S", "-c", boot], {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    finally:
        os._exit(127)


# -- serving ---------------------------------------------------------------------------------

def main(listener: int, lock: int, watch: int, config_path: str) -> None:
    """Serve until slurmd (`watch`, a pidfd) is gone or the code changed."""
    global _serving
    _serving = True
    bridge.check_code_is_trusted()
    for name in ("shifter_core.spank.node", "shifter_core.spank.step", "shifter_core.pernodecache",
                 "shifter_core.ccm"):
        importlib.import_module(name)                   # once here, not per job

    settings.load_config(config_path)
    code = _code_state()
    server = socket.socket(fileno=listener)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        while True:
            ready, _, _ = select.select([server, watch], [], [], _REAP_INTERVAL)
            _reap()
            if watch in ready:
                return
            if server not in ready:
                continue
            conn, _ = server.accept()
            with conn:
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                if uid != 0:
                    continue
                if _code_state() != code:
                    _receive(conn)              # all of it: unread data would reset the connection
                    conn.sendall(reply_line(seam.REPLY_END, str(seam.NOT_SERVED)))
                    return
                if os.fork() == 0:
                    server.close()
                    for fd in (lock, watch):
                        os.close(fd)
                    _serve(conn)
    finally:
        os.unlink(server.getsockname())     # ours while we hold the lock


def _serve(conn: socket.socket) -> None:
    """In the child of one request: run it and reply, then exit."""
    rc = seam.SERVED_FAILED
    try:
        request = parse_request(_receive(conn))
        os.environ.clear()
        os.environ.update(request.env)
        bridge.log_to(lambda level, message: conn.sendall(reply_line(level, message)))
        if bridge.run(Call(request), request.options) == 0:
            rc = seam.SERVED_OK
    except BaseException:                   # noqa: BLE001 - what the plugin would log, then fail
        for line in traceback.format_exc().rstrip().splitlines():
            conn.sendall(reply_line("error", f"shifter: {line}"))
    finally:
        try:
            conn.sendall(reply_line(seam.REPLY_END, str(rc)))
        finally:
            os._exit(0)


def _receive(conn: socket.socket) -> bytes:
    """The request, up to the plugin's end of writing."""
    chunks = []
    while chunk := conn.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _code_state() -> dict[str, int]:
    """The modification times of every module of shifter_core this process loaded."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    state = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(package):
            try:
                state[path] = os.stat(path).st_mtime_ns
            except OSError:
                state[path] = -1
    return state
