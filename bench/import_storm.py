"""Python import storm (Pynamic) on a network file system, side by side, in one run.

K concurrent Python processes, spread over the three nodes by one
`srun -N3 -nK -O`, each import the same tree of a few thousand modules and C
extensions (bench/pytree.py), cold, three ways:

- bare:   the tree's files on the network file system, Debian's python3 on the node;
- ours:   the tree inside an image whose squashfs sits on the network file
          system (the image directory is an sshfs mount on every node), loop-mounted
          by our prolog: `srun --image=... --autoshift python3 ...`;
- ch-run: Charliecloud's ch-run on the image unpacked to a directory on the
          network file system (peer).

The network file system is sshfs over the cluster's bridge (bench/netfs.py).
Before every run the nodes are idle, every sshfs is remounted and the page
cache dropped.  Reports the wall time of each srun (allocation, for ours the
image pin and the prolog's loop mount included), when the last rank finished,
and per rank the interpreter's start and the import, split into the time on a
CPU (user and kernel), waiting for a CPU and asleep (I/O), as the kernel counts
them; our prolog from the nodes' logs; medians over --runs, and the ratios to
bare (target: ours <= 0.25 x bare).

    python -m bench.import_storm [--runs 3] [--ranks 3 8 32] [--no-charliecloud]

Needs root.  Takes the mini-cluster to itself (see Cluster.alone), restarts
it, and leaves it down; stops every sshfs, socat and sftp-server it started,
also when interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import pytree, results
from bench.job_start import Bench, prolog_times
from bench.netfs import NetworkFS, Site
from ci.harness import cluster as harness
from ci.harness.oci import Layout

IMAGE = "docker:bench/storm:v1"
CASES = ("bare", "ours", "ch-run")


def publish_image(bench: Bench, record: harness.Record, layout: Layout) -> str:
    """Push the image to the cluster's registry, pull it through the gateway; its id."""
    layout.push("v1", f"{record.registry}/bench/storm:v1")
    bench.run("shifterimg", "pull", IMAGE)
    return bench.capture("shifterimg", "lookup", IMAGE)[1].strip()


def fill_export(site: Site, layout: harness.Layout, tree: str, image_id: str, charliecloud: bool) -> None:
    """On the server side: the bare tree, and the image unpacked for ch-run (which binds
    files over /etc/passwd, group, hosts and resolv.conf)."""
    shutil.copytree(tree, site.export / "tree")
    if charliecloud:
        unpacked = site.export / "ch-storm"
        subprocess.run(["unsquashfs", "-q", "-no-progress", "-d", str(unpacked),
                        str(layout.images / f"{image_id}.squashfs")], check=True, stdout=subprocess.DEVNULL)
        unpacked.chmod(0o755)
        for name in ("passwd", "group", "hosts", "resolv.conf"):
            (unpacked / "etc" / name).touch()
    site.give_to_user()


def command(case: str, site: Site, ranks: int) -> list[str]:
    srun = ["srun", "-N3", f"-n{ranks}", "--overcommit"]
    python = [pytree.PYTHON, "-I", "-c", pytree.IMPORTER]
    if case == "bare":
        return [*srun, *python, str(site.mount / "tree")]
    if case == "ours":
        return [*srun, f"--image={IMAGE}", "--autoshift", *python, pytree.IMAGE_TREE]
    return [*srun, shutil.which("ch-run") or "ch-run", str(site.mount / "ch-storm"), "--", *python,
            pytree.IMAGE_TREE]


def storm(bench: Bench, argv: list[str], ranks: int) -> dict:
    """One cold run: srun's wall time, when the last rank finished, and each rank's interpreter
    start, import (on a CPU, waiting for one; user and system time) and CPU time."""
    started = time.time()
    wall, out = bench.capture(*argv)
    lines = [line.split() for line in out.splitlines() if line.startswith("storm ")]
    if len(lines) != ranks:
        raise RuntimeError(f"{len(lines)} of {ranks} ranks reported: {out[-500:]}")
    columns = ("interpreter_start_s", "import_s", "import_on_cpu_s", "import_cpu_wait_s", "import_user_s",
               "import_system_s", "cpu_s")
    sample = {name: [float(f[2 + i]) for f in lines] for i, name in enumerate(columns)}
    return {"wall_s": wall, "last_rank_s": max(float(f[9]) for f in lines) - started, **sample,
            "modules": int(lines[0][1])}


def measure(record, bench, netfs, site, args) -> dict[str, list[dict]]:
    cases = [c for c in CASES if c != "ch-run" or args.charliecloud]
    samples: dict[str, list[dict]] = {}
    for run in range(args.runs):
        for ranks in args.ranks:
            for case in cases:
                bench.wait_idle(record)
                netfs.cold()
                sample = storm(bench, command(case, site, ranks), ranks)
                samples.setdefault(f"{case} x{ranks}", []).append(sample)
                print(f"run {run + 1} {case:>6} x{ranks:<3} wall {sample['wall_s']:6.2f} s, last rank "
                      f"{sample['last_rank_s']:6.2f} s, import median "
                      f"{statistics.median(sample['import_s']):6.2f} s (on a CPU "
                      f"{statistics.median(sample['import_on_cpu_s']):5.2f} s, waiting for one "
                      f"{statistics.median(sample['import_cpu_wait_s']):5.2f} s)", flush=True)
    return samples


