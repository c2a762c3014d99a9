"""What the pipeline accepts from registries: auth, TLS, references, formats, platforms, faults.

Real docker-registry instances on loopback; faults (redirects, 503s, broken
transfers, corrupted bytes) come from a small front server placed before one.
"""
from __future__ import annotations

import http.server
import json
import os
import threading
import urllib.request

import pytest

from ci.harness.oci import File, ImageConfig, Layout, busybox_entries, busybox_image
from ci.harness.registry import Registry
from gateway.errors import DigestMismatch, RegistryAuthError, RegistryError
from gateway.pipeline import PipelineSettings, fetch_image, pull_image
from gateway.registry import Location
from shifter_core.errors import ConfigError, ImageNotFound
from shifter_core.imageref import parse
from shifter_core.imagestore import ImageStore

CREDS = ("alice", "s3cret")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """busybox as "latest", an arm64 look-alike, and an amd64+arm64 index as "multi"."""
    layout = Layout(str(tmp_path_factory.mktemp("layout")))
    busybox_image(layout, "latest")
    amd64 = ImageConfig(cmd=["/bin/sh"])
    arm64 = ImageConfig(architecture="arm64", variant="v8", cmd=["/bin/sh"])
    images = []
    for config, marker in ((amd64, "amd64"), (arm64, "arm64")):
        layer = layout.add_layer(busybox_entries() + [File("etc/arch", marker)])
        images.append((layout.add_image([layer], config), config))
    layout.add_index(images, "multi")
    return layout


@pytest.fixture(scope="module")
def open_registry(layout, tmp_path_factory):
    with Registry(str(tmp_path_factory.mktemp("open"))) as reg:
        layout.push("latest", f"{reg.host}/test/busybox:latest")
        layout.push("latest", f"{reg.host}/test/busybox:again")
        layout.push("latest", f"{reg.host}/test/busybox:v2s2", format="v2s2")
        layout.push("multi", f"{reg.host}/test/multi:oci", all_platforms=True)
        layout.push("multi", f"{reg.host}/test/multi:v2s2", all_platforms=True, format="v2s2")
        yield reg


def pull(registry_or_url, text: str, tmp_path, *, credentials=None, location=None, **settings):
    if location is None:
        reg = registry_or_url
        location = Location(url=reg.url, insecure=not reg.tls, ca_file=reg.ca_file)
    host = location.url.split("://", 1)[-1]
    store = ImageStore(str(tmp_path / "images"))
    os.makedirs(store.directory, exist_ok=True)
    config = PipelineSettings(cache_dir=str(tmp_path / "cache"), scratch_dir=str(tmp_path / "tmp"),
                              locations={host: location}, **settings)
    meta = pull_image(parse(text), store=store, settings=config, credentials=credentials)
    return meta, store


def cat(store: ImageStore, meta, member: str) -> str:
    import subprocess
    return subprocess.run(["unsquashfs", "-cat", store.image_path(meta.id), member],
                          check=True, capture_output=True, text=True).stdout


# --- references, formats, platforms ---------------------------------------------

def test_tags_and_digests_of_one_content_give_one_image(open_registry, tmp_path):
    host = open_registry.host
    first, store = pull(open_registry, f"{host}/test/busybox:latest", tmp_path)
    second, _ = pull(open_registry, f"{host}/test/busybox:again", tmp_path)
    third, _ = pull(open_registry, f"{host}/test/busybox@{first.digest}", tmp_path)
    assert first.id == second.id == third.id
    assert sorted(os.listdir(store.directory)) == sorted(
        f"{first.id}.{ext}" for ext in ("json", "meta", "squashfs"))


def test_docker_schema2_manifests(open_registry, tmp_path):
    meta, store = pull(open_registry, f"{open_registry.host}/test/busybox:v2s2", tmp_path)
    assert meta.cmd == ["/bin/sh"]
    assert "shifter-test" in cat(store, meta, "etc/os-release")


