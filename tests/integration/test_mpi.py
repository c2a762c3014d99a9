"""MPI and distributed training on the mini-cluster: nodes that share no memory,
`srun --mpi=pmix` of a real Open MPI program inside an image, and the launcher
variables of PyTorch-style training (module launcherEnv) in every task.

The image is Debian's Open MPI (built on PMIx 4, like Slurm's mpi/pmix_v4 on
the nodes) with mpi4py, made by ci/harness/debian.py: about a minute once,
then taken from .cache/.  Every step has a time limit and every test ends
with no job left, so a PMIx hang cannot hold the nodes for the tests after.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from ci.harness import debian
from shifter_core import enter
from tests.integration.runtime_fixtures import Site

pytestmark = pytest.mark.root

STEP_LIMIT = "--time=3"          # minutes: Slurm ends a step that hangs

MPI_PROGRAM = """\
import os, socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
right, left = (rank + 1) % size, (rank - 1) % size
got = comm.sendrecv(f"{rank}@{socket.gethostname()}", dest=right, source=left)
total = comm.allreduce(rank)
print(f"rank {rank} of {size} on {socket.gethostname()} from {got} sum {total}"
      f" server_dir={os.environ.get('PMIX_SERVER_TMPDIR')}", flush=True)
"""

# A rendezvous as torch.distributed's env:// does it, over plain TCP: rank 0
# listens on MASTER_PORT, every other rank connects to MASTER_ADDR and says
# who it is, and all print the table rank 0 sends back.
RENDEZVOUS = """\
import os, socket, time
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
me = f"{rank}:{socket.gethostname()}:{os.environ['LOCAL_RANK']}"
if rank == 0:
    server = socket.create_server(("", port))
    server.settimeout(60)
    peers = []
    while len(peers) < world - 1:
        conn, _ = server.accept()
        peers.append((conn, conn.makefile().readline().strip()))
    table = " ".join(sorted([me] + [who for _, who in peers], key=lambda e: int(e.split(":")[0])))
    for conn, _ in peers:
        conn.sendall(table.encode() + b"\\n")
        conn.close()
else:
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    conn.sendall(me.encode() + b"\\n")
    table = conn.makefile().readline().strip()
print(f"rank {rank} of {world} master {addr}:{port} table {table}", flush=True)
"""


@pytest.fixture(scope="module")
def mpi_image(cluster):
    """The Open MPI image, pushed to the cluster's registry and pulled through the gateway."""
    image = debian.push_mpi_image(cluster.registry)
    cluster.run(["shifterimg", "pull", image], timeout=900)
    return image


@pytest.fixture
def no_job_left(cluster):
    """Whatever a test's steps did, cancel what is left of them and wait for the nodes."""
    yield
    cluster.run(["scancel", "-u", cluster.user], as_user=False, check=False)
    cluster.assert_idle()


def _program(cluster, name: str, text: str) -> Path:
    path = cluster.home / f"{name}-{os.getpid()}.py"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)
    return path


# --- nodes share no memory ------------------------------------------------------

@pytest.mark.cluster
def test_each_node_has_its_own_dev_shm_and_ipc_namespace(cluster, image, no_job_left):
    """A file in n1's /dev/shm is n1's alone, as its SysV IPC: the nodes and the
    host each have their own.  A container sees its node's /dev/shm."""
    probe = "echo $(hostname) $(readlink /proc/self/ns/ipc) $(stat -c %d /dev/shm)"
    seen = dict(line.split(" ", 1) for line in
                cluster.srun("-N3", "--ntasks-per-node=1", STEP_LIMIT, "sh", "-c", probe).stdout.splitlines())
    assert sorted(seen) == ["n1", "n2", "n3"]
    namespaces = {value.split()[0] for value in seen.values()} | {os.readlink("/proc/self/ns/ipc")}
    devices = {value.split()[1] for value in seen.values()} | {str(os.stat("/dev/shm").st_dev)}
    assert len(namespaces) == 4 and len(devices) == 4, seen

    name = f"shifter-test-{os.getpid()}"
    cluster.srun("-w", "n1", STEP_LIMIT, "touch", f"/dev/shm/{name}")
    listed = cluster.srun("-N3", "--ntasks-per-node=1", STEP_LIMIT, "sh", "-c",
                          f"echo $(hostname) $(ls /dev/shm/{name} 2>/dev/null || echo none)").stdout
    assert sorted(listed.splitlines()) == [f"n1 /dev/shm/{name}", "n2 none", "n3 none"]
    assert not os.path.exists(f"/dev/shm/{name}")
    inside = cluster.srun("-w", "n1", STEP_LIMIT, f"--image={image}", "--autoshift", "ls", f"/dev/shm/{name}")
    assert inside.stdout.strip() == f"/dev/shm/{name}"
    cluster.srun("-w", "n1", STEP_LIMIT, "rm", f"/dev/shm/{name}")


