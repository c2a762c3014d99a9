"""Client of the image gateway's REST API, used by shifterimg and the submit-time lookup.

Each request tries every gateway udiRoot.conf lists, in a new random order,
as Shifter's client does, so that the load spreads over all of them: one that
cannot be reached, times out or fails on its side (5xx) is skipped; a definite
answer (found, not found, refused) ends the search.  Every request carries a fresh
munge credential in the `authentication` header (munged refuses to decode a
credential twice).

    client = GatewayClient(["http://gw:8000"], "mycluster", timeout=10)
    client.lookup("docker:ubuntu:22.04")["id"]

It speaks the little HTTP it needs (one HTTP/1.0 request per connection, the
answer read to its end) over a socket itself: every sbatch, salloc and srun
that pins an image runs this client, and importing requests (about 100 ms) or
even http.client with its email parser and ssl (about 20 ms) took longer than
the lookup itself; ssl is imported only for https gateways.  Only the
configuration decides where requests go and which CA they trust, never the
caller's environment (proxies, REQUESTS_CA_BUNDLE: environment.md).
"""
from __future__ import annotations

import json
import os
import socket
import urllib.parse

from . import imageref, seam
from .errors import AccessDenied, AuthenticationError, GatewayError, ImageNotFound, ShifterError
from .munge import Munge

HEADER = seam.GATEWAY_AUTH_HEADER
CREDENTIALS_FILE = os.path.join("~", ".udiRoot", ".cred")

_ERRORS = {400: ShifterError, 401: AuthenticationError, 403: AccessDenied, 404: ImageNotFound}


