"""Pulling the busybox test image from a real docker-registry into an image store."""
from __future__ import annotations

import os
import subprocess

import pytest

from ci.harness.oci import BUSYBOX_OS_RELEASE, Layout, busybox_image
from ci.harness.registry import Registry
from gateway.pipeline import PipelineSettings, pull_image
from gateway.registry import Location
from shifter_core.imageref import parse
from shifter_core.imagestore import ImageStore


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(str(tmp_path_factory.mktemp("registry"))) as reg:
        yield reg


@pytest.fixture(scope="module")
def busybox(registry, tmp_path_factory):
    """The busybox image pushed as test/busybox:latest; returns its reference."""
    layout = Layout(str(tmp_path_factory.mktemp("layout")))
    busybox_image(layout, "latest")
    layout.push("latest", f"{registry.host}/test/busybox:latest")
    return f"docker:{registry.host}/test/busybox:latest"


def settings_for(registry, tmp_path, **overrides) -> PipelineSettings:
    location = Location(url=registry.url, insecure=not registry.tls, ca_file=registry.ca_file)
    return PipelineSettings(cache_dir=str(tmp_path / "cache"), scratch_dir=str(tmp_path / "scratch"),
                            locations={registry.host: location}, **overrides)


def squashfs_listing(path: str) -> dict[str, str]:
    """path -> `ls -l`-like line, from unsquashfs -lln."""
    out = subprocess.run(["unsquashfs", "-lln", path], check=True, capture_output=True,
                         text=True).stdout
    listing = {}
    for line in out.splitlines():
        if not line[:1] in "-dlpcbs" or " squashfs-root" not in line:
            continue
        fields = line.split(None, 5)
        name = fields[5].split(" -> ")[0]
        listing[name[len("squashfs-root"):] or "/"] = line
    return listing


def squashfs_cat(path: str, member: str) -> bytes:
    return subprocess.run(["unsquashfs", "-cat", path, member], check=True,
                          capture_output=True).stdout


def test_pull_busybox_publishes_squashfs(registry, busybox, tmp_path):
    store = ImageStore(str(tmp_path / "images"))
    os.makedirs(store.directory)
    phases = []
    meta = pull_image(parse(busybox), store=store, settings=settings_for(registry, tmp_path),
                      progress=lambda status, info: phases.append(status))

    assert store.exists(meta.id)
    assert store.read(meta.id) == meta
    assert meta.cmd == ["/bin/sh"]
    assert meta.arch == "amd64"
    assert any(e.startswith("PATH=") for e in meta.env)
    assert phases[0] == "PULLING" and phases[-1] == "READY"
    assert "CONVERSION" in phases

    image = store.image_path(meta.id)
    assert os.stat(image).st_size == meta.size
    listing = squashfs_listing(image)
    assert listing["/bin/sh"].startswith("lrwxrwxrwx 0/0")
    assert listing["/bin/sh"].endswith("-> busybox")
    assert listing["/bin/busybox"].startswith("-rwxr-xr-x 0/0")
    assert listing["/tmp"].startswith("drwxrwxrwt 0/0")
    assert squashfs_cat(image, "etc/os-release").decode() == BUSYBOX_OS_RELEASE
    with open("/bin/busybox", "rb") as f:
        assert squashfs_cat(image, "bin/busybox") == f.read()
    with open(store.directory + f"/{meta.id}.meta") as f:
        assert "CMD: [\"/bin/sh\"]" in f.read()


@pytest.mark.root
def test_pulled_image_mounts_and_runs(registry, busybox, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loop-mounting needs root")
    store = ImageStore(str(tmp_path / "images"))
    os.makedirs(store.directory)
    meta = pull_image(parse(busybox), store=store, settings=settings_for(registry, tmp_path))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    script = (f"mount -t squashfs -o loop,ro,nosuid,nodev {store.image_path(meta.id)} {mountpoint}"
              f" && chroot {mountpoint} /bin/sh -c '. /etc/os-release; echo $ID'"
              f"; status=$?; umount {mountpoint}; exit $status")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "shifter-test"
