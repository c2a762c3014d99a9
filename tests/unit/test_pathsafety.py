"""Resolving container paths from a root descriptor: real directories full of symlink tricks.

pathsafety.open_inside leaves the walk to the kernel (openat2 RESOLVE_IN_ROOT);
these tests pin down the semantics we rely on against a model of Shifter's
shifter_realpath written here (absolute symlinks re-rooted, `..` stopping at
the root), on fixed cases and on random trees.
"""
import errno
import os
import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shifter_core import pathsafety
from shifter_core.errors import ImageContentError, VolumeError


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
    (r / "tofile").symlink_to("file")
    (r / "dangling").symlink_to("/nowhere/deeper")
    return str(r)


def resolve(root: str, path: str, **options) -> str:
    """Where open_inside lands, as a host path."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = pathsafety.open_inside(root_fd, path, **options)
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


def test_shifter_realpath_cases(root):
    assert resolve(root, "/test/path/rellink/test/path") == f"{root}/test/path"
    assert resolve(root, "/abslink") == f"{root}/test/path"
    assert resolve(root, "/abslink/rellink") == root


def test_absolute_links_are_rerooted(root):
    assert resolve(root, "/hostetc/passwd") == f"{root}/etc/passwd"
    assert resolve(root, "/data/in") == f"{root}/scratch/me/in"


def test_dotdot_never_climbs_above_the_root(root):
    assert resolve(root, "/../../..") == root
    assert resolve(root, "/../etc") == f"{root}/etc"
    assert resolve(root, "/climb") == f"{root}/etc"
    assert resolve(root, "/scratch/me/../../../../etc/./passwd") == f"{root}/etc/passwd"


@pytest.mark.parametrize("path, message", [
    ("/nowhere", "/nowhere does not exist in the container"),
    ("/dangling", "does not exist"),
    ("/file/x", "goes through something that is not a directory"),
    ("/loop1", "too many levels of symlinks"),
    ("relative", "must be absolute"),
])
def test_failures_name_the_path_in_one_line(root, path, message):
    with pytest.raises(VolumeError, match=message):
        resolve(root, path)


def test_a_final_symlink_can_be_opened_itself(root):
    assert resolve(root, "/tofile", follow=False) == f"{root}/tofile"
    assert resolve(root, "/tofile") == f"{root}/file"


def test_the_caller_chooses_the_error_class(root):
    with pytest.raises(ImageContentError, match="/nowhere does not exist"):
        resolve(root, "/nowhere", error=ImageContentError)


def test_the_descriptor_holds_the_checked_object(root):
    root_fd = os.open(root, os.O_PATH)
    fd = pathsafety.open_inside(root_fd, "/data/in")
    try:
        os.rename(f"{root}/scratch/me/in", f"{root}/scratch/me/moved")
        os.symlink("/etc", f"{root}/scratch/me/in")
        assert os.readlink(f"/proc/self/fd/{fd}") == f"{root}/scratch/me/moved"
    finally:
        os.close(fd)
        os.close(root_fd)


def test_container_paths_of_descriptors(root):
    root_fd = os.open(root, os.O_PATH)
    fd = pathsafety.open_inside(root_fd, "/hostetc/passwd")
    try:
        assert pathsafety.path_of(root, fd) == "/etc/passwd"
        assert pathsafety.path_of(root, root_fd) == "/"
        with pytest.raises(VolumeError, match="not inside"):
            pathsafety.path_of(f"{root}/test", fd)
    finally:
        os.close(fd)
        os.close(root_fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_resolution_runs_with_the_callers_permissions():
    with tempfile.TemporaryDirectory() as base:
        os.chmod(base, 0o755)
        root = make_root(pathlib.Path(base))
        os.chmod(f"{root}/scratch/me", 0o700)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setresgid(65534, 65534, 65534)
                os.setgroups([])
                os.setresuid(65534, 65534, 65534)
                assert resolve(root, "/hostetc/passwd") == f"{root}/etc/passwd"
                try:
                    resolve(root, "/data/in")
                except VolumeError as error:
                    code = 0 if "permission denied" in str(error) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


# --- property: the kernel's walk is Shifter's realpath, inside the root -----------------

def model_resolve(root: str, path: str) -> tuple[str | None, int | None]:
    """shifter_realpath's rules written out, walking host paths lexically under `root`.
    A symlink's target that ends in '/' must lead to a directory, as `<target>/.` must."""
    pending = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            if not os.path.isdir(os.path.join(root, *done)):
                return None, errno.ENOTDIR
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, name)
        if not os.path.lexists(here):
            return None, errno.ENOENT
        if os.path.islink(here):
            links += 1
            if links > 40:
                return None, errno.ELOOP
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p] + (["."] if target.endswith("/") else []) + pending
            continue
        if pending and not os.path.isdir(here):
            return None, errno.ENOTDIR
        done.append(name)
    result = os.path.join(root, *done) if done else root
    if path.endswith("/") and not os.path.isdir(result):
        return None, errno.ENOTDIR
    return result, None


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
        if not os.path.isdir(parent) or os.path.islink(parent) or os.path.lexists(path) or kind == "absent":
            continue
        if kind == "dir":
            os.mkdir(path)
        elif kind == "file":
            open(path, "w").close()
        else:
            os.symlink(target, path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree, st.lists(query, min_size=1, max_size=8))
def test_agrees_with_shifters_realpath_and_stays_inside(entries, queries):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        os.mkdir(root)
        build(root, entries)
        for path in queries:
            expected, error = model_resolve(root, path)
            if expected is not None:
                assert resolve(root, path) == expected, path
            else:
                with pytest.raises(VolumeError):
                    resolve(root, path)


def test_renames_elsewhere_on_the_node_never_fail_a_lookup(root, tmp_path):
    """The kernel answers EAGAIN to a walk with `..` that raced any rename on the system;
    a user renaming in a loop must not make other jobs' lookups fail."""
    import threading

    churn = tmp_path / "churn"
    churn.mkdir()
    (churn / "a").touch()
    stop = threading.Event()

    def rename_forever():
        while not stop.is_set():
            os.rename(churn / "a", churn / "b")
            os.rename(churn / "b", churn / "a")

    renamer = threading.Thread(target=rename_forever)
    renamer.start()
    try:
        for _ in range(3000):
            assert resolve(root, "/test/path/../../etc/passwd") == f"{root}/etc/passwd"
    finally:
        stop.set()
        renamer.join()