# --- srun --mpi=pmix ------------------------------------------------------------

@pytest.mark.cluster
def test_slurms_pmix_plugin_loads_on_the_nodes(cluster):
    """Without libpmix (ci/setup installs libpmix-dev) srun --mpi=pmix hangs and
    leaves its nodes completing: say so here rather than hang below."""
    assert "pmix" in cluster.srun("--mpi=list").stdout + cluster.srun("--mpi=list").stderr
    for node in cluster.nodes:
        assert "can not load PMIx library" not in cluster.log(f"slurmd-{node}"), \
            f"slurmd on {node} cannot load libpmix: run ci/setup, then restart the cluster"


@pytest.mark.cluster
def test_srun_mpi_pmix_runs_open_mpi_across_the_nodes_inside_the_image(cluster, mpi_image, no_job_left):
    """Six ranks on three nodes, wired up by Slurm's PMIx server: each gets the step's
    PMIx directory in its container, the ring and the sum cross the nodes."""
    program = _program(cluster, "mpi-ring", MPI_PROGRAM)
    result = cluster.srun("--mpi=pmix", "-N3", "-n6", STEP_LIMIT, f"--image={mpi_image}", "--autoshift",
                          "python3", str(program), timeout=240)
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 6, result.stdout + result.stderr
    ranks = {}
    for line in lines:
        match = re.fullmatch(r"rank (\d) of 6 on (n\d) from (\d)@(n\d) sum 15 server_dir=(\S+)", line)
        assert match, line
        rank, host, left, left_host, server_dir = match.groups()
        ranks[int(rank)] = host
        assert int(left) == (int(rank) - 1) % 6
        assert re.fullmatch(rf"{re.escape(str(cluster.layout.spool))}/{host}/pmix\.\d+\.\d+/?", server_dir), line
    assert ranks == {0: "n1", 1: "n1", 2: "n2", 3: "n2", 4: "n3", 5: "n3"}


@pytest.mark.cluster
def test_a_pmix_step_sees_its_own_directory_writable_and_nothing_else_of_the_spool(
        cluster, mpi_image, no_job_left):
    probe = ('d=${PMIX_SERVER_TMPDIR%/}; touch $d/probe-$$ && echo writable; ls $(dirname $d);'
             ' grep " $d " /proc/self/mountinfo | grep -c nosuid')
    result = cluster.srun("--mpi=pmix", "-N1", "-n1", STEP_LIMIT, f"--image={mpi_image}", "--autoshift",
                          "sh", "-c", probe)
    lines = result.stdout.split()
    assert lines[0] == "writable", result.stdout + result.stderr
    assert [name for name in lines[1:-1]] == [re.search(r"pmix\.\d+\.\d+", result.stdout).group(0)], lines
    assert lines[-1] == "1", "the PMIx directory must be bound nosuid"


