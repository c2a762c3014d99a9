"""Every endpoint and every error of the REST API, on the production layout:
gunicorn + PostgreSQL + a separate worker process, real munged and registry."""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
import urllib.parse

import pytest
import requests

from gateway.metrics import FLUSH_SECONDS
from shifter_core.errors import ImageNotFound
from shifter_core.munge import Munge
from tests.integration import waiting
from tests.integration.gateway_fixtures import (SYSTEM, GatewayProcess, busybox, client,  # noqa: F401
                                                credential_as, gateway_config, munged, postgres, registry)

pytestmark = pytest.mark.slow
NOBODY = 65534
RECORD_KEYS = {"id", "system", "itype", "tag", "status", "userACL", "groupACL", "ENV", "ENTRY", "WORKDIR",
               "LABELS", "last_pull", "status_message"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, munged, registry, postgres):
    workdir = str(tmp_path_factory.mktemp("gateway"))
    url = postgres.create_database("api")
    config = gateway_config(workdir, munged, registry, DatabaseURI=url, Metrics=True, ImportUsers=["root"])
    with GatewayProcess(workdir, config, production=True) as gw:
        yield gw


@pytest.fixture(scope="module")
def root(gateway, munged):
    return client(gateway, munged)


@pytest.fixture(scope="module")
def pulled(root, busybox):
    record = wait_pull(root, busybox)
    assert record["status"] == "READY", record
    return record


def wait_pull(gw_client, image, timeout=120, **kw):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = gw_client.pull(image, **kw)
        if record["status"] in ("READY", "FAILURE"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"pull of {image} did not finish: {record}")


def raw(gateway, munged, method, path, credential="fresh", **kw):
    headers = kw.pop("headers", {})
    if credential == "fresh":
        credential = Munge(munged.socket).encode()
    if credential is not None:
        headers["authentication"] = credential
    return requests.request(method, gateway.url + path, headers=headers, timeout=10, **kw)


def lookup_path(image, system=SYSTEM, itype="docker"):
    return f"/api/lookup/{system}/{itype}/{urllib.parse.quote(image, safe='')}/"


def assert_json(response, status):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"       # exactly, for Shifter's C client
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert "chunked" not in response.headers.get("Transfer-Encoding", "")
    return response.json()


def test_index(gateway):
    response = requests.get(gateway.url + "/", timeout=10)
    assert response.status_code == 200 and response.text.strip() == "{lookup,pull,expire,list}"


def test_pull_lookup_list_records(gateway, munged, pulled, busybox):
    assert RECORD_KEYS <= set(pulled)
    assert pulled["itype"] == "docker" and pulled["system"] == SYSTEM and busybox in pulled["tag"]
    assert pulled["CMD"] == ["/bin/sh"] and any(e.startswith("PATH=") for e in pulled["ENV"])
    looked = assert_json(raw(gateway, munged, "GET", lookup_path(busybox)), 200)
    assert looked["id"] == pulled["id"] and looked["status"] == "READY"
    assert looked["expiration"] is None          # no ImageExpirationTimeout configured
    listed = assert_json(raw(gateway, munged, "GET", f"/api/list/{SYSTEM}/"), 200)
    assert [r["id"] for r in listed["list"]] == [pulled["id"]]
    by_id = assert_json(raw(gateway, munged, "GET", lookup_path(pulled["id"], itype="id")), 200)
    assert by_id["id"] == pulled["id"]


def test_repeated_pull_returns_the_ready_image(root, pulled, busybox):
    again = root.pull(busybox)
    assert again["status"] == "READY" and again["id"] == pulled["id"]


def test_pull_record_while_in_progress(root, registry, tmp_path):
    from tests.integration.gateway_fixtures import push_busybox
    image = push_busybox(registry, str(tmp_path), "test/progress")
    first = root.pull(image)
    assert first["status"] in ("PENDING", "PULLING", "CONVERSION", "TRANSFER", "READY")
    if first["status"] != "READY":
        assert first["id"] == "MISSING" and first["ENV"] == "MISSING"
        assert "bytes_done" in first and "bytes_total" in first
    assert wait_pull(root, image)["status"] == "READY"


