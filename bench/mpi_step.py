"""What running a PMIx step inside the image costs, on the mini-cluster.

`srun --mpi=pmix -N3 -n6 true` as steps of an allocation of the three nodes:

- plain:   the allocation has no image; Slurm's PMIx server, tasks on the nodes;
- image:   `salloc --image=<Open MPI image> --autoshift`: the same steps enter
           the container, and their tasks bind the step's PMIx directory
           (the Python path of the plugin: shifter_core/pmix.py);
- no PMIx: `srun --mpi=none` in that allocation, for scale (the C fast path).

in alternating blocks, and reports the medians and the ratio image / plain.

    python -m bench.mpi_step [--runs 20] [--blocks 2]

Needs root; a session of the cluster (brought up if needed).  The image is
tests/integration/test_mpi.py's, from ci/harness/debian.py (cached in .cache/).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench import results
from ci.harness import cluster as harness
from ci.harness import debian

STEP_LOOP = """for i in $(seq {warmup}); do srun {mpi} -n6 true; done
for i in $(seq {runs}); do s=$(date +%s%N); srun {mpi} -n6 true; e=$(date +%s%N); echo "step-ns $((e - s))"; done
"""


def _step_times(env: dict, runs: int, mpi: str, *options: str) -> list[float]:
    """Seconds per `srun <mpi> -n6 true` step inside one allocation of the three nodes."""
    argv = ["/usr/sbin/runuser", "-u", harness.TEST_USER, "--", "salloc", "-N3", "-n6", *options,
            "sh", "-c", STEP_LOOP.format(warmup=3, runs=runs, mpi=mpi)]
    out = subprocess.run(argv, env=env, cwd="/tmp", check=True, capture_output=True, text=True,
                         timeout=600).stdout
    return [int(line.split()[1]) / 1e9 for line in out.splitlines() if line.startswith("step-ns ")]


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=2)
    args = parser.parse_args(argv)
    cl = harness.Cluster(harness.Layout(harness.REPO / ".cluster"))
    with cl.session("bench/mpi_step") as record:
        env = cl.client_env(record, {"PATH": harness.DAEMON_PATH, "HOME": "/tmp"})
        mpi_image = debian.push_mpi_image(record.registry)
        subprocess.run(["/usr/sbin/runuser", "-u", harness.TEST_USER, "--", "shifterimg", "pull", mpi_image],
                       env=env, cwd="/tmp", check=True, stdout=subprocess.DEVNULL, timeout=900)
        image = (f"--image={mpi_image}", "--autoshift")
        plain, shifted, fast = [], [], []
        for _ in range(args.blocks):
            plain += _step_times(env, args.runs, "--mpi=pmix")
            shifted += _step_times(env, args.runs, "--mpi=pmix", *image)
            fast += _step_times(env, args.runs, "--mpi=none", *image)
    report = {
        "benchmark": "PMIx steps in the image (srun -N3 -n6 true, steps of an allocation)",
        "runs": len(plain),
        "plain: srun --mpi=pmix median_ms": _median_ms(plain),
        "image: srun --mpi=pmix median_ms": _median_ms(shifted),
        "image: srun --mpi=none median_ms": _median_ms(fast),
        "ratio_pmix_image_over_plain": round(statistics.median(shifted) / statistics.median(plain), 4),
        "ratio_none_image_over_pmix_plain": round(statistics.median(fast) / statistics.median(plain), 4),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=1))
    print("written to", results.save("mpi_step", report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
