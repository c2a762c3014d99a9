"""--ccm on the 3-node mini-cluster: an sshd in each node's container, ssh
between the nodes lands in the other container as the user, only the job's
user and key get in, and nothing remains after the job."""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ci.harness import cluster as harness
from shifter_core import ccm, config, munge
from shifter_core.container import JobContainer, procfs
from shifter_core.errors import CcmError

pytestmark = [pytest.mark.cluster, pytest.mark.root]

PRETTY = 'PRETTY_NAME="shifter-py test image (busybox)"'
CONTAINER_DIR = "/var/shifter-ccm"


@pytest.fixture(scope="module")
def port(cluster):
    return config.load(str(cluster.layout.udiroot_conf)).sshd_port


def _run_dir(cluster) -> Path:
    return Path(config.load(str(cluster.layout.udiroot_conf)).run_dir)


def _node_of(cluster, job: int) -> str:
    nodes = cluster.run(["squeue", "-h", "-j", str(job), "-o", "%N"]).stdout.split()
    assert len(nodes) == 1 and nodes[0] in cluster.nodes, nodes
    return nodes[0]


def _ccm_state(cluster, job: int, node: str) -> dict:
    return json.loads((_run_dir(cluster) / f"job{job}.{node}.ccm.json").read_text())


def _prolog_done(cluster, job: int, node: str) -> bool:
    """Has the prolog started the job's sshd on `node`?"""
    try:
        return _ccm_state(cluster, job, node)["sshd_pid"] is not None
    except FileNotFoundError:
        return False


@pytest.fixture
def sleeping_ccm_job(cluster, image):
    """A CCM job holding one node (sleeping in its batch script); yields (job, node)."""
    job = cluster.sbatch("#!/bin/sh\nsleep 600\n", "-N1", "--ccm", f"--image={image}")
    try:
        deadline = time.monotonic() + 90
        while cluster.job_state(job) != "RUNNING":
            assert time.monotonic() < deadline, f"job {job} is still {cluster.job_state(job)}"
            time.sleep(0.3)
        node = _node_of(cluster, job)
        while not _prolog_done(cluster, job, node):
            assert time.monotonic() < deadline, "the prolog recorded no CCM sshd"
            time.sleep(0.2)
        yield job, node
    finally:
        cluster.run(["scancel", str(job)], as_user=False)
        cluster.wait(job)


def _still_in_service(cluster, nodes) -> None:
    """Our epilogs are done and our nodes were not taken out of service.  (Other
    sessions share the cluster: their jobs may run, their tests may drain nodes.)"""
    cluster.wait_until_settled()
    states = cluster.node_states()
    assert not any("drain" in states[node] or states[node] == "down" for node in nodes), states


def _listening(node: str, port: int) -> bool:
    """Is anything listening on TCP `port` in the node's network namespace?"""
    tables = subprocess.run(["/usr/bin/nsenter", f"--net=/run/netns/{node}", "/bin/cat", "/proc/net/tcp",
                             "/proc/net/tcp6"], capture_output=True, text=True, check=True).stdout
    return any(fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
               for fields in (line.split() for line in tables.splitlines()[1:]) if len(fields) > 3)


def test_salloc_ccm_runs_steps_in_the_container_and_ssh_lands_in_the_other_one(cluster, image):
    """The issue's check: salloc -N2 --ccm, then srun hostname, and from a task
    inside the container ssh to the other node: hostname, uid, os-release."""
    hop = ('other=$(grep -vx "$(hostname)" /var/hostsfile | head -1); echo "hop $(hostname) $other"; '
           'ssh "$other" "echo remote \\$(hostname) \\$(id -u); cat /etc/os-release"')
    result = cluster.run(["salloc", "-N2", "--ccm", f"--image={image}", "sh", "-c",
                          f"srun hostname; srun -N1 -n1 -r0 sh -c '{hop}'"], timeout=180)
    out = result.stdout
    hop_line = re.search(r"^hop (n\d) (n\d)$", out, re.M)
    assert hop_line, out + result.stderr
    source, target = hop_line.groups()
    assert source != target
    assert sorted(re.findall(r"^(n\d)$", out, re.M)) == sorted([source, target])
    assert f"remote {target} {cluster.uid}" in out
    assert PRETTY in out
    _still_in_service(cluster, (source, target))


def test_sbatch_ccm_script_reaches_every_node_with_the_image_environment(cluster, image):
    """The batch script runs inside the image; ssh to each node of the job (its own
    included) gets the image's environment and the pin, with the login shell the image has."""
    script = ("#!/bin/sh\n"
              "grep PRETTY_NAME /etc/os-release\n"
              'for node in $(sort -u /var/hostsfile); do\n'
              "  ssh $node 'echo \"at $(hostname) uid=$(id -u) shell=$SHELL digest=$SHIFTER_IMAGE_DIGEST\"'\n"
              "done\n")
    job = cluster.sbatch(script, "-N2", "--ccm", f"--image={image}")
    assert cluster.wait(job, timeout=180) == "COMPLETED", cluster.output(job)
    out = cluster.output(job)
    assert PRETTY in out
    lines = re.findall(r"^at (n\d) uid=(\d+) shell=(\S+) digest=(sha256:[0-9a-f]{64})$", out, re.M)
    assert len(lines) == 2 and len({line[0] for line in lines}) == 2, out
    digests = {line[3] for line in lines}
    assert len(digests) == 1
    for _node, uid, shell, _digest in lines:
        assert uid == str(cluster.uid)
        assert shell == "/bin/sh"          # the test user's bash is not in busybox
    _still_in_service(cluster, [line[0] for line in lines])


