"""Where the benchmarks keep what they measured: bench/results/<name>-<time>.json."""
from __future__ import annotations

import json
import os
import time

DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def save(name: str, result: dict) -> str:
    """Write `result` as JSON and return the file's path (runs never overwrite each other)."""
    os.makedirs(DIRECTORY, exist_ok=True)
    path = os.path.join(DIRECTORY, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return path
