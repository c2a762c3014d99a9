"""Assembling a job's container, inside the private mount namespace of its holder.

    <loopMount>           tmpfs (rootfsType) of mode 0700, root's alone
        image/            the image's squashfs, loop-mounted ro,nosuid,nodev
        upper/ work/      the writable layer of the root
        dev-upper/ ...    the writable layer of /dev
        rw/               the root's layer alone, writable, without any mount
                          (where a task makes the batch script's mount point)
    <udiMount>            overlay of upper/ over image/, nosuid,nodev: the
                          container root the tasks chroot into

The overlay puts the site's files over the image; it also lets a volume
target be created anywhere on the container's own layer (Shifter issue #231).

The order is Shifter's, with one rule on top: root's own files (skeleton,
/etc, /var/hostsfile, the markers, the CCM files) are all written before
anything of the node is mounted into the tree, and every later mount point
is made on the container's own layer (RootTree): root never creates, writes,
removes or mounts anything in a file system a user can write.  Then /dev
(an overlay of the node's), siteFs with its hooks, modules' siteFs,
/opt/udiImage, module root hooks, /proc, /sys, /tmp, /var/tmp, and the
user's volumes last (their sources resolved as the user); the root is
remounted read-only at the end unless the site wants it writable.  Every
mount is made through the mount API with its final flags set before it is
attached.
"""
from __future__ import annotations

import contextlib
import os
import stat
import time

from .. import etcfiles, imageref, pathsafety, syscalls, trust, volumes
from ..errors import (AccessDenied, ContainerError, ImageContentError, ImageNotFound, ModuleError,
                      ShifterError, VolumeError)
from . import marker
from .roottree import RootTree

ROOT_ATTRS = syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
IMAGE_ATTRS = syscalls.MOUNT_ATTR_RDONLY | ROOT_ATTRS
STAGE_DIRS = ("image", "upper", "work", "dev-upper", "dev-work", "rw")
STRUCTURE = ("etc", "var", "opt/udiImage/modules", "proc", "sys", "dev", "tmp", "var/tmp")
CONVENIENCE = ("run", "var/spool", "var/run", "var/empty")


def build(cfg, spec) -> tuple[dict[str, float], RootTree]:
    """Build the container of `spec` at udiMount; return per-phase timings and its tree."""
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    stage = _mount_stage(cfg)
    try:
        tree = _mount_root(cfg, spec, stage)
    finally:
        os.close(stage)
    timings["mount"] = time.perf_counter() - mark

    mark = time.perf_counter()
    _write_own_files(tree, cfg, spec)
    _mount_dev(tree, cfg)
    _run_hook(cfg.site_pre_mount_hook, cfg.udi_mount, "sitePreMountHook", ContainerError)
    for volume in cfg.site_fs:
        _bind_site(tree, volume, cfg)
    _run_hook(cfg.site_post_mount_hook, cfg.udi_mount, "sitePostMountHook", ContainerError)
    for module in spec.modules:
        for volume in module.site_fs:
            _bind_site(tree, volume, cfg)
    _bind_udi_image(tree, cfg, spec)
    for module in spec.modules:
        _run_hook(module.root_hook, cfg.udi_mount, f"module_{module.name}_roothook", ModuleError)
    _mount_system(tree)
    for volume in spec.volumes:
        _mount_user_volume(tree, volume, spec, cfg)
    tree.verify()
    if not cfg.mount_udi_root_writable:
        syscalls.set_attributes(tree.fd, add=syscalls.MOUNT_ATTR_RDONLY)
    timings["setup"] = time.perf_counter() - mark
    return timings, tree


# ---- the root ---------------------------------------------------------------------

def _mount_stage(cfg) -> int:
    """The root-only tmpfs at loopMount that holds the image and the writable layers;
    returns the descriptor of its root."""
    target = _open_mount_point(cfg.loop_mount, "loopMount")
    try:
        stage = syscalls.new_mount(cfg.rootfs_type, {"mode": "0700"}, ROOT_ATTRS, shown=cfg.loop_mount)
        try:
            syscalls.attach(stage, target, shown=cfg.loop_mount)
            for name in STAGE_DIRS:
                os.mkdir(name, 0o755, dir_fd=stage)
        except BaseException:
            os.close(stage)
            raise
    finally:
        os.close(target)
    return stage