def test_the_tasks_of_a_step_bind_its_pmix_directory_once_writable_for_the_user():
    """As a PMIx step's tasks do it (without Slurm): four tasks enter at once with
    the step's directory; one bind results, writable by the user, nosuid."""
    site = Site()
    cfg = site.config()
    spool = Path(tempfile.mkdtemp(prefix="shifter-test-spool-", dir="/run"))   # not in a bound /tmp
    try:
        job = site.create(cfg, site.image("pmix"), 51)
        directory = spool / "pmix.51.0"
        directory.mkdir()
        nobody = pwd.getpwnam("nobody")
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        script = (f"touch {directory}/from-$$ && grep -c ' {directory} .*nosuid' /proc/self/mountinfo")
        children, (go, start) = [], os.pipe()
        for _ in range(4):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.dup2(write, 1)
                    os.dup2(write, 2)
                    os.read(go, 1)                  # all four start together
                    enter.enter(job, stage=cfg.loop_mount, pmix_dir=str(directory))
                    os.setgroups([])
                    os.setresgid(job.gid, job.gid, job.gid)
                    os.setresuid(job.uid, job.uid, job.uid)
                    os.execv("/bin/sh", ["sh", "-c", script])
                except BaseException as error:
                    os.write(2, repr(error).encode())
                finally:
                    os._exit(127)
            os.close(write)
            children.append((pid, read))
        os.write(start, b"go!!")
        for fd in (go, start):
            os.close(fd)
        for pid, read in children:
            with os.fdopen(read) as out:
                assert out.read().strip() == "1", "one bind of the PMIx directory, nosuid"
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert len(os.listdir(directory)) == 4, "the tasks wrote into the node's directory"
    finally:
        site.cleanup(cfg)
        shutil.rmtree(spool)


# --- the launcher variables of distributed training -------------------------------

@pytest.mark.cluster
def test_every_task_gets_the_launcher_variables_and_they_rendezvous(cluster, mpi_image, no_job_left):
    """--module=pytorch: a rendezvous the way torch.distributed's env:// does it,
    over TCP between the nodes, from the five variables alone."""
    program = _program(cluster, "rendezvous", RENDEZVOUS)
    result = cluster.srun("-N3", "-n6", STEP_LIMIT, f"--image={mpi_image}", "--autoshift", "--module=pytorch",
                          "python3", str(program), timeout=240)
    lines = [line for line in result.stdout.splitlines() if line.startswith("rank ")]
    assert len(lines) == 6, result.stdout + result.stderr
    tables = {re.search(r"table (.*)$", line).group(1) for line in lines}
    assert tables == {"0:n1:0 1:n1:1 2:n2:0 3:n2:1 4:n3:0 5:n3:1"}, lines
    masters = {re.search(r"master (\S+)", line).group(1) for line in lines}
    assert len(masters) == 1 and masters.pop().startswith("n1:2")


@pytest.mark.cluster
def test_steps_get_their_own_port_the_batch_script_gets_none(cluster, mpi_image, no_job_left):
    show = 'echo "vars ${MASTER_ADDR:-none} ${MASTER_PORT:-none} ${WORLD_SIZE:-none} ${RANK:-none}"'
    script = (f"#!/bin/sh\n{show}\nsrun -N2 -n2 -w n2,n3 sh -c '{show}'\n"
              f"srun -N1 -n1 -w n3 sh -c '{show}'\n")
    job = cluster.sbatch(script, "-N3", STEP_LIMIT, f"--image={mpi_image}", "--autoshift",
                         "--module=slurm,pytorch")
    assert cluster.wait(job) == "COMPLETED", cluster.output(job)
    lines = [line.split()[1:] for line in cluster.output(job).splitlines() if line.startswith("vars ")]
    assert len(lines) == 4, cluster.output(job)
    assert lines[0] == ["none", "none", "none", "none"], "the batch script is no rank"
    first, second = sorted(lines[1:3]), lines[3]
    assert [(f[0], f[2], f[3]) for f in first] == [("n2", "2", "0"), ("n2", "2", "1")], first
    assert first[0][1] == first[1][1], "the tasks of a step must agree on MASTER_PORT"
    assert (second[0], second[2], second[3]) == ("n3", "1", "0")
    assert first[0][1] != second[1], "two steps of one job got the same MASTER_PORT"


@pytest.mark.cluster
def test_without_the_module_tasks_get_no_launcher_variables(cluster, image, no_job_left):
    plain = cluster.srun("-N1", STEP_LIMIT, f"--image={image}", "--autoshift", "sh", "-c",
                         'echo "${MASTER_ADDR:-none} ${RANK:-none}"')
    assert plain.stdout.split() == ["none", "none"]
