"""Client of the Docker Registry HTTP API v2: manifests and blobs, verified.

Speaks what registries serve today: Docker schema 2 and OCI manifests,
manifest lists and OCI indexes (the entry for our platform is picked),
anonymous, basic and bearer-token authentication driven by the registry's
`WWW-Authenticate` challenge.  Every manifest and blob is checked against its
sha256 digest before anyone sees it.

Requests never read the process environment (`trust_env=False`, explicit
`verify=` on every request): REQUESTS_CA_BUNDLE and friends would otherwise
replace a configured CA, and a stray ~/.netrc would add credentials.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import ssl
import threading
import time
import urllib.parse
from typing import Callable, Iterator

import requests
import requests.adapters
import urllib3.exceptions
import urllib3.util.retry

from shifter_core import imageconfig
from shifter_core.errors import ConfigError, ImageContentError, ImageNotFound

from .errors import DigestMismatch, RegistryAuthError, RegistryError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024
CHUNK = 1024 * 1024
RETRY_STATUSES = (429, 500, 502, 503, 504)
DOCKER_HUB = "registry-1.docker.io"
DOCKER_HUB_NAMES = ("docker.io", "index.docker.io", DOCKER_HUB)
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a registry is and how to talk to it (Shifter's `Locations.<name>`).

    `url` is `https://host[:port]`; plain `http://` is accepted only with
    `insecure`, which also turns off certificate checks for https.  `ca_file`
    replaces the system CA bundle.  `auth_method` "basic" sends credentials
    with every request; "token" (default) answers whatever challenge the
    registry sends.
    """

    url: str
    insecure: bool = False
    ca_file: str | None = None
    auth_method: str = "token"

    @classmethod
    def for_host(cls, host: str) -> "Location":
        """An unconfigured registry named in a reference: https, verified."""
        return cls(url=f"https://{DOCKER_HUB if host in DOCKER_HUB_NAMES else host}")

    def repository_path(self, repository: str) -> str:
        """The repository as the registry names it: Docker Hub's official images are library/x."""
        host = urllib.parse.urlsplit(self.base_url()).netloc
        if host in DOCKER_HUB_NAMES and "/" not in repository:
            return f"library/{repository}"
        return repository

    def base_url(self) -> str:
        url = self.url if "://" in self.url else (
            f"{'http' if self.insecure else 'https'}://{self.url}")
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme == "http" and not self.insecure:
            raise ConfigError(f"registry location {self.url} uses plain http;"
                              " mark it insecure in the configuration to allow that")
        if scheme not in ("http", "https"):
            raise ConfigError(f"registry location {self.url}: the scheme must be https or http")
        return url.rstrip("/")

    def verify(self) -> bool | str:
        if self.insecure:
            return False
        if self.ca_file:
            return self.ca_file
        paths = ssl.get_default_verify_paths()   # not SSL_CERT_FILE: only the system store
        return paths.openssl_cafile if os.path.exists(paths.openssl_cafile) else paths.openssl_capath


@dataclasses.dataclass(frozen=True)
class Platform:
    """An OCI platform; `parse("arm64/v8")`, `parse("amd64")`."""

    architecture: str
    os: str = "linux"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if parts[0] == "linux":
            parts = parts[1:]
        if not parts or not parts[0] or len(parts) > 2:
            raise ConfigError(f"architecture {text!r} is not like amd64, arm64/v8 or arm/v7")
        return cls(architecture=parts[0], variant=parts[1] if len(parts) > 1 else None)

    def matches(self, entry: dict) -> bool:
        if entry.get("os", "linux") != self.os or entry.get("architecture") != self.architecture:
            return False
        if self.variant is None:
            return True
        variant = entry.get("variant") or ("v8" if self.architecture == "arm64" else None)
        return variant == self.variant

    def __str__(self) -> str:
        return "/".join(filter(None, (self.os, self.architecture, self.variant)))


