"""Fixtures shared by the whole suite.

`cluster` (session scope) is the ci/cluster mini-cluster: three Slurm nodes
n1..n3 with the shifter plugin, munge, the local registry and the gateway.  It
is brought up if it is not up already; the last session using it takes it
down if a session started it (then the leak check of `ci/cluster down` must
pass), while one started by hand with `ci/cluster up` stays up.
Tests that ask for it are skipped unless run as root.  It is a ShifterCluster:

    def test_three_nodes(cluster):
        job = cluster.sbatch("#!/bin/sh\\nsrun -N3 hostname\\n", "-N3")
        assert cluster.wait(job) == "COMPLETED"
        assert sorted(cluster.output(job).split()) == ["n1", "n2", "n3"]

Everything runs as the non-root test user, in its home directory (which every
node and container sees), with the cluster's client environment.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

from ci.harness import cluster as harness

# Property tests check answers, never speed: a machine busy with the mini-cluster
# must not fail one for being slow (hypothesis's default deadline is 200 ms).
settings.register_profile("shifter", deadline=None)
settings.load_profile("shifter")

FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


class ShifterCluster:
    """The running mini-cluster, seen from a test: submit, wait, read output, check nodes."""

    def __init__(self, cluster: harness.Cluster, record: harness.Record):
        self._cluster = cluster
        self._record = record
        account = pwd.getpwnam(harness.TEST_USER)
        self.user: str = account.pw_name
        self.uid: int = account.pw_uid
        self.home = Path(account.pw_dir)
        self.nodes: tuple[str, ...] = harness.NODES
        self.layout: harness.Layout = cluster.layout
        self.registry: str | None = record.registry          # host:port of the local registry
        self.gateway_url: str | None = record.gateway_url
        self.env: dict[str, str] = cluster.client_env(record, {
            "PATH": harness.DAEMON_PATH, "HOME": str(self.home), "USER": self.user,
            "LOGNAME": self.user, "LANG": "C.UTF-8"})

    def run(self, argv: list[str], *, as_user: bool = True, check: bool = True, timeout: float = 120,
            input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command with the cluster's environment (plus `env`), as the test user by default."""
        prefix = ["/usr/sbin/runuser", "-u", self.user, "--"] if as_user else []
        result = subprocess.run(prefix + list(argv), capture_output=True, text=True, timeout=timeout,
                                input=input, cwd=self.home, env={**self.env, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def srun(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(["srun", *args], **kwargs)

    def sbatch(self, script: str, *args: str, env: dict[str, str] | None = None) -> int:
        """Submit `script` (its text) as the test user; output goes to ~/slurm-<jobid>.out."""
        path = self.home / f"job-{uuid.uuid4().hex[:12]}.sh"
        path.write_text(script, encoding="utf-8")
        os.chown(path, self.uid, -1)
        path.chmod(0o755)
        submitted = self.run(["sbatch", "--parsable", f"--output={self.home}/slurm-%j.out", *args, str(path)],
                             env=env)
        return int(submitted.stdout.strip().split(";")[0])

    def job_fields(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (values may hold spaces: AdminComment, Reason)."""
        shown = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False).stdout.strip()
        return {key: value.strip() for key, value in re.findall(r"(\w+(?::\w+)?)=(.*?)(?= \w+(?::\w+)?=|$)", shown)}

    def job_state(self, job_id: int) -> str:
        return self.job_fields(job_id).get("JobState", "UNKNOWN")

    def wait(self, job_id: int, timeout: float = 120) -> str:
        """Wait until the job ended and its epilogs ran on every node; return its final state."""
        deadline = time.monotonic() + timeout
        while (state := self.job_state(job_id)) not in FINISHED_STATES:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {state} after {timeout:.0f} s")
            time.sleep(0.3)
        self.wait_until_settled(max(deadline - time.monotonic(), 5))
        return state

    def output(self, job_id: int) -> str:
        return (self.home / f"slurm-{job_id}.out").read_text(encoding="utf-8", errors="replace")

    def node_states(self) -> dict[str, str]:
        return self._cluster.node_states(self._record)

    def wait_until_settled(self, timeout: float = 60) -> None:
        """Wait until no node is completing (epilogs done); nodes may still be allocated."""
        deadline = time.monotonic() + timeout
        while any("comp" in state for state in self.node_states().values()):
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes still completing after {timeout:.0f} s: {self.node_states()}")
            time.sleep(0.3)

    def assert_idle(self) -> None:
        """Every node idle: no job left behind, none drained by a failed prolog or epilog."""
        self.wait_until_settled()
        states = self.node_states()
        if not self.run(["squeue", "-h", "-o", "%i"], as_user=False).stdout.split():
            # the backfill scheduler leaves its "planned" mark on idle nodes until
            # its next pass (every 30 s), after the job it planned for is gone
            states = {node: "idle" if state == "planned" else state for node, state in states.items()}
        assert set(states.values()) == {"idle"}, f"nodes not idle: {states}"

    def resume_nodes(self) -> None:
        """Return drained nodes to service (a failing prolog drains its node by design)."""
        drained = [n for n, state in self.node_states().items() if "drain" in state or state == "down"]
        if drained:
            self.run(["scontrol", "update", f"nodename={','.join(drained)}", "state=resume"], as_user=False)

    def plugstack_line(self) -> str:
        """The cluster's plugstack.conf line for the plugin."""
        return (self.layout.etc / "plugstack.conf").read_text().strip().splitlines()[-1]

    def client_env_with_plugstack(self, directory: Path, line: str) -> dict[str, str]:
        """Environment for clients (srun, sbatch) that read a plugstack.conf holding
        `line` instead of the cluster's; `directory` must be readable by the test user."""
        plugstack = directory / "plugstack.conf"
        plugstack.write_text(line + "\n")
        conf = directory / "slurm.conf"
        conf.write_text(re.sub(r"(?m)^PlugStackConfig=.*$", f"PlugStackConfig={plugstack}",
                               (self.layout.etc / "slurm.conf").read_text()))
        for path in (plugstack, conf):
            path.chmod(0o644)
        return {"SLURM_CONF": str(conf)}

    def restart_slurmd(self, node: str) -> None:
        """Stop a node's slurmd and start a new one (running jobs and their steps survive)."""
        self._record.daemons.pop(f"slurmd-{node}").stop()
        self._cluster._start_slurmd(self._record, node)

    def log(self, name: str) -> str:
        """A daemon's log, e.g. log("slurmd-n1") or log("slurmctld")."""
        return (self.layout.log / f"{name}.log").read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="session")
def cluster():
    """The mini-cluster for this session (see the module docstring and Cluster.session)."""
    if os.geteuid() != 0:
        pytest.skip("the mini-cluster needs root")
    cluster = harness.Cluster(harness.Layout(harness.REPO / ".cluster"))
    with cluster.session("pytest") as record:
        yield ShifterCluster(cluster, record)


@pytest.fixture
def readable_tmp(cluster):
    """A root-owned scratch directory the test user can read (pytest's is 0700):
    for configuration files a test's own srun or sbatch must read."""
    path = Path(tempfile.mkdtemp(prefix="test-", dir=cluster.layout.root))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


BUSYBOX = "docker:busybox:latest"


@pytest.fixture(scope="session")
def image(cluster):
    """The cluster's busybox test image, pulled through the gateway as the test user."""
    cluster.run(["shifterimg", "pull", BUSYBOX], timeout=300)
    return BUSYBOX