def _mount_root(cfg, spec, stage: int) -> RootTree:
    """Mount the image, lay the overlay over it at udiMount, keep a writable view in rw/."""
    _attach_at(_bind_local(spec) if spec.image.format == imageref.LOCAL else _loop_mount(spec), stage, "image")
    lower, upper, work = (f"{cfg.loop_mount}/{name}" for name in ("image", "upper", "work"))
    overlay = syscalls.new_mount("overlay", {"lowerdir": lower, "upperdir": upper, "workdir": work},
                                 ROOT_ATTRS, shown=cfg.udi_mount)
    try:
        target = _open_mount_point(cfg.udi_mount, "udiMount")
        try:
            syscalls.attach(overlay, target, shown=cfg.udi_mount)
        finally:
            os.close(target)
        _attach_at(syscalls.clone_tree(overlay), stage, "rw")
    except BaseException:
        os.close(overlay)
        raise
    return RootTree(overlay, cfg.udi_mount)


def _loop_mount(spec) -> int:
    """The image's squashfs, mounted ro,nosuid,nodev (detached)."""
    image = _open_image(spec)
    try:
        return syscalls.loop_mount(image, spec.image.format, IMAGE_ATTRS, shown=spec.image_file)
    except syscalls.LoopDeviceError as error:
        raise ContainerError(f"cannot mount the image: {error.strerror}") from None
    except OSError as error:
        raise ImageContentError(f"the image file {spec.image_file} does not mount ({error.strerror}): it was"
                                " damaged or replaced after the pull; pull the image again") from None
    finally:
        os.close(image)


