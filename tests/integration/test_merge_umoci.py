"""Differential test of the layer merge: hypothesis-generated layer stacks (whiteouts, opaque
directories, type changes, hardlinks, GNU PAX sparse files, long and UTF-8 names, devices, odd
tar types) through our pipeline (pack each layer, merge, write the squashfs) and through
`umoci unpack`, compared through a kernel mount of our image.

They must agree, or both refuse the stack, apart from the written policy (docs/image-pipeline.md):
owners, xattrs and device nodes are not kept, directories no layer names carry the mtime of the
entry that implies them (umoci: the time of unpacking), and a stack that writes, whites out or
hardlinks through a symlink is refused where umoci follows the symlink.

The examples are derandomized (the same stacks on every run) and bounded, so CI time stays
predictable; `SHIFTER_MERGE_EXAMPLES=N` runs more while working on the merge.
"""
from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ci.harness.oci import OCI_LAYER_GZIP, Descriptor, ImageConfig, Layout
from gateway.pipeline import convert
from gateway.squash import Compressor, Pack, pack_layer
from shifter_core.errors import ImageContentError
from tests.integration.squashfs_view import scan_directory, scan_mounted

pytestmark = [pytest.mark.root, pytest.mark.slow]
EXAMPLES = int(os.environ.get("SHIFTER_MERGE_EXAMPLES", "300"))
MTIME = 1_700_000_000
SPARSE_SIZE = 3 * 128 * 1024 + 17
POLICY_REFUSAL = "a symlink"          # ours refuses; umoci follows the symlink


# --- generating layer stacks ---------------------------------------------------------

NAMES = ["a", "a", "a", "b", "b", "é", "L" * 120, "n" * 255]
KINDS = ["dir", "dir", "file", "file", "sparse", "symlink", "hardlink", "fifo", "device", "whiteout",
         "whiteout", "opaque"]
HOSTILE = 10                  # one stack in this many may hold what both sides refuse


@st.composite
def entry(draw, hostile: bool):
    """(kind, path, extra) for one tar member."""
    kind = draw(st.sampled_from(KINDS + (["odd"] if hostile else [])))
    parts = st.sampled_from(NAMES + (["x" * 256] if hostile else []))
    path = "/".join(draw(st.lists(parts, min_size=1, max_size=2)))
    if kind == "dir":
        return kind, path, draw(st.sampled_from([0o755, 0o700, 0o1777]))
    if kind == "file":
        return kind, path, (draw(st.sampled_from([b"", b"one", b"two" * 50_000])),
                            draw(st.sampled_from([0o644, 0o4755])))
    if kind == "symlink":
        return kind, path, draw(st.sampled_from(["a", "b", "a/b", "../c", "/a/b", "é"]))
    if kind == "hardlink":
        return kind, path, draw(st.sampled_from(["a", "b", "a/b", "/b", "é/a"]))
    return kind, path, None


@st.composite
def stacks(draw):
    hostile = draw(st.integers(1, HOSTILE)) == 1
    return draw(st.lists(st.lists(entry(hostile), min_size=1, max_size=8), min_size=1, max_size=3))


def tar_layer(entries) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, path, extra in entries:
            info, content = _member(kind, path, extra)
            info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
            tar.addfile(info, content)
    return buffer.getvalue()


def _member(kind: str, path: str, extra):
    parent, _, base = path.rpartition("/")
    if kind in ("whiteout", "opaque"):
        name = ".wh..wh..opq" if kind == "opaque" else f".wh.{base}"
        info = tarfile.TarInfo(f"{parent}/{name}" if kind == "whiteout" and parent else
                               f"{path}/{name}" if kind == "opaque" else name)
        return info, io.BytesIO()
    info = tarfile.TarInfo(path)
    if kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, extra
    elif kind == "file":
        data, info.mode = extra
        info.size = len(data)
        return info, io.BytesIO(data)
    elif kind == "sparse":
        return _sparse_member(path)
    elif kind == "symlink":
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, extra, 0o777
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, extra
    elif kind == "fifo":
        info.type, info.mode = tarfile.FIFOTYPE, 0o644
    elif kind == "device":
        info.type, info.mode, info.devmajor, info.devminor = tarfile.CHRTYPE, 0o666, 1, 3
    else:
        info.type = b"D"                          # GNU dumpdir: no file system object
    return info, None