def summarize(samples: dict[str, list[dict]], args) -> dict:
    medians = {}
    for key, runs in samples.items():
        medians[key] = {
            "wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
            "last_rank_s": round(statistics.median(r["last_rank_s"] for r in runs), 3),
            "rank_interpreter_start_median_s": round(
                statistics.median(statistics.median(r["interpreter_start_s"]) for r in runs), 3),
            "rank_import_median_s": round(statistics.median(statistics.median(r["import_s"]) for r in runs), 3),
            "rank_import_max_s": round(statistics.median(max(r["import_s"]) for r in runs), 3),
            "rank_cpu_median_s": round(statistics.median(statistics.median(r["cpu_s"]) for r in runs), 3),
            **_where_the_time_goes(runs),
        }
    ratios = {}
    for ranks in args.ranks:
        bare = medians[f"bare x{ranks}"]["wall_s"]
        for case in ("ours", "ch-run"):
            if f"{case} x{ranks}" in medians:
                ratios[f"{case} / bare, x{ranks} (wall)"] = round(medians[f"{case} x{ranks}"]["wall_s"] / bare, 3)
    return {"medians": medians, "ratios": ratios}


def _where_the_time_goes(runs: list[dict]) -> dict:
    """A rank's import, split by the kernel's accounting: on a CPU (in user space, in the
    kernel), waiting for one (the nodes share the machine's CPUs), and asleep (waiting for I/O:
    the network file system, the loop device); medians over ranks and runs."""
    ranks = [(total, cpu, wait) for r in runs
             for total, cpu, wait in zip(r["import_s"], r["import_on_cpu_s"], r["import_cpu_wait_s"])]
    return {"rank_import_on_cpu_s": round(statistics.median(cpu for _, cpu, _ in ranks), 3),
            "rank_import_user_s": round(statistics.median(u for r in runs for u in r["import_user_s"]), 3),
            "rank_import_system_s": round(statistics.median(s for r in runs for s in r["import_system_s"]), 3),
            "rank_import_cpu_wait_s": round(statistics.median(wait for _, _, wait in ranks), 3),
            "rank_import_asleep_s": round(statistics.median(total - cpu - wait for total, cpu, wait in ranks), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold runs of each case")
    parser.add_argument("--ranks", type=int, nargs="+", default=[3, 8, 32],
                        help="concurrent importers (3: one per node)")
    parser.add_argument("--no-charliecloud", dest="charliecloud", action="store_false")
    parser.add_argument("--packages", type=int, default=pytree.Shape.packages)
    parser.add_argument("--modules", type=int, default=pytree.Shape.modules, help="per package")
    parser.add_argument("--extensions", type=int, default=pytree.Shape.extensions)
    parser.add_argument("--sshfs-dir-cache", action="store_true",
                        help="keep sshfs's own attribute and name cache (default: dir_cache=no)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (the cluster, mounts, dropping the page cache)")
    args.charliecloud = args.charliecloud and shutil.which("ch-run") is not None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # clean up as for Ctrl-C
    shape = pytree.Shape(args.packages, args.modules, args.extensions)
    tree = pytree.build(shape)
    cl = harness.Cluster(harness.Layout(harness.REPO / ".cluster"))
    site = Site(cl.layout)
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp, cl.alone():
        layout = Layout(os.path.join(tmp, "layout"))
        pytree.image(layout, tree, "v1")            # before the cluster is up: others may use it meanwhile
        record = cl.up(started_by="bench/import_storm")
        load_at_start = os.getloadavg()          # the machine's, our cluster's daemons included
        try:
            bench = Bench(cl, record)
            image_id = publish_image(bench, record, layout)
            site.prepare()
            fill_export(site, cl.layout, tree, image_id, args.charliecloud)
            with NetworkFS(cl.layout, record, site.exports(), dir_cache=args.sshfs_dir_cache) as netfs:
                samples = measure(record, bench, netfs, site, args)
            prologs = prolog_times(cl.layout, since=0)     # the cluster is ours: every prolog is a storm's
        finally:
            site.remove()
        report = {      # saved before the cluster goes down: its leak check may raise
            "benchmark": "Python import storm: tree on sshfs vs image whose squashfs is on sshfs",
            "tree": {"modules": shape.total, "packages": shape.packages, "modules_per_package": shape.modules,
                     "c_extensions": shape.extensions, "bytes": _size(tree)},
            "runs": args.runs, "ranks": args.ranks, "nodes": 3, "sshfs_dir_cache": args.sshfs_dir_cache,
            **summarize(samples, args),
            "ours: prolog per node, median ms (the image mounted from the network file system, cold)": {
                what: round(statistics.median(times), 1) if times else None for what, times in prologs.items()},
            "target": "ours <= 0.25 x bare",
            "samples": samples,
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
        }
        print(json.dumps({k: report[k] for k in ("medians", "ratios")}, indent=1))
        print("written to", results.save("import_storm", report), flush=True)
    return 0


def _size(tree: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(tree) for f in files)


if __name__ == "__main__":
    sys.exit(main())
