"""A throw-away Docker registry on 127.0.0.1 for tests, benchmarks and the demo.

Runs Debian's docker-registry (distribution 2.8) with its own config and
storage on a port the kernel picks (Debian's default config listens on all
interfaces, so it is never used).  Variants: plain http, TLS with a
self-signed certificate, htpasswd basic auth, and token auth backed by a small
token server in this module.  Token policy: a known user may do anything,
anonymous may only pull repositories under the `anonymous_pull` prefixes.

    with Registry(tmpdir, auth="token") as reg:
        layout.push("v1", f"{reg.host}/private/img:v1", creds=reg.creds)

From a shell (the cluster harness):

    python -m ci.harness.registry start --dir D [--tls] [--auth htpasswd|token]
    python -m ci.harness.registry stop --dir D
"""
from __future__ import annotations

import argparse
import base64
import datetime
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from shifter_core.container import procfs

REGISTRY_BIN = "/usr/bin/docker-registry"
HTPASSWD_BIN = "/usr/bin/htpasswd"
DEFAULT_USERS = {"alice": "s3cret"}
TOKEN_SERVICE = "shifter-test-registry"
TOKEN_ISSUER = "shifter-test-issuer"
STATE_FILE = "registry.json"
_LISTENING = re.compile(r"listening on (?:\[::\]|127\.0\.0\.1):(\d+)")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Registry:
    """One registry instance (plus its token server) living in `workdir`."""

    def __init__(self, workdir: str, *, tls: bool = False, auth: str | None = None,
                 users: dict[str, str] | None = None,
                 anonymous_pull: tuple[str, ...] = ("public/",),
                 storage: str | None = None):
        if auth not in (None, "htpasswd", "token"):
            raise ValueError(f"auth must be None, 'htpasswd' or 'token', not {auth!r}")
        self.workdir = os.path.abspath(workdir)
        self.tls, self.auth = tls, auth
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.anonymous_pull = tuple(anonymous_pull)
        self.storage = storage or os.path.join(self.workdir, "data")
        self.port: int | None = None
        self.pids: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}

    # what clients need
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def ca_dir(self) -> str | None:
        """Directory with the CA certificate as ca.crt (skopeo's --cert-dir)."""
        return os.path.join(self.workdir, "certs") if self.tls else None

    @property
    def ca_file(self) -> str | None:
        return os.path.join(self.workdir, "certs", "ca.crt") if self.tls else None

    @property
    def creds(self) -> str:
        """`user:password` of the first user, for skopeo --creds."""
        user, password = next(iter(self.users.items()))
        return f"{user}:{password}"

    # life cycle
    def start(self) -> "Registry":
        os.makedirs(self.workdir, exist_ok=True)
        os.makedirs(self.storage, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "info", "fields": {"service": "shifter-test-registry"}},
            "storage": {"filesystem": {"rootdirectory": self.storage},
                        "delete": {"enabled": True}},
            "http": {"addr": "127.0.0.1:0", "secret": secrets.token_hex(16)},
        }
        if self.tls:
            cert, key = self._write_tls_certificate()
            config["http"]["tls"] = {"certificate": cert, "key": key}
        try:
            if self.auth == "htpasswd":
                config["auth"] = {"htpasswd": {"realm": "shifter-test", "path": self._write_htpasswd()}}
            elif self.auth == "token":
                config["auth"] = {"token": self._start_token_server()}
            config_path = os.path.join(self.workdir, "registry.yml")
            with open(config_path, "w") as f:
                json.dump(config, f, indent=1)     # JSON is valid YAML
            self.port = self._spawn("registry", [REGISTRY_BIN, "serve", config_path])
            self._wait_until_answering()
            self._save_state()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the processes this instance started, by PID."""
        for name in list(self.pids):
            _terminate(self.pids.pop(name), self._procs.pop(name, None))

    def __enter__(self) -> "Registry":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # helpers
    def _spawn(self, name: str, argv: list[str]) -> int:
        """Start a daemon logging to <name>.log and return the port it reports."""
        log_path = os.path.join(self.workdir, f"{name}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, cwd=self.workdir,
                                    env=_clean_env())
        self._procs[name], self.pids[name] = proc, proc.pid
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with open(log_path, errors="replace") as f:
                match = _LISTENING.search(f.read())
            if match:
                return int(match.group(1))
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        with open(log_path, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{name} did not start listening; log:\n{tail}")

    def _wait_until_answering(self) -> None:
        context = ssl.create_default_context(cafile=self.ca_file) if self.tls else None
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=context).close()
                return
            except urllib.error.HTTPError as err:
                if err.code == 401:
                    return
                error = err
            except OSError as err:
                error = err
            if time.monotonic() > deadline:
                raise RuntimeError(f"registry at {self.url} does not answer /v2/: {error}")
            time.sleep(0.05)

    def _write_tls_certificate(self) -> tuple[str, str]:
        key, cert = _self_signed("localhost", ip="127.0.0.1")
        certs = os.path.join(self.workdir, "certs")
        os.makedirs(certs, exist_ok=True)
        cert_path = os.path.join(certs, "ca.crt")
        key_path = os.path.join(self.workdir, "registry.key")   # not in certs/: skopeo reads it
        _write(cert_path, _cert_pem(cert))
        _write(key_path, _key_pem(key), mode=0o600)
        return cert_path, key_path

    def _write_htpasswd(self) -> str:
        path = os.path.join(self.workdir, "htpasswd")
        lines = []
        for user, password in self.users.items():
            result = subprocess.run([HTPASSWD_BIN, "-Bbn", user, password], check=True,
                                    capture_output=True, text=True)
            lines.append(result.stdout.strip())
        _write(path, ("\n".join(lines) + "\n").encode(), mode=0o600)
        return path

    def _start_token_server(self) -> dict:
        key, cert = _self_signed(TOKEN_ISSUER)
        key_path = os.path.join(self.workdir, "token.key")
        cert_path = os.path.join(self.workdir, "token.crt")
        _write(key_path, _key_pem(key), mode=0o600)
        _write(cert_path, _cert_pem(cert))
        policy_path = os.path.join(self.workdir, "token-policy.json")
        with open(policy_path, "w") as f:
            json.dump({"users": self.users, "anonymous_pull": self.anonymous_pull,
                       "key": key_path, "cert": cert_path}, f)
        os.chmod(policy_path, 0o600)
        port = self._spawn("token", [sys.executable, "-m", "ci.harness.registry",
                                     "token-server", policy_path])
        return {"realm": f"http://127.0.0.1:{port}/token", "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER, "rootcertbundle": cert_path}

    def _save_state(self) -> None:
        state = {"url": self.url, "host": self.host, "ca_file": self.ca_file,
                 "ca_dir": self.ca_dir, "auth": self.auth, "users": self.users,
                 "pids": self.pids, "storage": self.storage}
        with open(os.path.join(self.workdir, STATE_FILE), "w") as f:
            json.dump(state, f, indent=1)


def _clean_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": _REPO_ROOT, "HOME": "/nonexistent"}


def _terminate(pid: int, proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 10 s; a zombie counts as gone (no reaping init)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not procfs.running(pid):
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait()


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


# --- certificates and tokens (cryptography) ----------------------------------

def _self_signed(common_name: str, ip: str | None = None):
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return key, builder.sign(key, hashes.SHA256())


def _cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Signs registry bearer tokens (RS256 JWT with the certificate in x5c)."""

    def __init__(self, policy: dict):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        with open(policy["key"], "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), password=None)
        with open(policy["cert"], "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.users = policy["users"]
        self.anonymous_pull = tuple(policy["anonymous_pull"])

    def authenticate(self, authorization: str | None) -> str | None:
        """The user name, "" for anonymous; None if the credentials are wrong."""
        if not authorization:
            return ""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        ok = user in self.users and secrets.compare_digest(self.users[user], password)
        return user if ok else None

    def grant(self, user: str, scopes: list[str]) -> list[dict]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = [a for a in actions.split(",") if a]
            if user:
                allowed = wanted
            elif name.startswith(self.anonymous_pull):
                allowed = [a for a in wanted if a == "pull"]
            else:
                allowed = []
            access.append({"type": "repository", "name": name, "actions": allowed})
        return access

    def token(self, user: str, service: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": TOKEN_ISSUER, "sub": user, "aud": service, "iat": now,
                  "nbf": now - 10, "exp": now + 300, "jti": secrets.token_hex(8),
                  "access": self.grant(user, scopes)}
        signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode())
                                 for part in (header, claims))
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


