"""The status page in a real browser (headless Chromium), on the production layout:
gunicorn sync workers + PostgreSQL + a separate worker process, real munged and registries.

A pull is made slow enough to watch by a throttling proxy in front of the registry,
so the progress the page shows is the worker's real one.  Private images and the
names of the users who pulled never reach the page.
"""
from __future__ import annotations

import json
import os
import time
import urllib.parse

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from selenium.common.exceptions import StaleElementReferenceException

from ci.harness.oci import File, ImageConfig, Layout, busybox_config, busybox_entries, busybox_image
from ci.harness.registry import Registry
from tests.integration.browser import browser  # noqa: F401
from tests.integration.gateway_fixtures import (SYSTEM, GatewayProcess, busybox, credential_as,  # noqa: F401
                                                gateway_config, munged, postgres, registry)
from tests.integration.throttle import ThrottledProxy

pytestmark = pytest.mark.slow
NOBODY = 65534                       # pulls are requested as this user: its name must never show
BIG_LAYER = 8_000_000                # random bytes: at RATE, the pull takes a few seconds
RATE = 1_000_000                     # bytes per second through the proxy while the test watches
LOOKUPS = 5
LABELS = {"org.opencontainers.image.title": "status page test", "note": "<b>not bold</b>"}


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory):
    with Registry(str(tmp_path_factory.mktemp("private-registry")), auth="htpasswd") as reg:
        yield reg


