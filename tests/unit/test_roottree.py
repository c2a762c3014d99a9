"""RootTree: how root creates and writes inside a container, on random trees of the image's
symlinks, and while something swaps directories and symlinks under it.

Every test keeps a directory next to the root ("outside") and checks that no
operation created, changed or removed anything there."""
import ctypes
import errno
import os
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shifter_core.container import RootTree
from shifter_core.errors import ImageContentError, ShifterError
from tests.unit.test_pathsafety import build, model_resolve, tree as random_tree

component = st.sampled_from(["a", "b", "c", "etc", "new"])
inside_path = st.lists(component, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


class Scene:
    """root/ (the container) and outside/ (the node), with links from one toward the other."""

    def __init__(self, base: str, entries=()):
        self.root = os.path.join(base, "root")
        self.outside = os.path.join(base, "outside")
        os.mkdir(self.root)
        os.mkdir(self.outside)
        with open(os.path.join(self.outside, "bait"), "w") as f:
            f.write("node file\n")
        build(self.root, entries)
        for name, target in (("etc", self.outside), ("up", "../outside"), ("abs", "/outside")):
            if not os.path.lexists(os.path.join(self.root, name)):
                os.symlink(target, os.path.join(self.root, name))
        self.before = self.snapshot()
        self.tree = RootTree(os.open(self.root, os.O_PATH | os.O_DIRECTORY), self.root)

    def snapshot(self):
        return sorted((name, os.lstat(os.path.join(self.outside, name)).st_mtime_ns)
                      for name in os.listdir(self.outside))

    def close(self):
        os.close(self.tree.fd)
        assert self.snapshot() == self.before, "something outside the root changed"


@pytest.fixture
def scene(tmp_path):
    made = Scene(str(tmp_path))
    yield made
    made.close()


def test_a_symlink_to_the_node_is_followed_inside_the_root(scene):
    with pytest.raises(ImageContentError, match="/etc is a symlink of the image that leads nowhere"):
        scene.tree.write("/etc/passwd", "site\n")        # the node's directory is not the root's
    os.makedirs(os.path.join(scene.root, scene.outside.lstrip("/")))
    scene.tree.write("/etc/passwd", "site\n")
    assert open(os.path.join(scene.root, scene.outside.lstrip("/"), "passwd")).read() == "site\n"


def test_structural_paths_replace_the_images_symlinks_and_files(scene):
    open(os.path.join(scene.root, "file"), "w").close()
    for path in ("/etc", "/up/x", "/file/y"):
        os.close(scene.tree.directory(path, structural=True))
    for name in ("etc", "up", "up/x", "file", "file/y"):
        full = os.path.join(scene.root, name)
        assert os.path.isdir(full) and not os.path.islink(full), name


def test_a_directory_where_a_file_goes_is_the_images_fault(scene):
    os.makedirs(os.path.join(scene.root, "var/passwd"))
    with pytest.raises(ImageContentError, match="the image has a directory at /var/passwd"):
        scene.tree.write("/var/passwd", "x")


def test_verify_finds_a_file_that_was_replaced(scene):
    scene.tree.write("/var/hostsfile", "n1\n")
    scene.tree.verify()
    os.rename(os.path.join(scene.root, "var"), os.path.join(scene.root, "var.old"))
    os.makedirs(os.path.join(scene.root, "var"))
    open(os.path.join(scene.root, "var/hostsfile"), "w").close()
    with pytest.raises(ImageContentError, match="/var/hostsfile, which the site provides, would be hidden"):
        scene.tree.verify()


def test_a_file_mount_point_is_made_kept_or_followed_inside(scene):
    """RootTree.file (a file volume's target): made empty with its directories, an
    image's file is kept as it is, its symlinks are followed inside the root."""
    made = scene.tree.file("/opt/app/run.yaml")
    assert os.readlink(f"/proc/self/fd/{made}") == os.path.join(scene.root, "opt/app/run.yaml")
    os.close(made)
    with open(os.path.join(scene.root, "kept"), "w") as f:
        f.write("image\n")
    os.symlink("/kept", os.path.join(scene.root, "alias"))
    for path in ("/kept", "/alias"):
        fd = scene.tree.file(path)
        assert os.readlink(f"/proc/self/fd/{fd}") == os.path.join(scene.root, "kept")
        os.close(fd)
    assert open(os.path.join(scene.root, "kept")).read() == "image\n"
    os.mkdir(os.path.join(scene.root, "dir"))
    with pytest.raises(ImageContentError, match="/dir is not a regular file in the container"):
        scene.tree.file("/dir")
    os.symlink(os.path.join(scene.outside, "bait"), os.path.join(scene.root, "bait"))
    with pytest.raises(ImageContentError, match="/bait is a symlink of the image that leads nowhere"):
        scene.tree.file("/bait")                       # the node's file is not the root's
    with pytest.raises(ImageContentError):
        scene.tree.file("/etc/passwd")                 # etc -> the node's directory


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_tree, st.lists(inside_path, min_size=1, max_size=6))
def test_file_mount_points_of_random_trees_stay_inside(entries, paths):
    with tempfile.TemporaryDirectory() as tmp:
        scene = Scene(tmp, entries)
        try:
            for path in paths:
                try:
                    fd = scene.tree.file(path)
                except ShifterError:
                    continue
                try:
                    landed = os.readlink(f"/proc/self/fd/{fd}")
                    assert landed.startswith(scene.root + "/") and os.path.isfile(landed), (path, landed)
                finally:
                    os.close(fd)
        finally:
            scene.close()


