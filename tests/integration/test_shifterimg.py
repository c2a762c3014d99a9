"""`shifterimg` against a real gateway (embedded default: SQLite + worker thread),
a real munged and a real docker-registry on loopback."""
from __future__ import annotations

import os
import re

import pytest

from shifter_core.gwclient import GatewayClient
from shifter_core.munge import Munge
from tests.integration.gateway_fixtures import (SYSTEM, GatewayProcess, busybox, gateway_config,  # noqa: F401
                                                munged, registry, shared_dir, shifterimg, udiroot_conf)

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


DOWN = "http://127.0.0.1:1"     # nothing listens there: connection refused at once


@pytest.mark.parametrize("order", ["down first", "down last"])
def test_a_gateway_that_is_down_is_skipped_whatever_the_order(gateway, munged, order):
    """Shifter's client shuffles imageGateway for every call; failover must hold for each draw."""
    urls = [DOWN, gateway.url] if order == "down first" else [gateway.url, DOWN]
    conf = udiroot_conf(shared_dir("failover"), urls)
    for _ in range(3):
        result = shifterimg(["images"], conf, munged)
        assert result.returncode == 0, result.stderr
    both = GatewayClient(urls, SYSTEM, timeout=10, munge=Munge(munged.socket))
    for _ in range(20):
        assert isinstance(both.images(), list)


def test_requests_spread_over_the_gateways(gateway, munged, registry, busybox, tmp_path):
    """Two live gateways with their own catalogues: only the first has the image, so
    each answer shows which one served it; over 24 calls both must have served."""
    pulled = shifterimg(["pull", f"docker:{busybox}"], udiroot_conf(gateway.workdir, [gateway.url]), munged)
    assert pulled.returncode == 0, pulled.stderr
    with GatewayProcess(str(tmp_path), gateway_config(str(tmp_path), munged, registry)) as other:
        both = GatewayClient([gateway.url, other.url], SYSTEM, timeout=10, munge=Munge(munged.socket))
        served_by_first = [any(busybox in r["tag"] for r in both.images()) for _ in range(24)]
    assert 0 < sum(served_by_first) < 24, served_by_first


def test_pull_output_when_not_a_terminal(gateway, conf, munged, busybox):
    result = shifterimg(["-v", "pull", busybox], conf, munged)
    assert result.returncode == 0
    assert "Message: {" in result.stderr and "\x1b[2K" not in result.stdout
