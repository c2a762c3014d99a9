"""perNodeCache against the shared file system: small-block writes, side by side, in one run.

On one node of a diskless cluster (the image directory, perNodeCachePath and
the user's directory all on the network file system of bench/netfs.py), one
job per case and run writes, one after the other:

- dd:  `dd if=/dev/zero bs=512 count=N conv=fsync` (N x 512-byte writes, then fsync);
- tar: `tar -xf` of F small files (1 KiB each, in directories of 100; the archive
       lies on the node's local disk), then `sync -f` of the target file system;

into:

- netfs:          the user's directory on the network file system (no image);
- perNodeCache:   `--volume=/x:/cache:perNodeCache=size=1G` of a Debian image: an XFS
                  in a file of perNodeCachePath, so on the network file system too;
- local disk:     the user's home on the node's own disk (no image), for scale: what a
                  node with a disk would get.

Each job's own timing (GNU dd and tar of Debian 12 on the host and in the
image) gives MB/s and files/s; the whole srun (for the cache: its mkfs.xfs
and loop mount by the prolog) is reported too.  Before every run the nodes
are idle, every sshfs is remounted and the page cache dropped.  Target
(issue 14, the paper's Table II shows 7-10x): perNodeCache / netfs >= 10.

    python -m bench.node_cache [--runs 3] [--dd-blocks 20000] [--files 5000]

Needs root.  Takes the mini-cluster to itself (see Cluster.alone) and leaves
it down.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import sys
import tarfile
import tempfile

from bench import results
from bench.job_start import Bench
from bench.netfs import NetworkFS, Site
from ci.harness import cluster as harness
from ci.harness import debian
from ci.harness.oci import ImageConfig, Layout, entries_from_directory

IMAGE = "docker:bench/debian:v1"
CACHE_VOLUME = "/x:/cache:perNodeCache=size=1G"
NODE = "n1"
# $1 target directory, $2 dd blocks, $3 archive; prints nanoseconds of each part
WRITES = """set -e
s=$(date +%s%N); dd if=/dev/zero of="$1/dd.bin" bs=512 count="$2" conv=fsync status=none; e=$(date +%s%N)
echo "dd-ns $((e - s))"
mkdir "$1/tree"
s=$(date +%s%N); tar -xf "$3" -C "$1/tree"; sync -f "$1/tree"; e=$(date +%s%N)
echo "tar-ns $((e - s))"
"""


def debian_image(layout: Layout) -> None:
    """Debian bookworm minbase (ci/harness/debian.py): GNU dd, tar and sync."""
    layer = layout.add_layer(entries_from_directory(debian.base_tree()))
    layout.add_image([layer], ImageConfig(cmd=["/bin/sh"]), tag="v1")


def small_files_archive(path: str, files: int) -> None:
    """`files` files of 1 KiB, 100 per directory, as one tar."""
    data = b"x" * 1024
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            if i % 100 == 0:
                info = tarfile.TarInfo(f"d{i // 100:04d}")
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            info = tarfile.TarInfo(f"d{i // 100:04d}/f{i:06d}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, fileobj=io.BytesIO(data))


def one_run(bench: Bench, case: str, target: str, archive: str, args) -> dict:
    srun = ["srun", "-N1", "-w", NODE]
    if case == "perNodeCache":
        srun += [f"--image={IMAGE}", "--autoshift", f"--volume={CACHE_VOLUME}"]
    wall, out = bench.capture(*srun, "/bin/sh", "-c", WRITES, "writes", target, str(args.dd_blocks), archive)
    parts = dict(line.split() for line in out.splitlines() if line.startswith(("dd-ns ", "tar-ns ")))
    dd_s, tar_s = int(parts["dd-ns"]) / 1e9, int(parts["tar-ns"]) / 1e9
    return {"job_s": wall, "dd_s": dd_s, "tar_s": tar_s,
            "dd_MB_per_s": args.dd_blocks * 512 / dd_s / 1e6, "tar_files_per_s": args.files / tar_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dd-blocks", type=int, default=20000, help="512-byte writes")
    parser.add_argument("--files", type=int, default=5000, help="1 KiB files in the archive")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (the cluster, mounts, dropping the page cache)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cl = harness.Cluster(harness.Layout(harness.REPO / ".cluster"))
    site = Site(cl.layout)
    user = harness.ensure_test_user()
    local = os.path.join(user.pw_dir, "bench-node-cache")       # the node's own disk, seen by the container
    targets = {"netfs": str(site.mount / "scratch"), "perNodeCache": "/cache", "local disk": f"{local}/out"}
    samples: dict[str, list[dict]] = {case: [] for case in targets}
    with tempfile.TemporaryDirectory(prefix="bench-debian-") as tmp, cl.alone():
        layout = Layout(os.path.join(tmp, "layout"))
        debian_image(layout)
        record = cl.up(started_by="bench/node_cache")
        load_at_start = os.getloadavg()          # the machine's, our cluster's daemons included
        try:
            bench = Bench(cl, record)
            layout.push("v1", f"{record.registry}/bench/debian:v1")
            bench.run("shifterimg", "pull", IMAGE)
            site.prepare()
            shutil.rmtree(local, ignore_errors=True)
            os.makedirs(local)
            archive = os.path.join(local, "small-files.tar")
            small_files_archive(archive, args.files)
            for path in (local, archive):
                os.chown(path, user.pw_uid, user.pw_gid)
            with NetworkFS(cl.layout, record, site.exports()) as netfs:
                for run in range(args.runs):
                    for case, target in targets.items():
                        for host_side in (site.export / "scratch", f"{local}/out"):
                            shutil.rmtree(host_side, ignore_errors=True)
                            os.mkdir(host_side)
                            os.chown(host_side, user.pw_uid, user.pw_gid)
                        bench.wait_idle(record)
                        netfs.cold()
                        sample = one_run(bench, case, target, archive, args)
                        samples[case].append(sample)
                        print(f"run {run + 1} {case:>12}: dd {sample['dd_MB_per_s']:8.2f} MB/s, tar "
                              f"{sample['tar_files_per_s']:8.0f} files/s, job {sample['job_s']:.2f} s", flush=True)
        finally:
            site.remove()
            shutil.rmtree(local, ignore_errors=True)
        medians = {case: {key: round(statistics.median(s[key] for s in runs), 3) for key in runs[0]}
                   for case, runs in samples.items()}
        net = medians["netfs"]
        ratios = {f"{case} / netfs, {what}": round(medians[case][key] / net[key], 2)
                  for case in ("perNodeCache", "local disk")
                  for what, key in (("dd bs=512", "dd_MB_per_s"), ("tar of small files", "tar_files_per_s"))}
        report = {      # saved before the cluster goes down: its leak check may raise
            "benchmark": "small-block writes: perNodeCache (XFS file on sshfs) vs sshfs directly",
            "dd_blocks": args.dd_blocks, "files": args.files, "runs": args.runs, "node": NODE,
            "medians": medians, "ratios": ratios, "target": "perNodeCache / netfs >= 10",
            "samples": samples,
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
        }
        print(json.dumps({k: report[k] for k in ("medians", "ratios")}, indent=1))
        print("written to", results.save("node_cache", report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