def test_dotdot_is_refused(scene):
    with pytest.raises(ImageContentError, match="'..' is not allowed"):
        scene.tree.write("/a/../etc/x", "x")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_tree, st.lists(st.tuples(inside_path, st.booleans(), st.booleans()), min_size=1, max_size=6))
def test_random_trees_keep_everything_inside(entries, operations):
    """Whatever links the image holds, files and directories land inside the root, where
    its own resolution puts them (unless the write replaced a link on its own way, as
    `/a/a` with `a -> /` does), and structural paths end up as real directories."""
    with tempfile.TemporaryDirectory() as tmp:
        scene = Scene(tmp, entries)
        try:
            for path, structural, as_file in operations:
                try:
                    if as_file:
                        scene.tree.write(path, path)
                    else:
                        os.close(scene.tree.directory(path, structural=structural))
                except ShifterError:
                    continue
                landed, error = model_resolve(scene.root, path)
                if as_file:
                    written = [p for p in _files(scene.root) if open(p).read() == path]
                    assert written and (landed is None or landed in written), (path, landed, written)
                else:
                    assert error is None and (landed + "/").startswith(scene.root + "/"), (path, landed, error)
                if structural and not as_file:
                    parts = path.strip("/").split("/")
                    for depth in range(1, len(parts) + 1):
                        full = os.path.join(scene.root, *parts[:depth])
                        assert os.path.isdir(full) and not os.path.islink(full), (path, full)
        finally:
            scene.close()


def _files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, names in os.walk(root) for f in names
            if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))]


# --- races ------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> None:
    if _libc.renameat2(-100, a.encode(), -100, b.encode(), _RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")


def test_writes_stay_inside_while_a_directory_and_a_symlink_swap(tmp_path):
    """What an attacker does to a directory they can write: swap a real directory and a
    symlink to the node in a loop while root writes through that path."""
    scene = Scene(str(tmp_path))
    work = os.path.join(scene.root, "work")
    os.makedirs(os.path.join(work, "d"))
    os.symlink(os.path.join(os.path.dirname(scene.root), "outside"), os.path.join(work, "l"))
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            try:
                _exchange(os.path.join(work, "d"), os.path.join(work, "l"))
            except OSError as error:
                assert error.errno in (errno.ENOENT,), error

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for number in range(400):
            try:
                scene.tree.write(f"/work/d/file{number}", "x")
                os.close(scene.tree.directory(f"/work/d/dir{number}"))
            except ShifterError:
                pass
    finally:
        stop.set()
        swapper.join()
        scene.close()
