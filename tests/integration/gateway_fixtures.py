"""Real services for the gateway tests: munged, docker-registry, the gateway itself.

Test modules import the fixtures they use from here:

    from tests.integration.gateway_fixtures import munged, registry, busybox, ...

Everything is started in temp directories on loopback with free ports and
stopped by PID.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from ci.harness.munged import MungeDaemon
from ci.harness.oci import Layout, busybox_image
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


class GatewayProcess:
    """`shifter-gateway` (or one of its subcommands) as a child process."""

    def __init__(self, workdir: str, config: dict, args=(), port: int | None = None):
        self.workdir = workdir
        self.config_path = os.path.join(workdir, "imagemanager.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        self.log_path = os.path.join(workdir, f"gateway-{self.port}.log")
        self.process = None

    def start(self, wait: bool = True) -> "GatewayProcess":
        argv = [os.path.join(BIN, "shifter-gateway"), "--config", self.config_path]
        argv += self.args or ["--listen", f"127.0.0.1:{self.port}"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                            start_new_session=True)
        if wait and not self.args:
            self.wait_answering()
        return self

    def wait_answering(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log()}")
            try:
                requests.get(self.url + "/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway did not answer: {self.log()}")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)   # its own session: gunicorn and its worker
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def client(gateway: GatewayProcess, munged, system: str = SYSTEM, **kw) -> GatewayClient:
    return GatewayClient([gateway.url], system, timeout=10, munge=Munge(munged.socket), **kw)


def udiroot_conf(workdir: str, gateway_urls: list[str], system: str = SYSTEM) -> str:
    path = os.path.join(workdir, "udiRoot.conf")
    with open(path, "w") as f:
        f.write(f"udiMount=/var/udiMount\nloopMount=/var/udiLoopMount\nimagePath={workdir}/images\n"
                f"etcPath=/etc\nsystem={system}\nimageGateway={' '.join(gateway_urls)}\ngatewayTimeout=10\n")
    return path


def shifterimg(args: list[str], conf: str, munged, user: int | None = None, timeout: float = 120,
               home: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "SHIFTER_UDIROOT_CONF": conf, "SHIFTER_MUNGE_SOCKET": munged.socket,
           "HOME": home or "/nonexistent"}
    return subprocess.run([os.path.join(BIN, "shifterimg"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, user=user)
