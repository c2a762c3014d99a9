"""Layer tars read as Go's archive/tar (umoci) reads them: GNU sparse files, hidden names, odd types."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import pytest

from gateway import layertar
from gateway.merge import DIR, FILE

SIZE = 1 << 20
HOLES = {300_000: b"data in the middle", SIZE - 4: b"tail"}
LONG = "deep/" + "d" * 90 + "/" + "f" * 60
UTF8 = "données-日本語-ünïcødé"


def read(data: bytes) -> dict[str, tuple[str, bytes | None]]:
    result = {}
    for member, content in layertar.members(io.BytesIO(data)):
        result[member.name] = (member.kind, content.read() if content is not None else None)
    return result


def sparse_content() -> bytes:
    content = bytearray(SIZE)
    for offset, data in HOLES.items():
        content[offset:offset + len(data)] = data
    return bytes(content)


def gnu_tar(tmp_path, name: str, *options: str) -> bytes:
    """GNU tar's own archive of one sparse file called `name`."""
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("GNU tar is not installed")
    root = tmp_path / "root"
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for offset, data in HOLES.items():
            f.seek(offset)
            f.write(data)
    return subprocess.run([tar, "-C", str(root), *options, "-cf", "-", name.split("/")[0]],
                          check=True, capture_output=True).stdout


@pytest.mark.parametrize("version", ["0.0", "0.1", "1.0"])
@pytest.mark.parametrize("name", [LONG, UTF8, "short"])
def test_gnu_pax_sparse_files_keep_their_real_name(tmp_path, version, name):
    members = read(gnu_tar(tmp_path, name, "--format=posix", "--sparse", f"--sparse-version={version}"))
    assert members[name] == (FILE, sparse_content())
    assert not any("GNUSparseFile" in path for path in members)


def test_old_gnu_sparse_files_and_global_headers_are_refused_as_umoci_refuses_them(tmp_path):
    with pytest.raises(layertar.Refused, match="has tar type 'S'"):
        read(gnu_tar(tmp_path, UTF8, "--format=gnu", "--sparse"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"path": "x"}) as tar:
        tar.addfile(tarfile.TarInfo("empty"), io.BytesIO())
    with pytest.raises(layertar.Refused, match="is a global PAX header"):
        read(buffer.getvalue())


def pax_member(name: str, records: dict[str, str], data: bytes = b"visible content",
               kind: bytes = tarfile.REGTYPE) -> bytes:
    """One member whose PAX header holds `records`, in that order."""
    buffer = io.BytesIO()
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    info.pax_headers = dict(records)
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


@pytest.mark.parametrize("order", ["name-first", "path-first"])
def test_a_plain_member_cannot_hide_a_second_name(order):
    records = {"GNU.sparse.name": "etc/ld.so.preload", "path": "visible"}
    if order == "path-first":
        records = dict(reversed(records.items()))
    assert read(pax_member("visible", records)) == {"visible": (FILE, b"visible content")}


@pytest.mark.parametrize("records", [
    {"GNU.sparse.size": "4"},                                            # Python: sparse 0.0; Go: plain
    {"GNU.sparse.major": "0", "GNU.sparse.minor": "1"},                  # Go: sparse, empty map; Python: plain
    {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.map": "0,4"},
    {"GNU.sparse.map": "0,4", "GNU.sparse.offset": "0", "GNU.sparse.numbytes": "4"},
    {"GNU.sparse.major": "0", "GNU.sparse.minor": "0", "GNU.sparse.map": "0,4", "GNU.sparse.size": "9",
     "GNU.sparse.realsize": "8"},
])
def test_sparse_records_the_readers_disagree_on_refuse_the_layer(records):
    with pytest.raises(layertar.Refused, match="disagree|two different sizes"):
        read(pax_member("file", records))


def test_other_sparse_records_on_a_plain_member_are_ignored_as_go_does():
    records = {"GNU.sparse.realsize": "999", "GNU.sparse.numblocks": "7"}
    assert read(pax_member("file", records)) == {"file": (FILE, b"visible content")}


@pytest.mark.parametrize("kind", [b"D", b"V", b"M", b"N", b"7"])
def test_types_that_are_no_file_system_object_refuse_the_layer(kind):
    with pytest.raises(layertar.Refused, match=f"tar type '{kind.decode()}'"):
        read(pax_member("thing", {}, kind=kind))


def test_ordinary_members_pass_unchanged(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    os.symlink("f", tmp_path / "d" / "l")
    data = subprocess.run(["tar", "-C", str(tmp_path), "--format=posix", "-cf", "-", "d"],
                          check=True, capture_output=True).stdout
    members = read(data)
    assert members["d"] == (DIR, None) and members["d/f"] == (FILE, b"x")
    assert members["d/l"][0] == "symlink"
