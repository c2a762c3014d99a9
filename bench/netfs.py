"""A network file system for the mini-cluster's nodes: sshfs across the bridge.

The machine has no NFS client or server (environment.md section 10), so the
stand-in is SFTP: on the host, socat listens on the bridge address and starts
one OpenSSH sftp-server per connection (no sshd, no crypto: every uncached
metadata operation costs one round trip); on each node, an sshfs runs inside
the node's mount and network namespaces, so each node has a client of its
own, as each node of a cluster has its NFS client, and its requests cross the
node's veth and the bridge.

    site = Site(layout); site.prepare()
    with NetworkFS(layout, record, site.exports()) as netfs:   # mounted on every node
        netfs.cold()        # remount everywhere, drop the page cache in between

An Export pairs a host directory with the path where the nodes see it (the
same path hides the node's view of the local directory).  Served as root, it
is a file system the site owns (Site: the image directory, perNodeCachePath);
served as the test user, the user's network scratch: that sftp-server runs
with the user's uid, as an NFS server acts with the caller's.

sshfs options, for every mount:
- `dir_cache=no` unless asked otherwise: sshfs 3.7's name for the old
  `cache=no`, no attribute, name or link cache in sshfs itself (the kernel
  keeps FUSE's 1 s attribute and entry timeouts; an NFS client's attribute
  cache lasts 3 to 60 s);
- `sshfs_sync`: writes wait for the server (environment.md: asynchronous
  sshfs stalls on floods of small writes);
- `allow_other,default_permissions`: every user of the node, the kernel
  checking file modes;
- `no_contain_symlinks`: absolute symlinks come back as they are, as on NFS
  (sshfs's default refuses them with EPERM, and nothing can be executed in
  an image root on the file system, which is ch-run's case).

Everything started here (socat, the sftp-servers it forked, every sshfs) is
stopped by pid when the `with` block ends, interrupted or not.
"""
from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from ci.harness import cluster as harness

SOCAT = "/usr/bin/socat"
SSHFS = "/usr/bin/sshfs"
NSENTER = "/usr/bin/nsenter"
UMOUNT = "/usr/bin/umount"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
MOUNT_OPTIONS = "allow_other,default_permissions,no_contain_symlinks,sshfs_sync"
_ENV = {"PATH": harness.DAEMON_PATH, "LANG": "C.UTF-8"}


class NetworkFSError(harness.ClusterError):
    """The sshfs stand-in for a network file system could not be set up or taken down."""


@dataclasses.dataclass(frozen=True)
class Export:
    source: str                   # directory on the host
    mountpoint: str               # where the nodes see it
    user: str | None = None       # None: served as root


class _Server:
    """socat on the bridge address, forking one sftp-server per connection, as one user."""

    def __init__(self, user: str | None, workdir: Path, log: Path):
        self.user = pwd.getpwnam(user) if user else None
        self.port = harness._free_port(harness.HOST_ADDRESS)
        self.connect_script = workdir / f"connect-{self.port}"
        self.connect_script.write_text(
            f"#!/bin/sh\n# sshfs's ssh_command: the SFTP stream over TCP, without ssh\n"
            f"exec {SOCAT} STDIO TCP:{harness.HOST_ADDRESS}:{self.port},nodelay\n")
        self.connect_script.chmod(0o755)
        ids = {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid,
                                            "extra_groups": []}
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [SOCAT, f"TCP-LISTEN:{self.port},bind={harness.HOST_ADDRESS},reuseaddr,fork,nodelay",
                 f"EXEC:{SFTP_SERVER}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, env=_ENV,
                cwd="/", **ids)
        if not harness._wait_until(lambda: self.process.poll() is not None or _listening(self.port), 10):
            self.stop()
            raise NetworkFSError(f"socat does not listen on port {self.port}; see {log}")
        if self.process.poll() is not None:
            raise NetworkFSError(f"socat exited ({self.process.returncode}); see {log}")

    def stop(self) -> None:
        """socat, then what it forked that is still there (connections closed by now)."""
        children = _descendants(self.process.pid)
        _stop(self.process.pid)
        self.process.wait()
        for pid in children:
            _stop(pid)
        self.connect_script.unlink(missing_ok=True)


