"""A job's container on one node: built by the prolog, entered by tasks,
torn down by the epilog.

Each container lives in a mount namespace of its own, created by a small
holder process the prolog forks: nothing of it is visible in the node's
namespace, several jobs on a node each see only their own image, and killing
the holder (with whatever else still runs in the namespace) releases every
mount and loop device at once, even after a slurmd restart or a prolog that
died midway.  (Persisting the namespace with a bind mount of its nsfs file
would need no holder, but fails on some kernels inside the nested namespaces
of our emulated nodes.)

Inside that namespace:

    <loopMount>           tmpfs (rootfsType), private to the namespace
        image/            the image's squashfs, loop-mounted ro,nosuid,nodev
        upper/ work/      the writable layer of the root
    <udiMount>            overlay of upper/ over image/, nosuid,nodev: the
                          container root the tasks chroot into

The overlay puts the site's files (/etc/passwd, group, ... , mount points)
over the image, which is the order Shifter builds by copying; it also lets a
volume target be created anywhere, on the tmpfs layer (Shifter issue #231).
Then /dev, an overlay of the node's /dev (so that site device binds need no
mount point in the node's /dev), and in Shifter's order: siteFs and module
siteFs binds; site /etc files; /opt/udiImage; /var/hostsfile; module root
hooks; /proc, /sys, /tmp, /var/tmp; user volumes last; the root optionally
remounted read-only.  Every
path inside the root is resolved with pathsafety, so a symlink shipped in the
image can never redirect a mount or a write to the node's own files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import signal
import stat
import time

from . import config, environ, etcfiles, files, pathsafety, provenance, syscalls
from .errors import ContainerError, ShifterError, VolumeError
from .imagestore import ImageMeta

HOLDER_NAME = "shifter-holder"
SETUP_TIMEOUT = 120.0
STATE_MODE = 0o600
STATE_FORMAT = "shifter-container 1"   # first line of a record; spank/plugin.c checks it
ROOT_FLAGS = syscalls.MS_NOSUID | syscalls.MS_NODEV
IMAGE_FLAGS = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV
CONFIG_MARKER = "var/shifterConfig.json"
SKELETON = ("etc", "opt/udiImage/modules", "var/spool", "var/run", "var/tmp", "var/empty",
            "proc", "sys", "dev", "tmp", "run")


@dataclasses.dataclass
class ContainerSpec:
    """Everything the prolog decided about one job's container on this node."""

    job_id: int
    node: str
    image: ImageMeta
    image_file: str
    user: etcfiles.User
    volumes: tuple = ()              # user volumes.VolumeMount, policy-checked
    modules: tuple = ()              # config.Module, already selected
    hosts: tuple[str, ...] = ()      # /var/hostsfile, one line per task
    request: str = ""                # the descriptor the user asked for
    ccm_secret: bytes | None = None  # --ccm: the job's key secret; an sshd is started (ccm.py)


