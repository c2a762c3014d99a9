"""Remote transfer: a second system whose image directory is reached over ssh.

The test makes a network namespace joined to the host by a veth pair and runs
sshd inside it (own host key, key authentication only, own /run in a private
mount namespace), then configures that system as `accesstype: remote` with its
own munged.  Everything is stopped by PID and deleted afterwards.
"""
from __future__ import annotations

import os
import random
import stat
import subprocess
import time

import pytest

from ci.harness.munged import MungeDaemon
from shifter_core.errors import ImageNotFound
from shifter_core.gwclient import GatewayClient
from shifter_core.munge import Munge
from tests.integration.gateway_fixtures import (GatewayProcess, Service, busybox, gateway_config,  # noqa: F401
                                                munged, registry)

pytestmark = [pytest.mark.slow, pytest.mark.root]
SSH_PORT = 2222


class SshHost:
    """sshd in its own network namespace, reachable from the host at `address`."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        tag = f"{os.getpid() % 10000}{random.randrange(100)}"
        self.netns = f"shgw{tag}"
        self.veth = f"vgw{tag}"
        subnet = random.randrange(100, 250)
        self.host_address = f"10.213.{subnet}.1"
        self.address = f"10.213.{subnet}.2"
        self.sshd: Service | None = None

    def start(self) -> "SshHost":
        run = lambda *argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
        run("ip", "netns", "add", self.netns)
        try:
            run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.veth)
            run("ip", "link", "set", self.veth, "up")
            run("ip", "-n", self.netns, "addr", "add", f"{self.address}/30", "dev", "eth0")
            run("ip", "-n", self.netns, "link", "set", "eth0", "up")
            run("ip", "-n", self.netns, "link", "set", "lo", "up")
            self._keys()
            self.sshd = Service(
                ["/usr/bin/nsenter", f"--net=/run/netns/{self.netns}", "/usr/bin/unshare", "-m",
                 "--propagation", "private", "/bin/sh", "-c",
                 "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -m 0755 /run/sshd"
                 f" && exec /usr/sbin/sshd -D -e -f {self.workdir}/sshd_config"],
                os.path.join(self.workdir, "sshd.log")).start()
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def _keys(self) -> None:
        w = self.workdir
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{w}/{name}"], check=True)
        with open(f"{w}/authorized_keys", "w") as f:
            f.write(open(f"{w}/client_key.pub").read())
        host_key = open(f"{w}/host_key.pub").read().split()
        with open(f"{w}/known_hosts", "w") as f:
            f.write(f"[{self.address}]:{SSH_PORT} {host_key[0]} {host_key[1]}\n")
        with open(f"{w}/sshd_config", "w") as f:
            f.write(f"Port {SSH_PORT}\nListenAddress {self.address}\nHostKey {w}/host_key\n"
                    f"AuthorizedKeysFile {w}/authorized_keys\nPidFile none\nUsePAM no\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                    "PermitRootLogin prohibit-password\nStrictModes no\n")

    def _wait(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sshd.running():
                raise RuntimeError(f"sshd exited: {self.sshd.log()}")
            probe = subprocess.run(["ssh", *self.ssh_options(), "-p", str(SSH_PORT), "-i",
                                    f"{self.workdir}/client_key", f"root@{self.address}", "true"],
                                   capture_output=True, timeout=15)
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"sshd did not accept the test key: {self.sshd.log()}")

    def ssh_options(self) -> list[str]:
        return ["-o", f"UserKnownHostsFile={self.workdir}/known_hosts", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes"]

    def stop(self) -> None:
        if self.sshd is not None:
            self.sshd.stop()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)   # gone with the netns anyway


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory):
    host = SshHost(str(tmp_path_factory.mktemp("sshhost"))).start()
    yield host
    host.stop()
    assert host.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def remote_munged():
    with MungeDaemon() as daemon:     # the remote system has its own munge key
        yield daemon


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, munged, remote_munged, registry, ssh_host):
    workdir = str(tmp_path_factory.mktemp("gateway"))
    remote_dir = os.path.join(ssh_host.workdir, "remote-images")
    os.mkdir(remote_dir)
    config = gateway_config(workdir, munged, registry)
    config["Platforms"]["remotesys"] = {
        "mungeSocketPath": remote_munged.socket, "accesstype": "remote", "admins": ["root"],
        "host": ["10.213.0.1", ssh_host.address],          # the first one does not answer
        "ssh": {"username": "root", "key": f"{ssh_host.workdir}/client_key", "imageDir": remote_dir,
                "port": SSH_PORT, "sshCmdOptions": ssh_host.ssh_options() + ["-o", "ConnectTimeout=2"]},
    }
    with GatewayProcess(workdir, config) as gw:
        gw.remote_dir = remote_dir
        yield gw


def test_pull_to_remote_system(gateway, remote_munged, munged, busybox):
    remote = GatewayClient([gateway.url], "remotesys", timeout=30, munge=Munge(remote_munged.socket))
    deadline = time.monotonic() + 120
    while (record := remote.pull(busybox))["status"] not in ("READY", "FAILURE") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert record["status"] == "READY", record["status_message"] + gateway.log()
    image_id = record["id"]
    names = sorted(os.listdir(gateway.remote_dir))
    assert names == sorted(f"{image_id}.{ext}" for ext in ("json", "meta", "squashfs"))   # no temp files
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(gateway.remote_dir, name)).st_mode) == 0o600
    staged = os.path.join(gateway.workdir, "state", "scratch", "staging", "remotesys", f"{image_id}.squashfs")
    with open(staged, "rb") as a, open(os.path.join(gateway.remote_dir, f"{image_id}.squashfs"), "rb") as b:
        assert a.read() == b.read()
    assert remote.lookup(busybox)["id"] == image_id

    # the local system is separate: nothing there until it is pulled for it too
    from tests.integration.gateway_fixtures import client
    with pytest.raises(ImageNotFound):
        client(gateway, munged).lookup(busybox)

    # a credential of the other system's munge key is refused
    with pytest.raises(Exception, match="same key"):
        GatewayClient([gateway.url], "remotesys", timeout=30, munge=Munge(munged.socket)).lookup(busybox)

    assert remote.expire(busybox)["id"] == image_id
    deadline = time.monotonic() + 30
    while os.listdir(gateway.remote_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert os.listdir(gateway.remote_dir) == []
