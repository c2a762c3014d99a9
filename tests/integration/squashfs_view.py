"""Reading a squashfs image the way the nodes do: mounted by the kernel."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


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