@dataclasses.dataclass
class JobContainer:
    """A container that exists: what tasks and the epilog need to find it."""

    job_id: int
    node: str
    holder_pid: int
    holder_start: int                # /proc/<pid>/stat start time, against pid reuse
    mntns: int                       # inode of the namespace
    root: str
    image_id: str
    digest: str
    uid: int
    gid: int
    workdir: str | None
    modules: list[str]
    timings: dict[str, float]
    env_ops: list[tuple[str, str, str]]   # environ.operations, for every task
    python: bool = False             # its tasks need the Python path (CCM, module user hooks)
    provenance_log: str | None = None

    def save(self, path: str) -> None:
        lines = [STATE_FORMAT, f"job {self.job_id}", f"node {self.node}",
                 f"holder {self.holder_pid} {self.holder_start} {self.mntns}", f"root {self.root}",
                 f"image {self.image_id}", f"digest {self.digest}", f"user {self.uid} {self.gid}",
                 f"modules {','.join(self.modules)}", f"python {int(self.python)}"]
        if self.workdir:
            lines.append(f"workdir {_escape(self.workdir)}")
        if self.provenance_log:
            lines.append(f"provenance {self.provenance_log}")
        lines += [f"timing {name} {value}" for name, value in self.timings.items()]
        lines += [f"env {op} {_escape(name)}={_escape(value)}" for op, name, value in self.env_ops]
        files.write_atomic(path, "\n".join(lines) + "\n", STATE_MODE)

    @classmethod
    def load(cls, path: str) -> "JobContainer":
        """Read a record; ValueError if it is not a complete one."""
        with open(path, encoding="utf-8", newline="") as f:    # no newline translation
            lines = f.read().split("\n")
        if lines[0] != STATE_FORMAT:
            raise ValueError(f"{path} is not a container record")
        fields: dict = {"modules": [], "timings": {}, "env_ops": [], "workdir": None}
        for line in lines[1:]:
            key, _, value = line.partition(" ")
            if key == "job":
                fields["job_id"] = int(value)
            elif key in ("node", "root", "digest"):
                fields[key] = value
            elif key == "provenance":
                fields["provenance_log"] = value
            elif key == "image":
                fields["image_id"] = value
            elif key == "holder":
                fields["holder_pid"], fields["holder_start"], fields["mntns"] = map(int, value.split())
            elif key == "user":
                fields["uid"], fields["gid"] = map(int, value.split())
            elif key == "modules":
                fields["modules"] = [m for m in value.split(",") if m]
            elif key == "python":
                fields["python"] = value == "1"
            elif key == "workdir":
                fields["workdir"] = _unescape(value)
            elif key == "timing":
                name, number = value.split()
                fields["timings"][name] = float(number)
            elif key == "env":
                op, _, assignment = value.partition(" ")
                name, _, text = assignment.partition("=")
                fields["env_ops"].append((op, _unescape(name), _unescape(text)))
            elif key:
                raise ValueError(f"{path}: unknown line {line!r}")
        return cls(**fields)

    def alive(self) -> bool:
        """Is the holder still the process that created this namespace?"""
        return _start_time(self.holder_pid) == self.holder_start and _mntns(self.holder_pid) == self.mntns

    def namespace_fd(self) -> int:
        """An fd of the namespace, checked after opening against pid reuse."""
        fd = os.open(f"/proc/{self.holder_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        if os.fstat(fd).st_ino != self.mntns or _start_time(self.holder_pid) != self.holder_start:
            os.close(fd)
            raise ContainerError(f"the container of job {self.job_id} on {self.node} is gone")
        return fd


def state_path(run_dir: str, job_id: int, node: str) -> str:
    """Per job *and node*: emulated nodes may share one filesystem."""
    if not node or "/" in node or node.startswith("."):
        raise ContainerError(f"invalid node name {node!r}")
    return os.path.join(run_dir, f"job{int(job_id)}.{node}.state")


def _escape(text: str) -> str:
    """One line per value: backslash and newline escaped (spank/plugin.c: unescape)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(text: str) -> str:
    out, chars = [], iter(text)
    for char in chars:
        if char == "\\":
            char = {"n": "\n", "\\": "\\"}.get(next(chars, ""), "")
        out.append(char)
    return "".join(out)


def ensure_run_dir(run_dir: str) -> None:
    """The root-only directory of container state (created 0700 if missing)."""
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    st = os.lstat(run_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        raise ContainerError(f"runDir {run_dir} must be a root-owned directory of mode 0700")


def find(cfg, job_id: int, node: str) -> JobContainer:
    """The live container of a job on this node, for a task to enter."""
    try:
        container = JobContainer.load(state_path(cfg.run_dir, job_id, node))
    except FileNotFoundError:
        raise ContainerError(
            f"job {job_id} has no container on {node}: its prolog did not set one up") from None
    if not container.alive():
        raise ContainerError(f"the container of job {job_id} on {node} is gone")
    return container


# ---- prolog -----------------------------------------------------------------

def create(cfg, spec: ContainerSpec) -> JobContainer:
    """Build the job's container in a new holder process; return its record.

    Idempotent: a live container of the same job on this node is returned as is.
    A failure leaves nothing behind: the half-built namespace dies with its
    holder.
    """
    ensure_run_dir(cfg.run_dir)
    path = state_path(cfg.run_dir, spec.job_id, spec.node)
    try:
        existing = JobContainer.load(path)
        if existing.alive():
            return existing
        os.unlink(path)
    except FileNotFoundError:
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
    raise ContainerError(reply.get("error") or f"container setup of job {spec.job_id} failed")


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


def _holder_main(cfg, spec: ContainerSpec, path: str, reply_fd: int) -> None:
    """In the forked child: build, report, then hold the namespace forever."""
    namespace = None
    try:
        os.setsid()
        _to_devnull()
        started = time.perf_counter()
        syscalls.unshare(syscalls.CLONE_NEWNS)
        namespace = _mntns(os.getpid())
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.PROPAGATION[cfg.mount_propagation_style])
        timings = _build(cfg, spec)
        timings["total"] = time.perf_counter() - started
        pid = os.getpid()
        JobContainer(
            job_id=spec.job_id, node=spec.node, holder_pid=pid, holder_start=_start_time(pid),
            mntns=_mntns(pid), root=cfg.udi_mount, image_id=spec.image.id, digest=spec.image.digest,
            uid=spec.user.uid, gid=spec.user.gid, workdir=spec.image.workdir,
            modules=[m.name for m in spec.modules],
            timings={k: round(v * 1000, 3) for k, v in timings.items()},
            env_ops=environ.operations(
                spec.image.env, levels=[environ.site_settings(m) for m in spec.modules],
                shifter={"SHIFTER_IMAGE": spec.image.id, "SHIFTER_IMAGE_DIGEST": spec.image.digest},
                **environ.site_settings(cfg)),
            python=spec.ccm_secret is not None or any(m.user_hook for m in spec.modules),
            provenance_log=(os.path.join(cfg.provenance_dir, spec.node + provenance.SUFFIX)
                            if cfg.provenance_dir else None),
        ).save(path)
        os.write(reply_fd, b'{"ok": true}')
    except BaseException as error:          # noqa: BLE001 - report everything, then die
        message = str(error) if isinstance(error, (ShifterError, OSError)) else repr(error)
        try:
            if namespace is not None:     # what the build started there (a CCM sshd) dies too
                _kill_namespace(namespace, spare=os.getpid())
            os.write(reply_fd, json.dumps({"error": message}).encode())
        finally:
            os._exit(1)
    os.close(reply_fd)
    os.closerange(3, 65536)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.execv("/bin/sleep", [f"{HOLDER_NAME}:{spec.job_id}:{spec.node}", "infinity"])
    except OSError:
        while True:
            signal.pause()


def _to_devnull() -> None:
    """Detach from the prolog's pipes: slurmd waits for them to close."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _build(cfg, spec: ContainerSpec) -> dict[str, float]:
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    stage, root = cfg.loop_mount, cfg.udi_mount
    for directory in (stage, root):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    syscalls.mount("shifter", stage, cfg.rootfs_type, ROOT_FLAGS, "mode=0700")
    for sub in ("image", "upper", "work"):
        os.mkdir(os.path.join(stage, sub), 0o755)
    syscalls.loop_mount(spec.image_file, os.path.join(stage, "image"), spec.image.format, IMAGE_FLAGS)
    syscalls.mount("shifter", root, "overlay", ROOT_FLAGS,
                   f"lowerdir={stage}/image,upperdir={stage}/upper,workdir={stage}/work")
    timings["mount"] = time.perf_counter() - mark

    mark = time.perf_counter()
    tree = _Tree(root)
    old_umask = os.umask(0o022)
    try:
        for directory in SKELETON:
            tree.makedirs(directory)
        os.chmod(tree.path("tmp"), 0o1777)
        os.chmod(tree.path("var/empty"), 0o700)
        _mount_dev(tree, stage)
        _run_hook(cfg.site_pre_mount_hook, root, "sitePreMountHook")
        for volume in cfg.site_fs:
            _bind_volume(tree, volume, volume.source, cfg)
        _run_hook(cfg.site_post_mount_hook, root, "sitePostMountHook")
        for module in spec.modules:
            for volume in module.site_fs:
                _bind_volume(tree, volume, volume.source, cfg)
        _write_etc(tree, cfg, spec)
        _bind_udi_image(tree, cfg, spec)
        if spec.hosts:
            tree.write("var/hostsfile", "".join(f"{h}\n" for h in spec.hosts))
        for module in spec.modules:
            _run_hook(module.root_hook, root, f"module_{module.name}_roothook")
        _mount_system(tree)
        for volume in spec.volumes:
            _mount_user_volume(tree, volume, spec, cfg)
        if spec.ccm_secret is not None:
            from . import ccm
            ccm.prepare(tree, cfg, spec)
        tree.write(CONFIG_MARKER, json.dumps(_marker(spec), sort_keys=True) + "\n")
        if not cfg.mount_udi_root_writable:
            syscalls.mount(None, root, None, syscalls.MS_REMOUNT | ROOT_FLAGS | syscalls.MS_RDONLY)
    finally:
        os.umask(old_umask)
    timings["setup"] = time.perf_counter() - mark
    if spec.ccm_secret is not None:
        mark = time.perf_counter()
        ccm.start(tree, cfg, spec)
        timings["sshd"] = time.perf_counter() - mark
    return timings


def _marker(spec: ContainerSpec) -> dict:
    """/var/shifterConfig.json: what tasks check to know they run in the pinned image."""
    from . import volumes
    return {"identifier": spec.image.id, "digest": spec.image.digest, "user": spec.user.name,
            "volMap": volumes.signature(spec.volumes), "request": spec.request,
            "modules": ",".join(m.name for m in spec.modules), "job": spec.job_id}


class _Tree:
    """Paths inside the container root, resolved so that no symlink leaves it."""

    def __init__(self, root: str):
        self.root = root

    def path(self, inside: str) -> str:
        return pathsafety.resolve(self.root, "/" + inside.strip("/"))

    def makedirs(self, inside: str, mode: int = 0o755) -> str:
        """Create the missing directories of `inside`; return its host path.

        Only components that do not exist are created, below a prefix that
        was resolved inside the root, so no symlink can be followed.
        """
        host = pathsafety.resolve(self.root, "/" + inside.strip("/"), missing_ok=True)
        os.makedirs(host, mode, exist_ok=True)
        if not os.path.isdir(host):
            raise ContainerError(f"cannot create directory /{inside.strip('/')} in the container: "
                                 "the image has a file there")
        return self.path(inside)

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        """Replace a file, whatever the image put at that path."""
        parent = self.makedirs(os.path.dirname(inside.strip("/")))
        host = os.path.join(parent, os.path.basename(inside))
        _remove_any(host)
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(host, mode, follow_symlinks=False)

    def symlink(self, inside: str, target: str) -> None:
        parent = self.makedirs(os.path.dirname(inside.strip("/")))
        host = os.path.join(parent, os.path.basename(inside))
        _remove_any(host)
        os.symlink(target, host)

    def mount_point(self, inside: str, *, is_dir: bool) -> str:
        """The host path of a mount target inside the root, created if missing."""
        if is_dir:
            return self.makedirs(inside)
        parent = self.makedirs(os.path.dirname(inside.strip("/")))
        host = os.path.join(parent, os.path.basename(inside))
        if not os.path.lexists(host):
            os.close(os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        return self.path(inside)

    def user_mount_point(self, inside: str) -> str:
        """The host path of a user volume's target directory, created if missing.

        A missing target is created only on the container's own layer, never
        in a node file system bound into it (/tmp, a siteFs home), where it
        would appear on the node and where the node's users could swap
        directories under us; an existing one must be a directory of that
        layer or a mount point of the container.  The policy is checked again
        on where the target really leads, so a symlink in the image cannot
        turn an allowed /data into a forbidden /etc.
        """
        from . import volumes
        host = pathsafety.resolve(self.root, inside, missing_ok=True)
        relative = os.path.relpath(host, os.path.realpath(self.root))
        real = "/" if relative == "." else "/" + relative
        if real != inside:
            try:
                volumes.parse(f"/:{real}", volumes.USER)
            except VolumeError:
                raise VolumeError(f"--volume target {inside} leads to {real} in the container, "
                                  "where users cannot mount") from None
        existing = host
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        layer = os.stat(self.root).st_dev
        if existing != host:
            allowed = os.stat(existing).st_dev == layer
        elif not os.path.isdir(host):
            raise VolumeError(f"--volume target {inside} is not a directory in the container")
        else:
            allowed = os.stat(host).st_dev == layer or (
                os.path.ismount(host) and os.stat(os.path.dirname(host)).st_dev == layer)
        if not allowed:
            raise VolumeError(f"cannot mount on {inside}: it lies in a node file system bound into "
                              "the container; choose a target outside it")
        return self.makedirs(real)


def _remove_any(host: str) -> None:
    if os.path.isdir(host) and not os.path.islink(host):
        import shutil   # shutil pulls in the compression modules: only when needed

        shutil.rmtree(host)
    elif os.path.lexists(host):
        os.unlink(host)


def _write_etc(tree: _Tree, cfg, spec: ContainerSpec) -> None:
    user = spec.user
    if cfg.populate_etc_dynamically:
        tree.write("etc/passwd", etcfiles.passwd_text(user, cfg.users_to_import))
        tree.write("etc/group", etcfiles.group_text(user, cfg.max_group_count, cfg.users_to_import))
        tree.write("etc/nsswitch.conf", etcfiles.NSSWITCH)
        tree.write("etc/host.conf", etcfiles.HOST_CONF)
    else:
        for name in sorted(os.listdir(cfg.etc_path)):
            source = os.path.join(cfg.etc_path, name)
            if os.path.isfile(source) and not os.path.islink(source):
                with open(source, encoding="utf-8", errors="surrogateescape") as f:
                    text = f.read()
                if name == "group":
                    text = etcfiles.filter_group_file(text, user, cfg.max_group_count)
                tree.write(f"etc/{name}", text)
    tree.write("etc/shadow", "", mode=0o600)
    for name in ("hosts", "resolv.conf"):
        try:
            with open(f"/etc/{name}", encoding="utf-8", errors="surrogateescape") as f:
                tree.write(f"etc/{name}", f.read())
        except FileNotFoundError:
            pass
    tree.symlink("etc/mtab", "/proc/mounts")


def _bind_udi_image(tree: _Tree, cfg, spec: ContainerSpec) -> None:
    """Site helpers (optUdiImage at /opt/udiImage) and module copyPath trees
    (at /opt/udiImage/modules/<name>), bound read-only.

    Shifter copies them into every container; a bind shows the same files
    without copying megabytes (the CCM sshd bundle) at every job start.  The
    entries of optUdiImage are bound one by one so that modules/ stays on the
    container's own layer, where the modules' mount points are made.
    """
    if cfg.opt_udi_image:
        _require_root_tree(cfg.opt_udi_image, "optUdiImage")
        tree.makedirs("opt/udiImage/modules")
        for name in sorted(os.listdir(cfg.opt_udi_image)):
            source = os.path.join(cfg.opt_udi_image, name)
            if name == "modules":
                continue
            if os.path.islink(source):
                tree.symlink(f"opt/udiImage/{name}", os.readlink(source))
                continue
            is_dir = os.path.isdir(source)
            syscalls.bind(source, tree.mount_point(f"opt/udiImage/{name}", is_dir=is_dir),
                          readonly=True, recursive=is_dir)
    for module in spec.modules:
        if module.copy_path:
            _require_root_tree(module.copy_path, f"module_{module.name}_copyPath")
            syscalls.bind(module.copy_path, tree.makedirs(f"opt/udiImage/modules/{module.name}"),
                          readonly=True, recursive=True)


def _require_root_tree(directory: str, what: str) -> None:
    """Root copies this tree into containers: root alone may have written any of it."""
    config.require_root_owned(directory, what)
    for parent, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            if st.st_uid != 0 or (not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022):
                raise ContainerError(f"{what} {directory} must hold only files that root owns and "
                                     f"group and others cannot write; {path} is not one")


def _mount_system(tree: _Tree) -> None:
    syscalls.mount("proc", tree.path("proc"), "proc",
                   syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    syscalls.bind("/sys", tree.path("sys"), readonly=True)
    syscalls.bind("/tmp", tree.path("tmp"))
    if os.path.isdir("/var/tmp"):
        syscalls.bind("/var/tmp", tree.path("var/tmp"))


def _mount_dev(tree: _Tree, stage: str) -> None:
    """/dev: the node's devices, as an overlay whose upper layer is the container's.

    Mount points for site device binds (a GPU's /dev/nvidia0 bound from
    elsewhere) are created there and never in the node's /dev.  The node's
    mounts under /dev (pts, shm, mqueue ...) are bound on top.
    """
    for sub in ("dev-upper", "dev-work"):
        os.mkdir(os.path.join(stage, sub), 0o755)
    syscalls.mount("shifter-dev", tree.path("dev"), "overlay", syscalls.MS_NOSUID,
                   f"lowerdir=/dev,upperdir={stage}/dev-upper,workdir={stage}/dev-work")
    for mount_point in _mounts_below("/dev"):
        syscalls.bind(mount_point, tree.path(mount_point), recursive=True, nodev=False)


def _mounts_below(directory: str) -> list[str]:
    """The outermost mount points strictly below `directory` in this namespace."""
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point.startswith(directory + "/") and point not in found:
                found.append(point)
    return [p for p in found if not any(p.startswith(other + "/") for other in found)]


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _keeps_devices(source: str) -> bool:
    """Device nodes stay usable in binds from the node's /dev (as in Shifter)
    and in binds of one device node the site names (a GPU's, say)."""
    if source == "/dev" or source.startswith("/dev/"):
        return True
    mode = os.stat(source).st_mode
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _propagation(volume, cfg) -> int:
    return syscalls.PROPAGATION[volume.propagation or cfg.mount_propagation_style]


def _bind_volume(tree: _Tree, volume, source: str, cfg) -> None:
    """A site bind: `source` is a host path the site chose."""
    try:
        is_dir = os.path.isdir(source)
        if not is_dir and not os.path.exists(source):
            raise ContainerError(f"siteFs source {source} does not exist on this node")
        target = tree.mount_point(volume.target, is_dir=is_dir)
        syscalls.bind(source, target, readonly=volume.read_only, recursive=volume.recursive,
                      nodev=not _keeps_devices(source), propagation=_propagation(volume, cfg))
    except OSError as error:
        raise ContainerError(f"cannot bind {source} on {volume.target}: {error.strerror}") from None


def _mount_user_volume(tree: _Tree, volume, spec: ContainerSpec, cfg) -> None:
    """A user volume: the source is a path *inside the container*, resolved and
    checked with the user's own credentials (Shifter: users can only re-map
    what the container already shows them)."""
    if volume.per_node_cache is not None:
        from . import pernodecache
        pernodecache.mount(tree, volume, spec, cfg)
        return
    with contextlib.ExitStack() as stack:
        with _as_user(spec.user):
            fd = stack.enter_context(pathsafety.open_resolved(tree.root, volume.source))
            source = f"/proc/self/fd/{fd}"
            if not stat.S_ISDIR(os.fstat(fd).st_mode) or not os.access(
                    source, os.R_OK | os.X_OK, effective_ids=True):
                raise ContainerError(f"--volume source {volume.source} is not a directory "
                                     f"{spec.user.name} can read in the container")
        target = tree.user_mount_point(volume.target)
        syscalls.bind(source, target, readonly=volume.read_only, nodev=True,
                      propagation=_propagation(volume, cfg))


class _as_user:
    """Take the user's fs identity for a block, so permission checks are theirs."""

    def __init__(self, user: etcfiles.User):
        self.user = user

    def __enter__(self):
        os.setgroups(list(self.user.groups))
        os.setegid(self.user.gid)
        os.seteuid(self.user.uid)

    def __exit__(self, *exc):
        os.seteuid(0)
        os.setegid(0)
        os.setgroups([0])
        return False


def _run_hook(script: str | None, root: str, what: str) -> None:
    """A site or module root hook: `/bin/sh <script>` as root, cwd the root.

    Root runs it, so root alone may have written it (`what` names its key).
    """
    if not script:
        return
    config.require_root_owned(script, what)
    import subprocess   # hooks are rare; keep it off the prolog's start-up

    result = subprocess.run(["/bin/sh", script], cwd=root, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ContainerError(f"hook {script} failed with status {result.returncode}"
                             + (f": {detail[-1]}" if detail else ""))


# ---- epilog -----------------------------------------------------------------

def destroy(cfg, job_id: int, node: str) -> bool:
    """End everything in the job's container and release it; True if one existed.

    Idempotent and independent of the prolog's success: it finds holders by
    their state file and, should that be missing, by their process name.
    """
    path = state_path(cfg.run_dir, job_id, node)
    holders = set()
    try:
        container = JobContainer.load(path)
        if container.alive():
            holders.add((container.holder_pid, container.mntns))
    except (FileNotFoundError, ValueError, TypeError):
        pass
    name = f"{HOLDER_NAME}:{job_id}:{node}"
    for pid in _pids():
        if _cmdline0(pid) == name:
            holders.add((pid, _mntns(pid)))
    for holder_pid, mntns in holders:
        if mntns is not None:
            _kill_namespace(mntns, spare=holder_pid)
        _kill(holder_pid)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return bool(holders)


def _kill_namespace(mntns: int, spare: int, timeout: float = 10.0) -> None:
    """Kill every process of mount namespace `mntns` but `spare`, until none is
    left: a process may fork (an sshd accepting a login) while we scan."""
    deadline = time.monotonic() + timeout
    while True:
        victims = [pid for pid in _pids()
                   if pid != spare and _mntns(pid) == mntns and _proc_state(pid) not in (None, "Z", "X")]
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
        state = _proc_state(pid)
        if state in (None, "Z", "X"):
            return
        time.sleep(0.005)
    raise ContainerError(f"process {pid} of the container did not die")


# ---- /proc ------------------------------------------------------------------

def _pids():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _proc_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _mntns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _cmdline0(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return None
