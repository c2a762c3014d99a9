"""Jobs held until the gateway has pulled their image (holdJobsForPull=1).

An image that is not READY at submit cannot be pinned then, so the pin moves
to the moment the pull completes.  Four parts share the markers below; they
are the whole contract, and everything lives in slurmctld's job records, so
no part keeps state that a crash could lose:

* submit (spank/submit.py) asks the gateway to pull the image and, instead of
  a digest, sets the job-control variable SHIFTER_IMAGE_PENDING=<request>;
* slurmctld's job_submit.lua (slurm.conf.d/) queues such a job held with
  AdminComment "shifter: waiting for <request> to be pulled", and refuses a
  release while it waits without a pin, or a user's comment change that would
  drop its pin;
* the releaser (shifter_core/releaser.py) asks the gateway as the job's user:
  once READY it appends "shifter-pin=sha256:<hex>" to the job's Comment and
  releases it; a failed pull is written into AdminComment and ends the job;
* the prolog (spank/node.py) takes the pin from SLURM_JOB_COMMENT, which
  slurmd passes to it: nodes never ask the gateway.
"""
from __future__ import annotations

import re

from .imagestatus import CONVERSION, MISSING, TRANSFER

PENDING_VAR = "SHIFTER_IMAGE_PENDING"
ADMIN_PREFIX = "shifter: "
WAITING_PREFIX = "shifter: waiting for "
WAITING_SUFFIX = " to be pulled"
FAILED_INFIX = " could not be pulled: "
PINNED_INFIX = " was pulled; the job runs "
PIN_PREFIX = "shifter-pin=sha256:"

_PIN_RE = re.compile(r"(?:^|\s)shifter-pin=sha256:([0-9a-f]{64})(?=\s|$)")
_WAITING_RE = re.compile(r"^shifter: waiting for (\S+) to be pulled(?: \(.*\))?$", re.S)
_FAILED_RE = re.compile(r"^shifter: (\S+) could not be pulled: ", re.S)
_MB = 1_000_000
_MAX_PROGRESS = 300


def pinned_digest(comment: str | None) -> str | None:
    """The digest the releaser pinned into a job's comment (the last pin wins)."""
    found = _PIN_RE.findall(comment or "")
    return f"sha256:{found[-1]}" if found else None


def with_pin(comment: str | None, image_id: str) -> str:
    """The job's comment with the pin appended (the user's own comment kept)."""
    token = PIN_PREFIX + image_id
    return f"{comment} {token}" if comment else token


def waiting(request: str, detail: str = "") -> str:
    return f"{WAITING_PREFIX}{request}{WAITING_SUFFIX}" + (f" ({detail})" if detail else "")


def failed(request: str, reason: str) -> str:
    return f"{ADMIN_PREFIX}{request}{FAILED_INFIX}{reason}"


def pinned(request: str, digest: str) -> str:
    return f"{ADMIN_PREFIX}{request}{PINNED_INFIX}{digest}"


def waiting_for(admin_comment: str | None) -> str | None:
    """The request a job waits for, from its AdminComment; None if it does not wait."""
    match = _WAITING_RE.match(admin_comment or "")
    return match.group(1) if match else None


def failed_request(admin_comment: str | None) -> str | None:
    """The request whose pull failed, from the AdminComment of a job to end."""
    match = _FAILED_RE.match(admin_comment or "")
    return match.group(1) if match else None


def progress(record: dict, sizes: bool = True) -> str:
    """A pull's state as a person reads it: `PULLING 12.3 of 40.0 MB: Pulling layers`,
    `PENDING: attempt 1 failed ...`.  Without `sizes`, it changes only with the status."""
    status = str(record.get("status", "unknown"))
    done, total = record.get("bytes_done") or 0, record.get("bytes_total") or 0
    text = status
    if sizes and isinstance(total, int) and isinstance(done, int) and total > 0:
        text += f" {done / _MB:.1f} of {total / _MB:.1f} MB"
    message = str(record.get("status_message") or "").strip()
    if message and message != MISSING:
        text += f": {message}"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_PROGRESS else text[:_MAX_PROGRESS - 3] + "..."


def found_in_registry(record: dict) -> bool:
    """Has the gateway got past finding the image (its layers are counted or being converted)?"""
    total = record.get("bytes_total")
    return (isinstance(total, int) and total > 0) or record.get("status") in (CONVERSION, TRANSFER)
