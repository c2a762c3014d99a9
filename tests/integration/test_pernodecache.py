"""perNodeCache for real: sparse file, mkfs.xfs, loop mount at the target, owned
by the user, backing file unlinked at once, space back after the job, limits.

The first tests build containers directly (as the prolog does, without
Slurm); the last ones run jobs on the mini-cluster."""
from __future__ import annotations

import os
import re
import time

import pytest

from shifter_core import etcfiles, pernodecache
from shifter_core.errors import ShifterError, VolumeError
from tests.integration.runtime_fixtures import (MKFS_EXT4, MKFS_XFS, Site, assert_no_container_left, loop_backing_files,
                                                mounts_under, run)

MiB = 1024 ** 2
GiB = 1024 ** 3

pytestmark = pytest.mark.root


@pytest.fixture
def site():
    site = Site()
    site.cfg = site.config(perNodeCachePath=f"{site.path}/cache", mkfsXfsPath=MKFS_XFS,
                           perNodeCacheSizeLimit="1G")
    yield site
    site.cleanup(site.cfg)


def _cache_loops(site) -> dict[str, str]:
    return {dev: f for dev, f in loop_backing_files().items() if f.startswith(f"{site.path}/cache/")}


def test_cache_is_a_private_xfs_owned_by_the_user(site):
    meta = site.image("cache")
    job = site.create(site.cfg, meta, 11, volumes="/ignored:/scratch/cache:perNodeCache=size=512M,bs=1K")
    out = run(job, "grep ' /scratch/cache ' /proc/mounts; stat -c 'owner=%u' /scratch/cache;"
                   " stat -f -c 'bsize=%S blocks=%b' /scratch/cache;"
                   " dd if=/dev/zero of=/scratch/cache/data bs=1M count=64 2>/dev/null && sync;"
                   " ls -l /scratch/cache/data")
    assert re.search(r" /scratch/cache xfs rw,nosuid,nodev\b", out), out
    assert f"owner={job.uid}" in out
    bsize, blocks = map(int, re.search(r"bsize=(\d+) blocks=(\d+)", out).groups())
    assert 400 * MiB <= bsize * blocks <= 512 * MiB, out   # less XFS's log
    assert "bsize=1024" in out, "the bs= option must reach mkfs.xfs (Shifter issue #289)"
    assert "67108864" in out
    # On the node: no file in the cache directory, only the loop device holds it.
    assert os.listdir(site.cfg.per_node_cache_path) == []
    [backing] = _cache_loops(site).values()
    assert re.fullmatch(rf"{site.path}/cache/perNodeCache\.job11\.nodeA\.uid{job.uid}\.\w+\.xfs \(deleted\)",
                        backing)
    assert not mounts_under(f"{site.path}/udi", besides=job), "the cache is visible outside the job"


def test_an_ext4_cache_where_the_site_allows_it(site):
    """perNodeCacheAllowedFsType=xfs ext4 (Shifter sites write it; Shifter made xfs anyway):
    fs=ext4 gives an ext4 in a sparse file, mounted and handed over like the XFS one."""
    cfg = site.config(perNodeCachePath=f"{site.path}/cache", mkfsXfsPath=MKFS_XFS,
                      mkfsExt4Path=MKFS_EXT4, perNodeCacheAllowedFsType="xfs ext4")
    meta = site.image("cache")
    job = site.create(cfg, meta, 18, volumes="/x:/scratch/cache:perNodeCache=size=64M,fs=ext4,bs=1K")
    out = run(job, "grep ' /scratch/cache ' /proc/mounts; stat -c 'owner=%u' /scratch/cache;"
                   " stat -f -c 'bsize=%S blocks=%b free=%f avail=%a' /scratch/cache;"
                   " dd if=/dev/zero of=/scratch/cache/data bs=1M count=48 2>/dev/null && sync;"
                   " ls -l /scratch/cache/data")
    assert re.search(r" /scratch/cache ext4 rw,nosuid,nodev\b", out), out
    assert f"owner={job.uid}" in out and "50331648" in out
    bsize, blocks = map(int, re.search(r"bsize=(\d+) blocks=(\d+)", out).groups())
    free, avail = map(int, re.search(r"free=(\d+) avail=(\d+)", out).groups())
    # The kernel holds back 2% for delayed allocation; mke2fs's default would keep 5% more for root.
    assert free - avail <= blocks * 0.025, "blocks are kept for root in a user's cache"
    assert bsize == 1024 and 48 * MiB < bsize * blocks <= 64 * MiB, out
    assert os.listdir(cfg.per_node_cache_path) == []
    [backing] = _cache_loops(site).values()
    assert re.fullmatch(rf"{site.path}/cache/perNodeCache\.job18\.nodeA\.uid{job.uid}\.\w+\.ext4 \(deleted\)",
                        backing)
    assert not mounts_under(f"{site.path}/udi", besides=job), "the cache is visible outside the job"


