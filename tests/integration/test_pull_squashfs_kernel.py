"""Squashfs images from our writer, read by the Linux kernel (loop mount, private namespace)."""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import random
import tarfile

import pytest

from ci.harness.oci import Dir, Fifo, File, Hardlink, Symlink
from gateway.pipeline import convert
from gateway.squash import BLOCK_SIZE, Compressor, Pack, pack_layer
from tests.integration.squashfs_view import scan_mounted

pytestmark = pytest.mark.root

def squashfs_from(tmp_path, layers, compressor="zstd", level=3) -> str:
    comp, packs = Compressor(compressor, level), []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for index, entries in enumerate(layers):
            raw = io.BytesIO()
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for entry in entries:
                    tar.addfile(entry.tarinfo(), entry.content())
            pack_file = open(tmp_path / f"pack{index}", "w+b")
            pack_layer(io.BytesIO(raw.getvalue()), pack_file, comp, pool)
            packs.append(Pack(pack_file, pack_file.tell()))
    image = str(tmp_path / "image.sqfs")
    convert(packs, image, comp, "kernel-test")
    for pack in packs:
        pack.file.close()
    return image


def sha(data: bytes) -> str:
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
    seen = scan_mounted(squashfs_from(tmp_path, [layer], compressor, level), tmp_path)

    assert sum(1 for p in seen if p.startswith("big-dir/")) == 2500
    assert seen[many[-1]]["extra"] == sha(many[-1].encode())
    assert all(seen[n]["extra"] == sha(d) for n, d in files.items())
    assert seen["big"]["extra"] == sha(big) and seen["sparse"]["extra"] == sha(sparse)
    assert seen["empty"]["extra"] == sha(b"")
    assert seen["suid"]["mode"] == 0o4755 and seen["suid"]["nlink"] == seen["suid-2"]["nlink"] == 2
    assert seen["link"]["extra"] == "/big"
    assert seen["sticky"]["mode"] == 0o1777
    assert {entry["uid"] for entry in seen.values()} == {0}
