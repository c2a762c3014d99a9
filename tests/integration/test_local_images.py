"""`--image=local:/path` (allowLocalChroot): a directory tree of the nodes as the image,
on the mini-cluster, under the same rules as any image (docs/security.md)."""
from __future__ import annotations

import os
import re
import shutil
import uuid

import pytest

from ci.harness import oci
from tests.integration.test_node_hardening import Watch, assert_no_node_drained

pytestmark = [pytest.mark.cluster, pytest.mark.root]


@pytest.fixture
def tree(cluster):
    """A busybox root in the test user's home (which every node sees), owned by the user."""
    path = cluster.home / f"tree-{uuid.uuid4().hex[:8]}"
    for name in ("bin", "etc", "var", "tmp"):
        (path / name).mkdir(parents=True)
    shutil.copy(oci.BUSYBOX, path / "bin" / "busybox")
    for applet in oci.BUSYBOX_APPLETS:
        (path / "bin" / applet).symlink_to("busybox")
    (path / "etc" / "os-release").write_text('PRETTY_NAME="a local tree"\n')
    for directory, dirs, files in os.walk(path):
        for name in [directory, *(os.path.join(directory, n) for n in dirs + files)]:
            os.lchown(name, cluster.uid, cluster.uid)
    yield path
    shutil.rmtree(path)


def test_a_local_tree_runs_read_only_as_the_user(cluster, tree):
    result = cluster.srun("-N2", f"--image=local:{tree}", "--autoshift", "sh", "-c",
                          "cat /etc/os-release; id -u; touch /bin/x 2>&1 || echo read-only;"
                          " grep -c . /var/hostsfile; cat /var/shifterConfig.json")
    lines = result.stdout.splitlines()
    assert lines.count('PRETTY_NAME="a local tree"') == 2, result.stdout
    assert lines.count(str(cluster.uid)) == 2 and lines.count("read-only") == 2, result.stdout
    assert f'"user":"{cluster.user}"' in result.stdout
    assert not (tree / "bin" / "x").exists()


def test_setuid_files_in_the_tree_give_nothing(cluster, tree):
    (tree / "suid").mkdir()
    shutil.copy(oci.BUSYBOX, tree / "suid" / "id")          # busybox runs its argv[0]
    os.chown(tree / "suid" / "id", 0, 0)
    os.chmod(tree / "suid" / "id", 0o4755)
    result = cluster.srun("-N1", f"--image=local:{tree}", "--autoshift", "/suid/id", "-u")
    assert result.stdout.split() == [str(cluster.uid)], result.stdout + result.stderr


def test_symlinks_in_the_tree_lead_root_nowhere(cluster, tree):
    victim = cluster.layout.root / f"victim-{uuid.uuid4().hex[:8]}"
    victim.mkdir()
    (victim / "hostsfile").write_text("the victim's\n")
    watch = Watch(victim)
    try:
        shutil.rmtree(tree / "var")
        (tree / "var").symlink_to(victim)
        (tree / "etc" / "passwd").symlink_to(victim / "hostsfile")
        result = cluster.srun("-N1", f"--image=local:{tree}", "--autoshift", "sh", "-c",
                              "cat /var/hostsfile; grep -c shiftertest /etc/passwd")
        assert result.stdout.split()[-1] == "1", result.stdout + result.stderr
        watch.assert_unchanged()
        assert os.path.islink(tree / "var") and os.path.islink(tree / "etc" / "passwd")
    finally:
        shutil.rmtree(victim)


def test_a_tree_the_user_cannot_read_is_refused_at_submit(cluster, readable_tmp):
    private = readable_tmp / "private"
    private.mkdir(mode=0o700)
    result = cluster.srun("-N1", f"--image=local:{private}", "--autoshift", "true", check=False)
    assert result.returncode != 0
    assert f"{private} is not a directory you can read here" in result.stderr, result.stderr
    assert_no_node_drained(cluster)


def test_local_images_are_refused_where_the_site_does_not_allow_them(cluster, tree, readable_tmp):
    conf = readable_tmp / "udiRoot.conf"
    conf.write_text(cluster.layout.udiroot_conf.read_text().replace("allowLocalChroot=1", "allowLocalChroot=0"))
    conf.chmod(0o644)
    line = re.sub(r"config=\S+", f"config={conf}", cluster.plugstack_line())
    env = cluster.client_env_with_plugstack(readable_tmp, line)
    result = cluster.srun("-N1", f"--image=local:{tree}", "--autoshift", "true", check=False, env=env)
    assert result.returncode != 0
    assert "local images are not enabled on ci (udiRoot.conf allowLocalChroot)" in result.stderr, result.stderr


def test_entrypoint_is_refused_for_a_local_tree_at_submit(cluster, tree):
    """A directory tree has no image config, so no ENTRYPOINT: refused with that reason,
    also when the default comes from the environment (SHIFTER_ENTRYPOINT)."""
    given = cluster.srun("-N1", f"--image=local:{tree}", "--autoshift", "--entrypoint", "true", check=False)
    by_default = cluster.srun("-N1", f"--image=local:{tree}", "--autoshift", "true", check=False,
                              env={"SHIFTER_ENTRYPOINT": "1"})
    for result in (given, by_default):
        assert result.returncode != 0
        assert f"--entrypoint: local:{tree} is a directory tree of the nodes, which has no ENTRYPOINT" \
            in result.stderr, result.stderr
    assert_no_node_drained(cluster)
