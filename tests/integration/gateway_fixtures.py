"""Real services for the gateway tests: munged, docker-registry, the gateway itself.

Test modules import the fixtures they use from here:

    from tests.integration.gateway_fixtures import munged, registry, busybox, ...

Everything is started in temp directories on loopback with free ports and
stopped by PID.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import requests
from sqlalchemy import create_engine

from ci.harness.munged import MungeDaemon
from ci.harness.oci import Layout, busybox_image
from ci.harness.postgres import PostgresCluster
from ci.harness.registry import Registry
from shifter_core.gwclient import GatewayClient
from shifter_core.munge import Munge

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SYSTEM = "testsys"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def munged():
    with MungeDaemon() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(str(tmp_path_factory.mktemp("registry"))) as reg:
        yield reg


def push_busybox(registry, workdir: str, name: str, tag: str = "latest", **config) -> str:
    """Push the busybox test image as `name:tag`; return the docker reference."""
    layout = Layout(workdir)
    busybox_image(layout, tag, **config)
    layout.push(tag, f"{registry.host}/{name}:{tag}")
    return f"{registry.host}/{name}:{tag}"


@pytest.fixture(scope="module")
def busybox(registry, tmp_path_factory):
    return push_busybox(registry, str(tmp_path_factory.mktemp("layout")), "test/busybox")


def gateway_config(workdir: str, munged, registry, **overrides) -> dict:
    """An imagemanager.json for one local system served by `munged`."""
    config = {
        "WorkerThreads": 1,
        "Platforms": {SYSTEM: {"mungeSocketPath": munged.socket, "accesstype": "local", "admins": ["root"],
                               "local": {"imageDir": os.path.join(workdir, "images")}}},
        "Locations": {registry.host: {"url": registry.url}},
        "DefaultImageLocation": registry.host,
        "StateDirectory": os.path.join(workdir, "state"),
        "HeartbeatInterval": 1,
        "HeartbeatTimeout": 5,
        "RetryBackoff": 1,
    }
    config.update(overrides)
    return config


class Service:
    """A child process in its own session, logging to a file, stopped by PID."""

    def __init__(self, argv: list[str], log_path: str, env: dict | None = None):
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> "Service":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                            env=self.env, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig=signal.SIGTERM) -> None:
        """Signal the whole session (gunicorn and its workers), then reap."""
        if self.running():
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)   # stragglers of a SIGKILLed leader
            except ProcessLookupError:
                pass
        self.process = None

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


class GatewayProcess:
    """A gateway deployment for tests.

    Embedded (default): one `shifter-gateway --config F` (API + worker thread).
    Production: `shifter-gateway migrate`, gunicorn with `api_processes`
    workers, and `workers` separate `shifter-gateway worker` processes.
    """

    def __init__(self, workdir: str, config: dict, *, production: bool = False, api_processes: int = 2,
                 workers: int = 1, port: int | None = None,
                 gunicorn_options: tuple[str, ...] = ("-k", "sync")):
        self.workdir = workdir
        self.config_path = os.path.join(workdir, "imagemanager.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.production = production
        self.api_processes = api_processes
        self.worker_count = workers
        self.gunicorn_options = list(gunicorn_options)
        self.api: Service | None = None
        self.workers: list[Service] = []

    def start(self) -> "GatewayProcess":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        gateway = [os.path.join(BIN, "shifter-gateway"), "--config", self.config_path]
        if not self.production:
            self.api = Service(gateway + ["--listen", f"127.0.0.1:{self.port}"], self._log("embedded")).start()
        else:
            subprocess.run(gateway + ["migrate"], check=True, capture_output=True, cwd=REPO)
            env = {"PATH": "/usr/bin:/bin", "SHIFTER_GATEWAY_CONFIG": self.config_path}
            self.api = Service([os.path.join(BIN, "gunicorn"), "-w", str(self.api_processes),
                                *self.gunicorn_options, "-b", f"127.0.0.1:{self.port}", "--no-control-socket",
                                "gateway.app:create_app()"], self._log("api"), env=env).start()
            for _ in range(self.worker_count):
                self.add_worker()
        self.wait_answering()

    def add_worker(self) -> Service:
        argv = [os.path.join(BIN, "shifter-gateway"), "--config", self.config_path, "worker"]
        worker = Service(argv, self._log(f"worker{len(self.workers)}")).start()
        self.workers.append(worker)
        return worker

    def wait_answering(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.api.running():
                raise RuntimeError(f"gateway exited: {self.log()}")
            try:
                requests.get(self.url + "/", timeout=5)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError(f"gateway did not answer: {self.log()}")

    def log(self) -> str:
        return "\n".join(s.log()[-3000:] for s in [self.api, *self.workers] if s is not None)

    def stop(self) -> None:
        for service in [*self.workers, self.api]:
            if service is not None:
                service.stop()

    def _log(self, name: str) -> str:
        return os.path.join(self.workdir, f"{name}-{self.port}.log")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def client(gateway: GatewayProcess, munged, system: str = SYSTEM, **kw) -> GatewayClient:
    return GatewayClient([gateway.url], system, timeout=10, munge=Munge(munged.socket), **kw)


def shared_dir(name: str) -> str:
    """A temp dir other users can enter: pytest's own are below a 0700
    directory (/tmp/pytest-of-root), so this one lives beside it and is
    removed when the test process exits."""
    path = tempfile.mkdtemp(prefix=f"shifter-test-{name}-")
    os.chmod(path, 0o755)
    atexit.register(shutil.rmtree, path, True)
    return path


def udiroot_conf(workdir: str, gateway_urls: list[str], system: str = SYSTEM) -> str:
    """A udiRoot.conf naming the gateways; readable by everyone."""
    path = os.path.join(workdir, "udiRoot.conf")
    with open(path, "w") as f:
        f.write(f"udiMount=/var/udiMount\nloopMount=/var/udiLoopMount\nimagePath={workdir}/images\n"
                f"etcPath=/etc\nsystem={system}\nimageGateway={' '.join(gateway_urls)}\ngatewayTimeout=10\n")
    os.chmod(path, 0o644)
    return path


@pytest.fixture(scope="module")
def postgres():
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def deploy(tmp_path, munged, registry, postgres, request):
    """start(workers=1, **config) starts gunicorn + a PostgreSQL database of its own + `workers`
    worker processes, and returns the GatewayProcess and an engine on its database; all of it
    is stopped after the test."""
    started = []

    def start(workers: int = 1, **overrides):
        url = postgres.create_database(f"db_{request.node.name}"[:60])
        config = gateway_config(str(tmp_path), munged, registry, DatabaseURI=url, **overrides)
        gw = GatewayProcess(str(tmp_path), config, production=True, workers=workers)
        started.append(gw)
        gw.start()
        engine = create_engine(url)
        started.append(engine)
        return gw, engine

    yield start
    for thing in reversed(started):
        thing.stop() if isinstance(thing, GatewayProcess) else thing.dispose()


def credential_as(munged, uid: int, payload: bytes = b"") -> str:
    """A munge credential made by a process running as `uid` (the munge CLI)."""
    result = subprocess.run(["/usr/bin/munge", "-S", munged.socket], input=payload, capture_output=True,
                            user=uid, group=uid, extra_groups=[], check=True)
    return result.stdout.decode().strip()


def shifterimg(args: list[str], conf: str, munged, user: int | None = None, timeout: float = 120,
               home: str | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run shifterimg as `user` (uid, its own group), without a terminal."""
    env = {"PATH": "/usr/bin:/bin", "SHIFTER_UDIROOT_CONF": conf, "SHIFTER_MUNGE_SOCKET": munged.socket,
           "HOME": home or "/nonexistent"}
    ids = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    return subprocess.run([os.path.join(BIN, "shifterimg"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, input=input, start_new_session=True, **ids)
