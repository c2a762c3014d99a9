"""Squashfs images from our writer, read by the Linux kernel (loop mount, private namespace)."""
from __future__ import annotations

import concurrent.futures
import io
import random
import tarfile
import textwrap

import pytest

from ci.harness.oci import Dir, Fifo, File, Hardlink, Symlink
from gateway.merge import Tree
from gateway.squash import BLOCK_SIZE, Compressor, Pack, pack_layer, write_image
from tests.integration.squashfs_view import read_mounted

pytestmark = pytest.mark.root

READ_ALL = textwrap.dedent("""
    import hashlib, json, os, stat, sys
    root, tree = sys.argv[1], {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            else:
                extra = None
            tree[os.path.relpath(path, root)] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                 st.st_nlink, st.st_uid, extra]
    json.dump(tree, sys.stdout)
""")


def squashfs_from(tmp_path, layers, compressor="zstd", level=3) -> str:
    comp, tree, packs = Compressor(compressor, level), Tree("kernel-test"), []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for index, entries in enumerate(layers):
            raw = io.BytesIO()
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for entry in entries:
                    tar.addfile(entry.tarinfo(), entry.content())
            pack_file = open(tmp_path / f"pack{index}", "w+b")
            pack_layer(io.BytesIO(raw.getvalue()), pack_file, comp, pool)
            packs.append(Pack(pack_file, pack_file.tell()))
            tree.apply(index, packs[-1].members(index))
    image = str(tmp_path / "image.sqfs")
    write_image(tree, packs, image, comp)
    for pack in packs:
        pack.file.close()
    return image


def kernel_view(image: str, tmp_path) -> dict:
    return read_mounted(image, tmp_path, READ_ALL)


def sha(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compressor, level", [("zstd", 3), ("gzip", 6), ("xz", 6)])
def test_kernel_reads_every_structure_we_write(tmp_path, compressor, level):
    rng = random.Random(7)
    big = rng.randbytes(3 * BLOCK_SIZE + 11)
    sparse = bytes(BLOCK_SIZE) + b"x" * 10 + bytes(2 * BLOCK_SIZE)
    many = [f"big-dir/{'n' * 70}-{i:05d}" for i in range(2500)]      # extended directory
    files = {f"small/{i:04d}": rng.randbytes(rng.randrange(1, 3000)) for i in range(300)}
    layer = ([Dir("big-dir")] + [File(n, n) for n in many]
             + [File(n, d) for n, d in files.items()]
             + [File("big", big), File("sparse", sparse), File("empty", b""),
                File("suid", "s", mode=0o4755), Hardlink("suid-2", "suid"),
                Symlink("link", "/big"), Fifo("fifo"), Dir("sticky", mode=0o1777)])
    seen = kernel_view(squashfs_from(tmp_path, [layer], compressor, level), tmp_path)

    assert sum(1 for p in seen if p.startswith("big-dir/")) == 2500
    assert seen[many[-1]][4] == sha(many[-1].encode())
    assert all(seen[n][4] == sha(d) for n, d in files.items())
    assert seen["big"][4] == sha(big) and seen["sparse"][4] == sha(sparse)
    assert seen["empty"][4] == sha(b"")
    assert seen["suid"][1] == 0o4755 and seen["suid"][2] == 2 and seen["suid-2"][2] == 2
    assert seen["link"][4] == "/big"
    assert seen["sticky"][1] == 0o1777
    assert {entry[3] for entry in seen.values()} == {0}
