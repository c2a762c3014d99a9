"""Slurm's client commands (squeue, scontrol, scancel), for root on a node or a controller.

Used where shifter changes a job or a node in slurmctld: the releaser
(comments, release, cancel of jobs held for a pull) and the prolog (the
reason a job failed, in its AdminComment; the reason a node was drained).
Run by absolute path with a clean environment; a failure is a
SlurmCommandError with the command's own message.
"""
from __future__ import annotations

import json
import shutil
import subprocess

from .errors import ShifterError

SEARCH_PATH = "/usr/bin:/usr/local/bin:/opt/slurm/bin"
TIMEOUT = 60


class SlurmCommandError(ShifterError):
    """A Slurm client command failed."""


class Slurm:
    """squeue, scontrol and scancel against the cluster of `slurm_conf` (None: the default)."""

    def __init__(self, slurm_conf: str | None = None):
        self.env = {"PATH": SEARCH_PATH}
        if slurm_conf:
            self.env["SLURM_CONF"] = slurm_conf

    def run(self, tool: str, *args: str) -> str:
        path = shutil.which(tool, path=SEARCH_PATH)
        if path is None:
            raise SlurmCommandError(f"{tool} is not installed in {SEARCH_PATH}")
        try:
            result = subprocess.run([path, *args], capture_output=True, text=True, env=self.env,
                                    stdin=subprocess.DEVNULL, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SlurmCommandError(f"{tool} {' '.join(args)} did not answer within {TIMEOUT} s") from None
        if result.returncode != 0:
            raise SlurmCommandError(f"{tool} {' '.join(args)}: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def pending_jobs(self) -> list[dict]:
        """squeue's JSON records of the pending jobs."""
        jobs = json.loads(self.run("squeue", "--json")).get("jobs", [])
        return [job for job in jobs if job.get("job_state") == "PENDING"]

    def set_comment(self, job_id: int, text: str) -> None:
        self.run("scontrol", "update", f"JobId={job_id}", f"Comment={text}")

    def set_admin_comment(self, job_id: int, text: str) -> None:
        self.run("scontrol", "update", f"JobId={job_id}", f"AdminComment={text}")

    def release(self, job_id: int) -> None:
        self.run("scontrol", "release", str(job_id))

    def cancel(self, job_id: int) -> None:
        self.run("scancel", str(job_id))

    def drain(self, node: str, reason: str) -> None:
        self.run("scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}")