def test_a_site_without_ext4_refuses_it(site):
    with pytest.raises(VolumeError, match="this system offers perNodeCache as xfs, not ext4"):
        site.cfg.user_volumes("/x:/cache:perNodeCache=size=512M,fs=ext4")


def test_space_is_given_back_when_the_job_ends(site):
    meta = site.image("cache")
    cache_dir = site.cfg.per_node_cache_path
    job = site.create(site.cfg, meta, 12, volumes="/x:/cache:perNodeCache=size=1G")
    run(job, "dd if=/dev/urandom of=/cache/data bs=1M count=300 2>/dev/null && sync")
    st = os.statvfs(cache_dir)
    during = st.f_bfree * st.f_frsize
    from shifter_core import container
    assert container.destroy(site.cfg, 12, "nodeA")
    deadline = time.monotonic() + 10
    while _cache_loops(site) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _cache_loops(site), "the loop device outlived the job's namespace"
    st = os.statvfs(cache_dir)
    after = st.f_bfree * st.f_frsize
    # 300 MiB were written into the cache; other users of the disk add noise.
    assert after - during > 200 * MiB, (during, after)


def test_block_size_and_target_are_checked_by_the_user_policy(site):
    with pytest.raises(VolumeError, match="exceeds the site's limit of 1G"):
        site.cfg.user_volumes("/x:/cache:perNodeCache=size=2G")
    with pytest.raises(VolumeError, match="total 1536M"):
        site.cfg.user_volumes("/x:/a:perNodeCache=size=768M;/x:/b:perNodeCache=size=768M")
    with pytest.raises(VolumeError, match="at least 300M"):
        site.cfg.user_volumes("/x:/cache:perNodeCache=size=100M")
    with pytest.raises(VolumeError, match="belongs to the container's setup"):
        site.cfg.user_volumes("/x:/var/cache:perNodeCache=size=512M")