@dataclasses.dataclass
class _Client:
    """One sshfs, inside one node's mount and network namespaces."""

    node: str
    slurmd: int                  # pid of the node's slurmd: its namespaces are the node
    export: Export
    server: _Server
    log: Path
    process: subprocess.Popen | None = None

    def mount(self, dir_cache: bool) -> None:
        options = (f"ssh_command={self.server.connect_script},{MOUNT_OPTIONS},"
                   f"dir_cache={'yes' if dir_cache else 'no'}")
        argv = [NSENTER, f"--mount=/proc/{self.slurmd}/ns/mnt", f"--net=/run/netns/{self.node}", "--",
                SSHFS, "-f", f"{harness.HOST_ADDRESS}:{self.export.source}", self.export.mountpoint,
                "-o", options]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                            start_new_session=True, env=_ENV, cwd="/")
        if not harness._wait_until(lambda: self.process.poll() is not None or self.mounted(), 15, 0.02):
            self.unmount()
            raise NetworkFSError(f"sshfs on {self.node} did not mount {self.export.mountpoint}; see {self.log}")
        if self.process.poll() is not None:
            raise NetworkFSError(f"sshfs on {self.node} exited ({self.process.returncode}); see {self.log}")

    def mounted(self) -> bool:
        try:
            lines = Path(f"/proc/{self.slurmd}/mountinfo").read_text().splitlines()
        except OSError:
            return False
        for line in lines:
            fields = line.split()
            if fields[4] == self.export.mountpoint and fields[fields.index("-") + 1] == "fuse.sshfs":
                return True
        return False

    def unmount(self) -> None:
        """SIGTERM makes sshfs unmount and exit; a lazy umount if it did not."""
        if self.process is not None:
            _stop(self.process.pid)
            self.process.wait()
            self.process = None
        if self.mounted():
            subprocess.run([NSENTER, f"--mount=/proc/{self.slurmd}/ns/mnt", "--", UMOUNT, "-l",
                            self.export.mountpoint], env=_ENV, capture_output=True, check=False)
        if self.mounted():
            raise NetworkFSError(f"cannot unmount the sshfs at {self.export.mountpoint} on {self.node}")


class NetworkFS:
    """The exports mounted on every node of the cluster `record` describes."""

    def __init__(self, layout: harness.Layout, record: harness.Record, exports: list[Export], *,
                 dir_cache: bool = False):
        self.workdir = layout.root / "netfs-run"
        self.layout, self.record, self.exports, self.dir_cache = layout, record, exports, dir_cache
        self.servers: dict[str | None, _Server] = {}
        self.clients: list[_Client] = []

    def __enter__(self) -> "NetworkFS":
        self.workdir.mkdir(mode=0o755, exist_ok=True)
        try:
            for user in {export.user for export in self.exports}:
                log = self.layout.log / f"netfs-server-{user or 'root'}.log"
                self.servers[user] = _Server(user, self.workdir, log)
            for node in self.record.nodes:
                slurmd = self.record.daemons[f"slurmd-{node}"].pid
                for export in self.exports:
                    self.clients.append(_Client(node, slurmd, export, self.servers[export.user],
                                                self.layout.log / f"netfs-{node}.log"))
            self._mount_all()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc) -> None:
        errors = []
        for client in self.clients:
            try:
                client.unmount()
            except NetworkFSError as error:
                errors.append(str(error))
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
        for leftover in self.workdir.iterdir() if self.workdir.exists() else ():
            leftover.unlink()
        if self.workdir.exists():
            self.workdir.rmdir()
        if errors and (not exc or exc[0] is None):
            raise NetworkFSError("; ".join(errors))

    def _mount_all(self) -> None:
        for client in self.clients:
            client.mount(self.dir_cache)

    def cold(self) -> None:
        """Every client unmounted and mounted again, with the page cache dropped in between."""
        for client in self.clients:
            client.unmount()
        drop_caches()
        self._mount_all()


class Site:
    """A diskless cluster's file systems on the network, laid out in the mini-cluster:
    the image directory and perNodeCachePath (served as root, mounted over themselves)
    and the test user's network directory (`export` on the host, seen at `mount` on
    the nodes)."""

    def __init__(self, layout: harness.Layout):
        self.layout = layout
        self.export = layout.root / "netfs"
        self.mount = layout.root / "netfs-mnt"

    def exports(self) -> list[Export]:
        return [Export(str(self.layout.images), str(self.layout.images)),
                Export(str(self.layout.node_cache), str(self.layout.node_cache)),
                Export(str(self.export), str(self.mount), harness.TEST_USER)]

    def prepare(self) -> None:
        for directory in (self.export, self.mount):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(mode=0o755)
        self.layout.node_cache.mkdir(mode=0o700, exist_ok=True)
        self.give_to_user()

    def give_to_user(self) -> None:
        """Everything in the user's directory owned by the test user."""
        user = harness.ensure_test_user()
        for directory, _, files in os.walk(self.export):
            os.chown(directory, user.pw_uid, user.pw_gid)
            for name in files:
                os.chown(os.path.join(directory, name), user.pw_uid, user.pw_gid, follow_symlinks=False)

    def remove(self) -> None:
        for directory in (self.export, self.mount):
            shutil.rmtree(directory, ignore_errors=True)


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (the whole machine's)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# -- processes and ports ---------------------------------------------------------

def _listening(port: int) -> bool:
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _descendants(pid: int) -> list[int]:
    """Children of `pid`, their children and so on, read from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL (the harness's way: a zombie counts as gone)."""
    try:
        daemon = harness.Daemon.of(pid)
    except harness.ClusterError:
        return                                   # gone already
    daemon.stop(timeout=10)
