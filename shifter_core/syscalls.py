"""The privileged system calls of the runtime, made directly through cffi.

Python 3.11's os module has chroot but not mount, umount2, unshare, setns or
the loop-device and capability controls; spawning mount(8) or losetup(8)
would cost milliseconds each on the job-start path and trust PATH.  Failures
raise OSError with the errno and the path involved, like os.* does.
"""
from __future__ import annotations

import errno
import os
import fcntl
import struct

import cffi

_ffi = cffi.FFI()
_ffi.cdef("""
int mount(const char *source, const char *target, const char *fstype,
          unsigned long flags, const void *data);
int umount2(const char *target, int flags);
int unshare(int flags);
int setns(int fd, int nstype);
int prctl(int option, unsigned long arg2, unsigned long arg3,
          unsigned long arg4, unsigned long arg5);
""")
_libc = _ffi.dlopen(None)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
CLONE_NEWNS = 0x00020000

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_GET_STATUS64 = 0x4C05
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4

PROPAGATION = {"private": MS_PRIVATE, "slave": MS_SLAVE}


def _fail(what: str, path: str | None = None):
    err = _ffi.errno
    raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _c(text: str | None):
    return _ffi.NULL if text is None else os.fsencode(text)


def mount(source: str | None, target: str, fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    if _libc.mount(_c(source), _c(target), _c(fstype), flags, _c(data)) != 0:
        _fail(f"mount {source or fstype} on {target}", target)


def bind(source: str, target: str, *, readonly: bool = False, recursive: bool = False,
         nodev: bool = True, propagation: int = MS_PRIVATE) -> None:
    """Bind `source` on `target`, then lock it nosuid (and nodev, ro).

    The bind itself ignores flags; they take effect on the remount.
    """
    rec = MS_REC if recursive else 0
    mount(source, target, None, MS_BIND | rec)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (MS_NODEV if nodev else 0) | (MS_RDONLY if readonly else 0)
    try:
        mount(None, target, None, flags)
        mount(None, target, None, propagation | rec)
    except OSError:
        umount(target, detach=True)
        raise


def umount(target: str, *, detach: bool = False) -> None:
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if detach else 0)
    if _libc.umount2(_c(target), flags) != 0:
        _fail(f"umount {target}", target)


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        _fail("unshare")


def setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        _fail("setns")


def drop_bounding_set() -> None:
    """Empty the capability bounding set: nothing exec'd later can regain a capability."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and _ffi.errno != errno.EINVAL:
            _fail(f"drop capability {cap}")


def set_no_new_privs() -> None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail("set no_new_privs")


# struct loop_config { __u32 fd; __u32 block_size; struct loop_info64 info; __u64 reserved[8]; }
# struct loop_info64 { __u64 device, inode, rdevice, offset, sizelimit;
#                      __u32 number, encrypt_type, encrypt_key_size, flags;
#                      __u8 file_name[64], crypt_name[64], encrypt_key[32]; __u64 init[2]; }
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
_LOOP_CONFIG = struct.Struct(f"=2I{_LOOP_INFO64.size}s8Q")


def loop_mount(path: str, target: str, fstype: str, flags: int = 0, *, attempts: int = 16) -> str:
    """Mount the filesystem image `path` on `target` through a loop device.

    A read-only mount reuses a loop device already attached to the same file
    (another job on this node using this image), so all its containers share
    one page cache, as util-linux does.  The device is auto-cleared: it is
    released when its last mount goes, including when the mount namespace
    holding it dies.  The device stays open until the mount holds it, since
    an auto-clear device is detached on its last close.  Returns the device.
    """
    readonly = bool(flags & MS_RDONLY)
    mode = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    backing = os.open(path, mode)
    try:
        st = os.fstat(backing)
        if readonly:
            for device in _loops_backed_by(st):
                dev = _open_if_backed_by(device, st)
                if dev is not None:
                    try:
                        mount(device, target, fstype, flags)
                        return device
                    finally:
                        os.close(dev)
        dev, device = _attach_free(backing, path, readonly, attempts)
        try:
            mount(device, target, fstype, flags)
        finally:
            os.close(dev)
        return device
    finally:
        os.close(backing)


def _loops_backed_by(st: os.stat_result) -> list[str]:
    """Loop devices that sysfs says are attached to the file of `st`, read-only."""
    found = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return found
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file", "rb") as f:
                backing_file = f.read().rstrip(b"\n")
            with open(f"/sys/block/{name}/ro") as f:
                if f.read().strip() != "1":
                    continue
            other = os.stat(backing_file)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            found.append(f"/dev/{name}")
    return found


def _open_if_backed_by(device: str, st: os.stat_result) -> int | None:
    """Open `device` and keep it open only if it is still attached to `st`'s file.

    Holding it open stops auto-clear from detaching it; checking after the
    open closes the race with a detach-and-reattach to another file.
    """
    try:
        dev = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = fcntl.ioctl(dev, LOOP_GET_STATUS64, bytes(_LOOP_INFO64.size))
        lo_device, lo_inode = _LOOP_INFO64.unpack(info)[:2]
        if (lo_device, lo_inode) == (st.st_dev, st.st_ino):
            return dev
    except OSError:
        pass
    os.close(dev)
    return None


def _attach_free(backing: int, path: str, readonly: bool, attempts: int) -> tuple[int, str]:
    """Attach the open file `backing` to a free loop device; return (open fd, device)."""
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
    info = _LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, os.fsencode(path)[-63:], b"", b"", 0, 0)
    config = _LOOP_CONFIG.pack(backing, 0, info, *([0] * 8))
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(attempts):
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            device = f"/dev/loop{number}"
            dev = os.open(device, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
            try:
                fcntl.ioctl(dev, LOOP_CONFIGURE, config)
                return dev, device
            except OSError as error:
                os.close(dev)
                if error.errno != errno.EBUSY:     # EBUSY: lost a race for it, try another
                    raise OSError(error.errno, f"attach {path} to {device}: {error.strerror}", path)
    finally:
        os.close(ctl)
    raise OSError(errno.EBUSY, f"no free loop device for {path} after {attempts} attempts", path)