@pytest.mark.parametrize("credential, message", [
    (None, "missing 'authentication' header"),
    ("garbage", "not a munge credential"),
    ("MUNGE:AwQFAAAA", "credential"),
])
def test_authentication_errors(gateway, munged, credential, message):
    for method, path in (("GET", lookup_path("x:1")), ("GET", f"/api/list/{SYSTEM}/"),
                         ("POST", f"/api/pull/{SYSTEM}/docker/x%3A1/"), ("GET", f"/api/queue/{SYSTEM}/"),
                         ("GET", f"/api/metrics/{SYSTEM}/"), ("GET", f"/api/autoexpire/{SYSTEM}/")):
        body = assert_json(raw(gateway, munged, method, path, credential=credential), 401)
        assert body["status"] == 401 and body["error"] == "Unauthorized" and message in body["message"]


def test_replayed_credential_is_refused(gateway, munged):
    credential = Munge(munged.socket).encode()
    assert_json(raw(gateway, munged, "GET", f"/api/list/{SYSTEM}/", credential=credential), 200)
    body = assert_json(raw(gateway, munged, "GET", f"/api/list/{SYSTEM}/", credential=credential), 401)
    assert "already used" in body["message"]


def test_expired_credential_is_refused(gateway, munged):
    credential = Munge(munged.socket).encode(ttl=1)
    time.sleep(2.2)                     # a clock condition: nothing else has to happen meanwhile
    body = assert_json(raw(gateway, munged, "GET", f"/api/list/{SYSTEM}/", credential=credential), 401)
    assert "expired" in body["message"]


def test_credential_of_another_munge_key_is_refused(gateway, munged):
    from ci.harness.munged import MungeDaemon
    with MungeDaemon() as other:
        credential = Munge(other.socket).encode()
    body = assert_json(raw(gateway, munged, "GET", f"/api/list/{SYSTEM}/", credential=credential), 401)
    assert "same key" in body["message"]


def test_unknown_system_and_image_are_404(gateway, munged):
    body = assert_json(raw(gateway, munged, "GET", "/api/list/elsewhere/"), 404)
    assert "elsewhere" in body["message"]
    body = assert_json(raw(gateway, munged, "GET", lookup_path("never/pulled:1")), 404)
    assert "not available" in body["message"]
    assert_json(raw(gateway, munged, "GET", "/api/nothing/"), 404)


def test_bad_requests_are_400(gateway, munged):
    assert_json(raw(gateway, munged, "GET", lookup_path("UPPER/case:1")), 400)
    assert_json(raw(gateway, munged, "GET", lookup_path("x:1", itype="weird")), 400)
    body = assert_json(raw(gateway, munged, "POST", f"/api/pull/{SYSTEM}/docker/x%3A1/",
                           json={"allowed_uids": "1000,abc"}), 400)
    assert "numeric" in body["message"]
    assert_json(raw(gateway, munged, "POST", f"/api/pull/{SYSTEM}/docker/x%3A1/", data=b"[1,",
                    headers={"Content-Type": "application/json"}), 400)
    assert_json(raw(gateway, munged, "POST", f"/api/pull/{SYSTEM}/custom/x/"), 400)
    assert_json(raw(gateway, munged, "GET", f"/api/metrics/{SYSTEM}/?limit=-3"), 400)


def test_huge_acl_requests_are_400_at_once(gateway, munged):
    """Shifter's client sends ids as one string: two million of them (15 MB) or a few too many."""
    path = f"/api/pull/{SYSTEM}/docker/x%3A1/"
    huge = {"allowed_uids": ",".join(str(10_000 + i) for i in range(2_000_000))}
    body = assert_json(raw(gateway, munged, "POST", path, json=huge), 400)
    assert "at most 65536 are accepted" in body["message"]
    many = {"allowed_uids": ",".join(str(10_000 + i) for i in range(1001))}
    body = assert_json(raw(gateway, munged, "POST", path, json=many), 400)
    assert body["message"] == "allowed_uids names more than 1000 ids; use groups (allowed_gids) for more users"
    body = assert_json(raw(gateway, munged, "POST", path, json={"allowed_gids": "9" * 5000}), 400)
    assert "give numeric ids" in body["message"]


def test_wrong_method_is_405_json(gateway, munged):
    body = assert_json(raw(gateway, munged, "GET", f"/api/pull/{SYSTEM}/docker/x%3A1/"), 405)
    assert body["error"] == "Method Not Allowed"


def test_metrics_refuse_other_users(gateway, munged):
    body = assert_json(raw(gateway, munged, "GET", f"/api/metrics/{SYSTEM}/",
                           credential=credential_as(munged, NOBODY)), 403)
    assert "not an image administrator" in body["message"]