def _sparse_member(path: str):
    """A GNU PAX sparse 1.0 member, written as GNU tar writes one (the stand-in name and a
    `path` record after the real name)."""
    chunks = [(128 * 1024, b"middle" * 100), (SPARSE_SIZE - 5, b"tail!")]
    sparse_map = f"{len(chunks)}\n" + "".join(f"{offset}\n{len(data)}\n" for offset, data in chunks)
    header = sparse_map.encode().ljust(-(-len(sparse_map) // 512) * 512, b"\0")
    data = header + b"".join(data for _, data in chunks)
    stand_in = f"./GNUSparseFile.0/{path.rpartition('/')[2]}"[:99]
    info = tarfile.TarInfo(stand_in)
    info.size, info.mode = len(data), 0o644
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": path,
                        "GNU.sparse.realsize": str(SPARSE_SIZE), "path": stand_in}
    return info, io.BytesIO(data)


# --- the two pipelines -----------------------------------------------------------------

def ours(layers: list[bytes], work: Path) -> dict | str:
    """Our tree through a kernel mount, or our refusal."""
    compressor, packs = Compressor("zstd", 1), []
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for index, data in enumerate(layers):
                out = open(work / f"pack{index}", "w+b")
                packs.append(out)
                pack_layer(io.BytesIO(data), out, compressor, pool, "stack")
            convert([Pack(f, f.tell()) for f in packs], str(work / "image.sqfs"), compressor, "stack")
    except ImageContentError as refusal:
        return str(refusal)
    finally:
        for f in packs:
            f.close()
    return scan_mounted(str(work / "image.sqfs"), work)


def umoci(layers: list[bytes], work: Path) -> dict | str:
    """umoci's tree (unpacked as root: full fidelity), or its error."""
    layout = Layout(str(work / "layout"))
    descriptors = []
    for data in layers:
        blob = layout.add_blob(gzip.compress(data, mtime=0), OCI_LAYER_GZIP)
        descriptors.append(Descriptor(OCI_LAYER_GZIP, blob.digest, blob.size,
                                      "sha256:" + hashlib.sha256(data).hexdigest()))
    layout.add_image(descriptors, ImageConfig(), tag="stack")
    result = subprocess.run(["umoci", "unpack", "--image", f"{layout.path}:stack", str(work / "bundle")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
    return scan_directory(work / "bundle" / "rootfs", work)


def apart_from_policy(mine: dict, theirs: dict, unpacked: int) -> tuple[dict, dict]:
    """Both trees without what the policy changes."""
    theirs = {path: entry for path, entry in theirs.items()
              if not stat.S_ISCHR(entry["kind"]) and not stat.S_ISBLK(entry["kind"])}
    for tree in (mine, theirs):
        for entry in tree.values():
            for key in ("uid", "gid", "xattrs", "rdev"):
                entry.pop(key)
    for path, entry in theirs.items():
        if stat.S_ISDIR(entry["kind"]) and entry["mtime"] >= unpacked and path in mine:
            entry["mtime"] = mine[path]["mtime"] = None          # a directory umoci made itself
    return mine, theirs


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stacks())
def test_merge_agrees_with_umoci_unpack(stack):
    layers = [tar_layer(entries) for entries in stack]
    work = Path(tempfile.mkdtemp(prefix="merge-umoci-"))
    try:
        (work / "ours").mkdir()
        (work / "theirs").mkdir()
        mine = ours(layers, work / "ours")
        unpacked = int(time.time())
        theirs = umoci(layers, work / "theirs")
    finally:
        shutil.rmtree(work)
    if isinstance(mine, str):
        assert isinstance(theirs, str) or POLICY_REFUSAL in mine, f"only we refuse: {mine}"
        return
    assert not isinstance(theirs, str), f"only umoci refuses: {theirs}"
    mine, theirs = apart_from_policy(mine, theirs, unpacked)
    assert mine == theirs
