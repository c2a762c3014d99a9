"""`shifterimg` against a real gateway (embedded default: SQLite + worker thread),
a real munged and a real docker-registry on loopback."""
from __future__ import annotations

import os
import re

import pytest

from tests.integration.gateway_fixtures import (GatewayProcess, busybox, gateway_config, munged,  # noqa: F401
                                                registry, shifterimg, udiroot_conf)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, munged, registry):
    workdir = str(tmp_path_factory.mktemp("gateway"))
    with GatewayProcess(workdir, gateway_config(workdir, munged, registry)) as gw:
        yield gw


@pytest.fixture(scope="module")
def conf(gateway):
    return udiroot_conf(gateway.workdir, [gateway.url])


def test_pull_then_lookup_and_images(gateway, conf, munged, busybox):
    pulled = shifterimg(["pull", f"docker:{busybox}"], conf, munged)
    assert pulled.returncode == 0, pulled.stderr + gateway.log()
    assert "status: READY" in pulled.stdout
    assert "status: PENDING" in pulled.stdout or "status: PULLING" in pulled.stdout

    looked = shifterimg(["lookup", busybox], conf, munged)
    assert looked.returncode == 0, looked.stderr
    image_id = looked.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", image_id)
    images_dir = os.path.join(gateway.workdir, "images")
    for ext in ("squashfs", "meta", "json"):
        assert os.path.exists(os.path.join(images_dir, f"{image_id}.{ext}"))

    listed = shifterimg(["images"], conf, munged)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if busybox in line)
    assert row.split()[:4] == ["testsys", "docker", "READY", image_id[:10]]


def test_pull_of_unknown_tag_fails_with_reason(gateway, conf, munged, registry):
    result = shifterimg(["pull", f"{registry.host}/test/busybox:no-such-tag"], conf, munged)
    assert result.returncode == 1
    assert "status: FAILURE" in result.stdout
    assert "not found" in result.stderr


def test_lookup_of_unknown_image_exits_1(conf, munged):
    result = shifterimg(["lookup", "docker:never/pulled:1"], conf, munged)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "not available" in result.stderr


def test_unreachable_gateway_is_reported(tmp_path, munged):
    conf = udiroot_conf(str(tmp_path), ["http://127.0.0.1:1"])
    result = shifterimg(["images"], conf, munged)
    assert result.returncode == 1
    assert "no image gateway answered" in result.stderr


def test_gateways_are_tried_in_order(gateway, munged, busybox, tmp_path_factory):
    from tests.integration.gateway_fixtures import shared_dir
    conf = udiroot_conf(shared_dir("failover"), ["http://127.0.0.1:1", gateway.url])
    result = shifterimg(["images"], conf, munged)
    assert result.returncode == 0, result.stderr


def test_pull_output_when_not_a_terminal(gateway, conf, munged, busybox):
    result = shifterimg(["-v", "pull", busybox], conf, munged)
    assert result.returncode == 0
    assert "Message: {" in result.stderr and "\x1b[2K" not in result.stdout
