"""Job start that stays flat with node count, side by side, in one run.

Jobs of their own, `srun -N<k> ... sh -c 'echo $SLURM_JOB_ID'` for k = 1, 2, 3
(and more with --nodes), interleaved, with a cached image:

- plain:  no image (what Slurm itself costs per node count);
- ours:   `--image=docker:busybox:latest --autoshift` (the pin at submit, the
          prolog on every node, entering the container);
- ch-run: `ch-run <dir>` on the same image unpacked to a local directory (peer).

Reports the median wall time per case and node count, the ratios
time(k nodes) / time(1 node) (target for ours: <= 1.2), the prolog per node
as it logs itself (median over the jobs of each node count, and the slowest
node of each job), and how many lookups the gateway saw per job of ours
(its Metrics, on for this run; expected: 1 whatever the node count).

    python -m bench.start_scaling [--runs 20] [--nodes 1 2 3 8]

Needs root.  Takes the mini-cluster to itself (see Cluster.alone), starts it
with as many nodes as the largest count asks for and the gateway's lookup
metrics on, and leaves it down.
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
import time

from bench import results
from bench.job_start import IMAGE, PROLOG_LINE, Bench
from ci.harness import cluster as harness
from shifter_core.gwclient import GatewayClient


def _ch_run_dir(cl: harness.Cluster, bench: Bench) -> str:
    """The image unpacked where every node sees it; ch-run binds over these /etc files."""
    image_id = bench.capture("shifterimg", "lookup", IMAGE)[1].strip()
    unpacked = cl.layout.root / "bench-peer"
    shutil.rmtree(unpacked, ignore_errors=True)
    subprocess.run(["unsquashfs", "-q", "-no-progress", "-d", str(unpacked),
                    str(cl.layout.images / f"{image_id}.squashfs")], check=True, stdout=subprocess.DEVNULL)
    os.chmod(unpacked, 0o755)
    for name in ("passwd", "group", "hosts", "resolv.conf"):
        (unpacked / "etc" / name).touch()
    return str(unpacked)


def _argv(case: str, nodes: int, peer: str | None) -> list[str]:
    srun = ["srun", f"-N{nodes}"]
    task = ["/bin/sh", "-c", 'echo "$SLURM_JOB_ID"']
    if case == "ours":
        return [*srun, f"--image={IMAGE}", "--autoshift", *task]
    if case == "ch-run":
        return [*srun, shutil.which("ch-run") or "ch-run", peer, "--", *task]
    return [*srun, *task]


def measure(bench: Bench, counts: list[int], runs: int, peer: str | None) -> list[dict]:
    cases = ["plain", "ours"] + (["ch-run"] if peer else [])
    jobs = []
    for run in range(runs + 1):                     # the first round warms up
        for nodes in counts:
            for case in cases:
                started = time.time()
                seconds, out = bench.capture(*_argv(case, nodes, peer))
                ids = set(out.split())
                if len(out.split()) != nodes or len(ids) != 1:
                    raise RuntimeError(f"{case} on {nodes} nodes printed {out!r}")
                if run:
                    jobs.append({"case": case, "nodes": nodes, "seconds": seconds, "job": int(ids.pop()),
                                 "started": started, "ended": time.time()})
        if run:
            print(f"run {run}: " + ", ".join(f"{j['case']} N{j['nodes']} {j['seconds'] * 1000:.0f} ms"
                                             for j in jobs[-len(counts) * len(cases):]), flush=True)
    return jobs


def prologs(layout: harness.Layout, nodes: tuple[str, ...]) -> dict[int, list[float]]:
    """Job id -> the prolog's own time on each node where it ran, in ms."""
    found: dict[int, list[float]] = {}
    for node in nodes:
        text = (layout.log / f"slurmd-{node}.log").read_text(errors="replace")
        for match in PROLOG_LINE.finditer(text):
            found.setdefault(int(match.group(1)), []).append(float(match.group(3)))
    return found


def lookups_per_job(record: harness.Record, jobs: list[dict]) -> dict[int, list[int]]:
    """Node count -> lookups the gateway recorded during each job of ours."""
    client = GatewayClient(record.gateway_url, harness.SYSTEM)
    times = [entry["time"] for entry in client.metrics(limit=100000)]
    counts: dict[int, list[int]] = {}
    for job in jobs:
        if job["case"] == "ours":
            n = sum(job["started"] <= t <= job["ended"] for t in times)
            counts.setdefault(job["nodes"], []).append(n)
    return counts


def report(jobs: list[dict], prolog: dict[int, list[float]], lookups: dict[int, list[int]],
           counts: list[int]) -> dict:
    median_ms = {}
    for job in jobs:
        median_ms.setdefault(job["case"], {}).setdefault(job["nodes"], []).append(job["seconds"] * 1000)
    median_ms = {case: {n: round(statistics.median(v), 1) for n, v in by_n.items()}
                 for case, by_n in median_ms.items()}
    ratios = {f"{case}: N{n} / N1": round(by_n[n] / by_n[1], 3)
              for case, by_n in median_ms.items() for n in counts if n != 1 and 1 in by_n}
    per_node, slowest = {}, {}
    for job in jobs:
        if job["case"] == "ours":
            times = prolog.get(job["job"], [])
            if len(times) != job["nodes"]:
                raise RuntimeError(f"job {job['job']}: {len(times)} prolog lines for {job['nodes']} nodes")
            per_node.setdefault(job["nodes"], []).extend(times)
            slowest.setdefault(job["nodes"], []).append(max(times))
    return {
        "median_ms": median_ms,
        "ratios": ratios,
        "target": "ours: N3 / N1 <= 1.2 (and N8 / N1 if run)",
        "ours: prolog per node, median ms": {n: round(statistics.median(v), 1) for n, v in per_node.items()},
        "ours: slowest node's prolog per job, median ms": {n: round(statistics.median(v), 1)
                                                           for n, v in slowest.items()},
        "ours: gateway lookups per job": {n: sorted(set(v)) for n, v in lookups.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="jobs per case and node count")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3], help="node counts (1 first)")
    parser.add_argument("--no-charliecloud", dest="charliecloud", action="store_false")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (the cluster)")
    if 1 not in args.nodes:
        parser.error("the ratios are to 1 node: include 1 in --nodes")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    counts = sorted(set(args.nodes))
    nodes = harness.node_names(max(max(counts), len(harness.NODES)))
    cl = harness.Cluster(harness.Layout(harness.REPO / ".cluster"))
    load_before = os.getloadavg()
    with cl.alone():
        record = cl.up(started_by="bench/start_scaling", nodes=nodes, gateway_metrics=True)
        try:
            bench = Bench(cl, record)
            bench.run("shifterimg", "pull", IMAGE)
            peer = _ch_run_dir(cl, bench) if args.charliecloud and shutil.which("ch-run") else None
            jobs = measure(bench, counts, args.runs, peer)
            lookups = lookups_per_job(record, jobs)
            prolog = prologs(cl.layout, nodes)
        finally:
            shutil.rmtree(cl.layout.root / "bench-peer", ignore_errors=True)
        result = {      # saved before the cluster goes down: its leak check may raise
            "benchmark": "job start with a cached image against node count",
            "nodes_in_cluster": len(nodes), "runs": args.runs,
            **report(jobs, prolog, lookups, counts),
            "jobs": jobs,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
        }
        print(json.dumps({k: v for k, v in result.items() if k != "jobs"}, indent=1))
        print("written to", results.save("start_scaling", result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
