"""The Slurm mini-cluster the demo, the tests and people at a shell share.

    ci/cluster up [--without-plugin]   start it (idempotent) and print a summary
    eval "$(ci/cluster env)"           make sbatch, srun, shifterimg ... use it
    ci/cluster status                  what runs, the nodes' states; exit 0 when up
    ci/cluster down [--force]          stop it and check that nothing remains (--force:
                                       even while pytest sessions use it)

One munged, slurmctld in the root namespaces and three slurmd "nodes" n1..n3,
each in its own network, UTS, IPC and mount namespace (with its own /dev/shm)
on a private bridge, with the shifter SPANK plugin in plugstack.conf,
slurm.conf.d/job_submit.lua in slurmctld and the releaser (`shifter-admin
release-held-jobs`): jobs submitted while their image is still being pulled
wait held (holdJobsForPull=1); nodes keep a provenance log in log/provenance.
Everything lives under <repo>/.cluster; nothing is written to /etc/slurm.
`down` stops only what `up` started (by pid and start time, recorded in
run/harness.json) and then lists anything of the cluster that is still there.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ci.harness import leaks, oci, sitemodules, slurmclient
from ci.harness.registry import Registry
from shifter_core import config, udiimage
from shifter_core.container import procfs
from shifter_core.errors import ShifterError

REPO = Path(__file__).resolve().parents[2]
NODES = ("n1", "n2", "n3")      # the cluster everyone uses; a benchmark may ask `up` for more
BRIDGE = "shifter-br"
HOST_ADDRESS = "10.213.57.1"


def node_names(count: int) -> tuple[str, ...]:
    return tuple(f"n{i}" for i in range(1, count + 1))


def node_addresses(nodes) -> dict[str, str]:
    return {node: f"10.213.57.{11 + i}" for i, node in enumerate(nodes)}


NODE_ADDRESSES = node_addresses(NODES)
PREFIX_LENGTH = 24
TEST_USER = "shiftertest"
# what the registry holds after `up`; docker:busybox:latest resolves to it (default location)
TEST_IMAGES = ("busybox:latest",)
SYSTEM = "ci"
PARTITION = "multi"
CLUSTER_NAME = "shifterci"
MUNGE_SOCKET_DIR = Path("/run/munge")
DAEMON_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
IP = "/usr/sbin/ip"
BY_HAND = "ci/cluster"  # Record.started_by of a cluster someone started at a shell
# The bridge, its addresses and the node names are fixed, so one checkout's
# cluster at a time per machine: this file names the checkout whose cluster is up.
# Each node's TmpFS (slurm.conf expands %n), under the /tmp every node and container
# shares: Slurm's PMIx plugin makes each step's client directory there, with a name
# that is the same on every node of the step.
NODE_TMP = Path("/tmp/shifter-mini-cluster-tmp")
MACHINE_CLAIM = Path("/run/shifter-mini-cluster")
MACHINE_CLAIMER = Path("/run/shifter-mini-cluster.by")     # "<pid> <start time>" of the claiming process
CLAIM_WAIT = float(os.environ.get("SHIFTER_CLUSTER_WAIT", "10800"))   # seconds


class ClusterError(ShifterError):
    """The mini-cluster could not be brought up, used or taken down."""


@dataclass(frozen=True)
class Layout:
    """Where the cluster keeps its state, all under <repo>/.cluster."""

    root: Path

    etc = property(lambda self: self.root / "etc")
    log = property(lambda self: self.root / "log")
    spool = property(lambda self: self.root / "spool")
    state = property(lambda self: self.root / "state")
    run = property(lambda self: self.root / "run")
    images = property(lambda self: self.root / "images")
    gateway = property(lambda self: self.root / "gateway")
    registry = property(lambda self: self.root / "registry")
    slurm_conf = property(lambda self: self.etc / "slurm.conf")
    gateway_conf = property(lambda self: self.etc / "imagemanager.json")
    plugstack_conf = property(lambda self: self.etc / "plugstack.conf")
    udiroot_conf = property(lambda self: self.etc / "udiRoot.conf")
    container_etc = property(lambda self: self.etc / "container-etc")
    slurm_client = property(lambda self: self.root / "slurm-client")
    udi_image = property(lambda self: self.root / "udiImage")
    node_hosts = property(lambda self: self.etc / "hosts")
    site_software = property(lambda self: self.root / "site")
    node_cache = property(lambda self: self.root / "cache")
    job_submit_lua = property(lambda self: self.etc / "job_submit.lua")
    provenance = property(lambda self: self.log / "provenance")
    record_file = property(lambda self: self.run / "harness.json")
    shape_file = property(lambda self: self.run / "harness-shape.json")

    def pidfile(self, daemon: str) -> Path:
        return self.run / f"{daemon}.pid"


@dataclass(frozen=True)
class Daemon:
    """A process `up` started, named by pid and kernel start time (pids get reused)."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> "Daemon":
        start = _start_time(pid)
        if start is None:
            raise ClusterError(f"process {pid} exited right after it started")
        return cls(pid, start)

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; a zombie counts as gone (PID 1 does not reap)."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if not self.alive():
                return
            os.kill(self.pid, sig)
            if _wait_until(lambda: not self.alive(), wait):
                return
        raise ClusterError(f"process {self.pid} survived SIGKILL")


