"""Job start with a cached image, on the mini-cluster, in one run.

Reports, side by side:
- the prolog per node: the whole job_prolog callback, from the moment the
  plugin took it (target <= 40 ms), separately for the prologs the node
  server ran and for those that started Python (the first on each node), and
  the container build inside it (loop mount, overlay, site files, binds;
  target <= 15 ms), medians over many jobs, from the lines the prolog logs;
- `srun --image --autoshift -n2 true` against `srun -n2 true` (target
  <= 1.15): as steps of an allocation (salloc, with and without the image:
  the container exists, only entering it counts; target <= 1.05), as steps
  with an image of their own in an allocation without one (each step builds
  and removes its container: docs/steps.md; target <= 1.5), and as jobs of their own
  (each srun allocates, so the submit-time pin, the prolog and the epilog
  count too), ratios of the medians;
- when Charliecloud is installed, `srun -n2 ch-run <dir> -- true` with the
  same image unpacked, as a peer (target: not slower than it), interleaved
  with the two jobs.

    python -m bench.job_start [--runs 30]

Needs root; a session of the cluster (brought up if needed, see
ci/harness/cluster.py: Cluster.session).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from bench import results
from ci.harness import cluster as harness

IMAGE = "docker:busybox:latest"
PROLOG_LINE = re.compile(r"shifter: job (\d+) on (\w+) runs .* \(prolog ([\d.]+)ms, ([^;]*);"
                         r" container mount=([\d.]+)ms setup=([\d.]+)ms total=([\d.]+)ms\)")


class Bench:
    def __init__(self, cl: harness.Cluster, record):
        self.cl = cl
        self.env = cl.client_env(record, {"PATH": harness.DAEMON_PATH, "HOME": "/tmp"})

    def run(self, *argv: str) -> float:
        return self.capture(*argv)[0]

    def wait_idle(self, record, timeout: float = 60) -> None:
        """No job left and no node completing: the previous job's epilog has run everywhere."""
        if not harness._wait_until(lambda: set(self.cl.node_states(record).values()) == {"idle"}, timeout, 0.1):
            raise RuntimeError(f"nodes not idle after {timeout:.0f} s: {self.cl.node_states(record)}")

    def capture(self, *argv: str) -> tuple[float, str]:
        """Run `argv` as the test user; (seconds it took, its standard output)."""
        started = time.perf_counter()
        process = self.start(*argv)
        try:
            out = process.communicate()[0]
        except BaseException:           # interrupted: runuser passes SIGTERM on to srun
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        if process.returncode != 0:
            raise subprocess.CalledProcessError(process.returncode, argv, out)
        return time.perf_counter() - started, out

    def start(self, *argv: str) -> subprocess.Popen:
        """Start `argv` as the test user, its standard output piped."""
        return subprocess.Popen(["/usr/sbin/runuser", "-u", harness.TEST_USER, "--", *argv], env=self.env,
                                cwd="/tmp", stdout=subprocess.PIPE, text=True)


STEP_LOOP = """for i in $(seq {warmup}); do srun {step} -n2 true; done
for i in $(seq {runs}); do s=$(date +%s%N); srun {step} -n2 true; e=$(date +%s%N); echo "step-ns $((e - s))"; done
"""


def _step_times(bench: "Bench", runs: int, *options: str, step: str = "") -> list[float]:
    """Seconds per `srun <step> -n2 true` step inside one allocation of one node."""
    argv = ["/usr/sbin/runuser", "-u", harness.TEST_USER, "--", "salloc", "-N1", "-n2", *options,
            "sh", "-c", STEP_LOOP.format(warmup=3, runs=runs, step=step)]
    out = subprocess.run(argv, env=bench.env, cwd="/tmp", check=True, capture_output=True, text=True).stdout
    return [int(line.split()[1]) / 1e9 for line in out.splitlines() if line.startswith("step-ns ")]


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def prolog_times(layout: harness.Layout, since: int) -> dict[str, list[float]]:
    """Per node and job: the prologs the node server ran, those that started Python (the
    first on each node), and the container build in either."""
    times = {"prolog_ms": [], "prolog_starting_python_ms": [], "container_ms": []}
    for node in harness.NODES:
        text = (layout.log / f"slurmd-{node}.log").read_text(errors="replace")
        for match in PROLOG_LINE.finditer(text):
            if int(match.group(1)) > since:
                served = match.group(4) == "in the node server"
                times["prolog_ms" if served else "prolog_starting_python_ms"].append(float(match.group(3)))
                times["container_ms"].append(float(match.group(7)))
    return times


