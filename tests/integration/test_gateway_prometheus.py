"""`/metrics` with several gunicorn sync workers and separate worker processes: every
scrape, whichever process answers it, gives the same totals, parsed by prometheus_client."""
from __future__ import annotations

import time
import urllib.parse

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ci.harness.oci import busybox_config
from shifter_core.munge import Munge
from tests.integration.gateway_fixtures import (SYSTEM, GatewayProcess, busybox, client,  # noqa: F401
                                                gateway_config, munged, postgres, push_busybox, registry)

pytestmark = pytest.mark.slow
API_PROCESSES = 3
FOUND, MISSING, ANONYMOUS = 40, 10, 5
SCRAPES = 8                  # enough for every API process to answer some


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, munged, registry, postgres):
    workdir = str(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(workdir, munged, registry, DatabaseURI=postgres.create_database("prometheus"))
    with GatewayProcess(workdir, config, production=True, api_processes=API_PROCESSES, workers=2) as gw:
        yield gw


@pytest.fixture(scope="module")
def images(gateway, munged, registry, busybox, tmp_path_factory):
    """busybox and a second image of other content: two pulls, two conversions."""
    other = push_busybox(registry, str(tmp_path_factory.mktemp("other")), "test/other",
                         config=busybox_config(labels={"variant": "other"}))
    gw_client = client(gateway, munged)
    records = []
    for image in (busybox, other):
        deadline = time.monotonic() + 120
        while (record := gw_client.pull(image))["status"] != "READY":
            assert record["status"] != "FAILURE" and time.monotonic() < deadline, record
            time.sleep(0.2)
        records.append(record)
    return records


def scrape(gateway) -> dict[tuple[str, tuple], float]:
    """Every sample of one scrape: (sample name, sorted labels) -> value."""
    response = requests.get(gateway.url + "/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def lookup(gateway, munged, image: str, authenticated: bool = True) -> int:
    headers = {"authentication": Munge(munged.socket).encode()} if authenticated else {}
    path = f"/api/lookup/{SYSTEM}/docker/{urllib.parse.quote(image, safe='')}/"
    return requests.get(gateway.url + path, headers=headers, timeout=10).status_code


def settled(gateway, check, timeout: float = 15):
    """The first scrape for which check(samples) holds (other processes write within a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = scrape(gateway)
        if check(samples):
            return samples
        time.sleep(0.3)
    raise AssertionError(f"metrics never settled: {samples}")


def test_every_process_reports_the_same_totals(gateway, munged, images, busybox):
    for _ in range(FOUND):
        assert lookup(gateway, munged, busybox) == 200
    for n in range(MISSING):
        assert lookup(gateway, munged, f"never/pulled:{n}") == 404
    for _ in range(ANONYMOUS):
        assert lookup(gateway, munged, busybox, authenticated=False) == 401

    def lookups(samples) -> tuple:
        return tuple(value(samples, "shifter_gateway_lookups_total", system=SYSTEM, outcome=outcome)
                     for outcome in ("found", "not_found", "unauthenticated"))
    settled(gateway, lambda samples: lookups(samples) == (FOUND, MISSING, ANONYMOUS))
    scrapes = [scrape(gateway) for _ in range(SCRAPES)]
    assert {lookups(samples) for samples in scrapes} == {(FOUND, MISSING, ANONYMOUS)}

    samples = scrapes[-1]
    assert value(samples, "shifter_gateway_jobs_total", system=SYSTEM, kind="pull", outcome="ready") == 2
    assert value(samples, "shifter_gateway_pull_duration_seconds_count", system=SYSTEM, kind="pull") == 2
    assert value(samples, "shifter_gateway_pull_duration_seconds_bucket", system=SYSTEM, kind="pull",
                 le="+Inf") == 2
    assert value(samples, "shifter_gateway_pull_duration_seconds_sum", system=SYSTEM, kind="pull") > 0
    assert value(samples, "shifter_gateway_conversion_duration_seconds_count", system=SYSTEM) == 2
    for state in ("PENDING", "PULLING", "CONVERSION", "TRANSFER"):
        assert (("shifter_gateway_queue_jobs", (("state", state), ("system", SYSTEM))), 0.0) in samples.items()
    assert value(samples, "shifter_gateway_images", system=SYSTEM) == 2
    assert value(samples, "shifter_gateway_image_bytes", system=SYSTEM) == sum(r["size"] for r in images) > 0
    assert value(samples, "shifter_gateway_layer_cache_bytes") > 0


def test_a_queued_pull_counts_in_the_queue_depth(gateway, munged, registry, tmp_path):
    for worker in gateway.workers:
        worker.stop()
    try:
        image = push_busybox(registry, str(tmp_path), "test/queued")
        assert client(gateway, munged).pull(image)["status"] == "PENDING"
        samples = scrape(gateway)
        assert value(samples, "shifter_gateway_queue_jobs", system=SYSTEM, state="PENDING") == 1
    finally:
        for worker in gateway.workers:
            worker.start()
    settled(gateway, lambda samples: value(samples, "shifter_gateway_queue_jobs", system=SYSTEM, state="PENDING")
            == 0 and value(samples, "shifter_gateway_jobs_total", system=SYSTEM, kind="pull", outcome="ready") == 3,
            timeout=60)


def test_database_outages_are_counted(gateway, munged, postgres, images):
    postgres.stop()
    try:
        assert lookup(gateway, munged, "never/pulled:outage") == 503
        time.sleep(2)                     # the workers poll the queue meanwhile
    finally:
        postgres.start()
    settled(gateway, lambda samples: value(samples, "shifter_gateway_lookups_total", system=SYSTEM,
                                           outcome="unavailable") == 1
            and value(samples, "shifter_gateway_database_errors_total", process="api") >= 1
            and value(samples, "shifter_gateway_database_errors_total", process="worker") >= 1, timeout=30)