@pytest.mark.parametrize("tag", ["oci", "v2s2"])
@pytest.mark.parametrize("architecture, expected", [("amd64", "amd64"), ("arm64", "arm64"),
                                                    ("arm64/v8", "arm64")])
def test_indexes_pick_the_configured_architecture(open_registry, tmp_path, tag,
                                                  architecture, expected):
    meta, store = pull(open_registry, f"{open_registry.host}/test/multi:{tag}", tmp_path,
                       architecture=architecture)
    assert meta.arch == expected
    assert cat(store, meta, "etc/arch") == expected


def test_missing_platform_names_what_is_offered(open_registry, tmp_path):
    with pytest.raises(ImageNotFound, match=r"no linux/ppc64le variant .*linux/amd64, linux/arm64/v8"):
        pull(open_registry, f"{open_registry.host}/test/multi:oci", tmp_path, architecture="ppc64le")


@pytest.mark.parametrize("text", ["test/nothing:latest", "test/busybox:nosuchtag",
                                  "test/busybox@sha256:" + "0" * 64])
def test_unknown_images_are_reported_by_name(open_registry, tmp_path, text):
    with pytest.raises(ImageNotFound, match="not found") as info:
        pull(open_registry, f"{open_registry.host}/{text}", tmp_path)
    assert text.split("@")[0].split(":")[0] in str(info.value)


def test_default_location_serves_references_without_registry(open_registry, tmp_path):
    location = Location(url=open_registry.url, insecure=True)
    store = ImageStore(str(tmp_path))
    settings = PipelineSettings(cache_dir=str(tmp_path / "c"), scratch_dir=str(tmp_path / "s"),
                                locations={"site": location}, default_location="site")
    meta = pull_image(parse("test/busybox:latest"), store=store, settings=settings)
    assert store.exists(meta.id)


# --- transport: http, TLS, CA handling -------------------------------------------

def test_plain_http_needs_the_insecure_flag(open_registry, tmp_path):
    with pytest.raises(ConfigError, match="insecure"):
        pull(None, f"{open_registry.host}/test/busybox:latest", tmp_path,
             location=Location(url=open_registry.url))


def test_unconfigured_registry_is_spoken_to_over_https(open_registry, tmp_path):
    settings = PipelineSettings(cache_dir=str(tmp_path / "c"), scratch_dir=str(tmp_path / "s"))
    with pytest.raises(RegistryError, match="https://"):
        pull_image(parse(f"{open_registry.host}/test/busybox:latest"),
                   store=ImageStore(str(tmp_path)), settings=settings)


def test_unreachable_registry(tmp_path):
    with pytest.raises(RegistryError, match="unreachable"):
        pull(None, "127.0.0.1:9/test/busybox:latest", tmp_path, retries=0,
             location=Location(url="http://127.0.0.1:9", insecure=True))


@pytest.fixture(scope="module")
def tls_registry(layout, tmp_path_factory):
    with Registry(str(tmp_path_factory.mktemp("tls")), tls=True) as reg:
        layout.push("latest", f"{reg.host}/test/busybox:latest", ca_dir=reg.ca_dir)
        yield reg


def test_tls_with_the_configured_ca_despite_the_environment(tls_registry, tmp_path, monkeypatch):
    # environment.md §6: these variables must not replace the configured CA
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, "/etc/ssl/certs/ca-certificates.crt")
    meta, store = pull(tls_registry, f"{tls_registry.host}/test/busybox:latest", tmp_path)
    assert store.exists(meta.id)


def test_tls_without_the_ca_fails_even_if_the_environment_trusts_it(tls_registry, tmp_path,
                                                                    monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, tls_registry.ca_file)
    with pytest.raises(RegistryError, match="TLS .* CA"):
        pull(None, f"{tls_registry.host}/test/busybox:latest", tmp_path,
             location=Location(url=tls_registry.url))


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_insecure_location_skips_certificate_checks(tls_registry, tmp_path):
    meta, store = pull(None, f"{tls_registry.host}/test/busybox:latest", tmp_path,
                       location=Location(url=tls_registry.url, insecure=True))
    assert store.exists(meta.id)