def test_sshd_runs_as_the_user_without_privileges_in_the_job_namespace_and_dies_with_it(
        cluster, sleeping_ccm_job, port):
    job, node = sleeping_ccm_job
    state = _ccm_state(cluster, job, node)
    pid = state["sshd_pid"]
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(cluster.uid)] * 4
    for name in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert status[name].strip() == "0000000000000000", name
    assert status["NoNewPrivs"].strip() == "1"
    holder = JobContainer.load(str(_run_dir(cluster) / f"job{job}.{node}.state"))
    assert os.stat(f"/proc/{pid}/ns/mnt").st_ino == holder.mntns
    slurmd = int((cluster.layout.root / "run" / f"slurmd-{node}.pid").read_text())
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/proc/{slurmd}/ns/net").st_ino
    assert _listening(node, port)

    cluster.run(["scancel", str(job)], as_user=False)
    cluster.wait(job)
    assert not _listening(node, port)
    assert not (_run_dir(cluster) / f"job{job}.{node}.ccm.json").exists()
    assert not procfs.running(pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                assert "shifter-ccm" not in Path(f"/proc/{entry}/mountinfo").read_text(), entry
                assert os.stat(f"/proc/{entry}/ns/mnt").st_ino != holder.mntns, entry
            except OSError:             # gone, or a zombie
                pass


def test_job_user_with_the_job_key_gets_in_but_no_other_user_or_key(cluster, image, sleeping_ccm_job, port):
    job, node = sleeping_ccm_job
    inside = ["srun", f"--jobid={job}", "--overlap", "-N1", "--ccm", f"--image={image}", "sh", "-c"]
    own = cluster.run(inside + [f"ssh {node} id -u"])
    assert own.stdout.strip() == str(cluster.uid)

    as_root = cluster.run(inside + [f"ssh -l root {node} id -u"], check=False)
    assert as_root.returncode != 0 and "Permission denied" in as_root.stderr, as_root.stderr

    other_job = cluster.run(["srun", "-N1", f"--exclude={node}", "--ccm", f"--image={image}", "sh", "-c",
                             f"ssh -F /dev/null -p {port} -i {CONTAINER_DIR}/id_ed25519 -o BatchMode=yes"
                             " -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                             f" {node} id -u"], check=False)
    assert other_job.returncode != 0, other_job.stdout
    assert "Permission denied (publickey)" in other_job.stderr, other_job.stderr

    address = harness.NODE_ADDRESSES[node]
    with tempfile.TemporaryDirectory(prefix="ccm-outsider-") as tmp:
        key = Path(tmp) / "id"
        subprocess.run(["/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        os.chmod(tmp, 0o755)
        subprocess.run(["/usr/bin/chown", "nobody", str(key)], check=True)
        for login in ("nobody", cluster.user):
            outsider = subprocess.run(
                ["/usr/bin/nsenter", f"--net=/run/netns/{node}", "/usr/sbin/runuser", "-u", "nobody", "--",
                 "/usr/bin/ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key), "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "ConnectTimeout=10", f"{login}@{address}", "id -u"],
                capture_output=True, text=True, timeout=60, cwd="/")
            assert outsider.returncode == 255, (login, outsider.stdout)
            assert "Permission denied (publickey)" in outsider.stderr, (login, outsider.stderr)


def test_a_second_ccm_job_on_the_node_is_refused_with_the_reason_and_the_node_stays_up(
        cluster, image, sleeping_ccm_job):
    job, node = sleeping_ccm_job
    second = cluster.srun("-N1", f"--nodelist={node}", "--ccm", f"--image={image}", "hostname", check=False)
    assert second.returncode != 0
    assert f"already runs the CCM sshd of job {job}" in second.stderr, second.stderr
    assert "--exclusive" in second.stderr
    assert node not in second.stdout
    _still_in_service(cluster, [node])
    assert _ccm_state(cluster, job, node)["sshd_pid"] is not None


def test_ccm_is_refused_at_submit_where_the_plugin_disables_it(cluster, image, readable_tmp):
    env = cluster.client_env_with_plugstack(readable_tmp, cluster.plugstack_line() + " enable_ccm=0")
    refused = cluster.srun("-N1", "--ccm", f"--image={image}", "true", check=False, env=env)
    assert refused.returncode != 0
    assert "--ccm is disabled on this cluster" in refused.stderr, refused.stderr
    allowed = cluster.srun("-N1", f"--image={image}", "--autoshift", "true", check=False, env=env)
    assert allowed.returncode == 0, allowed.stderr


def test_the_job_secret_is_sealed_for_root_and_bound_to_the_job_user(cluster, image):
    """The variable Slurm copies into the job's environment is a munge credential
    the user cannot open; the prolog accepts it only for the user who made it."""
    result = cluster.run(["salloc", "-N1", "--ccm", f"--image={image}", "sh", "-c",
                          f"echo $SLURM_SPANK_{ccm.SECRET_VARIABLE}"])
    sealed = result.stdout.strip()
    assert sealed.startswith("MUNGE:")
    opened_by_user = cluster.run(["unmunge"], input=sealed, check=False)
    assert opened_by_user.returncode != 0, opened_by_user.stdout
    assert len(ccm.open_secret(sealed, cluster.uid)) == ccm.SECRET_BYTES
    with pytest.raises(CcmError, match="not made for it"):
        ccm.open_secret(sealed, cluster.uid + 1)
    with pytest.raises(CcmError, match="not made for it"):
        ccm.open_secret(munge.Munge().encode(b"x" * ccm.SECRET_BYTES, decoder_uid=0), cluster.uid)
    for bad in ("", "MUNGE:garbage:"):
        with pytest.raises(CcmError, match=ccm.SECRET_VARIABLE):
            ccm.open_secret(bad, cluster.uid)
