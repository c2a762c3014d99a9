"""What the pipeline makes of image contents: edge cases against umoci, hostile layers,
the layer cache under reuse, damage, limits and concurrency, and running unprivileged."""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from ci.harness.oci import (CharDevice, Dir, Fifo, File, Hardlink, ImageConfig, Layout, Opaque,
                            Symlink, Whiteout, busybox_entries)
from ci.harness.registry import Registry
from gateway.layercache import LayerCache
from gateway.pipeline import PipelineSettings, pull_image
from gateway.registry import Location
from shifter_core.errors import ImageContentError
from shifter_core.imageref import parse
from shifter_core.imagestore import ImageStore
from tests.integration.squashfs_view import scan_directory, scan_mounted

LONG_PATH = "deep/" + "d" * 60 + "/" + "f" * 60 + ".txt"
UTF8_NAME = "données-日本語-ünïcødé.txt"


def edge_case_layers() -> list[list]:
    """Three layers exercising every merge rule (environment.md §7's edge-case layer)."""
    base = busybox_entries() + [
        File("etc/motd", "welcome\n"), File("etc/keep", "kept\n"),
        Dir("usr/share"), Dir("usr/share/doc"), Dir("usr/share/doc/pkg"),
        File("usr/share/doc/pkg/README", "doc"), Dir("usr/share/man"),
        Dir("usr/share/man/man1"), File("usr/share/man/man1/ls.1", "old page"),
        File("usr/share/man/man8/x.8", "old page 8"),
        File("opt/replace.txt", "version 1\n"),
        Dir("srv"), Dir("srv/dir-to-file"), File("srv/dir-to-file/child", "c"),
        File("srv/file-to-dir", "f"), Symlink("srv/link-to-dir", "/tmp"),
        Dir("srv/recreated"), File("srv/recreated/old", "old"),
    ]
    middle = [
        Whiteout("etc/motd"), Whiteout("usr/share/doc"),
        Dir("usr/share/man"), Opaque("usr/share/man"), Dir("usr/share/man/man1"),
        File("usr/share/man/man1/new.1", "new page"),
        File("opt/replace.txt", "version 2\n"),
        File("usr/bin/suid", "setuid program v1", mode=0o4755),
        File("usr/bin/sgid", "setgid program", mode=0o2755, gid=5),
        Hardlink("usr/bin/suid-link", "usr/bin/suid"),
        Symlink("usr/rel", "../etc/keep"), Symlink("usr/abs", "/etc/keep"),
        Symlink("usr/dangling", "/nonexistent"),
        File(UTF8_NAME, "utf-8 name\n"), File(LONG_PATH, "long path\n"),
        Fifo("run/fifo"), CharDevice("dev/null", 1, 3),
        File("home/user/file", "owned by 1000\n", uid=1000, gid=1000),
        Dir("scratch", mode=0o1777),
        File("etc/xattr", "has an xattr\n", xattrs={"user.test": "value"}),
        File("srv/dir-to-file", "now a file"),
        Dir("srv/file-to-dir"), File("srv/file-to-dir/child", "now a dir"),
        Dir("srv/link-to-dir"), File("srv/link-to-dir/inside", "was a symlink"),
    ]
    top = [
        File("usr/bin/suid", "setuid program v2", mode=0o4755),
        Whiteout("srv/recreated"), Dir("srv/recreated"), File("srv/recreated/new", "new"),
    ]
    return [base, middle, top]


def hostile_images() -> dict[str, tuple[list[list], str | None]]:
    """name -> (layers, expected refusal or None when neutralised)."""
    bb = busybox_entries()
    return {
        "traversal": ([bb + [File("../../etc/evil", "x")]], "leaves the image root"),
        "deep-traversal": ([bb + [File("usr/../../../../etc/evil", "x")]], "leaves the image root"),
        "symlink-then-write": ([bb + [Symlink("escape", "/etc"), File("escape/passwd", "x")]],
                               "below escape, a symlink"),
        "symlink-in-lower-layer": ([bb + [Symlink("escape", "../../../../tmp")],
                                    [File("escape/planted", "x")]], "below escape, a symlink"),
        "hardlink-escape": ([bb + [Hardlink("shadow", "../../../etc/shadow")]],
                            "leaves the image root"),
        "hardlink-to-absent": ([bb + [Hardlink("shadow", "/etc/shadow")]], "not in the image"),
        "bare-whiteout": ([bb + [File("etc/.wh.", "")]], "malformed whiteout"),
        "absolute-path": ([bb + [File("/etc/absolute", "inside after all\n")]], None),
        "device-node": ([bb + [CharDevice("dev/kmem", 1, 2)]], None),
    }


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(str(tmp_path_factory.mktemp("registry"))) as reg:
        yield reg


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return Layout(str(tmp_path_factory.mktemp("layout")))


def push(layout: Layout, registry, name: str, layers: list[list], tag: str = "latest") -> str:
    descriptors = [layout.add_layer(entries) for entries in layers]
    layout.add_image(descriptors, ImageConfig(cmd=["/bin/sh"]), tag=name)
    layout.push(name, f"{registry.host}/test/{name}:{tag}")
    return f"docker:{registry.host}/test/{name}:{tag}"


