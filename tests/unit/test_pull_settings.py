"""Pure logic of the pull pipeline: locations, platforms, layer decompression."""
from __future__ import annotations

import gzip
import io
import os

import pytest
import zstandard

from gateway.pipeline import INFLATE_LIMIT, PipelineSettings, _LayerStream, default_architecture
from gateway.registry import Location, Platform
from gateway.errors import DigestMismatch, RegistryError
from shifter_core.errors import ConfigError


def settings(**kw) -> PipelineSettings:
    return PipelineSettings(cache_dir="/c", scratch_dir="/s", **kw)


def test_locations_for_references():
    site = Location(url="https://registry.example.org")
    config = settings(locations={"site": site, "10.0.0.5:5000":
                                 Location(url="http://10.0.0.5:5000", insecure=True)},
                      default_location="site")
    assert config.location_for(None) is site
    assert config.location_for("10.0.0.5:5000").base_url() == "http://10.0.0.5:5000"
    assert config.location_for("quay.io").base_url() == "https://quay.io"
    assert config.location_for("other:8443").base_url() == "https://other:8443"
    assert config.location_for("docker.io").base_url() == "https://registry-1.docker.io"


def test_references_without_registry_need_a_default_location():
    with pytest.raises(ConfigError, match="no default image location"):
        settings().location_for(None)
    with pytest.raises(ConfigError, match="not among the configured"):
        settings(default_location="missing").location_for(None)


@pytest.mark.parametrize("url, insecure, expected", [
    ("https://r.example", False, "https://r.example"),
    ("http://r.example:5000/", True, "http://r.example:5000"),
    ("r.example:5000", True, "http://r.example:5000"),
    ("r.example", False, "https://r.example"),
])
def test_base_urls(url, insecure, expected):
    assert Location(url=url, insecure=insecure).base_url() == expected


def test_plain_http_or_odd_schemes_are_refused():
    with pytest.raises(ConfigError, match="insecure"):
        Location(url="http://r.example").base_url()
    with pytest.raises(ConfigError, match="scheme"):
        Location(url="ftp://r.example", insecure=True).base_url()


def test_verification_never_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "elsewhere.pem"))
    system = Location(url="https://r.example").verify()
    assert isinstance(system, str) and os.path.exists(system)
    assert "elsewhere" not in system
    assert Location(url="https://r", ca_file="/ca.pem").verify() == "/ca.pem"
    assert Location(url="https://r", insecure=True, ca_file="/ca.pem").verify() is False


def test_docker_hub_official_images_live_under_library():
    hub = Location.for_host("docker.io")
    assert hub.repository_path("ubuntu") == "library/ubuntu"
    assert hub.repository_path("nersc/image") == "nersc/image"
    assert Location(url="https://quay.io").repository_path("ubuntu") == "ubuntu"


@pytest.mark.parametrize("text, entry, matches", [
    ("amd64", {"architecture": "amd64", "os": "linux"}, True),
    ("amd64", {"architecture": "arm64", "os": "linux"}, False),
    ("amd64", {"architecture": "amd64", "os": "windows"}, False),
    ("arm64", {"architecture": "arm64", "os": "linux", "variant": "v8"}, True),
    ("arm64/v8", {"architecture": "arm64", "os": "linux"}, True),
    ("arm64/v8", {"architecture": "arm64", "os": "linux", "variant": "v9"}, False),
    ("linux/arm/v7", {"architecture": "arm", "os": "linux", "variant": "v7"}, True),
    ("arm/v7", {"architecture": "arm", "os": "linux", "variant": "v6"}, False),
])
def test_platform_matching(text, entry, matches):
    assert Platform.parse(text).matches(entry) is matches


@pytest.mark.parametrize("text", ["", "a/b/c/d", "/v8"])
def test_bad_architectures_are_configuration_errors(text):
    with pytest.raises(ConfigError):
        Platform.parse(text)


def test_default_architecture_uses_oci_names():
    assert default_architecture() in ("amd64", "arm64", "arm/v7", "ppc64le", "s390x", "riscv64")


def read_layer(blob: bytes, media_type: str, diff_id: str) -> bytes:
    chunks = [blob[i:i + 1000] for i in range(0, len(blob), 1000)]
    stream = _LayerStream(iter(chunks), media_type, diff_id, "test")
    data = io.BufferedReader(stream).read()
    stream.finish()
    return data


def sha(data: bytes) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(data).hexdigest()


GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
PLAIN = "application/vnd.oci.image.layer.v1.tar"


def test_layer_decompression_of_every_accepted_kind():
    tar = os.urandom(5000) + bytes(20000)
    assert read_layer(gzip.compress(tar), GZIP, sha(tar)) == tar
    assert read_layer(zstandard.ZstdCompressor().compress(tar), ZSTD, sha(tar)) == tar
    assert read_layer(tar, PLAIN, sha(tar)) == tar
    two_members = gzip.compress(tar[:7000]) + gzip.compress(tar[7000:]) + bytes(512)
    assert read_layer(two_members, GZIP, sha(tar)) == tar     # pigz-style, zero padded


def test_layer_that_does_not_match_its_diff_id_is_refused():
    with pytest.raises(DigestMismatch, match="diff_id"):
        read_layer(gzip.compress(b"tar"), GZIP, sha(b"other"))


def test_layer_decompression_errors():
    with pytest.raises(RegistryError, match="not valid gzip"):
        read_layer(b"not gzip at all", GZIP, sha(b""))
    with pytest.raises(RegistryError, match="not supported"):
        read_layer(b"", "application/x-rar", sha(b""))


def test_decompression_works_in_bounded_steps():
    bomb = gzip.compress(bytes(40 * INFLATE_LIMIT), compresslevel=9)   # 160 MiB of zeros
    stream = _LayerStream(iter([bomb]), GZIP, sha(b""), "test")
    largest = 0
    for piece in stream._pieces:
        largest = max(largest, len(piece))
    assert largest <= INFLATE_LIMIT
