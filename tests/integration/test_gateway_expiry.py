"""Expiry through shifterimg: lookups extend an image's life, `autoexpire` removes the
images nobody looked up for ImageExpirationTimeout, `expire` removes one now;
only image administrators may do either."""
from __future__ import annotations

import os
import time

import pytest

from tests.integration import waiting
from tests.integration.gateway_fixtures import (GatewayProcess, gateway_config, munged,  # noqa: F401
                                                push_busybox, registry, shared_dir, shifterimg, udiroot_conf)

pytestmark = pytest.mark.slow
EXPIRY = 3
NOBODY = 65534


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, munged, registry):
    workdir = str(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(workdir, munged, registry, ImageExpirationTimeout=f"0:0:0:{EXPIRY}")
    with GatewayProcess(workdir, config) as gw:
        yield gw


@pytest.fixture(scope="module")
def conf(gateway, tmp_path_factory):
    return udiroot_conf(shared_dir("conf"), [gateway.url])


def image_files(gateway, image_id):
    return [os.path.join(gateway.workdir, "images", f"{image_id}.{ext}") for ext in ("squashfs", "meta", "json")]


def wait_gone(paths, timeout=30):
    deadline = time.monotonic() + timeout
    while any(os.path.exists(p) for p in paths) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(os.path.exists(p) for p in paths)


def test_autoexpire_once_lookups_stop(gateway, conf, munged, registry, tmp_path):
    """Lookups through one tag keep the image (shared by two tags) alive; then it expires for both."""
    kept = push_busybox(registry, str(tmp_path / "a"), "test/kept")
    dropped = push_busybox(registry, str(tmp_path / "b"), "test/dropped")
    assert shifterimg(["pull", kept], conf, munged).returncode == 0
    assert shifterimg(["pull", dropped], conf, munged).returncode == 0
    kept_id = shifterimg(["lookup", kept], conf, munged).stdout.strip()
    dropped_id = shifterimg(["lookup", dropped], conf, munged).stdout.strip()
    assert kept_id == dropped_id        # same busybox content: one image, two tags

    refused = shifterimg(["autoexpire"], conf, munged, user=NOBODY)
    assert refused.returncode == 1 and "not an image administrator" in refused.stderr
    assert shifterimg(["autoexpire"], conf, munged).stdout == ""          # nothing due yet
    for _ in range(EXPIRY * 2):
        time.sleep(0.6)
        assert shifterimg(["lookup", kept], conf, munged).returncode == 0  # looked up: stays
    assert shifterimg(["autoexpire"], conf, munged).stdout == ""
    result = waiting.until(lambda: (found := shifterimg(["autoexpire"], conf, munged)).stdout and found,
                           EXPIRY + 60, "the image did not expire", interval=0.5)
    assert result.returncode == 0 and result.stdout.split() == ["expired", kept_id]
    assert wait_gone(image_files(gateway, kept_id))
    assert shifterimg(["lookup", kept], conf, munged).returncode == 1
    assert shifterimg(["lookup", dropped], conf, munged).returncode == 1


def test_expire_one_image_now(gateway, conf, munged, registry, tmp_path):
    from ci.harness.oci import busybox_config
    image = push_busybox(registry, str(tmp_path), "test/other", config=busybox_config(env=["X=1"]))
    assert shifterimg(["pull", image], conf, munged).returncode == 0
    image_id = shifterimg(["lookup", image], conf, munged).stdout.strip()
    refused = shifterimg(["expire", image], conf, munged, user=NOBODY)
    assert refused.returncode == 1 and "not an image administrator" in refused.stderr
    result = shifterimg(["expire", image], conf, munged)
    assert result.returncode == 0 and result.stdout.strip() == f"expired {image_id}"
    assert wait_gone(image_files(gateway, image_id))
    missing = shifterimg(["expire", image], conf, munged)
    assert missing.returncode == 1 and "not available" in missing.stderr