# --- authentication ----------------------------------------------------------------

@pytest.fixture(scope="module", params=["htpasswd", "token"])
def private_registry(request, layout, tmp_path_factory):
    with Registry(str(tmp_path_factory.mktemp(request.param)), auth=request.param) as reg:
        for repo in ("private/busybox", "public/busybox"):
            layout.push("latest", f"{reg.host}/{repo}:latest", creds=reg.creds)
        yield reg


def test_private_repository_with_credentials(private_registry, tmp_path):
    meta, store = pull(private_registry, f"{private_registry.host}/private/busybox:latest",
                       tmp_path, credentials=CREDS)
    assert store.exists(meta.id)


def test_private_repository_without_credentials(private_registry, tmp_path):
    with pytest.raises(RegistryAuthError, match="private/busybox.*(give credentials|user name)"):
        pull(private_registry, f"{private_registry.host}/private/busybox:latest", tmp_path)


@pytest.mark.parametrize("repository", ["private", "public"])
def test_login_required_tells_whether_the_registry_insisted(private_registry, tmp_path,
                                                            repository):
    store = ImageStore(str(tmp_path))
    location = Location(url=private_registry.url, insecure=True)
    settings = PipelineSettings(cache_dir=str(tmp_path / "c"), scratch_dir=str(tmp_path / "s"),
                                locations={private_registry.host: location})
    with fetch_image(parse(f"{private_registry.host}/{repository}/busybox:latest"), store=store,
                     settings=settings, credentials=CREDS) as pulled:
        assert pulled.login_required is (private_registry.auth == "htpasswd" or repository == "private")
        assert pulled.squashfs is not None and not store.exists(pulled.meta.id)    # nothing published
    assert not os.path.exists(pulled.squashfs)                                    # the build is gone


def test_wrong_password(private_registry, tmp_path):
    with pytest.raises(RegistryAuthError, match="check the user name and password"):
        pull(private_registry, f"{private_registry.host}/private/busybox:latest", tmp_path,
             credentials=("alice", "wrong"))


@pytest.mark.parametrize("private_registry", ["token"], indirect=True)
def test_anonymous_pull_of_public_repository_behind_token_auth(private_registry, tmp_path):
    meta, store = pull(private_registry, f"{private_registry.host}/public/busybox:latest",
                       tmp_path)
    assert store.exists(meta.id)


@pytest.mark.parametrize("private_registry", ["htpasswd"], indirect=True)
def test_basic_auth_sent_up_front_when_configured(private_registry, tmp_path):
    location = Location(url=private_registry.url, insecure=True, auth_method="basic")
    meta, store = pull(None, f"{private_registry.host}/private/busybox:latest", tmp_path,
                       location=location, credentials=CREDS)
    assert store.exists(meta.id)


# --- a misbehaving front: redirects, errors, broken and corrupted transfers ----------

class Faults:
    """What the front and its blob server do wrong, and what they saw."""

    def __init__(self):
        self.blob_503 = 0              # answer the next N blob requests with 503
        self.cut_after = None          # drop the connection after N bytes, once
        self.corrupt = False           # flip a byte of every layer (blobs over 64 KiB)
        self.tamper_manifest = False   # alter manifests, keep the advertised digest
        self.require_basic = False
        self.blob_auth_headers: list[str | None] = []
        self.ranges: list[str] = []
        self.lock = threading.Lock()


