"""What the plugin costs a job that uses no shifter option.

Runs `srun -N1 true` (as the test user) on the mini-cluster in alternating
blocks of one run (each block restarts the cluster, since slurmd decides at
start whether the plugin stack has prolog/epilog hooks), with:

- absent:     no plugin in plugstack.conf;
- installed:  the plugin, unused (no shifter option);
- no-hooks:   the plugin built without its job_prolog/job_epilog symbols
              (-DSHIFTER_NO_JOB_SCRIPT, made here): what the plugin's own code
              costs, apart from the prolog and epilog processes slurmd starts
              for every job once any plugin has those hooks.

and reports the ratios of the medians to `absent`.  Target: <= 1.02.

    python -m bench.srun_overhead [--runs 40] [--blocks 4]

Needs root.  It takes the cluster to itself: it waits until no session
(test run, benchmark) uses it, keeps new ones out while it runs, and leaves
the cluster down.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench import results
from ci.harness import cluster as harness
from shifter_core import seam



def _time_sruns(cl: harness.Cluster, record, runs: int, warmup: int = 5) -> list[float]:
    env = cl.client_env(record, {"PATH": harness.DAEMON_PATH, "HOME": "/tmp"})
    argv = ["/usr/sbin/runuser", "-u", harness.TEST_USER, "--", "srun", "-N1", "-w", "n1", "true"]
    times = []
    for i in range(warmup + runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, cwd="/tmp", check=True, stdout=subprocess.DEVNULL)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def _build_without_hooks(directory: str) -> str:
    """The plugin compiled like setup.py does, minus the job prolog/epilog."""
    import sysconfig

    plugin = os.path.join(directory, "shifter_spank.so")
    macros = {"SHIFTER_LIBPYTHON": sysconfig.get_config_var("INSTSONAME"),
              "SHIFTER_PYTHON_DIR": "python" + sysconfig.get_config_var("VERSION"),
              "SHIFTER_MODULE_FILE": "_spank" + sysconfig.get_config_var("EXT_SUFFIX")}
    spank = os.path.join(harness.REPO, "spank")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", f"-I{spank}", f"-I{seam.write_header()}",
                    "-DSHIFTER_NO_JOB_SCRIPT", *[f'-D{k}="{v}"' for k, v in macros.items()],
                    "-o", plugin, *(os.path.join(spank, f"{name}.c") for name in ("plugin", "fastpath", "seam")),
                    "-ldl"], check=True)
    return plugin


def _measure(cl: harness.Cluster, args, samples: dict[str, list[float]]) -> None:
    """Blocks in the order absent, installed, no-hooks, absent, ...

    The no-hooks build lies next to the real plugin (it finds its Python part
    by its own location) under another name, removed afterwards."""
    variants = {"absent": False, "installed": True}
    built = os.path.join(harness.REPO, "shifter_core", "shifter_spank-nohooks.so")
    with tempfile.TemporaryDirectory() as tmp:
        os.replace(_build_without_hooks(tmp), built)
    variants["no-hooks"] = built
    order = list(variants)
    try:
        with cl.alone():
            for block in range(args.blocks):
                variant = order[block % len(order)]
                record = cl.up(with_plugin=variants[variant], started_by="bench/srun_overhead")
                samples[variant] += _time_sruns(cl, record, args.runs)
                leftovers = cl.down()
                if leftovers:
                    raise SystemExit("cluster down left: " + "; ".join(leftovers))
    finally:
        os.unlink(built)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="timed sruns per block")
    parser.add_argument("--blocks", type=int, default=6, help="blocks, rotating the three variants")
    args = parser.parse_args(argv)
    cl = harness.Cluster(harness.Layout(harness.REPO / ".cluster"))
    samples: dict[str, list[float]] = {"absent": [], "installed": [], "no-hooks": []}
    _measure(cl, args, samples)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    report = {
        "benchmark": "srun -N1 true, plugin installed but unused vs absent",
        "runs_per_variant": {k: len(v) for k, v in samples.items()},
        "median_ms": {k: round(v * 1000, 2) for k, v in medians.items()},
        "p90_ms": {k: round(statistics.quantiles(v, n=10)[-1] * 1000, 2) for k, v in samples.items()},
        "ratio_installed_over_absent": round(medians["installed"] / medians["absent"], 4),
        "ratio_no_hooks_over_absent": round(medians["no-hooks"] / medians["absent"], 4),
        "target": "<= 1.02",
    }
    print(json.dumps(report, indent=1))
    print("written to", results.save("srun_overhead", report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
