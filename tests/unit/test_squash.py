"""The squashfs writer, read back with two independent readers (sqfs2tar, unsquashfs)."""
from __future__ import annotations

import concurrent.futures
import io
import os
import random
import subprocess
import tarfile

import pytest

from ci.harness.oci import Dir, Entry, Fifo, File, Hardlink, Symlink
from gateway.errors import ConversionError
from gateway.pipeline import convert
from gateway.squash import BLOCK_SIZE, Compressor, Pack, pack_layer
from shifter_core.errors import ImageContentError

MTIME = 1_650_000_000


def tar_bytes(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            tar.addfile(entry.tarinfo(), entry.content())
    return buffer.getvalue()


def build(tmp_path, layers: list[list[Entry]], compressor: str = "zstd",
          level: int | None = 3, name: str = "image.sqfs") -> str:
    comp = Compressor(compressor, level)
    packs = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for index, entries in enumerate(layers):
            pack_file = open(tmp_path / f"{name}.pack{index}", "w+b")
            pack_layer(io.BytesIO(tar_bytes(entries)), pack_file, comp, pool, "test")
            size = pack_file.tell()
            packs.append(Pack(pack_file, size))
    output = str(tmp_path / name)
    try:
        convert(packs, output, comp, "test")
    finally:
        for pack in packs:
            pack.file.close()
    return output


def read_back(image: str) -> dict[str, tuple]:
    """name -> (kind, mode, mtime, uid, gid, content or link target), via sqfs2tar."""
    tar_data = subprocess.run(["sqfs2tar", "--root-becomes", ".", "--no-skip", image],
                              check=True, capture_output=True).stdout
    result = {}
    with tarfile.open(fileobj=io.BytesIO(tar_data)) as tar:
        for info in tar:
            name = info.name[2:] if info.name.startswith("./") else info.name.rstrip("/")
            if info.name in (".", "./"):
                name = ""
            if info.isreg():
                payload = tar.extractfile(info).read()
            else:
                payload = info.linkname
            kind = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
                    tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo"}[info.type]
            result[name.rstrip("/")] = (kind, info.mode, info.mtime, info.uid, info.gid, payload)
    return result


def unsquashfs_listing(image: str) -> dict[str, str]:
    out = subprocess.run(["unsquashfs", "-lln", image], check=True, capture_output=True,
                         text=True).stdout
    return {line.split("squashfs-root", 1)[1].split(" -> ")[0] or "/": line
            for line in out.splitlines() if "squashfs-root" in line}


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_every_kind_of_entry_round_trips(tmp_path):
    files = {f"data/f{size}": payload(size, size) for size in
             (0, 1, 4095, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 5)}
    entries = [Dir("data", mtime=MTIME)]
    entries += [File(name, data, mtime=MTIME + 1) for name, data in files.items()]
    entries += [
        Dir("tmp", mode=0o1777, mtime=MTIME),
        File("usr/bin/su", b"#!setuid", mode=0o4755, uid=0, mtime=MTIME),
        File("usr/bin/wall", b"#!setgid", mode=0o2755, gid=5, mtime=MTIME),
        File("home/user/private", b"mine", mode=0o600, uid=1000, gid=1000, mtime=MTIME),
        Symlink("usr/lib64", "lib", mtime=MTIME),
        Symlink("etc/abs", "/etc/hostname", mtime=MTIME),
        Symlink("dangling", "does/not/exist", mtime=MTIME),
        Fifo("run/fifo", mode=0o600, mtime=MTIME),
        File("données-日本語-ünïcødé.txt", "utf-8", mtime=MTIME),
        File("n" * 255, "longest name", mtime=MTIME),
    ]
    image = build(tmp_path, [entries])
    tree = read_back(image)

    for name, data in files.items():
        assert tree[name] == ("file", 0o644, MTIME + 1, 0, 0, data)
    assert tree["tmp"][:2] == ("dir", 0o1777)
    assert tree["usr/bin/su"][:2] == ("file", 0o4755)
    assert tree["usr/bin/wall"][:2] == ("file", 0o2755)
    assert tree["home/user/private"] == ("file", 0o600, MTIME, 0, 0, b"mine")
    assert tree["usr/lib64"][0::5] == ("symlink", "lib")
    assert tree["etc/abs"][0::5] == ("symlink", "/etc/hostname")
    assert tree["dangling"][0::5] == ("symlink", "does/not/exist")
    assert tree["run/fifo"][:2] == ("fifo", 0o600)
    assert tree["données-日本語-ünïcødé.txt"][5] == b"utf-8"
    assert tree["n" * 255][5] == b"longest name"
    assert all(uid == 0 and gid == 0 for _, _, _, uid, gid, _ in tree.values())
    assert tree["usr"][0] == "dir" and tree["usr"][1] == 0o755     # implicit parent


def test_unsquashfs_agrees(tmp_path):
    image = build(tmp_path, [[File("a/b", "x", mode=0o640), Symlink("a/c", "b")]])
    listing = unsquashfs_listing(image)
    assert listing["/a/b"].startswith("-rw-r----- 0/0")
    assert listing["/a/c"].startswith("lrwxrwxrwx 0/0")
    info = subprocess.run(["unsquashfs", "-s", image], check=True, capture_output=True,
                          text=True).stdout
    assert "Compression zstd" in info and "Number of ids 1" in info
    assert "Xattrs are not stored" in info
    assert os.path.getsize(image) % 4096 == 0


def test_holes_cost_nothing_and_read_as_zeros(tmp_path):
    zero = bytes(BLOCK_SIZE)
    sparse = zero + payload(BLOCK_SIZE, 1) + zero + zero + b"tail"
    all_zero = zero * 8
    image = build(tmp_path, [[File("sparse", sparse), File("zeros", all_zero)]])
    tree = read_back(image)
    assert tree["sparse"][5] == sparse
    assert tree["zeros"][5] == all_zero
    assert os.path.getsize(image) < 2 * BLOCK_SIZE


def test_hardlinks_share_one_inode(tmp_path):
    image = build(tmp_path, [[File("bin/tool", payload(5000, 3), mode=0o4755),
                              Hardlink("bin/tool2", "bin/tool"), Hardlink("sbin/tool3", "bin/tool")]])
    tree = read_back(image)
    assert {tree["bin/tool2"][0], tree["sbin/tool3"][0]} == {"hardlink"}
    listing = unsquashfs_listing(image)
    assert listing["/bin/tool"].startswith("-rwsr-xr-x 0/0")


def test_large_directory_uses_many_runs_and_an_extended_inode(tmp_path):
    names = [f"dir/{'x' * 60}-{i:05d}" for i in range(3000)]     # listing > 64 KiB
    entries = [Dir("dir")] + [File(n, str(i)) for i, n in enumerate(names)]
    tree = read_back(build(tmp_path, [entries]))
    assert sum(1 for n in tree if n.startswith("dir/")) == 3000
    assert tree[names[2999]][5] == b"2999"


def test_upper_layers_override_and_only_survivors_are_copied(tmp_path):
    big_old, big_new = payload(4 * BLOCK_SIZE, 10), payload(BLOCK_SIZE + 7, 11)
    lower = [File("big", big_old), File("small", "old"), File("keep", "kept"),
             Dir("gone"), File("gone/x", payload(2 * BLOCK_SIZE, 12))]
    upper = [File("big", big_new), File("small", "new"), File(".wh.gone")]
    image = build(tmp_path, [lower, upper])
    tree = read_back(image)
    assert tree["big"][5] == big_new and tree["small"][5] == b"new"
    assert tree["keep"][5] == b"kept" and "gone" not in tree
    assert os.path.getsize(image) < 3 * BLOCK_SIZE + 8192   # old big file not copied


@pytest.mark.parametrize("compressor, level", [("gzip", 6), ("xz", 6), ("zstd", 1), ("zstd", None)])
def test_compressors(tmp_path, compressor, level):
    data = b"compressible " * 50000
    image = build(tmp_path, [[File("f", data), File("g", "small")]], compressor, level)
    assert read_back(image)["f"][5] == data
    info = subprocess.run(["unsquashfs", "-s", image], check=True, capture_output=True,
                          text=True).stdout
    assert f"Compression {compressor}" in info


def test_same_input_same_bytes(tmp_path):
    entries = [File(f"f{i}", payload(i * 1000, i)) for i in range(50)]
    first = build(tmp_path, [entries], name="one.sqfs")
    second = build(tmp_path, [entries], name="two.sqfs")
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("name, level", [("lz4", None), ("zstd", 30), ("gzip", 0)])
def test_unusable_compressor_settings_are_refused(name, level):
    with pytest.raises(ConversionError):
        Compressor(name, level)


def test_names_longer_than_unsquashfs_and_umoci_create_are_refused(tmp_path):
    with pytest.raises(ImageContentError, match="longer than 255 bytes"):
        build(tmp_path, [[File("n" * 256, "x")]])
    with pytest.raises(ImageContentError, match="longer than 255 bytes"):
        build(tmp_path, [[File("é" * 128, "x")]])         # 256 bytes of UTF-8
    image = build(tmp_path, [[File("dir/" + "n" * 255, "longest name")]], name="ok.sqfs")
    subprocess.run(["unsquashfs", "-q", "-d", str(tmp_path / "out"), image], check=True,
                   capture_output=True)
    assert (tmp_path / "out" / "dir" / ("n" * 255)).read_text() == "longest name"


def test_truncated_layer_is_refused(tmp_path):
    data = tar_bytes([File("f", payload(3 * BLOCK_SIZE, 1))])[:BLOCK_SIZE]
    with open(tmp_path / "pack", "w+b") as out, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(ImageContentError):
            pack_layer(io.BytesIO(data), out, Compressor("zstd", 3), pool, "test")
