"""The status words of an image's life at the gateway (Shifter's lifecycle).

The gateway stores and reports them; its clients (shifterimg, submit-time
pinning, the releaser) read them from its records.  Both take them from here.
"""
from __future__ import annotations

INIT, PENDING, PULLING, EXAMINATION, CONVERSION, TRANSFER = (
    "INIT", "PENDING", "PULLING", "EXAMINATION", "CONVERSION", "TRANSFER")
READY, FAILURE = "READY", "FAILURE"
EXPIRING, EXPIRED = "EXPIRING", "EXPIRED"
MISSING = "MISSING"       # Shifter's placeholder for what a record does not have yet

ACTIVE = (INIT, PENDING, PULLING, CONVERSION, TRANSFER)      # a job not finished
RUNNING = (PULLING, CONVERSION, TRANSFER)                    # a job a worker holds
IN_PROGRESS = (MISSING, INIT, PENDING, PULLING, EXAMINATION, CONVERSION, TRANSFER)   # clients keep polling