@dataclass
class Record:
    """What `up` started and chose, so that `env`, `status` and `down` (other processes) know."""

    started_by: str = BY_HAND
    daemons: dict[str, Daemon] = field(default_factory=dict)
    namespaces: list[int] = field(default_factory=list)
    slurmctld_port: int = 0
    plugin: str | None = None
    registry: str | None = None
    gateway_url: str | None = None
    nodes: tuple[str, ...] = NODES
    gateway_metrics: bool = False       # the gateway records every lookup (GET /api/metrics)

    # Kept apart from harness.json: other checkouts (worktrees on older branches) read
    # harness.json to know whether this cluster is up, and their Record refuses unknown keys.
    _SHAPE = ("nodes", "gateway_metrics")

    def save(self, layout: Layout) -> None:
        layout.run.mkdir(parents=True, exist_ok=True)
        raw = dataclasses.asdict(self)
        shape = {key: raw.pop(key) for key in self._SHAPE}
        for path, content in ((layout.shape_file, shape), (layout.record_file, raw)):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(content, indent=1), encoding="utf-8")
            tmp.replace(path)

    @classmethod
    def load(cls, layout: Layout) -> "Record | None":
        try:
            raw = json.loads(layout.record_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        try:
            raw.update(json.loads(layout.shape_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            pass
        raw["daemons"] = {name: Daemon(**d) for name, d in raw["daemons"].items()}
        raw["nodes"] = tuple(raw.get("nodes", NODES))
        return cls(**raw)


# -- small helpers -----------------------------------------------------------

def _start_time(pid: int) -> int | None:
    """Kernel start time of a live process; None when gone or a zombie."""
    return procfs.start_time(pid) if procfs.running(pid) else None


def _wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def _run(argv: list[str], *, check: bool = True, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a tool with a clean environment; a failure becomes a ClusterError with its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            env=env or {"PATH": DAEMON_PATH}, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise ClusterError(f"{shlex.join(argv)} failed (exit {result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()}")
    return result


def _free_port(address: str = "0.0.0.0") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _read_pidfile(path: Path, timeout: float = 10) -> int:
    if not _wait_until(lambda: path.exists() and path.read_text().strip().isdigit(), timeout):
        raise ClusterError(f"{path} did not appear")
    return int(path.read_text())


# the bridge address is ours: never send it to a proxy named in the caller's environment
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _read_claim() -> tuple[str | None, Daemon | None]:
    """The checkout that claims the machine, and the process that claimed it (if it said)."""
    try:
        owner = MACHINE_CLAIM.read_text().strip() or None
    except FileNotFoundError:
        return None, None
    try:
        pid, _, start = MACHINE_CLAIMER.read_text().strip().partition(" ")
    except FileNotFoundError:
        pid = start = ""
    return owner, Daemon(int(pid), int(start)) if pid.isdigit() and start.isdigit() else None


def _slurm_daemon_of_another_checkout(ours: str) -> str | None:
    """The configuration of a slurmctld or slurmd of another checkout's cluster, if one runs
    (whatever its harness wrote in the claim, or did not)."""
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and os.path.basename(argv[0]) in (b"slurmctld", b"slurmd") and argv[1] == b"-f":
            conf = os.fsdecode(argv[2])
            if conf.endswith("/.cluster/etc/slurm.conf") and not conf.startswith(ours + "/"):
                return conf
    return None


def _cluster_running_at(root: Path) -> bool:
    """Does any daemon of the cluster kept under `root` (another checkout's) still run?"""
    try:
        record = Record.load(Layout(root))
    except (OSError, ValueError, TypeError):
        return False
    return record is not None and any(d.alive() for name, d in record.daemons.items() if name != "munged")


# -- the cluster -------------------------------------------------------------

class Cluster:
    def __init__(self, layout: Layout):
        self.layout = layout

    # environment for Slurm clients -------------------------------------
    def client_env(self, record: Record, base: dict[str, str] | None = None) -> dict[str, str]:
        """Variables a shell or a test needs so plain sbatch/srun/shifterimg use this cluster."""
        env = dict(base if base is not None else os.environ)
        env["SLURM_CONF"] = str(self.layout.slurm_conf)
        env["SHIFTER_UDIROOT_CONF"] = str(self.layout.udiroot_conf)
        env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', DAEMON_PATH)}"
        if record.registry:
            env["SHIFTER_TEST_REGISTRY"] = record.registry
        return env

    def _slurm(self, record: Record, *argv: str, check: bool = True, timeout: float = 30):
        env = self.client_env(record, {"PATH": DAEMON_PATH})
        return _run(list(argv), env=env, check=check, timeout=timeout)

    # up ----------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self):
        """One up or down at a time: sessions sharing the tree share one .cluster."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with open(self.layout.root / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def up(self, with_plugin: bool | str = True, started_by: str = BY_HAND, *,
           nodes: tuple[str, ...] = NODES, gateway_metrics: bool = False) -> Record:
        """Start the cluster, or return the running one; `started_by` is kept in the record.

        `nodes` and `gateway_metrics` apply to a cluster this call starts
        (benchmarks take the cluster alone first, see `alone`)."""
        if os.geteuid() != 0:
            raise ClusterError("ci/cluster up needs root (daemons, namespaces, mounts)")
        with self._exclusive():
            record = Record.load(self.layout)
            if record is not None and self.is_running(record):
                _say("cluster is already up")
                return record
            self._claim_machine()
            if record is not None:
                _say("cleaning up what a previous, incomplete cluster left")
                self._down(record)
                self._claim_machine()
            record = Record(started_by=started_by, nodes=tuple(nodes), gateway_metrics=gateway_metrics)
            try:
                self._start(record, with_plugin)
            except BaseException:
                record.save(self.layout)
                _say("up failed; taking down what it started")
                self._down(record)
                raise
            return record

    def _claim_machine(self) -> None:
        """Wait while another checkout's cluster is up (worktrees take turns), then claim the machine.

        The claim names the checkout and the process claiming it: it holds while
        that process lives (a cluster coming up has no daemons yet) or while any
        daemon of that checkout's cluster runs.
        """
        ours, deadline, told = str(self.layout.root), time.monotonic() + CLAIM_WAIT, False
        while True:
            with open(f"{MACHINE_CLAIM}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                owner, claimer = _read_claim()
                if owner in (None, ours) or not (claimer and claimer.alive() or _cluster_running_at(Path(owner))):
                    owner = _slurm_daemon_of_another_checkout(ours)
                    if owner is None:
                        MACHINE_CLAIMER.write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
                        MACHINE_CLAIM.write_text(f"{ours}\n")
                        return
            if not told:
                _say(f"waiting for the mini-cluster of {owner} to go down (at most {CLAIM_WAIT:.0f} s)")
                told = True
            if time.monotonic() > deadline:
                raise ClusterError(f"the mini-cluster of {owner} is still up; take it down first")
            time.sleep(2)

    def _owns_machine(self) -> bool:
        """Are the bridge and the node namespaces this checkout's to remove?"""
        owner, _ = _read_claim()
        if owner is not None:
            return owner == str(self.layout.root)
        return _slurm_daemon_of_another_checkout(str(self.layout.root)) is None

    def _release_machine(self) -> None:
        with open(f"{MACHINE_CLAIM}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _read_claim()[0] == str(self.layout.root):
                MACHINE_CLAIM.unlink()
                MACHINE_CLAIMER.unlink(missing_ok=True)

    def _start(self, record: Record, with_plugin: bool | str) -> None:
        check_test_user_can_reach_the_repository()
        # a path: that build of the plugin (bench/srun_overhead.py compares builds)
        record.plugin = with_plugin if isinstance(with_plugin, str) else find_plugin() if with_plugin else None
        self._prepare_directories(record.nodes)
        ensure_test_user()
        munged = start_munged_if_needed()
        if munged is not None:
            record.daemons["munged"] = munged
        record.save(self.layout)
        self._stop_network(record.nodes)  # what a crashed run may have left under our names
        self._start_network(record)
        self._start_registry(record)
        record.slurmctld_port = _free_port()
        record.gateway_url = f"http://{HOST_ADDRESS}:{_free_port(HOST_ADDRESS)}"
        self._write_configs(record)
        record.save(self.layout)
        self._start_gateway(record)
        self._start_slurmctld(record)
        self._start_releaser(record)
        for node in record.nodes:
            self._start_slurmd(record, node)
        self._wait_for_idle_nodes(record)

    def is_running(self, record: Record) -> bool:
        wanted = {"slurmctld", "registry", "gateway", *(f"slurmd-{n}" for n in record.nodes)}
        return wanted <= record.daemons.keys() and all(d.alive() for d in record.daemons.values())

    def _prepare_directories(self, nodes: tuple[str, ...]) -> None:
        layout = self.layout
        # a fresh controller state, spool and log per `up`: no jobs or node states from before
        for stale in (layout.state, layout.spool, layout.log, layout.run, layout.gateway, layout.images):
            shutil.rmtree(stale, ignore_errors=True)
        for directory in (layout.etc, layout.log, layout.state, layout.run, layout.images,
                          *(layout.spool / n for n in nodes)):
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (layout.root, layout.etc, layout.images):
            directory.chmod(0o755)
        shutil.rmtree(NODE_TMP, ignore_errors=True)
        for node in nodes:
            (NODE_TMP / node).mkdir(parents=True)
            (NODE_TMP / node).chmod(0o1777)

    def _start_network(self, record: Record) -> None:
        """A bridge on the host and one veth into each node's netns; no route out, no forwarding."""
        _run([IP, "link", "add", BRIDGE, "type", "bridge"])
        _run([IP, "addr", "add", f"{HOST_ADDRESS}/{PREFIX_LENGTH}", "dev", BRIDGE])
        _run([IP, "link", "set", BRIDGE, "up"])
        addresses = node_addresses(record.nodes)
        for node in record.nodes:
            host_end = f"{BRIDGE[:-2]}{node}"  # shifter-n1: 15 characters at most
            _run([IP, "netns", "add", node])
            _run([IP, "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", node])
            _run([IP, "link", "set", host_end, "master", BRIDGE, "up"])
            _run([IP, "-n", node, "addr", "add", f"{addresses[node]}/{PREFIX_LENGTH}", "dev", "eth0"])
            _run([IP, "-n", node, "link", "set", "eth0", "up"])
            _run([IP, "-n", node, "link", "set", "lo", "up"])
            record.namespaces.append(os.stat(f"/run/netns/{node}").st_ino)

    def _write_configs(self, record: Record) -> None:
        layout = self.layout
        cluster_conf = slurm_conf(layout, record)
        _write(layout.slurm_conf, cluster_conf)
        plugstack = (f"required {record.plugin} venv={REPO / '.venv'} config={layout.udiroot_conf}\n"
                     if record.plugin else "")
        _write(layout.plugstack_conf, "# Written by ci/harness/cluster.py; see slurm.conf.d/.\n" + plugstack)
        if not slurmclient.up_to_date(layout.slurm_client, cluster_conf):
            slurmclient.build(layout.slurm_client, cluster_conf)
        if not udiimage.up_to_date(layout.udi_image):
            udiimage.build(layout.udi_image)
        _write(layout.node_hosts, node_hosts(record.nodes))
        _write(layout.udiroot_conf, udiroot_conf(layout, record))
        _write(layout.job_submit_lua, (REPO / "slurm.conf.d" / "job_submit.lua").read_text(encoding="utf-8"))
        _write(layout.gateway_conf, json.dumps(gateway_conf(layout, record), indent=1) + "\n")
        populate_container_etc(layout)
        sitemodules.populate(layout.site_software)
        config.load(str(layout.udiroot_conf))  # the runtime must accept what we wrote

    def _start_registry(self, record: Record) -> None:
        """docker-registry on 127.0.0.1 (storage kept across runs), seeded with TEST_IMAGES."""
        registry = Registry(str(self.layout.registry))
        registry.start()
        record.daemons["registry"] = Daemon.of(registry.pids["registry"])
        record.registry = registry.host
        record.save(self.layout)
        with tempfile.TemporaryDirectory(prefix="shifter-images-") as tmp:
            layout = oci.Layout(tmp)
            oci.busybox_image(layout, "build")
            for name in TEST_IMAGES:
                layout.push("build", f"{registry.host}/{name}")

    def _start_gateway(self, record: Record) -> None:
        """shifter-gateway on its embedded SQLite database, serving system `ci` on the bridge."""
        self.layout.gateway.mkdir(parents=True, exist_ok=True)
        with open(self.layout.log / "gateway.log", "ab") as log:
            process = subprocess.Popen(
                [str(REPO / ".venv" / "bin" / "shifter-gateway"), "--config", str(self.layout.gateway_conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.layout.gateway,
                start_new_session=True, env={"PATH": DAEMON_PATH, "LANG": "C.UTF-8"})
        record.daemons["gateway"] = Daemon.of(process.pid)
        record.save(self.layout)

        def answers() -> bool:
            if process.poll() is not None:
                raise ClusterError(f"shifter-gateway exited ({process.returncode}); "
                                   f"see {self.layout.log / 'gateway.log'}")
            try:
                with _direct.open(record.gateway_url + "/", timeout=2):
                    return True
            except OSError:
                return False
        if not _wait_until(answers, 30, 0.2):
            raise ClusterError(f"the gateway does not answer at {record.gateway_url}; "
                               f"see {self.layout.log / 'gateway.log'}")

    def _start_slurmctld(self, record: Record) -> None:
        _run(["/usr/sbin/slurmctld", "-f", str(self.layout.slurm_conf)])
        record.daemons["slurmctld"] = Daemon.of(_read_pidfile(self.layout.pidfile("slurmctld")))
        record.save(self.layout)
        if not _wait_until(lambda: "is UP" in self._slurm(record, "scontrol", "ping", check=False).stdout, 20):
            raise ClusterError(f"slurmctld does not answer; see {self.layout.log / 'slurmctld.log'}")

    def _start_releaser(self, record: Record) -> None:
        """shifter-admin release-held-jobs: starts the jobs held until their image is pulled."""
        with open(self.layout.log / "releaser.log", "ab") as log:
            process = subprocess.Popen(
                [str(REPO / ".venv" / "bin" / "shifter-admin"), "release-held-jobs",
                 "--config", str(self.layout.udiroot_conf), "--interval", "1"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={"PATH": DAEMON_PATH, "LANG": "C.UTF-8", "SLURM_CONF": str(self.layout.slurm_conf)})
        record.daemons["releaser"] = Daemon.of(process.pid)
        record.save(self.layout)

    def _start_slurmd(self, record: Record, node: str) -> None:
        """slurmd in the node's netns plus a new UTS, IPC and private mount namespace,
        where node_hosts() is /etc/hosts (as a cluster's DNS would name the nodes)
        and /dev/shm a tmpfs of its own: as on real nodes, shared memory and SysV
        IPC do not reach another node, so MPI between nodes takes the network.

        nsenter --net, not `ip netns exec`: the latter remounts /sys and hides
        /sys/fs/cgroup, without which slurmd 22.05 dies.
        """
        inner = (f"hostname {node} && /usr/bin/mount --bind {shlex.quote(str(self.layout.node_hosts))} /etc/hosts"
                 " && /usr/bin/mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm"
                 f" && exec /usr/sbin/slurmd -f {shlex.quote(str(self.layout.slurm_conf))} -N {node}")
        _run(["/usr/bin/nsenter", f"--net=/run/netns/{node}", "/usr/bin/unshare", "--uts", "--ipc", "--mount",
              "--propagation", "private", "/bin/sh", "-c", inner])
        daemon = Daemon.of(_read_pidfile(self.layout.pidfile(f"slurmd-{node}")))
        record.daemons[f"slurmd-{node}"] = daemon
        for kind in ("mnt", "uts", "ipc"):
            record.namespaces.append(os.stat(f"/proc/{daemon.pid}/ns/{kind}").st_ino)
        record.save(self.layout)

    def node_states(self, record: Record) -> dict[str, str]:
        out = self._slurm(record, "sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %T", check=False).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def _wait_for_idle_nodes(self, record: Record, timeout: float = 60) -> None:
        if not _wait_until(lambda: set(self.node_states(record).values()) == {"idle"}
                           and len(self.node_states(record)) == len(record.nodes), timeout, 0.3):
            raise ClusterError(f"nodes are not idle after {timeout:.0f} s: {self.node_states(record)}; "
                               f"see {self.layout.log}/slurmd-*.log")

    # down --------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop everything `up` started; return what of the cluster still remains (empty: clean)."""
        with self._exclusive():
            return self._down(Record.load(self.layout) or Record())

    @contextlib.contextmanager
    def session(self, name: str):
        """Use the cluster from a program (a test run, a benchmark); yields the running Record.

            with Cluster(Layout(REPO / ".cluster")).session("bench") as record:
                ...  # srun with SLURM_CONF from cluster.client_env(record)

        Brings the cluster up if needed.  Every session holds a shared lock on
        .cluster/users.lock while it runs, so `ci/cluster down` and other sessions
        know it is in use; the last one out takes down a cluster that a session
        started, never one started by hand with `ci/cluster up`.  Raises
        ClusterError listing what that `down` left behind.
        """
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with open(self.layout.root / "users.lock", "a") as users:
            fcntl.flock(users, fcntl.LOCK_SH)
            yield self.up(started_by=name)
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another session still uses it and will take it down
            record = Record.load(self.layout)
            if record is not None and record.started_by != BY_HAND:
                remains = self.down()
                if remains:
                    raise ClusterError("ci/cluster down left behind: " + "; ".join(remains))

    @contextlib.contextmanager
    def alone(self):
        """The cluster to this program only (a benchmark that restarts or changes it).

            with cl.alone():
                record = cl.up(started_by="bench/x", nodes=harness.node_names(8))

        Waits until no session uses it, keeps new sessions out, takes down
        whatever runs (also a cluster started by hand) before and after.
        """
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with open(self.layout.root / "users.lock", "a") as users:
            fcntl.flock(users, fcntl.LOCK_EX)
            self.down()
            try:
                yield
            finally:
                remains = self.down()
            if remains:
                raise ClusterError("ci/cluster down left behind: " + "; ".join(remains))

    def sessions_using_it(self) -> bool:
        """True while a session (see `session`, e.g. the pytest fixture) holds its shared lock."""
        try:
            users = open(self.layout.root / "users.lock", "r")
        except FileNotFoundError:
            return False
        with users:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    def _down(self, record: Record) -> list[str]:
        controller = record.daemons.get("slurmctld")
        if controller is not None and controller.alive():
            self._cancel_jobs(record)
        order = [*(f"slurmd-{n}" for n in record.nodes), "releaser", "slurmctld", "gateway", "registry", "munged"]
        for name in order:
            daemon = record.daemons.get(name)
            if daemon is not None:
                daemon.stop()
        machine = self._owns_machine()
        if machine:                 # the bridge and the nodes are another checkout's otherwise
            self._stop_network(record.nodes)
            shutil.rmtree(NODE_TMP, ignore_errors=True)
        # processes an epilog just signalled may need a moment to exit
        scope = self.scope(record, machine=machine)
        _wait_until(lambda: not scope.remains(), 5, 0.2)
        remains = scope.remains()
        self.layout.record_file.unlink(missing_ok=True)
        self.layout.shape_file.unlink(missing_ok=True)
        self._release_machine()
        return remains

    def _cancel_jobs(self, record: Record, timeout: float = 90) -> None:
        """Cancel every job and wait until their epilogs ran (no job left, no node completing)."""
        queue = self._slurm(record, "squeue", "-h", "-o", "%A", check=False)
        if queue.returncode != 0:
            _say(f"slurmctld does not answer ({queue.stderr.strip()}); not waiting for jobs")
            return
        if queue.stdout.split():
            self._slurm(record, "scancel", *queue.stdout.split(), check=False)

        def settled() -> bool:
            queue = self._slurm(record, "squeue", "-h", "-o", "%A", check=False)
            states = self.node_states(record).values()
            return queue.returncode != 0 or not queue.stdout.strip() and \
                not any("comp" in state for state in states)
        if not _wait_until(settled, timeout, 0.5):
            _say(f"jobs or epilogs still running after {timeout:.0f} s; stopping the daemons anyway")

    def _stop_network(self, nodes: tuple[str, ...]) -> None:
        present = leaks.Snapshot.take()
        nodes = sorted(set(nodes) | set(NODES))
        for node in nodes:
            if node in present.netns:
                _run([IP, "netns", "delete", node])
        for link in (*(f"{BRIDGE[:-2]}{n}" for n in nodes), BRIDGE):
            if link in present.links:
                _run([IP, "link", "delete", link], check=False)

    def scope(self, record: Record, *, machine: bool = True) -> leaks.Scope:
        """Everything that belongs to the cluster, for the leak check.  Without `machine`
        (another checkout has it), the bridge, the node namespaces and the test user's
        processes are that checkout's."""
        try:
            test_uid = frozenset({pwd.getpwnam(TEST_USER).pw_uid}) if machine else frozenset()
        except KeyError:
            test_uid = frozenset()
        return leaks.Scope(
            paths=(str(self.layout.root),),
            namespaces=frozenset(record.namespaces),
            uids=test_uid,
            pids=frozenset(d.pid for d in record.daemons.values()),
            netns=frozenset(record.nodes) if machine else frozenset(),
            links=frozenset({BRIDGE, *(f"{BRIDGE[:-2]}{n}" for n in record.nodes)}) if machine else frozenset(),
        )

    # env / status ------------------------------------------------------
    def env_script(self) -> str:
        record = self._running_record()
        env = self.client_env(record, {"PATH": "$PATH"})
        lines = []
        for name in ("SLURM_CONF", "SHIFTER_UDIROOT_CONF", "SHIFTER_TEST_REGISTRY"):
            if name in env:
                lines.append(f"export {name}={shlex.quote(env[name])}")
        lines.append(f'export PATH={shlex.quote(str(REPO / ".venv" / "bin"))}:"$PATH"')
        return "\n".join(lines) + "\n"

    def _running_record(self) -> Record:
        record = Record.load(self.layout)
        if record is None or not self.is_running(record):
            raise ClusterError("the cluster is not up: run ci/cluster up")
        return record

    def summary(self, record: Record) -> str:
        states = self.node_states(record)
        lines = [
            f"cluster {CLUSTER_NAME}: slurmctld on {HOST_ADDRESS}:{record.slurmctld_port}, "
            f"nodes {', '.join(f'{n}={s}' for n, s in sorted(states.items()))}",
            f"plugin: {record.plugin or 'absent (--without-plugin)'}",
            f"registry: {record.registry} (holds {', '.join(TEST_IMAGES)}); gateway: {record.gateway_url}",
            f"test user: {TEST_USER}; state in {self.layout.root}",
            'use it with: eval "$(ci/cluster env)"',
        ]
        return "\n".join(lines)

    def status(self) -> str:
        record = Record.load(self.layout)
        if record is None:
            return "the cluster is down"
        lines = [f"{name}: pid {d.pid} {'running' if d.alive() else 'GONE'}"
                 for name, d in sorted(record.daemons.items())]
        if record.daemons.get("slurmctld") and record.daemons["slurmctld"].alive():
            lines.append(self.summary(record))
        return "\n".join(lines)


# -- configuration files -----------------------------------------------------

def slurm_conf(layout: Layout, record: Record) -> str:
    """slurm.conf of the cluster (ci/harness/slurmclient.py derives the one inside images)."""
    host = socket.gethostname().split(".")[0]
    lines = [
        "# Written by ci/harness/cluster.py for the shifter-py mini-cluster.",
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={host}({HOST_ADDRESS})",
        f"SlurmctldPort={record.slurmctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"StateSaveLocation={layout.state}",
        f"SlurmdSpoolDir={layout.spool}/%n",
        f"TmpFS={NODE_TMP}/%n",
        f"SlurmctldPidFile={layout.pidfile('slurmctld')}",
        f"SlurmdPidFile={layout.run}/slurmd-%n.pid",
        f"SlurmctldLogFile={layout.log}/slurmctld.log",
        f"SlurmdLogFile={layout.log}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        "MailProg=/bin/true",
        "KillWait=5",
        f"PlugStackConfig={layout.plugstack_conf}",
    ]
    lines += site_settings()
    lines += [f"NodeName={node} NodeAddr={address} CPUs=2 RealMemory=2000 State=UNKNOWN"
              for node, address in node_addresses(record.nodes).items()]
    lines += [
        f"PartitionName={PARTITION} Nodes={','.join(record.nodes)} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def site_settings() -> list[str]:
    """The settings slurm.conf.d/ tells a site to add, so the harness tests what we document."""
    text = (REPO / "slurm.conf.d" / "slurm.conf").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def udiroot_conf(layout: Layout, record: Record) -> str:
    """udiRoot.conf of the cluster: every runtime path under .cluster, so the leak check sees them.

    Module `slurm` (on by default) puts the Slurm client bundle at /opt/slurm with
    munge's socket, so `srun` works in a batch script that runs inside an image.
    The other modules bind fake MPI and GPU software (ci/harness/sitemodules.py);
    perNodeCache volumes (xfs or ext4) of up to 2G live in .cluster/cache.
    siteEnvUnset drops the exported bash functions of Lmod, as Shifter's example
    does; siteEnvAppend adds to MANPATH (the four environment operations all reach
    the tasks of steps, which the plugin's C sets up).  optUdiImage is the host's OpenSSH
    (shifter_core/udiimage.py), for --ccm.  Users may bind /dev/full with --volume (a device
    whose writes fail visibly).
    """
    home = pwd.getpwnam(TEST_USER).pw_dir
    prefix = slurmclient.PREFIX
    return "\n".join([
        "# Written by ci/harness/cluster.py for the shifter-py mini-cluster.",
        f"system={SYSTEM}",
        f"imageGateway={record.gateway_url}",
        f"imagePath={layout.images}",
        f"udiMount={layout.run}/udiMount",
        f"loopMount={layout.run}/udiLoopMount",
        f"runDir={layout.run}/shifter",
        f"etcPath={layout.container_etc}",
        f"optUdiImage={layout.udi_image}",
        "rootfsType=tmpfs",
        "defaultImageType=docker",
        f"siteFs={home}",
        f"module_slurm_siteFs={layout.slurm_client}:{prefix}:ro;{MUNGE_SOCKET_DIR}:{MUNGE_SOCKET_DIR}",
        f"module_slurm_siteEnvPrepend=PATH={prefix}/bin",
        f"module_slurm_siteEnv=SLURM_CONF={prefix}/etc/slurm.conf",
        "defaultModules=slurm",
        "holdJobsForPull=1",
        "allowLocalChroot=1",
        f"provenanceDir={layout.provenance}",
        *sitemodules.config_lines(layout.site_software),
        f"perNodeCachePath={layout.node_cache}",
        f"mkfsXfsPath={shutil.which('mkfs.xfs', path=DAEMON_PATH)}",
        f"mkfsExt4Path={shutil.which('mkfs.ext4', path=DAEMON_PATH)}",
        "perNodeCacheAllowedFsType=xfs ext4",
        "perNodeCacheSizeLimit=2G",
        "siteEnvUnset=BASH_FUNC_module() BASH_FUNC_ml%%",
        "siteEnvAppend=MANPATH=/opt/site/man",
        "userVolumeDevices=/dev/full",
    ]) + "\n"


def gateway_conf(layout: Layout, record: Record) -> dict:
    """imagemanager.json: the local registry as default location, system `ci` on .cluster/images."""
    return {
        "StateDirectory": str(layout.gateway),
        "Listen": record.gateway_url.removeprefix("http://"),
        "LogLevel": "info",
        "WorkerThreads": 1,
        "Metrics": record.gateway_metrics,
        "PullUpdateTimeout": 10,          # tests move tags and pull them again (tests/integration/test_pinning.py)
        "DefaultImageLocation": record.registry,
        "Locations": {record.registry: {"url": f"http://{record.registry}", "insecure": True}},
        "Platforms": {SYSTEM: {
            "accesstype": "local",
            "admins": ["root"],
            "mungeSocketPath": str(MUNGE_SOCKET_DIR / "munge.socket.2"),
            "local": {"imageDir": str(layout.images)},
        }},
    }


def node_hosts(nodes: tuple[str, ...] = NODES) -> str:
    """/etc/hosts on the nodes: the host's, plus the nodes' names (ssh n2 under --ccm)."""
    own = Path("/etc/hosts").read_text(encoding="utf-8")
    return own.rstrip("\n") + "\n" + "".join(f"{address} {node}\n"
                                              for node, address in node_addresses(nodes).items())


def populate_container_etc(layout: Layout) -> None:
    """etcPath: the passwd, group and nsswitch.conf a container gets (the host's, test user included)."""
    for name in ("passwd", "group", "nsswitch.conf"):
        _write(layout.container_etc / name, Path("/etc", name).read_text(encoding="utf-8"))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Root-owned, not writable by others: what the plugin requires of its config files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)


# -- host pieces: plugin, user, munge ----------------------------------------

def find_plugin() -> str:
    """Path of the built SPANK plugin (shifter_core/shifter_spank.so)."""
    from shifter_core.cli.admin import plugin_path

    path = plugin_path()
    if not os.path.exists(path):
        raise ClusterError(f"the SPANK plugin {path} is not built: run ci/setup "
                           "(pip install -e .), or ci/cluster up --without-plugin")
    # The plugin runs Python from the venv as root and refuses one that anyone but
    # root could change; say so now rather than through failing jobs.
    from shifter_core import trust
    from shifter_core.errors import ConfigError

    try:
        trust.require_root_owned(str(REPO / ".venv"), "the plugin's venv")
    except ConfigError as error:
        raise ClusterError(f"{error}; the plugin runs Python from it as root: fix that or clone the "
                           "repository under such a directory") from None
    return path


def check_test_user_can_reach_the_repository() -> None:
    """The test user's srun reads .cluster/etc and loads the plugin and the venv from the repository."""
    for directory in (REPO, *REPO.parents):
        if not directory.stat().st_mode & 0o001:
            raise ClusterError(f"{TEST_USER} cannot enter {directory} (no x for others), so its jobs "
                               "cannot read the cluster's configuration; chmod o+x it or clone the "
                               "repository elsewhere")


def ensure_test_user() -> pwd.struct_passwd:
    """The non-root user jobs run as; kept across `down` so its uid stays stable."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        _run(["/usr/sbin/useradd", "--create-home", "--user-group", "--shell", "/bin/bash", TEST_USER])
        return pwd.getpwnam(TEST_USER)


def munge_answers() -> bool:
    """True when a munged answers on the default socket (munge -n | unmunge)."""
    try:
        credential = _run(["/usr/bin/munge", "-n"], check=False, timeout=10)
        if credential.returncode != 0:
            return False
        decoded = subprocess.run(["/usr/bin/unmunge"], input=credential.stdout, capture_output=True,
                                 text=True, timeout=10, env={"PATH": DAEMON_PATH})
        return decoded.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_munged_if_needed() -> Daemon | None:
    """Reuse a munged that answers on the default socket; otherwise start one and return it."""
    if munge_answers():
        return None
    _run(["/usr/bin/install", "-d", "-o", "munge", "-g", "munge", "-m", "755", str(MUNGE_SOCKET_DIR)])
    (MUNGE_SOCKET_DIR / "munged.pid").unlink(missing_ok=True)  # stale: no munged answers
    _run(["/usr/sbin/runuser", "-u", "munge", "--", "/usr/sbin/munged"])
    daemon = Daemon.of(_read_pidfile(MUNGE_SOCKET_DIR / "munged.pid"))
    if not _wait_until(munge_answers, 10):
        raise ClusterError("munged started but does not answer on its socket; see /var/log/munge/munged.log")
    return daemon


# -- command line ------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start the cluster (idempotent)")
    up_parser.add_argument("--without-plugin", action="store_true",
                           help="leave plugstack.conf empty (to compare against the plugin absent)")
    sub.add_parser("env", help="print shell exports for the cluster")
    sub.add_parser("status", help="show what runs; exit 0 when up, 3 when not")
    down_parser = sub.add_parser("down", help="stop everything and check for leftovers")
    down_parser.add_argument("--force", action="store_true", help="even while pytest sessions use it")
    args = parser.parse_args(argv)
    cluster = Cluster(Layout(REPO / ".cluster"))
    try:
        if args.command == "up":
            record = cluster.up(with_plugin=not args.without_plugin)
            print(cluster.summary(record))
        elif args.command == "env":
            sys.stdout.write(cluster.env_script())
        elif args.command == "status":
            print(cluster.status())
            record = Record.load(cluster.layout)
            return 0 if record is not None and cluster.is_running(record) else 3
        elif args.command == "down":
            if not args.force and cluster.sessions_using_it():
                raise ClusterError("sessions (pytest runs, benchmarks) are using the cluster (.cluster/users.lock); "
                                   "the last one takes it down, or use down --force")
            remains = cluster.down()
            if remains:
                for line in remains:
                    print(f"left behind: {line}", file=sys.stderr)
                return 1
            print("cluster is down; nothing of it remains")
    except ShifterError as error:
        print(f"ci/cluster {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
