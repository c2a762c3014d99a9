"""Job start that stays flat with node count, side by side, in one run.

Jobs of their own, `srun -N<k> ... sh -c 'echo $SLURM_JOB_ID'` for k = 1, 2, 3
and 8 (the cluster is started with as many slurmd nodes as the largest k),
interleaved, each on idle nodes, with a cached image:

- plain:   no image (what Slurm itself costs per node count);
- ours:    `--image=docker:busybox:latest --autoshift` (the pin at submit, the
           prolog on every node, entering the container);
- ch-run:  `ch-run <dir>` on the same image unpacked to a local directory (peer);
- ours, N x 1-node jobs: k jobs of one node each, started at once (the
           control: as many prologs at once as one k-node job has).

Reports the median wall time per case and node count and the ratios
time(k nodes) / time(1 node) (target for ours: <= 1.2); from the daemons'
logs, per job: allocation to the first task's launch, the prolog per node as
it logs itself, the last prolog's end to the first launch; and how many
lookups the gateway saw per job of ours (its Metrics, on for this run;
expected: 1 whatever the node count).

    python -m bench.start_scaling [--runs 20] [--nodes 1 2 3 8]

Needs root.  Takes the mini-cluster to itself (see Cluster.alone), starts it
with the nodes it needs and the gateway's lookup metrics on, and leaves it
down.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
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


def measure(bench: Bench, record: harness.Record, counts: list[int], runs: int, peer: str | None) -> list[dict]:
    """Every case at every node count, interleaved; `ours, N x 1-node jobs` starts N jobs of one
    node each at once (the control: as many prologs at once as one N-node job has)."""
    cases = ["plain", "ours"] + (["ch-run"] if peer else []) + ["ours, N x 1-node jobs"]
    jobs = []
    for run in range(runs + 1):                     # the first round warms up
        first = len(jobs)
        for nodes in counts:
            for case in cases:
                bench.wait_idle(record)             # no job waits for the last one's epilog
                started = time.time()
                if case.endswith("1-node jobs"):
                    ran = _one_node_jobs(bench, record.nodes[:nodes])
                else:
                    seconds, out = bench.capture(*_argv(case, nodes, peer))
                    ran = [(seconds, _job_id(out, nodes))]
                if run:
                    jobs += [{"case": case, "nodes": nodes, "seconds": seconds, "job": job,
                              "started": started, "ended": time.time()} for seconds, job in ran]
        if run:
            print(f"run {run}: " + ", ".join(f"{j['case']} N{j['nodes']} {j['seconds'] * 1000:.0f} ms"
                                             for j in jobs[first:] if not j["case"].endswith("1-node jobs")),
                  flush=True)
    return jobs


def _one_node_jobs(bench: Bench, nodes: tuple[str, ...]) -> list[tuple[float, int]]:
    """One `ours` job of one node on each of `nodes`, all started at once: (seconds, job id) each."""
    started = time.perf_counter()
    processes = [bench.start(*_argv("ours", 1, None)[:2], "-w", node, *_argv("ours", 1, None)[2:])
                 for node in nodes]
    ran = []
    for process in processes:
        out = process.communicate()[0]
        if process.returncode != 0:
            raise RuntimeError(f"a one-node job failed ({process.returncode}): {out!r}")
        ran.append((time.perf_counter() - started, _job_id(out, 1)))
    return ran


def _job_id(out: str, nodes: int) -> int:
    ids = set(out.split())
    if len(out.split()) != nodes or len(ids) != 1:
        raise RuntimeError(f"a job on {nodes} nodes printed {out!r}")
    return int(ids.pop())


STAMP = r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] "
ALLOCATED = re.compile(STAMP + r"sched: _slurm_rpc_allocate_resources JobId=(\d+) ", re.M)
LAUNCHED = re.compile(STAMP + r"launch task StepId=(\d+)\.0 ", re.M)
PROLOGGED = re.compile(STAMP + ".*" + PROLOG_LINE.pattern, re.M)


def timelines(layout: harness.Layout, nodes: tuple[str, ...]) -> dict[int, dict]:
    """Job id -> when slurmctld allocated it, when each node's prolog ended (how long it took,
    as it logs itself, and whether the node server ran it or it started Python), when the first
    task was launched; seconds since the epoch."""
    found: dict[int, dict] = {}

    def job(number: str) -> dict:
        return found.setdefault(int(number), {"prolog_ms": [], "prolog_end": [], "served": [], "launch": []})

    for match in ALLOCATED.finditer((layout.log / "slurmctld.log").read_text(errors="replace")):
        job(match.group(2))["allocated"] = _epoch(match.group(1))
    for node in nodes:
        text = (layout.log / f"slurmd-{node}.log").read_text(errors="replace")
        for match in PROLOGGED.finditer(text):
            job(match.group(2))["prolog_end"].append(_epoch(match.group(1)))
            job(match.group(2))["prolog_ms"].append(float(match.group(4)))
            job(match.group(2))["served"].append(match.group(5) == "in the node server")
        for match in LAUNCHED.finditer(text):
            job(match.group(2))["launch"].append(_epoch(match.group(1)))
    return found


def _epoch(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").timestamp()


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


def report(jobs: list[dict], timeline: dict[int, dict], lookups: dict[int, list[int]],
           counts: list[int]) -> dict:
    for job in jobs:
        if job["case"].startswith("ours") and len(timeline[job["job"]]["prolog_ms"]) != job["nodes"]:
            if not job["case"].endswith("1-node jobs") or len(timeline[job["job"]]["prolog_ms"]) != 1:
                raise RuntimeError(f"job {job['job']}: no prolog line on some node")

    def by_case(value) -> dict:
        """Case -> node count -> median of value(job, its timeline), over the jobs it applies to."""
        grouped: dict = {}
        for job in jobs:
            v = value(job, timeline[job["job"]])
            if v is not None:
                grouped.setdefault(job["case"], {}).setdefault(job["nodes"], []).append(v)
        return {case: {n: round(statistics.median(v), 1) for n, v in sorted(by_n.items())}
                for case, by_n in grouped.items()}

    def shifter(value):
        return lambda job, t: value(t) if job["case"].startswith("ours") else None

    wall = by_case(lambda job, t: job["seconds"] * 1000)
    served: dict = {}                   # the others started Python: a node's first prolog
    for job in jobs:
        if job["case"].startswith("ours"):
            count = served.setdefault(job["case"], {}).setdefault(job["nodes"], [0, 0])
            count[0] += sum(timeline[job["job"]]["served"])
            count[1] += len(timeline[job["job"]]["served"])
    return {
        "median_ms": wall,
        "ratios": {f"{case}: N{n} / N1": round(wall[case][n] / wall[case][1], 3)
                   for case in ("plain", "ours", "ch-run") if case in wall for n in counts if n != 1},
        "target": "ours: N3 / N1 <= 1.2 (and N8 / N1 if run)",
        "allocation to first task launch, median ms": by_case(
            lambda job, t: 1000 * (min(t["launch"]) - t["allocated"])),
        "prolog per node, median ms": by_case(shifter(lambda t: statistics.median(t["prolog_ms"]))),
        "slowest node's prolog, median ms": by_case(shifter(lambda t: max(t["prolog_ms"]))),
        "last prolog's end to first task launch, median ms": by_case(
            shifter(lambda t: 1000 * (min(t["launch"]) - max(t["prolog_end"])))),
        "prologs the node server ran / all prologs": served,
        "ours: gateway lookups per job": {n: sorted(set(v)) for n, v in lookups.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="jobs per case and node count")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3, 8], help="node counts (1 among them)")
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
    with cl.alone():
        record = cl.up(started_by="bench/start_scaling", nodes=nodes, gateway_metrics=True)
        load_at_start = os.getloadavg()          # the machine's, our cluster's daemons included
        try:
            bench = Bench(cl, record)
            bench.run("shifterimg", "pull", IMAGE)
            peer = _ch_run_dir(cl, bench) if args.charliecloud and shutil.which("ch-run") else None
            jobs = measure(bench, record, counts, args.runs, peer)
            lookups = lookups_per_job(record, jobs)
            timeline = timelines(cl.layout, nodes)
            for job in jobs:                        # kept with the results: the logs go with the next `up`
                job["timeline"] = timeline.get(job["job"])
        finally:
            shutil.rmtree(cl.layout.root / "bench-peer", ignore_errors=True)
        result = {      # saved before the cluster goes down: its leak check may raise
            "benchmark": "job start with a cached image against node count",
            "nodes_in_cluster": len(nodes), "runs": args.runs,
            **report(jobs, timeline, lookups, counts),
            "jobs": jobs,
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
        }
        print(json.dumps({k: v for k, v in result.items() if k != "jobs"}, indent=1))
        print("written to", results.save("start_scaling", result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