def test_expire_by_other_users_answers_as_shifter(gateway, munged, root, pulled, busybox):
    """Shifter's gateway answers a non-admin's expire and autoexpire 200 {"status": false}
    (its client then exits 0); ours does the same, logs the refusal, and expires nothing."""
    for path in (f"/api/expire/{SYSTEM}/docker/{urllib.parse.quote(busybox, safe='')}/",
                 f"/api/autoexpire/{SYSTEM}/"):
        response = raw(gateway, munged, "GET", path, credential=credential_as(munged, NOBODY))
        assert assert_json(response, 200) == {"status": False}
        logged = f"GET {urllib.parse.unquote(path)} refused: nobody is not an image administrator of system {SYSTEM}"
        assert logged in gateway.log()
    assert root.lookup(busybox)["id"] == pulled["id"]


def test_metrics_record_lookups(root, pulled, busybox):
    started = time.time()
    for _ in range(3):
        root.lookup(busybox)

    def ours():     # other API processes write their lookups up to FLUSH_SECONDS late
        rows = root.metrics(limit=3)
        return rows if len(rows) == 3 and all(row["time"] >= started for row in rows) else None
    rows = waiting.until(ours, FLUSH_SECONDS + 30, "the lookups are not in the metrics")
    assert all(row["id"] == pulled["id"] and row["user"] == "root" and row["type"] == "docker" for row in rows)
    assert rows[0]["time"] <= rows[1]["time"] <= rows[2]["time"]


def test_queue_lists_active_jobs(gateway, munged, root):
    body = assert_json(raw(gateway, munged, "GET", f"/api/queue/{SYSTEM}/"), 200)
    assert isinstance(body["list"], list)
    assert all({"status", "image"} <= set(item) for item in body["list"])


def test_import(gateway, munged, root, tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hello").write_text("imported\n")
    image = tmp_path / "mine.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(image), "-all-root", "-no-xattrs", "-quiet"], check=True)
    os.chmod(tmp_path, 0o755)
    expected = hashlib.sha256(image.read_bytes()).hexdigest()

    body = assert_json(raw(gateway, munged, "POST", f"/api/doimport/{SYSTEM}/custom/mine/", json={}), 400)
    assert "filepath and format" in body["message"]
    refused = raw(gateway, munged, "POST", f"/api/doimport/{SYSTEM}/custom/mine/",
                  credential=credential_as(munged, NOBODY), json={"filepath": str(image), "format": "squashfs"})
    assert assert_json(refused, 403)["message"].endswith("(see ImportUsers in the gateway configuration)")
    record = assert_json(raw(gateway, munged, "POST", f"/api/doimport/{SYSTEM}/custom/mine/",
                             json={"filepath": str(image), "format": "squashfs"}), 200)
    assert record["status"] in ("PENDING", "PULLING", "TRANSFER", "READY")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            found = root.lookup("custom:mine")
            break
        except ImageNotFound:
            time.sleep(0.2)
    assert found["id"] == expected and found["itype"] == "custom"
    assert os.path.exists(os.path.join(gateway.workdir, "images", f"{expected}.squashfs"))

    not_squashfs = tmp_path / "text.sqsh"
    not_squashfs.write_text("hello")
    assert_json(raw(gateway, munged, "POST", f"/api/doimport/{SYSTEM}/custom/bad/",
                    json={"filepath": str(not_squashfs), "format": "squashfs"}), 200)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = {j["image"]: j for j in root.queue()}
        if "custom:bad" not in jobs:
            break
        time.sleep(0.2)
    with pytest.raises(ImageNotFound):
        root.lookup("custom:bad")


def test_expire(gateway, munged, root, registry, tmp_path):
    from tests.integration.gateway_fixtures import push_busybox
    image = push_busybox(registry, str(tmp_path), "test/expire-me")
    record = wait_pull(root, image)
    image_file = os.path.join(gateway.workdir, "images", f"{record['id']}.squashfs")
    assert os.path.exists(image_file)
    assert root.expire(image) == {"status": True, "id": record["id"]}
    with pytest.raises(ImageNotFound):
        root.lookup(image)
    deadline = time.monotonic() + 30
    while os.path.exists(image_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(image_file)
    with pytest.raises(ImageNotFound, match="nothing to expire"):
        root.expire(image)
    gone = raw(gateway, munged, "GET", f"/api/expire/{SYSTEM}/docker/{urllib.parse.quote(image, safe='')}/")
    assert assert_json(gone, 200) == {"status": None}                # as Shifter's gateway answers
    again = wait_pull(root, image)                       # an expired image can be pulled again
    assert again["status"] == "READY" and again["id"] == record["id"] and os.path.exists(image_file)
