"""Resolving container paths under a root: real directories full of symlink tricks.

The kernel's openat2(RESOLVE_IN_ROOT) has the semantics we want, so random
trees are checked against it.
"""
import ctypes
import errno
import os
import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shifter_core import pathsafety
from shifter_core.errors import VolumeError


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


def make_root(base):
    """A small container root: dirs, a file, and links that try to get out."""
    r = base / "root"
    for d in ("test/path", "etc", "scratch/me/in", "data"):
        (r / d).mkdir(parents=True)
    (r / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (r / "file").write_text("x")
    (r / "test/path/rellink").symlink_to("../../..")
    (r / "abslink").symlink_to("/test/path")
    (r / "hostetc").symlink_to("/etc")
    (r / "climb").symlink_to("../../../../../../etc")
    (r / "data/in").symlink_to("/scratch/me/in")
    (r / "loop1").symlink_to("loop2")
    (r / "loop2").symlink_to("/loop1")
    (r / "self").symlink_to("self")
    (r / "tofile").symlink_to("file")
    (r / "dangling").symlink_to("/nowhere/deeper")
    return str(r)


def test_shifter_realpath_cases(root):
    assert pathsafety.resolve(root, "/test/path/rellink/test/path") == f"{root}/test/path"
    assert pathsafety.resolve(root, "/abslink") == f"{root}/test/path"
    assert pathsafety.resolve(root, "/abslink/rellink") == root


def test_absolute_links_are_rerooted(root):
    assert pathsafety.resolve(root, "/hostetc/passwd") == f"{root}/etc/passwd"
    assert pathsafety.resolve(root, "/data/in") == f"{root}/scratch/me/in"


def test_dotdot_never_climbs_above_the_root(root):
    assert pathsafety.resolve(root, "/../../..") == root
    assert pathsafety.resolve(root, "/../etc") == f"{root}/etc"
    assert pathsafety.resolve(root, "/climb") == f"{root}/etc"
    assert pathsafety.resolve(root, "/scratch/me/../../../../etc/./passwd") == f"{root}/etc/passwd"


def test_dotdot_is_physical_after_a_symlink(root):
    # /data/in -> /scratch/me/in, so .. is /scratch/me, not /data
    assert pathsafety.resolve(root, "/data/in/..") == f"{root}/scratch/me"


def test_root_given_through_a_symlink(root, tmp_path):
    (tmp_path / "rootlink").symlink_to(root)
    assert pathsafety.resolve(str(tmp_path / "rootlink"), "/abslink") == f"{root}/test/path"


@pytest.mark.parametrize("path", ["/loop1", "/self", "/self/x"])
def test_loops_fail_clearly(root, path):
    with pytest.raises(VolumeError, match=f"^{path} has too many levels of symlinks"):
        pathsafety.resolve(root, path)


@pytest.mark.parametrize("path, message", [
    ("/nothere", "/nothere does not exist in the container"),
    ("/dangling", "/nowhere does not exist in the container"),
    ("/file/x", "/file is not a directory"),
    ("/file/", "/file is not a directory"),
    ("/tofile/.", "/file is not a directory"),
    ("/file/..", "/file is not a directory"),
    ("relative", "must be absolute"),
])
def test_failures_name_the_container_path(root, path, message):
    with pytest.raises(VolumeError, match=message):
        pathsafety.resolve(root, path)


def test_missing_ok_appends_what_does_not_exist(root):
    assert pathsafety.resolve(root, "/scratch/new/dir/", missing_ok=True) == f"{root}/scratch/new/dir"
    assert pathsafety.resolve(root, "/dangling", missing_ok=True) == f"{root}/nowhere/deeper"
    assert pathsafety.resolve(root, "/hostetc/new", missing_ok=True) == f"{root}/etc/new"
    with pytest.raises(VolumeError, match="/new does not exist"):
        pathsafety.resolve(root, "/new/../etc", missing_ok=True)
    with pytest.raises(VolumeError, match="not a directory"):
        pathsafety.resolve(root, "/file/new", missing_ok=True)


def test_a_long_chain_of_links_is_fine_until_the_kernel_limit(tmp_path):
    r = tmp_path / "chain"
    r.mkdir()
    (r / "end").mkdir()
    (r / "l0").symlink_to("end")
    for i in range(1, pathsafety.MAX_SYMLINKS + 1):
        (r / f"l{i}").symlink_to(f"l{i - 1}")
    assert pathsafety.resolve(str(r), f"/l{pathsafety.MAX_SYMLINKS - 1}") == f"{r}/end"
    with pytest.raises(VolumeError, match="too many levels"):
        pathsafety.resolve(str(r), f"/l{pathsafety.MAX_SYMLINKS}")


def test_missing_root():
    with pytest.raises(VolumeError, match="cannot open the container root /nonexistent-root"):
        pathsafety.resolve("/nonexistent-root", "/x")


def test_open_resolved_holds_the_checked_object(root):
    with pathsafety.open_resolved(root, "/data/in") as fd:
        os.rename(f"{root}/scratch/me/in", f"{root}/scratch/me/moved")
        os.symlink("/etc", f"{root}/scratch/me/in")
        assert os.readlink(f"/proc/self/fd/{fd}") == f"{root}/scratch/me/moved"
    with pytest.raises(OSError):
        os.fstat(fd)


def test_an_object_outside_the_root_is_refused(root, tmp_path):
    root_fd = os.open(root, os.O_PATH)
    outside_fd = os.open(str(tmp_path), os.O_PATH)
    sibling = tmp_path / "rootsibling"
    sibling.mkdir()
    sibling_fd = os.open(str(sibling), os.O_PATH)
    try:
        with pytest.raises(VolumeError, match="/x leads outside the container"):
            pathsafety._check_inside(root_fd, outside_fd, "/x")
        with pytest.raises(VolumeError, match="outside"):
            pathsafety._check_inside(root_fd, sibling_fd, "/x")
        pathsafety._check_inside(root_fd, root_fd, "/")
    finally:
        for fd in (root_fd, outside_fd, sibling_fd):
            os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_resolution_runs_with_the_callers_permissions():
    with tempfile.TemporaryDirectory() as base:
        os.chmod(base, 0o755)
        root = make_root(pathlib.Path(base))
        os.chmod(f"{root}/scratch/me", 0o700)
        assert run_as_nobody(root) == 0


def run_as_nobody(root):
    """Resolve in a child that has become uid/gid 65534; its exit code says how it went."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setresgid(65534, 65534, 65534)
            os.setgroups([])
            os.setresuid(65534, 65534, 65534)
            assert pathsafety.resolve(root, "/hostetc/passwd") == f"{root}/etc/passwd"
            try:
                pathsafety.resolve(root, "/data/in")
            except VolumeError as error:
                code = 0 if "permission denied looking up /scratch/me/in" in str(error) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# --- property: agree with the kernel's RESOLVE_IN_ROOT -----------------------

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def kernel_resolve(root, path):
    """(host path, None) or (None, errno) from openat2(RESOLVE_IN_ROOT)."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT)
        fd = _libc.syscall(_SYS_OPENAT2, root_fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
        if fd < 0:
            return None, ctypes.get_errno()
        try:
            return os.readlink(f"/proc/self/fd/{fd}"), None
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


def _openat2_works():
    with tempfile.TemporaryDirectory() as d:
        return kernel_resolve(d, "/")[0] is not None


needs_openat2 = pytest.mark.skipif(not _openat2_works(), reason="kernel without openat2")

NAMES = ["a", "b", "c"]
piece = st.sampled_from(NAMES + ["..", ".", ""])
link_target = st.builds(
    lambda parts, absolute: ("/" if absolute else "") + "/".join(parts),
    st.lists(piece, max_size=4), st.booleans(),
).filter(bool) | st.sampled_from(["/etc", "../../../../../etc", "/../..", "a/b/../../c"])
SKELETON = ["a", "b", "c", "a/a", "a/b", "a/c", "b/a", "b/c", "a/b/c", "b/c/a"]
tree = st.lists(
    st.tuples(st.sampled_from(["dir", "dir", "dir", "file", "link", "link", "absent"]), link_target),
    min_size=len(SKELETON), max_size=len(SKELETON),
).map(lambda kinds: [(rel, kind, target) for rel, (kind, target) in zip(SKELETON, kinds)])
query = st.lists(st.sampled_from(NAMES * 3 + ["..", ".", ""]), max_size=5).map(lambda parts: "/" + "/".join(parts))


def build(root, entries):
    """Create the entries whose parent is a directory (parents come first)."""
    for rel, kind, target in entries:
        path = os.path.join(root, rel)
        parent = os.path.dirname(path)
        if not os.path.isdir(parent) or os.path.islink(parent) or os.path.lexists(path):
            continue
        if kind == "absent":
            continue
        if kind == "dir":
            os.mkdir(path)
        elif kind == "file":
            open(path, "w").close()
        else:
            os.symlink(target, path)


@needs_openat2
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree, st.lists(query, min_size=1, max_size=8))
def test_agrees_with_the_kernel(entries, queries):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        os.mkdir(root)
        build(root, entries)
        for path in queries:
            expected, error = kernel_resolve(root, path)
            if expected is not None:
                assert pathsafety.resolve(root, path) == expected, path
                with pathsafety.open_resolved(root, path) as fd:
                    assert os.readlink(f"/proc/self/fd/{fd}") == expected
            else:
                assert error in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP), (path, error)
                with pytest.raises(VolumeError):
                    pathsafety.resolve(root, path)
            try:
                host = pathsafety.resolve(root, path, missing_ok=True)
            except VolumeError:
                continue
            assert host == root or host.startswith(root + "/")
            if expected is not None:
                assert host == expected


def test_a_target_symlinked_into_a_protected_tree_is_caught_on_its_real_path(root):
    """How the runtime combines the two checks: the spec passes lexically, the
    real target (resolved in the container) is checked again."""
    from shifter_core import volumes
    os.symlink("/etc", f"{root}/mydata")
    (mount,) = volumes.parse("/scratch/me:/mydata", volumes.USER)
    host = pathsafety.resolve(root, mount.target, missing_ok=True)
    real_target = "/" + os.path.relpath(host, root)
    assert real_target == "/etc"
    with pytest.raises(VolumeError, match="/etc belongs to the container's setup"):
        volumes.parse(f"{mount.source}:{real_target}", volumes.USER)