@pytest.fixture(scope="module")
def proxy(registry):
    with ThrottledProxy(registry.host, bytes_per_second=None) as slow:
        yield slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, munged, registry, private_registry, proxy, postgres):
    workdir = str(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(workdir, munged, registry, DatabaseURI=postgres.create_database("status_page"),
                            ImageExpirationTimeout="30:00:00:00")
    config["Locations"][proxy.host] = {"url": f"http://{proxy.host}"}
    config["Locations"][private_registry.host] = {"url": private_registry.url}
    with GatewayProcess(workdir, config, production=True) as gw:
        yield gw


@pytest.fixture(scope="module")
def big_image(registry, proxy, tmp_path_factory):
    """Two layers (busybox, 8 MB of random bytes) pushed to the registry, named through the proxy."""
    layout = Layout(str(tmp_path_factory.mktemp("big-layout")))
    layers = [layout.add_layer(busybox_entries()),
              layout.add_layer([File("data/random.bin", os.urandom(BIG_LAYER))], compresslevel=1)]
    config = ImageConfig(env=["PATH=/bin:/usr/bin", "GREETING=hello from the status page"],
                         entrypoint=["/bin/sh", "-c"], cmd=["echo $GREETING"], workdir="/data", labels=LABELS)
    layout.add_image(layers, config, tag="1")
    layout.push("1", f"{registry.host}/test/big:1")
    return {"ref": f"{proxy.host}/test/big:1", "layers": layers}


@pytest.fixture(scope="module")
def pulled(gateway, munged, busybox):
    return pull_as_nobody(gateway, munged, busybox)


@pytest.fixture(scope="module")
def private_image(gateway, munged, private_registry, tmp_path_factory):
    layout = Layout(str(tmp_path_factory.mktemp("private-layout")))
    busybox_image(layout, "1", config=busybox_config(labels={"secret": "yes"}))    # not busybox's digest
    ref = f"{private_registry.host}/secret/hidden-project:1"
    layout.push("1", ref, creds=private_registry.creds)
    user, password = private_registry.creds.split(":", 1)
    logins = {"authorized_locations": {private_registry.host: f"{user}:{password}"}}
    record = pull_as_nobody(gateway, munged, ref, payload=json.dumps(logins).encode(), acl=[NOBODY])
    assert record["private"] is True
    return {"ref": ref, "id": record["id"]}


def request_pull(gateway, munged, image: str, payload: bytes = b"", acl=()) -> dict:
    response = requests.post(f"{gateway.url}/api/pull/{SYSTEM}/docker/{urllib.parse.quote(image, safe='')}/",
                             headers={"authentication": credential_as(munged, NOBODY, payload)},
                             json={"allowed_uids": ",".join(map(str, acl))}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def pull_as_nobody(gateway, munged, image: str, timeout: float = 120, **kw) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = request_pull(gateway, munged, image, **kw)
        if record["status"] == "READY":
            return record
        assert record["status"] != "FAILURE", record
        time.sleep(0.3)
    raise AssertionError(f"pull of {image} did not finish: {record}\n{gateway.log()}")


def lookup_as_nobody(gateway, munged, image: str) -> None:
    response = requests.get(f"{gateway.url}/api/lookup/{SYSTEM}/docker/{urllib.parse.quote(image, safe='')}/",
                            headers={"authentication": credential_as(munged, NOBODY)}, timeout=10)
    assert response.status_code == 200, response.text


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    """condition()'s first true value; a page that reloaded meanwhile is asked again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_lists_a_pulled_image(browser, gateway, pulled, busybox):
    browser.get(gateway.url + "/")                      # a browser at the root lands on the page
    assert browser.driver.current_url == gateway.url + "/status/"
    rows = browser.css(f'tr.image[data-id="{pulled["id"]}"]')
    assert len(rows) == 1
    assert busybox in rows[0].text
    assert browser.css(f'tr.image[data-id="{pulled["id"]}"] svg.chart')
    assert browser.console_errors() == []


def test_a_pull_in_progress_moves_then_its_image_appears(browser, gateway, munged, proxy, big_image, pulled):
    proxy.bytes_per_second = RATE
    try:
        assert request_pull(gateway, munged, big_image["ref"])["status"] in ("PENDING", "PULLING")
        browser.get(gateway.url + "/status/")
        bar = f'tr.pull[data-tag="{big_image["ref"]}"] progress.layers'

        def progress() -> tuple[int, int] | None:
            bars = browser.css(bar)
            if not bars:
                return None
            return int(bars[0].get_attribute("value")), int(bars[0].get_attribute("max"))

        first, total = wait_for(lambda: (p := progress()) and p[0] > 0 and p, 30, "the download to show")
        assert total == sum(layer.size for layer in big_image["layers"])
        assert "nobody" not in browser.driver.page_source           # who asked for the pull stays hidden
        browser.shot("status-pull-in-progress", full_page=False)
        later = wait_for(lambda: (p := progress()) and p[0] > first and p, 15, "the bar to move")
        assert first < later[0] < total                     # the page refreshed itself: no reload by the test
    finally:
        proxy.bytes_per_second = None
    pull_as_nobody(gateway, munged, big_image["ref"])
    wait_for(lambda: browser.css(f'tr.image a[href*="/images/"]') and any(
        big_image["ref"] in row.text for row in browser.css("tr.image")), 30, "the page to list the new image")
    assert not browser.css(bar)
    assert browser.console_errors() == []


def test_failed_public_pull_shows_its_reason(browser, gateway, munged, registry, tmp_path):
    layout = Layout(str(tmp_path))
    layout.add_image([layout.add_layer([File("../escape", b"out of the image")])], ImageConfig(), tag="1")
    ref = f"{registry.host}/test/escaping:1"
    layout.push("1", ref)
    wait_for(lambda: request_pull(gateway, munged, ref)["status"] == "FAILURE", 60, "the pull to fail")
    browser.get(gateway.url + "/status/")
    rows = [row for row in browser.css("tr.failure") if ref in row.text]
    assert len(rows) == 1 and "leaves the image root" in rows[0].find_element("css selector", ".reason").text
    assert browser.console_errors() == []


def test_image_page_shows_config_layers_tags_and_lookups(browser, gateway, munged, big_image):
    record = pull_as_nobody(gateway, munged, big_image["ref"])
    for _ in range(LOOKUPS):
        lookup_as_nobody(gateway, munged, big_image["ref"])
    row = f'tr.image[data-id="{record["id"]}"]'
    wait_for(lambda: browser.get(gateway.url + "/status/") or browser.css(f"{row} td.usage .number")[0].text == str(LOOKUPS),
             10, "the lookups to show in the images table")
    browser.shot("status-overview")
    browser.css(f"{row} td.tags a")[0].click()
    assert browser.driver.current_url == f"{gateway.url}/status/{SYSTEM}/images/{record['id']}/"
    text = browser.css("main")[0].text
    assert "GREETING=hello from the status page" in text
    assert browser.css("code.entrypoint")[0].text == '["/bin/sh", "-c"]'
    assert browser.css("code.cmd")[0].text == '["echo $GREETING"]'
    assert "<b>not bold</b>" in browser.css("td.labels")[0].text        # shown as text, not markup
    assert [cell.text for cell in browser.css("table.layers td.digest")] == [
        layer.digest for layer in big_image["layers"]]
    assert big_image["ref"] in browser.css("td.tags")[0].text
    assert f"{LOOKUPS} lookups in the last" in browser.css("figure.usage")[0].text
    assert len(browser.css("figure.usage svg.chart rect")) == 1                  # all in this hour
    browser.shot("status-image")
    assert browser.console_errors() == []


def test_private_images_and_users_never_appear(gateway, munged, pulled, private_image):
    pages = [requests.get(gateway.url + "/status/", timeout=10).text,
             requests.get(f"{gateway.url}/status/{SYSTEM}/queue", timeout=10).text]
    for page in pages:
        assert "hidden-project" not in page and private_image["id"] not in page
        assert "nobody" not in page and str(NOBODY) not in page
    assert pulled["id"] in pages[0]
    hidden = requests.get(f"{gateway.url}/status/{SYSTEM}/images/{private_image['id']}/", timeout=10)
    assert hidden.status_code == 404 and "hidden-project" not in hidden.text
    assert requests.get(f"{gateway.url}/status/{SYSTEM}/images/{pulled['id']}/", timeout=10).status_code == 200


def test_metrics_parse(gateway, pulled):
    text = requests.get(gateway.url + "/metrics", timeout=10).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {"shifter_gateway_lookups", "shifter_gateway_jobs", "shifter_gateway_pull_duration_seconds",
            "shifter_gateway_queue_jobs", "shifter_gateway_image_bytes"} <= set(families)
    ready = [s for s in families["shifter_gateway_jobs"].samples
             if s.labels == {"system": SYSTEM, "kind": "pull", "outcome": "ready"}]
    assert ready and ready[0].value >= 1


@pytest.mark.cluster
@pytest.mark.root
def test_the_mini_clusters_gateway_shows_its_image(cluster, image, browser):
    browser.get(cluster.gateway_url + "/status/")
    assert any("busybox:latest" in row.text for row in browser.css("tr.image"))
    assert browser.console_errors() == []
    text = requests.get(cluster.gateway_url + "/metrics", timeout=10).text
    images = {s.labels["system"]: s.value for family in text_string_to_metric_families(text)
              if family.name == "shifter_gateway_images" for s in family.samples}
    assert images and min(images.values()) >= 1