def _last_job_id(bench: Bench) -> int:
    out = subprocess.run(["scontrol", "-o", "show", "jobs"], env=bench.env, capture_output=True,
                         text=True).stdout
    ids = [int(m) for m in re.findall(r"JobId=(\d+)", out)]
    return max(ids, default=0)


@contextlib.contextmanager
def _charliecloud_peer(layout: harness.Layout):
    """argv of Charliecloud's ch-run on the cached image unpacked to a directory (its
    fastest mode; two ch-runs of one user on one node cannot share its squashfs mount
    point), or None when it is not installed."""
    ch_run = shutil.which("ch-run")
    images = sorted((layout.root / "images").glob("*.squashfs"))
    if not ch_run or not images:
        yield None
        return
    unpacked = layout.root / "bench-peer"
    subprocess.run(["unsquashfs", "-q", "-f", "-d", str(unpacked), str(images[0])], check=True,
                   stdout=subprocess.DEVNULL)
    os.chmod(unpacked, 0o755)
    for name in ("passwd", "group", "hosts", "resolv.conf"):     # ch-run binds over these
        (unpacked / "etc" / name).touch()
    try:
        yield ["srun", "-n2", ch_run, str(unpacked), "--", "/bin/true"]
    finally:
        shutil.rmtree(unpacked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    cl = harness.Cluster(harness.Layout(harness.REPO / ".cluster"))
    plain_argv = ["srun", "-n2", "true"]
    shifted_argv = ["srun", f"--image={IMAGE}", "--autoshift", "-n2", "true"]
    with cl.session("bench/job_start") as record:
        bench = Bench(cl, record)
        bench.run("shifterimg", "pull", IMAGE)
        first_job = _last_job_id(bench)
        with _charliecloud_peer(cl.layout) as peer_argv:
            cases = [plain_argv, shifted_argv] + ([peer_argv] if peer_argv else [])
            for _ in range(3):          # warm-up: caches, the image's loop device, the node servers
                for case in cases:
                    bench.run(*case)
            times: list[list[float]] = [[] for _ in cases]
            for _ in range(args.runs):
                for case, samples in zip(cases, times):
                    samples.append(bench.run(*case))
        step_plain, step_shifted, step_own = [], [], []
        for _ in range(2):
            step_plain += _step_times(bench, args.runs // 2)
            step_shifted += _step_times(bench, args.runs // 2, f"--image={IMAGE}", "--autoshift")
            step_own += _step_times(bench, args.runs // 2, step=f"--image={IMAGE} --autoshift")
        prolog = prolog_times(cl.layout, first_job)
    plain, shifted = times[0], times[1]
    report = {
        "benchmark": "job start with a cached image (3-node mini-cluster)",
        "runs": args.runs,
        "prolog_per_node_median_ms": _median(prolog["prolog_ms"]),
        "prolog_samples": len(prolog["prolog_ms"]),
        "target_prolog_ms": "<= 40",
        "prolog_starting_python_median_ms": _median(prolog["prolog_starting_python_ms"]),
        "prolog_starting_python_samples": len(prolog["prolog_starting_python_ms"]),
        "container_build_per_node_median_ms": _median(prolog["container_ms"]),
        "target_container_build_ms": "<= 15",
        "steps: srun -n2 true median_ms": _median_ms(step_plain),
        "steps: srun --image --autoshift -n2 true median_ms": _median_ms(step_shifted),
        "steps: ratio_autoshift_over_plain": round(statistics.median(step_shifted)
                                                   / statistics.median(step_plain), 4),
        "target_steps_ratio": "<= 1.05",
        "steps with their own image (allocation without one) median_ms": _median_ms(step_own),
        "steps: ratio_own_image_over_plain": round(statistics.median(step_own) / statistics.median(step_plain), 4),
        "target_own_image_ratio": "<= 1.5",
        "jobs: srun -n2 true median_ms": _median_ms(plain),
        "jobs: srun --image --autoshift -n2 true median_ms": _median_ms(shifted),
        "jobs: ratio_autoshift_over_plain": round(statistics.median(shifted) / statistics.median(plain), 4),
        "target_ratio": "<= 1.15, and not slower than the peer",
        "peer: srun -n2 ch-run <dir> -- true median_ms": _median_ms(times[2]) if peer_argv else
        "charliecloud not installed",
        "jobs: ratio_autoshift_over_peer": round(statistics.median(shifted) / statistics.median(times[2]), 4)
        if peer_argv else None,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=1))
    print("written to", results.save("job_start", report))
    return 0


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


if __name__ == "__main__":
    sys.exit(main())