def test_a_cache_larger_than_the_free_space_is_refused(site):
    cfg = site.config(perNodeCachePath=f"{site.path}/cache", mkfsXfsPath=MKFS_XFS)
    st = os.statvfs(site.path)
    too_big = (st.f_bavail * st.f_frsize // GiB + 2) * GiB
    meta = site.image("cache")
    with pytest.raises(ShifterError, match=r"does not fit on this node: .* GiB free; ask for less"):
        site.create(cfg, meta, 13, volumes=f"/x:/cache:perNodeCache=size={too_big}")
    assert os.listdir(cfg.per_node_cache_path) == []
    assert not _cache_loops(site)


def test_root_gets_no_cache(site):
    meta = site.image("cache")
    root = etcfiles.User("root", 0, 0, "", "/root", "/bin/sh", (0,))
    with pytest.raises(ShifterError, match="not available to root"):
        site.create(site.cfg, meta, 14, account=root, volumes="/x:/cache:perNodeCache=size=512M")
    assert not os.path.exists(site.cfg.per_node_cache_path) or not os.listdir(site.cfg.per_node_cache_path)


def test_a_failure_after_the_cache_leaves_nothing(site):
    """The cache is mounted, then the next volume fails: no mount, loop device or file remains."""
    meta = site.image("cache")
    with pytest.raises(ShifterError, match="--volume source /does/not/exist does not exist in the container"):
        site.create(site.cfg, meta, 15,
                    volumes="/x:/cache:perNodeCache=size=512M;/does/not/exist:/data")
    assert os.listdir(site.cfg.per_node_cache_path) == []
    assert not _cache_loops(site)
    assert not mounts_under(f"{site.path}/udi")


def test_cache_directory_must_be_root_only(site):
    cfg = site.config(perNodeCachePath=f"{site.path}/opencache", mkfsXfsPath=MKFS_XFS)
    os.mkdir(f"{site.path}/opencache")
    os.chmod(f"{site.path}/opencache", 0o777)
    meta = site.image("cache")
    with pytest.raises(ShifterError, match="perNodeCachePath .* must not be writable by group or others"):
        site.create(cfg, meta, 16, volumes="/x:/cache:perNodeCache=size=512M")
    assert os.listdir(f"{site.path}/opencache") == []


def test_discard_removes_only_this_jobs_leftovers(site):
    cache = site.cfg.per_node_cache_path
    os.makedirs(cache)
    names = ["perNodeCache.job17.nodeA.uid5.abc.xfs", "perNodeCache.job17.nodeB.uid5.abc.xfs",
             "perNodeCache.job170.nodeA.uid5.abc.xfs", "unrelated"]
    for name in names:
        open(os.path.join(cache, name), "w").close()
    assert pernodecache.discard(site.cfg, 17, "nodeA") == [os.path.join(cache, names[0])]
    assert sorted(os.listdir(cache)) == sorted(names[1:])


# --- on the mini-cluster (udiRoot.conf: perNodeCachePath=.cluster/cache, limit 2G) ------

@pytest.mark.cluster
def test_a_job_writes_into_its_cache_and_the_space_comes_back(cluster):
    """The batch script fills 400 MiB of a 1G cache and waits; meanwhile the
    node shows the unlinked file held by a loop device; after the job both are
    gone and the space is free again."""
    image = "docker:busybox:latest"
    cluster.run(["shifterimg", "pull", image], timeout=300)
    cache_dir = str(cluster.layout.node_cache)
    go = cluster.home / f"go-{os.getpid()}"
    ready = cluster.home / f"ready-{os.getpid()}"
    script = (f"#!/bin/sh\nset -e\ngrep ' /scratch ' /proc/mounts\nstat -c 'owner=%u mode=%a' /scratch\n"
              f"busybox dd if=/dev/urandom of=/scratch/data bs=1M count=400 2>/dev/null\nsync\n"
              f"touch {ready}\nwhile [ ! -e {go} ]; do sleep 0.2; done\nls -l /scratch/data\n")
    job = cluster.sbatch(script, "-N1", "-w", "n2", f"--image={image}", "--autoshift",
                         "--volume=/unused:/scratch:perNodeCache=size=1G")
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert cluster.job_state(job) in ("PENDING", "CONFIGURING", "RUNNING"), cluster.output(job)
            assert time.monotonic() < deadline, "the job never filled its cache"
            time.sleep(0.2)
        st = os.statvfs(cache_dir)
        during = st.f_bfree * st.f_frsize
        held = [f for f in loop_backing_files().values() if f.startswith(cache_dir + "/")]
        assert len(held) == 1 and held[0].endswith(" (deleted)"), held
        assert os.listdir(cache_dir) == []
    finally:
        go.touch()
        state = cluster.wait(job)
        go.unlink()
        ready.unlink(missing_ok=True)
    out = cluster.output(job)
    assert state == "COMPLETED", out
    assert re.search(r" /scratch xfs rw,nosuid,nodev\b", out), out
    assert f"owner={cluster.uid}" in out and "419430400" in out
    assert not [f for f in loop_backing_files().values() if f.startswith(cache_dir + "/")]
    st = os.statvfs(cache_dir)
    after = st.f_bfree * st.f_frsize
    assert after - during > 300 * MiB, f"only {(after - during) / MiB:.0f} MiB came back"
    assert_no_container_left(cluster, job)


@pytest.mark.cluster
def test_an_ext4_cache_on_the_cluster(cluster, image):
    """The cluster allows xfs and ext4: one step gets one cache of each, on two nodes."""
    volume = "--volume=/u:/xfs:perNodeCache=size=300M;/u:/ext4:perNodeCache=size=32M,fs=ext4"
    out = cluster.srun("-N2", "-w", "n1,n3", f"--image={image}", "--autoshift", volume, "sh", "-c",
                       "grep -E ' /(xfs|ext4) ' /proc/mounts | cut -d' ' -f2-4;"
                       " stat -c 'owner=%u' /ext4; echo data > /ext4/f && cat /ext4/f").stdout
    assert out.count("/xfs xfs rw,nosuid,nodev") == 2, out
    assert out.count("/ext4 ext4 rw,nosuid,nodev") == 2, out
    assert out.count(f"owner={cluster.uid}") == 2 and out.count("data") == 2, out
    cluster.wait_until_settled()
    cache_dir = str(cluster.layout.node_cache)
    assert not [f for f in loop_backing_files().values() if f.startswith(cache_dir + "/")]
    assert os.listdir(cache_dir) == []


@pytest.mark.cluster
@pytest.mark.parametrize("volume, message", [
    ("/x:/c:perNodeCache=size=3G", "exceeds the site's limit of 2G"),
    ("/x:/a:perNodeCache=size=1536M;/x:/b:perNodeCache=size=1536M", "more than the site's limit of 2G"),
    ("/x:/c:perNodeCache=size=200M", "at least 300M"),
])
def test_cache_limits_are_refused_at_submit(cluster, volume, message):
    result = cluster.srun("-N1", "--image=docker:busybox:latest", f"--volume={volume}", "true", check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "shifter: " in line]
    assert len(lines) == 1 and message in lines[0], result.stderr