def _serve(handler_class) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def front(open_registry, layout):
    """(url, faults): a registry front that redirects blobs to a separate blob server."""
    faults = Faults()
    blob_dir = os.path.join(layout.path, "blobs", "sha256")

    class Blobs(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            faults.blob_auth_headers.append(self.headers.get("Authorization"))
            with open(os.path.join(blob_dir, self.path.rsplit(":", 1)[1]), "rb") as f:
                data = f.read()
            if faults.corrupt and len(data) > 65536:
                data = bytes([data[0] ^ 1]) + data[1:]
            start = 0
            if self.headers.get("Range"):
                faults.ranges.append(self.headers["Range"])
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            with faults.lock:
                cut = faults.cut_after
                if cut is not None and cut < len(data) - start:
                    faults.cut_after = None
                else:
                    cut = None
            if cut is not None:
                self.wfile.write(data[start:start + cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data[start:])

        def log_message(self, *args):
            pass

    blob_server = _serve(Blobs)

    class Front(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if faults.require_basic and self.headers.get("Authorization") != "Basic YWxpY2U6czNjcmV0":
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="front"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if "/blobs/" in self.path:
                with faults.lock:
                    failing = faults.blob_503 > 0
                    faults.blob_503 -= failing
                if failing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(307)
                self.send_header("Location", f"http://127.0.0.1:{blob_server.server_port}"
                                             f"/cdn/{self.path.rsplit('/', 1)[1]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            request = urllib.request.Request(open_registry.url + self.path,
                                             headers={"Accept": self.headers.get("Accept", "")})
            try:
                with urllib.request.urlopen(request) as upstream:
                    body, headers, status = upstream.read(), upstream.headers, upstream.status
            except urllib.error.HTTPError as err:
                body, headers, status = err.read(), err.headers, err.code
            if faults.tamper_manifest and "/manifests/" in self.path:
                document = json.loads(body)
                document["annotations"] = {"tampered": "yes"}
                body = json.dumps(document).encode()
            self.send_response(status)
            for name in ("Content-Type", "Docker-Content-Digest"):
                if headers.get(name):
                    self.send_header(name, headers[name])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    front_server = _serve(Front)
    yield f"http://127.0.0.1:{front_server.server_port}", faults
    for server in (front_server, blob_server):
        server.shutdown()
        server.server_close()


def pull_front(front_url: str, tmp_path, text="test/busybox:latest", **kw):
    location = Location(url=front_url, insecure=True)
    return pull(None, f"{front_url.split('://')[1]}/{text}", tmp_path, location=location, **kw)


def test_blob_redirects_are_followed_without_leaking_credentials(front, tmp_path):
    url, faults = front
    faults.require_basic = True
    meta, store = pull_front(url, tmp_path, credentials=CREDS)
    assert store.exists(meta.id)
    assert faults.blob_auth_headers and set(faults.blob_auth_headers) == {None}


def test_transient_server_errors_are_retried(front, tmp_path):
    url, faults = front
    faults.blob_503 = 2
    meta, store = pull_front(url, tmp_path)
    assert store.exists(meta.id) and faults.blob_503 == 0


def test_broken_transfer_resumes_where_it_stopped(front, tmp_path):
    url, faults = front
    faults.cut_after = 100_000
    meta, store = pull_front(url, tmp_path)
    assert store.exists(meta.id)
    assert faults.ranges and faults.ranges[0].startswith("bytes=")


def test_corrupted_blob_is_refused_and_not_cached(front, tmp_path):
    url, faults = front
    faults.corrupt = True
    with pytest.raises(DigestMismatch, match="corrupted"):
        pull_front(url, tmp_path)
    assert os.listdir(tmp_path / "images") == []
    assert os.listdir(tmp_path / "cache" / "entries") == []
    assert os.listdir(tmp_path / "cache" / "tmp") == []


@pytest.mark.parametrize("by_digest", [False, True])
def test_tampered_manifest_is_refused(front, open_registry, tmp_path, by_digest):
    url, faults = front
    text = "test/busybox:latest"
    if by_digest:
        meta, _ = pull(open_registry, f"{open_registry.host}/{text}", tmp_path / "direct")
        text = f"test/busybox@{meta.digest}"
    faults.tamper_manifest = True
    with pytest.raises(DigestMismatch, match="manifest"):
        pull_front(url, tmp_path, text=text)