@dataclasses.dataclass
class Manifest:
    """A resolved platform manifest: its digest (the image id) and, once loaded, its checked config."""

    digest: str
    document: dict
    config: imageconfig.RuntimeConfig | None = None

    @property
    def layers(self) -> list[dict]:
        return self.document["layers"]

    @property
    def diff_ids(self) -> list[str]:
        return self.config.diff_ids


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    """One repository on one registry, as one user (or anonymously).

    `image` is the name used in error messages.  Safe to use from several
    threads (blob downloads run in parallel).
    """

    def __init__(self, location: Location, repository: str, *, image: str,
                 credentials: tuple[str, str] | None = None, timeout: float = 60,
                 retries: int = 4, backoff: float = 0.5):
        self.location = location
        self.base = location.base_url()
        self.repository = repository
        self.image = image
        self.credentials = credentials
        self.timeout = timeout
        self.retries, self.backoff = retries, backoff
        self.session = requests.Session()
        self.session.trust_env = False
        retry = urllib3.util.retry.Retry(
            total=retries, backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
            allowed_methods=("GET", "HEAD"), raise_on_status=False, respect_retry_after_header=True)
        adapter = requests.adapters.HTTPAdapter(max_retries=retry, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._auth_kind: str | None = None      # "basic", "anonymous" or "token"
        self._auth_header: str | None = None
        self.login_required = False             # the registry refused us without credentials
        if credentials and location.auth_method == "basic":
            self._use("basic", _basic(credentials), login=True)
        self._auth_lock = threading.Lock()

    # --- manifests -----------------------------------------------------------
    def resolve(self, reference: str, platform: Platform) -> Manifest:
        """Tag or `sha256:` digest to the manifest for `platform`, verified."""
        body, media_type, digest = self.manifest(reference)
        document = _json(body, f"manifest of {self.image}")
        if media_type in INDEXES:
            entry = next((m for m in document.get("manifests", [])
                          if m.get("mediaType", OCI_MANIFEST) in IMAGE_MANIFESTS
                          and platform.matches(m.get("platform", {}))), None)
            if entry is None:
                offered = ", ".join(sorted(_platform_text(m.get("platform", {}))
                                           for m in document.get("manifests", [])))
                raise ImageNotFound(f"image {self.image} has no {platform} variant"
                                    f" (it offers {offered or 'none'})")
            body, media_type, digest = self.manifest(entry["digest"])
            document = _json(body, f"manifest of {self.image}")
        if media_type in DOCKER_SCHEMA1 or document.get("schemaVersion") == 1:
            raise RegistryError(f"image {self.image} has an obsolete Docker schema 1 manifest;"
                                " push it again with a current Docker, podman or skopeo")
        if media_type not in IMAGE_MANIFESTS:
            raise RegistryError(f"image {self.image}: unsupported manifest type {media_type!r}")
        if not isinstance(document.get("layers"), list) or not all(
                isinstance(layer, dict) and isinstance(layer.get("size"), int)
                and layer["size"] >= 0 for layer in document["layers"]):
            raise RegistryError(f"image {self.image}: its manifest has no valid layer list")
        return Manifest(digest=digest, document=document)

    def load_config(self, manifest: Manifest) -> None:
        """Fetch the image config (its declared size and digest checked) and check it
        against the schema (shifter_core/imageconfig.py): refusals are final."""
        descriptor = manifest.document.get("config")
        size = descriptor.get("size") if isinstance(descriptor, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageContentError(f"image {self.image} is refused: its manifest has no config"
                                    " descriptor with a size")
        if size > MAX_CONFIG_BYTES:
            raise ImageContentError(f"image {self.image} is refused: its config is {size} bytes,"
                                    f" more than the {MAX_CONFIG_BYTES} accepted")
        body = b"".join(self.blob_chunks(descriptor.get("digest", ""), size=size,
                                         read_up_to=MAX_CONFIG_BYTES))
        try:
            document = json.loads(body)
        except ValueError:
            raise ImageContentError(f"image {self.image} is refused: its config is not JSON") from None
        config = imageconfig.from_image_config(document, self.image)
        if len(config.diff_ids) != len(manifest.layers):
            raise ImageContentError(f"image {self.image} is refused: its config lists"
                                    f" {len(config.diff_ids)} diff_ids for {len(manifest.layers)}"
                                    " layers")
        manifest.config = config

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest, verified when the digest is known."""
        response = self._get(f"/manifests/{reference}", headers={"Accept": ACCEPT}, stream=True)
        with response:
            body = response.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
        if len(body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"image {self.image}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        digest = sha256_digest(body)
        expected = reference if reference.startswith("sha256:") else \
            response.headers.get("Docker-Content-Digest")
        if expected and expected != digest:
            raise DigestMismatch(f"image {self.image}: the registry sent a manifest with digest"
                                 f" {digest}, expected {expected}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type in ("", "application/json", "text/plain"):
            media_type = _json(body, f"manifest of {self.image}").get("mediaType", "")
        return body, media_type, digest

    # --- blobs ---------------------------------------------------------------
    def blob_chunks(self, digest: str, *, size: int, read_up_to: int | None = None,
                    progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """Stream a blob of `size` bytes (as its manifest declares), resuming broken
        transfers; raise on a bad digest or size.

        The last chunk is held back until the digest checked out, so a
        consumer that sees the stream end normally got verified content.  Up
        to `read_up_to` bytes are read (default `size`), so that a small blob
        the manifest gives the wrong size is refused as such, for good.
        """
        limit = max(size, read_up_to or 0)
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise ImageContentError(f"image {self.image} is refused: its manifest names a blob by"
                                    f" {digest!r}, not a sha256 digest")
        hasher, received, pending, failures = hashlib.sha256(), 0, None, 0
        while True:
            headers = {"Range": f"bytes={received}-"} if received else None
            try:
                with self._get(f"/blobs/{digest}", headers=headers, stream=True) as response:
                    skip = received if response.status_code == 200 else 0
                    for chunk in response.raw.stream(CHUNK, decode_content=False):
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                            if not chunk:
                                continue
                        received += len(chunk)
                        if received > limit:
                            raise DigestMismatch(f"image {self.image}: blob {digest} is larger"
                                                 f" than the {size} bytes its manifest declares")
                        hasher.update(chunk)
                        if progress:
                            progress(len(chunk))
                        if pending is not None:
                            yield pending
                        pending = chunk
                break
            except (requests.ConnectionError, requests.Timeout,
                    urllib3.exceptions.HTTPError) as err:
                failures += 1
                if failures > self.retries:
                    raise RegistryError(f"image {self.image}: download of {digest} from"
                                        f" {self.base} failed: {_reason(err)}") from None
                time.sleep(self.backoff * 2 ** (failures - 1))
        actual = "sha256:" + hasher.hexdigest()
        if actual == digest and received != size:
            raise ImageContentError(f"image {self.image} is refused: blob {digest} is {received}"
                                    f" bytes, its manifest declares {size}")
        if actual != digest:
            raise DigestMismatch(f"image {self.image}: blob {digest} arrived with digest"
                                 f" {actual} ({received} bytes); the registry or the"
                                 " network corrupted it")
        if pending is not None:
            yield pending

    # --- HTTP with authentication ------------------------------------------
    def _get(self, path: str, *, headers: dict | None = None, stream: bool = False):
        url = f"{self.base}/v2/{self.repository}{path}"
        for _ in range(3):
            response = self._request(url, headers, stream)
            if response.status_code != 401:
                break
            challenge = response.headers.get("WWW-Authenticate", "")
            if not self._authenticate(challenge):
                break
            response.close()
        self._check(response, path)
        return response

    def _request(self, url: str, headers: dict | None, stream: bool):
        headers = dict(headers or {})
        if self._auth_header:
            headers["Authorization"] = self._auth_header
        try:
            return self.session.get(url, headers=headers, stream=stream, timeout=self.timeout,
                                    verify=self.location.verify(), allow_redirects=True)
        except requests.exceptions.SSLError as err:
            raise RegistryError(f"image {self.image}: TLS to {self.base} failed ({_reason(err)});"
                                " configure the registry's CA file, or mark it insecure if it"
                                " speaks plain http") from None
        except requests.RequestException as err:
            raise RegistryError(f"image {self.image}: registry {self.base} unreachable:"
                                f" {_reason(err)}") from None

    def _authenticate(self, challenge: str) -> bool:
        """Answer a 401's challenge; False when there is nothing new to try.

        Like Shifter, a bearer challenge is first answered with an anonymous
        token, and the credentials are used only if the registry insists:
        `login_required` then records that the repository is not public.
        """
        scheme, _, rest = challenge.partition(" ")
        scheme, params = scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))
        with self._auth_lock:
            if scheme == "basic":
                if not self.credentials:
                    raise RegistryAuthError(f"image {self.image}: registry {self.base} needs a"
                                            " user name and password")
                if self._auth_kind == "basic":
                    return False
                self._use("basic", _basic(self.credentials), login=True)
                return True
            if scheme != "bearer" or not params.get("realm"):
                raise RegistryAuthError(f"image {self.image}: registry {self.base} asks for"
                                        f" unsupported authentication {challenge!r}")
            lacks_scope = params.get("error", "insufficient_scope") == "insufficient_scope"
            if self._auth_kind == "token" and lacks_scope:
                return False
            if self._auth_kind != "token" and not (self._auth_kind == "anonymous" and lacks_scope):
                token = self._fetch_token(params, anonymous=True)
                if token:
                    self._use("anonymous", "Bearer " + token)
                    return True
            if not self.credentials:
                return False
            self._use("token", "Bearer " + self._fetch_token(params, anonymous=False), login=True)
            return True

    def _use(self, kind: str, header: str, login: bool = False) -> None:
        self._auth_kind, self._auth_header = kind, header
        self.login_required = self.login_required or login

    def _fetch_token(self, params: dict, anonymous: bool) -> str | None:
        """A token from the challenge's realm; None if anonymous is refused but we have credentials."""
        query = {"service": params.get("service", "")}
        query["scope"] = params.get("scope") or f"repository:{self.repository}:pull"
        headers = {} if anonymous else {"Authorization": _basic(self.credentials)}
        try:
            response = self.session.get(params["realm"], params=query, headers=headers,
                                        timeout=self.timeout, verify=self.location.verify())
        except requests.RequestException as err:
            raise RegistryError(f"image {self.image}: token server {params['realm']}"
                                f" unreachable: {_reason(err)}") from None
        if response.status_code in (401, 403):
            if anonymous and self.credentials:
                return None
            why = ("refused anonymous access: give credentials" if anonymous
                   else "refused the credentials: check the user name and password")
            raise RegistryAuthError(f"image {self.image}: the registry's token server {why}")
        if response.status_code != 200:
            raise RegistryError(f"image {self.image}: token server answered"
                                f" {response.status_code}")
        token_doc = _json(response.content, "token response")
        token = token_doc.get("token") or token_doc.get("access_token")
        if not token:
            raise RegistryError(f"image {self.image}: token server sent no token")
        return token

    def _check(self, response, path: str) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        detail = _error_codes(response)
        response.close()
        if status == 401:
            if not self.credentials:
                why = "the repository may be private: give credentials"
            elif self._auth_kind == "basic":
                why = "it refused the credentials: check the user name and password"
            else:
                why = f"user {self.credentials[0]!r} may not pull this repository"
            raise RegistryAuthError(f"image {self.image}: access denied by {self.base}; {why}")
        if status == 403:
            raise RegistryAuthError(f"image {self.image}: {self.base} forbids access")
        if status == 404 or "NAME_UNKNOWN" in detail or "MANIFEST_UNKNOWN" in detail:
            what = "tag or digest" if path.startswith("/manifests/") else "blob"
            raise ImageNotFound(f"image {self.image} not found on {self.base}"
                                f" (unknown repository or {what})")
        raise RegistryError(f"image {self.image}: {self.base} answered {status}"
                            + (f" ({detail})" if detail else ""))


def _platform_text(platform: dict) -> str:
    keys = ("os", "architecture", "variant")
    return "/".join(str(platform[k]) for k in keys if platform.get(k))


def _basic(credentials: tuple[str, str]) -> str:
    return requests.auth._basic_auth_str(*credentials)


def _json(body: bytes, what: str) -> dict:
    try:
        document = json.loads(body)
    except ValueError:
        raise RegistryError(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return document


def _error_codes(response) -> str:
    try:
        errors = response.json().get("errors", [])
        return ", ".join(str(e.get("code")) for e in errors)
    except (ValueError, AttributeError):
        return ""


def _reason(err: Exception) -> str:
    text = str(err)
    return text if len(text) < 300 else text[:300] + "..."