def _bind_local(spec) -> int:
    """A local: image, the node's directory tree: opened as the user (who must be able to
    read it), bound ro,nosuid,nodev (detached) with none of the mounts below it."""
    with as_user(spec.user):
        try:
            tree = os.open(spec.image_file, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise ImageNotFound(f"the local image {spec.image_file} is not a directory {spec.user.name} can"
                                f" reach on this node: {error.strerror}") from None
        readable = os.access(f"/proc/self/fd/{tree}", os.R_OK | os.X_OK, effective_ids=True)
    try:
        if not readable:
            raise AccessDenied(f"{spec.user.name} cannot read the local image {spec.image_file}")
        mount = syscalls.clone_tree(tree)
        syscalls.set_attributes(mount, add=IMAGE_ATTRS, propagation=syscalls.MS_PRIVATE)
        return mount
    finally:
        os.close(tree)


def _open_image(spec) -> int:
    """The image file, checked against what the gateway recorded for it."""
    try:
        fd = os.open(spec.image_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageNotFound(f"the image file of {spec.image.digest} is gone from this node's image"
                            " directory; pull the image again") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (spec.image.size and st.st_size != spec.image.size):
        os.close(fd)
        raise ImageContentError(f"the image file {spec.image_file} changed after the pull (size"
                                f" {st.st_size}, pulled {spec.image.size}); pull the image again")
    return fd


def _attach_at(mount_fd: int, stage: int, name: str) -> None:
    try:
        target = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stage)
        try:
            syscalls.attach(mount_fd, target, shown=name)
        finally:
            os.close(target)
    finally:
        os.close(mount_fd)


@contextlib.contextmanager
def _host(path: str, flags: int = 0):
    """An O_PATH descriptor of a node path root chose (the site's, the node's own)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC | flags)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_mount_point(path: str, what: str) -> int:
    """udiMount or loopMount, made if missing: root alone may change the way there."""
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
        trust.require_root_owned(path, what)
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise ContainerError(f"{what} {path} is not usable: {error.strerror}") from None


# ---- root's own files ------------------------------------------------------------

def _write_own_files(tree: RootTree, cfg, spec) -> None:
    """Everything root writes, while the tree holds nothing of the node yet."""
    old_umask = os.umask(0o022)
    try:
        for directory in STRUCTURE:
            os.close(tree.directory(directory, structural=True))
        for directory in CONVENIENCE:
            if not tree.exists(directory):
                os.close(tree.directory(directory))
        tree.chmod("tmp", 0o1777)
        if tree.exists("var/empty"):
            with contextlib.suppress(ShifterError):
                tree.chmod("var/empty", 0o700)
        _write_etc(tree, cfg, spec)
        if spec.hosts:
            tree.write("var/hostsfile", "".join(f"{h}\n" for h in spec.hosts))
        marker.write(tree, spec)
        for extension in spec.extensions:
            extension.prepare(tree, cfg, spec)
    finally:
        os.umask(old_umask)


def _write_etc(tree: RootTree, cfg, spec) -> None:
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


# ---- the site's and the node's file systems -------------------------------------------

def _mount_dev(tree: RootTree, cfg) -> None:
    """/dev: the node's devices, as an overlay whose upper layer is the container's.

    Mount points for site device binds (a GPU's /dev/nvidia0 bound from
    elsewhere) are made there and never in the node's /dev.  The node's
    mounts under /dev (pts, shm, mqueue ...) are bound on top.
    """
    options = {"lowerdir": "/dev", "upperdir": f"{cfg.loop_mount}/dev-upper",
               "workdir": f"{cfg.loop_mount}/dev-work"}
    dev = syscalls.new_mount("overlay", options, syscalls.MOUNT_ATTR_NOSUID, shown="/dev")
    try:
        tree.attach(dev, "dev")
    except BaseException:
        os.close(dev)
        raise
    dev_tree = tree.add_submount("dev", dev)
    for mount_point in _mounts_below("/dev"):
        with _host(mount_point) as source:
            is_dir = stat.S_ISDIR(os.fstat(source).st_mode)
            dev_tree.bind(source, mount_point[len("/dev"):], is_dir=is_dir, recursive=is_dir, nodev=False)


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


def _bind_site(tree: RootTree, volume, cfg) -> None:
    """A siteFs bind: `volume.source` is a host path the site chose."""
    try:
        source = os.open(volume.source, os.O_PATH | os.O_CLOEXEC)
    except OSError as error:
        raise ContainerError(f"siteFs source {volume.source} is not usable on this node: {error.strerror}") from None
    try:
        mode = os.fstat(source).st_mode
        keeps_devices = (volume.source == "/dev" or volume.source.startswith("/dev/")
                         or stat.S_ISCHR(mode) or stat.S_ISBLK(mode))
        target = _site_target(tree, volume.target, stat.S_ISDIR(mode))
        try:
            syscalls.bind(source, target, shown=volume.target, readonly=volume.read_only,
                          recursive=volume.recursive, nodev=not keeps_devices,
                          propagation=_propagation(volume, cfg))
        except OSError as error:
            raise ContainerError(f"cannot bind {volume.source} on {volume.target}: {error.strerror}") from None
        finally:
            os.close(target)
    finally:
        os.close(source)


def _site_target(tree: RootTree, target: str, is_dir: bool) -> int:
    try:
        return tree.mount_point(target, is_dir=is_dir)
    except ImageContentError:
        raise
    except ShifterError as error:
        raise ContainerError(f"siteFs target {target}: {error}") from None


def _propagation(volume, cfg) -> int:
    return syscalls.PROPAGATION[volume.propagation or cfg.mount_propagation_style]


def _bind_udi_image(tree: RootTree, cfg, spec) -> None:
    """Site helpers (optUdiImage at /opt/udiImage) and module copyPath trees
    (at /opt/udiImage/modules/<name>), bound read-only.

    Shifter copies them into every container; a bind shows the same files
    without copying megabytes (the CCM sshd bundle) at every job start.  The
    entries of optUdiImage are bound one by one so that modules/ stays on the
    container's own layer, where the modules' mount points are made.
    """
    if cfg.opt_udi_image:
        _require_root_tree(cfg.opt_udi_image, "optUdiImage")
        for name in sorted(os.listdir(cfg.opt_udi_image)):
            source = os.path.join(cfg.opt_udi_image, name)
            if name == "modules":
                continue
            if os.path.islink(source):
                tree.symlink(f"opt/udiImage/{name}", os.readlink(source))
            else:
                _bind_root_tree(tree, source, f"opt/udiImage/{name}")
    for module in spec.modules:
        if module.copy_path:
            _require_root_tree(module.copy_path, f"module_{module.name}_copyPath")
            _bind_root_tree(tree, module.copy_path, f"opt/udiImage/modules/{module.name}")


def _bind_root_tree(tree: RootTree, source: str, inside: str) -> None:
    with _host(source, os.O_NOFOLLOW) as fd:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        tree.bind(fd, inside, is_dir=is_dir, readonly=True, recursive=is_dir)


def _require_root_tree(directory: str, what: str) -> None:
    """Root binds this tree into containers: root alone may have written any of it."""
    trust.require_root_owned(directory, what)
    for parent, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            if not (trust.root_only(st) or (stat.S_ISLNK(st.st_mode) and st.st_uid == 0)):
                raise ContainerError(f"{what} {directory} must hold only files that root owns and "
                                     f"group and others cannot write; {path} is not one")


def _mount_system(tree: RootTree) -> None:
    proc = syscalls.new_mount("proc", {}, ROOT_ATTRS | syscalls.MOUNT_ATTR_NOEXEC, shown="/proc")
    try:
        tree.attach(proc, "proc")
    finally:
        os.close(proc)
    for source, inside, readonly in (("/sys", "sys", True), ("/tmp", "tmp", False), ("/var/tmp", "var/tmp", False)):
        if os.path.isdir(source):
            with _host(source, os.O_DIRECTORY) as fd:
                tree.bind(fd, inside, is_dir=True, readonly=readonly)


# ---- the user's volumes -------------------------------------------------------------

def _mount_user_volume(tree: RootTree, volume, spec, cfg) -> None:
    """A user volume: the source is a path *inside the container*, resolved and
    checked with the user's own credentials (Shifter: users can only re-map
    what the container already shows them); the target is made on the
    container's own layer, and the site's policy is checked on where it
    really leads.  A directory is bound on a directory, a file or a device the
    site lists (userVolumeDevices) on a file.  A perNodeCache volume gets a new
    file system instead."""
    if volume.per_node_cache is not None:
        from .. import pernodecache
        target = user_target(tree, volume.target)
        try:
            pernodecache.mount(target, volume, spec, cfg)
        finally:
            os.close(target)
        return
    with as_user(spec.user):
        try:
            source = pathsafety.open_inside(tree.fd, volume.source)
        except VolumeError as error:
            raise VolumeError(f"--volume source {error}") from None
    try:
        mode = os.fstat(source).st_mode
        kind = _source_kind(tree, source, mode, volume, cfg)
        with as_user(spec.user):
            wanted = os.R_OK | os.X_OK if kind == "directory" else os.R_OK
            readable = os.access(f"/proc/self/fd/{source}", wanted, effective_ids=True)
        if not readable:
            raise VolumeError(f"--volume source {volume.source} is not a {kind} "
                              f"{spec.user.name} can read in the container")
        target = user_target(tree, volume.target, is_dir=kind == "directory")
        try:
            syscalls.bind(source, target, shown=volume.target, readonly=volume.read_only,
                          nodev=kind != "device", propagation=_propagation(volume, cfg))
        finally:
            os.close(target)
    finally:
        os.close(source)


def _source_kind(tree: RootTree, source: int, mode: int, volume, cfg) -> str:
    """What the source is: "directory", "file" or "device" (one the site lists, in the
    container's /dev, which is the node's); VolumeError for anything else."""
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        real = tree.container_path(source)
        if real in cfg.user_volume_devices:
            return "device"
        raise VolumeError(f"--volume source {volume.source}: "
                          f"{volumes.device_refusal(real, cfg.user_volume_devices)}")
    raise VolumeError(f"--volume source {volume.source} is not a directory, a regular file or a device")


def user_target(tree: RootTree, inside: str, *, is_dir: bool = True) -> int:
    """The directory (or, for a file or device source, the file) a user's volume is
    mounted on: on the container's own layer (made there if missing), or a mount
    point of it; refused where the site's policy forbids users to mount, also when
    a symlink of the image leads there."""
    try:
        fd = tree.directory(inside, mount_point_ok=True) if is_dir else tree.file(inside)
    except ShifterError as error:
        raise VolumeError(f"--volume target {inside}: {error}") from None
    real = tree.container_path(fd)
    if real != inside:
        try:
            volumes.parse(f"/:{real}", volumes.USER)
        except VolumeError:
            os.close(fd)
            raise VolumeError(f"--volume target {inside} leads to {real} in the container, "
                              "where users cannot mount") from None
    return fd


class as_user:
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


def _run_hook(script: str | None, root: str, what: str, error: type[ShifterError]) -> None:
    """A site or module root hook: `/bin/sh <script>` as root, cwd the root.

    Root runs it, so root alone may have written it (`what` names its key).
    Its failure raises `error`: the node's fault for the site's hooks, which
    every job runs, the job's for the hook of a module the job chose.
    """
    if not script:
        return
    trust.require_root_owned(script, what)
    import subprocess   # hooks are rare; keep it off the prolog's start-up

    result = subprocess.run(["/bin/sh", script], cwd=root, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise error(f"{what} {script} failed with status {result.returncode}"
                    + (f": {detail[-1]}" if detail else ""))
