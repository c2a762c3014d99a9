"""The mini-cluster harness itself: nodes, client environment, Slurm bundle, leak detection."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from ci.harness import cluster as harness
from ci.harness import leaks, slurmclient
from shifter_core import config

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# -- configuration the harness writes (no root, no daemons) -------------------

def test_slurm_conf_takes_the_documented_site_settings():
    record = harness.Record(slurmctld_port=6817)
    text = harness.slurm_conf(harness.Layout(harness.REPO / ".cluster"), record)
    assert "PrologFlags=Alloc" in text.splitlines()
    assert harness.site_settings() == ["PrologFlags=Alloc", "JobSubmitPlugins=lua"]
    assert "JobSubmitPlugins=lua" in text.splitlines()


def test_container_slurm_conf_has_bundled_plugins_and_no_plugin_stack():
    cluster_conf = "ClusterName=x\nPlugStackConfig=/somewhere/plugstack.conf\nPrologFlags=Alloc\n"
    inside = slurmclient.container_slurm_conf(cluster_conf).splitlines()
    assert "PlugStackConfig=/somewhere/plugstack.conf" not in inside
    assert f"PluginDir={slurmclient.PREFIX}/lib/slurm" in inside
    assert "PrologFlags=Alloc" in inside


# -- the running cluster --------------------------------------------------------

@pytest.mark.cluster
def test_srun_reaches_three_nodes_as_the_test_user(cluster):
    result = cluster.srun("-N3", "-l", "sh", "-c", 'echo "$(hostname) $(id -u)"')
    lines = sorted(line.split(": ", 1)[1] for line in result.stdout.splitlines())
    assert lines == [f"{node} {cluster.uid}" for node in cluster.nodes]
    assert cluster.uid != 0


@pytest.mark.cluster
def test_each_node_has_its_own_network_namespace_and_address(cluster):
    result = cluster.srun("-N3", "-l", "sh", "-c", 'echo "$(hostname) $(ip -4 -o addr show dev eth0)"')
    addresses = {}
    for line in result.stdout.splitlines():
        words = line.split(": ", 1)[1].split()
        addresses[words[0]] = words[words.index("inet") + 1]
    assert addresses == {node: f"{address}/24" for node, address in harness.NODE_ADDRESSES.items()}


@pytest.mark.cluster
def test_batch_job_output_and_wait(cluster):
    job = cluster.sbatch("#!/bin/sh\nsrun -N3 hostname | sort\n", "-N3")
    state = cluster.wait(job)
    output = cluster.output(job)
    assert (state, output.split()) == ("COMPLETED", list(cluster.nodes)), output
    cluster.assert_idle()


@pytest.mark.cluster
def test_env_script_points_a_shell_at_the_cluster(cluster):
    exports = subprocess.run([str(harness.REPO / "ci" / "cluster"), "env"], capture_output=True,
                             text=True, check=True).stdout
    for name in ("SLURM_CONF", "SHIFTER_UDIROOT_CONF", "PATH"):
        assert f"export {name}=" in exports
    shell = f'{exports}\nscontrol ping && command -v shifterimg'
    result = cluster.run(["/bin/bash", "-c", shell], env={"PATH": harness.DAEMON_PATH})
    assert "is UP" in result.stdout
    assert result.stdout.strip().endswith(str(harness.REPO / ".venv" / "bin" / "shifterimg"))


@pytest.mark.cluster
def test_up_again_reports_the_running_cluster(cluster):
    before = harness.Record.load(cluster.layout)
    result = subprocess.run([str(harness.REPO / "ci" / "cluster"), "up"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "already up" in result.stderr
    assert harness.Record.load(cluster.layout).daemons == before.daemons


@pytest.mark.cluster
def test_udiroot_conf_is_accepted_by_the_runtime(cluster):
    conf = config.load(str(cluster.layout.udiroot_conf))
    assert conf.system == harness.SYSTEM
    assert conf.default_modules == ("slurm",)
    targets = {mount.target for mount in conf.modules["slurm"].site_fs}
    assert targets == {slurmclient.PREFIX, "/run/munge"}
    assert str(cluster.home) in {mount.target for mount in conf.site_fs}


@pytest.mark.cluster
def test_slurm_client_bundle_works_in_a_root_without_host_files(cluster):
    """srun from a chroot that holds only busybox and the bundle, as the test user."""
    passwd = f"{cluster.user}:x:{cluster.uid}:{cluster.uid}::/tmp:/bin/sh"
    result = slurmclient.run_in_minimal_root(cluster.layout.slurm_client, cluster.uid, cluster.uid, passwd,
                                             f"{cluster.user}:x:{cluster.uid}:",
                                             ["srun", "-N3", "-l", "hostname"])
    assert result.returncode == 0, result.stderr
    assert sorted(line.split(": ")[1] for line in result.stdout.splitlines()) == list(cluster.nodes)


# -- leak detection -------------------------------------------------------------

@root_only
def test_leaks_finds_a_mount_only_another_namespace_holds(tmp_path):
    target = tmp_path / "mnt"
    target.mkdir()
    holder = subprocess.Popen(
        ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
         f"/usr/bin/mount -t tmpfs leaktest {target} && echo ready && exec /bin/sleep 60"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        scope = leaks.Scope(paths=(str(tmp_path),))
        found = scope.remains()
        assert any(line.startswith(f"mount {target} (tmpfs") for line in found), found
        assert any(line.startswith(f"process {holder.pid} ") for line in found), found
    finally:
        holder.kill()
        holder.wait()
    assert leaks.Scope(paths=(str(tmp_path),)).remains() == []


@root_only
def test_leaks_finds_netns_links_and_loop_devices(tmp_path):
    name = f"leak{uuid.uuid4().hex[:8]}"
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"\0" * 1024 * 1024)
    before = leaks.Snapshot.take()
    subprocess.run(["/usr/sbin/ip", "netns", "add", name], check=True)
    subprocess.run(["/usr/sbin/ip", "link", "add", name, "type", "bridge"], check=True)
    device = subprocess.run(["/usr/sbin/losetup", "--find", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        added = leaks.Snapshot.take().since(before)
        assert name in added.netns and name in added.links
        assert leaks.Loop(device, str(backing)) in added.loops
    finally:
        subprocess.run(["/usr/sbin/losetup", "--detach", device], check=True)
        subprocess.run(["/usr/sbin/ip", "link", "delete", name], check=True)
        subprocess.run(["/usr/sbin/ip", "netns", "delete", name], check=True)
    assert leaks.Scope(paths=(str(tmp_path),), netns=frozenset({name}), links=frozenset({name})).remains() == []


def test_snapshot_round_trips_through_json():
    snapshot = leaks.Snapshot.take()
    assert leaks.Snapshot.from_json(snapshot.to_json()) == snapshot


@pytest.mark.cluster
def test_gateway_pulls_the_seeded_image_from_the_local_registry(cluster):
    pulled = cluster.run(["shifterimg", "pull", "docker:busybox:latest"])
    assert "READY" in pulled.stdout
    image_id = cluster.run(["shifterimg", "lookup", "docker:busybox:latest"]).stdout.strip()
    assert (cluster.layout.images / f"{image_id}.squashfs").is_file()