def serve_tokens(policy_path: str) -> None:
    """Token endpoint `GET /token?service=..&scope=..` on a free loopback port."""
    with open(policy_path) as f:
        issuer = TokenIssuer(json.load(f))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/token":
                self._reply(404, {"error": "not found"})
                return
            user = issuer.authenticate(self.headers.get("Authorization"))
            if user is None:
                self._reply(401, {"error": "invalid credentials"})
                return
            query = urllib.parse.parse_qs(url.query)
            token = issuer.token(user, query.get("service", [TOKEN_SERVICE])[0],
                                 query.get("scope", []))
            issued = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._reply(200, {"token": token, "access_token": token, "expires_in": 300,
                              "issued_at": issued})

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            sys.stderr.write("token: " + fmt % args + "\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


# --- command line ------------------------------------------------------------

def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ci.harness.registry")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a registry, print its state as JSON")
    start.add_argument("--dir", required=True, help="work directory (config, storage, logs)")
    start.add_argument("--tls", action="store_true")
    start.add_argument("--auth", choices=("htpasswd", "token"))
    start.add_argument("--storage", help="storage root (default <dir>/data)")
    stop = sub.add_parser("stop", help="stop the registry started in --dir")
    stop.add_argument("--dir", required=True)
    stop.add_argument("--purge", action="store_true", help="also delete the directory")
    token = sub.add_parser("token-server", help=argparse.SUPPRESS)
    token.add_argument("policy")
    args = parser.parse_args(argv)

    if args.command == "token-server":
        serve_tokens(args.policy)
        return 0
    if args.command == "start":
        registry = Registry(args.dir, tls=args.tls, auth=args.auth, storage=args.storage).start()
        with open(os.path.join(registry.workdir, STATE_FILE)) as f:
            print(f.read())
        return 0
    state_path = os.path.join(args.dir, STATE_FILE)
    with open(state_path) as f:
        state = json.load(f)
    for pid in state["pids"].values():
        if _started_here(pid, args.dir):
            _terminate(pid, None)
    os.unlink(state_path)
    if args.purge:
        shutil.rmtree(args.dir)
    return 0


def _started_here(pid: int, workdir: str) -> bool:
    """Guard against PID reuse: the process must run from `workdir`."""
    try:
        return os.path.samefile(os.readlink(f"/proc/{pid}/cwd"), workdir) and procfs.running(pid)
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(_main())