def settings(registry, work, **kw) -> PipelineSettings:
    return PipelineSettings(cache_dir=str(work / "cache"), scratch_dir=str(work / "scratch"),
                            locations={registry.host: Location(registry.url, insecure=True)}, **kw)


def leftovers(directory) -> list[str]:
    return os.listdir(directory) if os.path.exists(directory) else []


def new_store(work) -> ImageStore:
    os.makedirs(work / "images", exist_ok=True)
    return ImageStore(str(work / "images"))


# --- the merged tree equals umoci's, apart from the written policy -------------------

def scan_umoci(registry, reference: str, work) -> dict:
    oci, bundle = work / "oci", work / "bundle"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                    f"docker://{reference.split(':', 1)[1]}", f"oci:{oci}:ref"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{oci}:ref", str(bundle)], check=True,
                   capture_output=True)
    return scan_directory(bundle / "rootfs", work)


@pytest.mark.root
def test_merged_tree_equals_umoci_unpack_apart_from_policy(registry, layout, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting and umoci's full-fidelity unpack need root")
    reference = push(layout, registry, "edge", edge_case_layers())
    store = new_store(tmp_path)
    meta = pull_image(parse(reference), store=store, settings=settings(registry, tmp_path))
    ours = scan_mounted(store.image_path(meta.id), tmp_path)
    unpacked = int(time.time())
    theirs = scan_umoci(registry, reference, tmp_path)

    # the written policy (docs/image-pipeline.md)
    assert theirs.pop("dev/null")["rdev"] == os.makedev(1, 3)      # umoci makes the device...
    assert "dev/null" not in ours                                   # ...we drop it
    assert theirs["home/user/file"]["uid"] == 1000
    assert theirs["etc/xattr"]["xattrs"] == ["user.test"]
    for entry in ours.values():
        assert entry["uid"] == entry["gid"] == 0                    # all root's
        assert entry["xattrs"] == []                                # no xattrs
    for entry in list(ours.values()) + list(theirs.values()):
        for key in ("uid", "gid", "xattrs"):
            del entry[key]
    # directories no layer has an entry for, and their parents: we date them like the
    # entries, umoci with the time of unpacking (it creates them then)
    for path, entry in ours.items():
        if entry["kind"] == stat.S_IFDIR and theirs[path]["mtime"] >= unpacked:
            assert entry["mtime"] < unpacked
            entry["mtime"] = theirs[path]["mtime"] = None
    assert ours == theirs

    # and the rules themselves, spelled out
    assert "etc/motd" not in ours and "usr/share/doc" not in ours
    assert "usr/share/man/man8" not in ours and "usr/share/man/man1/ls.1" not in ours
    assert ours["usr/bin/suid"]["mode"] == 0o4755 and ours["usr/bin/sgid"]["mode"] == 0o2755
    assert ours["usr/bin/suid-link"]["nlink"] == 1          # layer 3 replaced suid: link split
    assert ours["scratch"]["mode"] == 0o1777
    assert ours["srv/link-to-dir/inside"] and ours["usr/abs"]["extra"] == "/etc/keep"
    assert UTF8_NAME in ours and LONG_PATH in ours and "run/fifo" in ours
    assert set(k for k in ours if k.startswith("srv/recreated/")) == {"srv/recreated/new"}


# --- hostile images ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(hostile_images()))
def test_hostile_images_are_refused_or_neutralised(registry, layout, tmp_path, name):
    layers, refusal = hostile_images()[name]
    reference = push(layout, registry, name, layers)
    store = new_store(tmp_path)
    if refusal:
        with pytest.raises(ImageContentError, match=refusal) as info:
            pull_image(parse(reference), store=store, settings=settings(registry, tmp_path))
        assert f"test/{name}" in str(info.value)
        assert os.listdir(store.directory) == []
        assert leftovers(tmp_path / "scratch") == leftovers(tmp_path / "cache" / "tmp") == []
        return
    meta = pull_image(parse(reference), store=store, settings=settings(registry, tmp_path))
    listing = subprocess.run(["unsquashfs", "-lln", store.image_path(meta.id)], check=True,
                             capture_output=True, text=True).stdout
    assert "squashfs-root/dev/kmem" not in listing
    if name == "absolute-path":
        assert "squashfs-root/etc/absolute" in listing


# --- the layer cache in use ----------------------------------------------------------

def cache_entries(work) -> dict[str, int]:
    directory = work / "cache" / "entries"
    return {name: os.stat(directory / name).st_ino for name in os.listdir(directory)}


def test_shared_layers_are_reused_and_damaged_ones_rebuilt(registry, layout, tmp_path):
    base = busybox_entries()
    first = push(layout, registry, "family-a", [base, [File("a", "a")]])
    second = push(layout, registry, "family-b", [base, [File("b", "b")]])
    third = push(layout, registry, "family-c", [base, [File("c", "c")]])
    store = new_store(tmp_path)
    pull_image(parse(first), store=store, settings=settings(registry, tmp_path))
    before = cache_entries(tmp_path)
    assert len(before) == 2
    pull_image(parse(second), store=store, settings=settings(registry, tmp_path))
    after = cache_entries(tmp_path)
    assert len(after) == 3
    assert {k: after[k] for k in before} == before         # base pack reused, not rewritten

    base_key = next(k for k in before if os.path.getsize(tmp_path / "cache" / "entries" / k) > 10000)
    with open(tmp_path / "cache" / "entries" / base_key, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xfe")
    meta = pull_image(parse(third), store=store, settings=settings(registry, tmp_path))
    with LayerCache(str(tmp_path / "cache")).open(base_key) as rebuilt:
        assert rebuilt is not None                                  # verifies again
    listing = subprocess.run(["unsquashfs", "-lln", store.image_path(meta.id)], check=True,
                             capture_output=True, text=True).stdout
    assert "squashfs-root/bin/busybox" in listing and "squashfs-root/c" in listing


def test_cache_limit_evicts_older_layers(registry, layout, tmp_path):
    first = push(layout, registry, "evict-a", [busybox_entries() + [File("a", "a")]])
    second = push(layout, registry, "evict-b", [busybox_entries() + [File("b", "b")]])
    store = new_store(tmp_path)
    tiny = settings(registry, tmp_path, cache_size_limit=1)
    pull_image(parse(first), store=store, settings=tiny)
    only_first = cache_entries(tmp_path)
    assert len(only_first) == 1                               # kept: the image just pulled
    pull_image(parse(second), store=store, settings=tiny)
    only_second = cache_entries(tmp_path)
    assert len(only_second) == 1 and only_second.keys() != only_first.keys()


def test_concurrent_pulls_of_one_image(registry, layout, tmp_path):
    reference = push(layout, registry, "concurrent", [busybox_entries(), [File("x", "x")]])
    store = new_store(tmp_path)
    config = settings(registry, tmp_path)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        metas = list(pool.map(lambda _: pull_image(parse(reference), store=store,
                                                   settings=config), range(4)))
    assert len({m.id for m in metas}) == 1
    assert len(os.listdir(store.directory)) == 3
    assert len(cache_entries(tmp_path)) == 2
    assert leftovers(tmp_path / "scratch") == leftovers(tmp_path / "cache" / "tmp") == []


@pytest.mark.root
def test_pull_works_unprivileged(registry, layout, request):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    reference = push(layout, registry, "unprivileged", edge_case_layers())
    work = pathlib.Path(tempfile.mkdtemp(prefix="pull-as-nobody-"))   # pytest's tmp is 0700
    request.addfinalizer(lambda: shutil.rmtree(work))
    os.chown(work, 65534, 65534)
    code = textwrap.dedent(f"""
        import os
        from gateway.pipeline import PipelineSettings, pull_image
        from gateway.registry import Location
        from shifter_core.imageref import parse
        from shifter_core.imagestore import ImageStore
        os.makedirs("{work}/images")
        store = ImageStore("{work}/images")
        settings = PipelineSettings(cache_dir="{work}/cache", scratch_dir="{work}/scratch",
            locations={{"{registry.host}": Location("{registry.url}", insecure=True)}})
        print(pull_image(parse("{reference}"), store=store, settings=settings).id)
    """)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                            env={"PATH": "/usr/bin:/bin", "HOME": str(work)})
    assert result.returncode == 0, result.stderr
    image = work / "images" / f"{result.stdout.strip()}.squashfs"
    assert os.stat(image).st_uid == 65534
    listing = subprocess.run(["unsquashfs", "-lln", str(image)], check=True,
                             capture_output=True, text=True).stdout
    assert "-rwsr-xr-x 0/0" in listing                       # setuid kept, owner root


def test_builds_left_by_a_crashed_worker_are_cleaned(registry, layout, tmp_path):
    reference = push(layout, registry, "stale", [busybox_entries()])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    stale, fresh, other = (scratch / f".{'a' * 64}.x1.squashfs", scratch / f".{'b' * 64}.x2.squashfs",
                           scratch / "staging-file")
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    pull_image(parse(reference), store=new_store(tmp_path), settings=settings(registry, tmp_path))
    assert not stale.exists() and fresh.exists() and other.exists()


def test_a_squashfs_left_without_metadata_is_used_not_built_again(registry, layout, tmp_path):
    reference = push(layout, registry, "unpublished", [busybox_entries()])
    store = new_store(tmp_path)
    meta = pull_image(parse(reference), store=store, settings=settings(registry, tmp_path))
    inode = os.stat(store.image_path(meta.id)).st_ino
    for ext in ("json", "meta"):
        os.unlink(os.path.join(store.directory, f"{meta.id}.{ext}"))
    assert pull_image(parse(reference), store=store, settings=settings(registry, tmp_path)) == meta
    assert store.read(meta.id) == meta and os.stat(store.image_path(meta.id)).st_ino == inode
