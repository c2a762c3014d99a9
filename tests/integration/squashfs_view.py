"""Reading an image tree the way the nodes do: a squashfs mounted by the kernel, scanned into
a comparable description (kind, mode, mtime, size, link count, content hash or link target,
owner, device number, xattrs per path), or an unpacked directory scanned the same way."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCAN = textwrap.dedent("""
    import errno, hashlib, json, os, stat, sys
    root, tree = sys.argv[1], {}

    def xattrs(path):
        try:
            return sorted(os.listxattr(path, follow_symlinks=False))
        except OSError as err:      # squashfs without an xattr table says "not supported"
            if err.errno != errno.EOPNOTSUPP:
                raise
            return []

    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            else:
                extra = ""
            tree[os.path.relpath(path, root)] = {
                "kind": kind, "mode": stat.S_IMODE(st.st_mode), "mtime": int(st.st_mtime),
                "size": st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                "nlink": st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0,
                "extra": extra, "uid": st.st_uid, "gid": st.st_gid,
                "rdev": st.st_rdev, "xattrs": xattrs(path),
            }
    json.dump(tree, sys.stdout)
""")


def read_mounted(image: str, work, script_text: str) -> dict:
    """Loop-mount `image` read-only in a private mount namespace, run the
    Python `script_text` with the mount point as its argument, and return
    the JSON it prints; the mount goes away with the namespace."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting needs root")
    mountpoint, script = work / "mnt", work / "read.py"
    mountpoint.mkdir()
    script.write_text(script_text)
    shell = (f"mount -t squashfs -o loop,ro,nosuid,nodev {image} {mountpoint} || exit 1;"
             f" {sys.executable} {script} {mountpoint}; status=$?; umount {mountpoint}; exit $status")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", shell],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def scan_mounted(image: str, work) -> dict:
    """The tree of a squashfs image, as the kernel shows it."""
    return read_mounted(image, work, SCAN)


def scan_directory(root, work) -> dict:
    """The tree under `root` (an unpacked image), described as scan_mounted describes one."""
    script = work / "scan.py"
    script.write_text(SCAN)
    out = subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)
