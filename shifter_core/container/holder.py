"""The process that holds a container's mount namespace, from the prolog to the epilog.

Each container lives in a mount namespace of its own, created by a small
holder process the prolog forks: nothing of it is visible in the node's
namespace, several jobs on a node each see only their own image, and killing
the holder (with whatever else still runs in the namespace) releases every
mount and loop device at once, even after a slurmd restart or a prolog that
died midway.  (Persisting the namespace with a bind mount of its nsfs file
would need no holder, but fails on some kernels inside the nested namespaces
of our emulated nodes.)

The holder builds the container (build.py), writes the record (record.py),
tells the prolog how it went over a pipe, then becomes `sleep infinity`
named `shifter-holder:<job>:<node>` so that the epilog finds it even without
its record.

A step with a view of its own (another image, other volumes or modules) gets
a container of its own the same way, built for its slurmstepd (by the node
server, or by slurmstepd's own Python: spank/step.py): its holder is
`shifter-holder:<job>.<step>:<node>`, ended when the step ends; should the
slurmstepd die first, the job's epilog ends whatever step containers of the
job are left (the plugin runs it for any job that has one:
spank/fastpath.c: fastpath_has_step_containers).
"""
from __future__ import annotations

import json
import os
import select
import signal
import stat
import time

from .. import environ, provenance, seam, syscalls, trust, volumes
from ..errors import ContainerError, JobFault, ShifterError, internal_error
from . import build, procfs
from .record import JobContainer, SetupFailed, state_path

HOLDER_NAME = "shifter-holder"
SETUP_TIMEOUT = 120.0


def ensure_run_dir(run_dir: str) -> None:
    """The root-only directory of container state (created 0700 if missing)."""
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    st = os.lstat(run_dir)
    if not stat.S_ISDIR(st.st_mode) or not trust.root_only(st) or st.st_mode & 0o077:
        raise ContainerError(f"runDir {run_dir} must be a root-owned directory of mode 0700")


def find(cfg, job_id: int, node: str, step_id: int | None = None) -> JobContainer:
    """The live container of a job (or of one of its steps) on this node, for a task to
    enter; SetupFailed if the prolog recorded that the job's container could not be built here."""
    try:
        container = JobContainer.load(state_path(cfg.run_dir, job_id, node, step_id))
    except FileNotFoundError:
        raise ContainerError(
            f"job {job_id} has no container on {node}: its prolog did not set one up") from None
    if (container.job_id, container.node, container.step_id) != (job_id, node, step_id):
        raise ContainerError(f"the container record of job {job_id} on {node} names job"
                             f" {container.job_id} on {container.node}")
    if not container.alive():
        raise ContainerError(f"the container of job {job_id} on {node} is gone")
    return container


def create(cfg, spec) -> JobContainer:
    """Build the job's container in a new holder process; return its record.

    Idempotent: a live container of the same job on this node is returned as is.
    A failure leaves nothing behind: the half-built namespace dies with its
    holder.  It raises SetupFailed when the job caused it, ContainerError when
    the node did.
    """
    ensure_run_dir(cfg.run_dir)
    path = state_path(cfg.run_dir, spec.job_id, spec.node, spec.step_id)
    try:
        existing = JobContainer.load(path)
        if existing.alive():
            return existing
        os.unlink(path)
    except (FileNotFoundError, SetupFailed):
        pass
    reader, writer = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        _holder_main(cfg, spec, path, writer)
    os.close(writer)
    try:
        reply = _read_reply(reader, SETUP_TIMEOUT)
    finally:
        os.close(reader)
    if reply.get("ok"):
        return JobContainer.load(path)
    _kill(pid)
    message = reply.get("error") or f"container setup of job {spec.job_id} failed"
    raise SetupFailed(message) if reply.get("job_fault") else ContainerError(message)