class GatewayClient:
    def __init__(self, urls, system: str, timeout: float = 10.0, *, munge: Munge | None = None,
                 ca_file: str | None = None, default_type: str = "docker",
                 credentials_file: str = CREDENTIALS_FILE):
        if isinstance(urls, str):
            urls = urls.split()
        if not urls:
            raise GatewayError("no image gateway configured: set imageGateway in udiRoot.conf")
        self.urls = [u.rstrip("/") for u in urls]
        self.system = system
        self.timeout = timeout
        self.munge = munge or Munge()
        self.ca_file = ca_file
        self.default_type = default_type
        self.credentials_file = os.path.expanduser(credentials_file)

    # -- API ----------------------------------------------------------------------

    def lookup(self, image) -> dict:
        """The READY record of an image; ImageNotFound if it was never pulled."""
        return self._request("GET", self.lookup_path(image))

    def pull(self, image, user_acl=(), group_acl=()) -> dict:
        """Ask for (or poll) a pull; the record says how far it got."""
        body = {}
        if user_acl:
            body["allowed_uids"] = ",".join(str(u) for u in user_acl)
        if group_acl:
            body["allowed_gids"] = ",".join(str(g) for g in group_acl)
        payload = self._login_payload()
        return self._request("POST", self._image_path("pull", image), body=body, payload=payload)

    def pull_status(self, image) -> dict:
        """Poll a pull asked for earlier: pull() without registry logins, so a failed
        pull is reported (for the gateway's RetryBackoff) instead of started again."""
        return self._request("POST", self._image_path("pull", image), body={})

    def images(self) -> list[dict]:
        return self._request("GET", f"/api/list/{self._quote(self.system)}/")["list"]

    def expire(self, image) -> dict:
        answer = self._admin_only("expire images", self._request("GET", self._image_path("expire", image)))
        if answer.get("status") is None:        # Shifter's answer for an image it does not have
            raise ImageNotFound(f"{image} is not available on {self.system}: there is nothing to expire")
        return answer

    def autoexpire(self) -> list[str]:
        answer = self._request("GET", f"/api/autoexpire/{self._quote(self.system)}/")
        return self._admin_only("expire images", answer)["status"]

    def _admin_only(self, what: str, answer: dict) -> dict:
        """Shifter's gateway refuses a non-admin with 200 `{"status": false}`: an error here."""
        if answer.get("status") is False:
            import pwd   # only on this error path

            try:
                user = pwd.getpwuid(os.getuid()).pw_name
            except KeyError:
                user = f"uid {os.getuid()}"
            raise AccessDenied(f"{user} is not an image administrator of system {self.system}: "
                               f"the gateway refused to {what}")
        return answer

    def metrics(self, limit: int = 10) -> list[dict]:
        return self._request("GET", f"/api/metrics/{self._quote(self.system)}/?limit={int(limit)}")

    def queue(self) -> list[dict]:
        return self._request("GET", f"/api/queue/{self._quote(self.system)}/")["list"]

    # -- registry logins (Shifter's ~/.udiRoot/.cred) ------------------------------

    def login(self, location: str, user: str, password: str) -> None:
        """Store a registry login for this system, sealed in a munge credential."""
        if not user or ":" in user:
            raise ShifterError("the registry user name must be non-empty and contain no ':'")
        sealed = self.munge.encode(f"{user}:{password}".encode(), ttl=-1)
        entries = self._stored_logins_raw()
        entries[(self.system, location)] = sealed
        import tempfile   # only here: the submit side never stores a login

        directory = os.path.dirname(self.credentials_file)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=".cred.", dir=directory)
        with os.fdopen(fd, "w") as f:
            for (system, loc), cred in sorted(entries.items()):
                f.write(f"{system}:{loc}={cred}\n")
        os.replace(tmp, self.credentials_file)

    def logins(self) -> dict[str, str]:
        """This system's stored logins, `location -> "user:password"`, for the caller only."""
        result = {}
        for (system, location), cred in self._stored_logins_raw().items():
            if system != self.system:
                continue
            try:
                decoded = self.munge.decode(cred, allow_stale=True)
            except ShifterError:
                continue
            if decoded.uid == os.getuid():
                result[location] = decoded.payload.decode(errors="replace")
        return result

    def _stored_logins_raw(self) -> dict[tuple[str, str], str]:
        entries = {}
        try:
            with open(self.credentials_file, encoding="ascii", errors="replace") as f:
                for line in f:
                    key, sep, cred = line.strip().partition("=")
                    system, sep2, location = key.partition(":")
                    if sep and sep2:
                        entries[(system, location)] = cred
        except FileNotFoundError:
            pass
        return entries

    def _login_payload(self) -> bytes:
        logins = self.logins()
        return json.dumps({"authorized_locations": logins}).encode() if logins else b""

    # -- HTTP ---------------------------------------------------------------------

    def lookup_path(self, image) -> str:
        """The path `lookup` asks for (the plugin's C asks for it too: spank/submitplan.py)."""
        return self._image_path("lookup", image)

    def _image_path(self, verb: str, image) -> str:
        ref = image if isinstance(image, imageref.ImageRef) else imageref.parse(image, self.default_type)
        return (f"/api/{verb}/{self._quote(self.system)}/{self._quote(ref.type)}/"
                f"{self._quote(ref.gateway_tag)}/")

    @staticmethod
    def _quote(text: str) -> str:
        return urllib.parse.quote(text, safe="")

    def _request(self, method: str, path: str, *, body: dict | None = None, payload: bytes = b""):
        failures = []
        for url in self.in_random_order():
            headers = {HEADER: self.munge.encode(payload)}
            data = None
            if body is not None:
                headers["Content-Type"] = "application/json"
                data = json.dumps(body) if body else b""
            try:
                status, reason, text = self._send(url, method, path, headers, data)
            except TimeoutError:
                failures.append(f"{url}: timed out")
                continue
            except OSError as error:
                failures.append(f"{url}: cannot connect ({error.__class__.__name__})")
                continue
            except ValueError:
                failures.append(f"{url}: answered something that is not HTTP")
                continue
            if status >= 500:
                failures.append(f"{url}: {_message(status, reason, text)}")
                continue
            if status != 200:
                raise _ERRORS.get(status, GatewayError)(_message(status, reason, text))
            try:
                return json.loads(text)
            except ValueError:
                failures.append(f"{url}: answered something that is not JSON")
        raise GatewayError("no image gateway answered: " + "; ".join(failures))

    def in_random_order(self) -> list[str]:
        """Every gateway once, shuffled anew for each request (Shifter's client shuffles per call)."""
        if len(self.urls) == 1:
            return list(self.urls)
        import random   # most sites run one gateway

        return random.sample(self.urls, len(self.urls))

    def _send(self, url: str, method: str, path: str, headers: dict, data) -> tuple[int, str, bytes]:
        """One request on a fresh connection: (status, reason, body); ValueError if the
        answer is not HTTP."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise GatewayError(f"image gateway {url}: only http and https URLs are supported")
        body = data.encode() if isinstance(data, str) else data or b""
        lines = [f"{method} {parts.path + path} HTTP/1.0", f"Host: {parts.netloc}",
                 *(f"{name}: {value}" for name, value in headers.items())]
        if data is not None:
            lines.append(f"Content-Length: {len(body)}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname, port), timeout=self.timeout) as sock:
            if parts.scheme == "https":
                import ssl   # only for https gateways

                sock = ssl.create_default_context(cafile=self.ca_file).wrap_socket(
                    sock, server_hostname=parts.hostname)
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            answer = b"".join(iter(lambda: sock.recv(1 << 16), b""))
        return parse_answer(answer)


def parse_answer(answer: bytes) -> tuple[int, str, bytes]:
    """An HTTP/1.x answer read to its end: (status, reason, body), Content-Length respected;
    ValueError if it is not one.  spank/seam.c: seam_http_answer reads it alike."""
    head, separator, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, space, reason = rest.partition(" ")
    if not separator or not version.startswith("HTTP/1.") or len(code) != 3 or seam.uint(code) is None:
        raise ValueError("not an HTTP answer")
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        length = seam.uint(value.strip(" \t"))
        if colon and name.strip(" \t").lower() == "content-length" and length is not None:
            body = body[:length]
    return int(code), reason, body


def _message(status: int, reason: str, text: bytes) -> str:
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return message or f"HTTP {status} {reason}"