def _read_reply(fd: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return {"error": f"container setup did not finish within {timeout:.0f} s"}
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    try:
        return json.loads(data or b"{}")
    except ValueError:
        return {"error": "container setup died without a reply"}


def _holder_main(cfg, spec, path: str, reply_fd: int) -> None:
    """In the forked child: build, report, then hold the namespace forever."""
    namespace = None
    try:
        os.setsid()
        _to_devnull()
        started = time.perf_counter()
        syscalls.unshare(syscalls.CLONE_NEWNS)
        namespace = procfs.mount_namespace(os.getpid())
        root = os.open("/", os.O_PATH | os.O_CLOEXEC)
        syscalls.set_attributes(root, propagation=syscalls.PROPAGATION[cfg.mount_propagation_style],
                                recursive=True)
        os.close(root)
        timings, tree = build.build(cfg, spec)
        timings["total"] = time.perf_counter() - started
        for extension in spec.extensions:
            mark = time.perf_counter()
            extension.start(tree, cfg, spec)
            timings[extension.name] = time.perf_counter() - mark
        _record(cfg, spec, timings).save(path)
        os.write(reply_fd, b'{"ok": true}')
    except BaseException as error:          # noqa: BLE001 - report everything, then die
        expected = isinstance(error, (ShifterError, OSError))
        message = str(error) if expected else internal_error(error)
        # a bug an image or a job triggers must not take nodes out of service
        job_fault = isinstance(error, JobFault) or not expected
        try:
            if namespace is not None:     # what the build started there (a CCM sshd) dies too
                _kill_namespace(namespace, spare=os.getpid())
            os.write(reply_fd, json.dumps({"error": message, "job_fault": job_fault}).encode())
        finally:
            os._exit(1)
    os.close(reply_fd)
    os.closerange(3, 65536)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.execv("/bin/sleep", [holder_name(spec.job_id, spec.node, spec.step_id), "infinity"])
    except OSError:
        while True:
            signal.pause()


def _record(cfg, spec, timings: dict[str, float]) -> JobContainer:
    pid = os.getpid()
    return JobContainer(
        job_id=spec.job_id, node=spec.node, holder_pid=pid, holder_start=procfs.start_time(pid),
        mntns=procfs.mount_namespace(pid), root=cfg.udi_mount, image_id=spec.image.id,
        digest=spec.image.digest, uid=spec.user.uid, gid=spec.user.gid, workdir=spec.image.workdir,
        modules=[m.name for m in spec.modules],
        timings={k: round(v * 1000, 3) for k, v in timings.items()},
        env_ops=environ.operations(
            spec.image.env, levels=[environ.site_settings(m) for m in spec.modules],
            shifter={"SHIFTER_IMAGE": spec.image.id, "SHIFTER_IMAGE_DIGEST": spec.image.digest},
            **environ.site_settings(cfg)),
        python=bool(spec.extensions) or any(m.per_task for m in spec.modules),
        step_id=spec.step_id, volumes=volumes.render(spec.volumes),
        provenance_log=(os.path.join(cfg.provenance_dir, spec.node + provenance.SUFFIX)
                        if cfg.provenance_dir else None),
    )


def _to_devnull() -> None:
    """Detach from the prolog's pipes: slurmd waits for them to close."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


# ---- epilog -----------------------------------------------------------------

def holder_name(job_id: int, node: str, step_id: int | None = None) -> str:
    step = "" if step_id is None else f".{int(step_id)}"
    return f"{HOLDER_NAME}:{int(job_id)}{step}:{node}"


def destroy(cfg, job_id: int, node: str, step_id: int | None = None) -> bool:
    """End everything in the container of the job (or of one of its steps) and release
    it; True if one existed.  The job's includes what its steps' left.

    Idempotent and independent of the prolog's success: it finds holders by
    their state file and, should that be missing, by their process name, among
    root's processes only (anyone may name a process so).  It never ends the
    mount namespace it runs in, whatever leads it there.  A recorded failure is
    forgotten too.
    """
    paths = [state_path(cfg.run_dir, job_id, node, step_id)]
    names = {holder_name(job_id, node, step_id)}
    if step_id is None:
        steps = _step_records(cfg.run_dir, job_id, node)
        paths += [path for path, _ in steps]
        names |= {holder_name(job_id, node, step) for _, step in steps}
    holders = set()
    for path in paths:
        try:
            container = JobContainer.load(path)
            if container.alive():
                holders.add((container.holder_pid, container.mntns))
        except (FileNotFoundError, ValueError, TypeError, SetupFailed):
            pass
    step_prefix = f"{HOLDER_NAME}:{int(job_id)}."
    for pid in procfs.pids():
        name = procfs.command_name(pid)
        if (name in names or (step_id is None and name and name.startswith(step_prefix)
                              and name.endswith(f":{node}"))) and procfs.uids(pid) == (0, 0, 0, 0):
            holders.add((pid, procfs.mount_namespace(pid)))
    own = procfs.mount_namespace(os.getpid())
    for holder_pid, mntns in holders:
        if mntns is not None and mntns != own:
            _kill_namespace(mntns, spare=holder_pid)
        _kill(holder_pid)
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return bool(holders)


def _step_records(run_dir: str, job_id: int, node: str) -> list[tuple[str, int]]:
    """The records of the job's step containers on this node, with their steps."""
    prefix, suffix = f"{seam.STATE_PREFIX}{int(job_id)}.{seam.STEP_INFIX}", f".{node}{seam.STATE_SUFFIX}"
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    steps = [name[len(prefix):-len(suffix)] for name in names if name.startswith(prefix) and name.endswith(suffix)]
    return [(state_path(run_dir, job_id, node, int(step)), int(step)) for step in steps if step.isdigit()]


def _kill_namespace(mntns: int, spare: int, timeout: float = 10.0) -> None:
    """Kill every process of mount namespace `mntns` but `spare`, until none is
    left: a process may fork (an sshd accepting a login) while we scan."""
    deadline = time.monotonic() + timeout
    while True:
        victims = [pid for pid in procfs.pids()
                   if pid != spare and procfs.mount_namespace(pid) == mntns
                   and procfs.state(pid) not in (None, "Z", "X")]
        if not victims:
            return
        if time.monotonic() > deadline:
            raise ContainerError(f"processes {victims} of the container keep appearing")
        for pid in victims:
            _kill(pid)


def _kill(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL `pid` and wait until it is gone or a zombie (PID 1 may not reap)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procfs.state(pid) in (None, "Z", "X"):
            return
        time.sleep(0.005)
    raise ContainerError(f"process {pid} of the container did not die")
