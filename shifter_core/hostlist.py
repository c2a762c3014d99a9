"""Slurm host lists (`n[1-3,7],login01`) expanded without calling scontrol.

The prolog needs the job's node names to write /var/hostsfile; running
`scontrol show hostnames` would cost a process and a round trip to slurmctld
on every node at job start.

    >>> expand("n[1-3],gpu[08-09]x")
    ['n1', 'n2', 'n3', 'gpu08x', 'gpu09x']
"""
from __future__ import annotations

import re

from .errors import ShifterError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
MAX_HOSTS = 1 << 20


class HostlistError(ShifterError, ValueError):
    """A host list does not follow Slurm's syntax."""


def expand(text: str) -> list[str]:
    """All host names of `text`, in order, duplicates kept."""
    hosts: list[str] = []
    for item in _split_top_level(text):
        hosts.extend(_expand_item(item, text))
        if len(hosts) > MAX_HOSTS:
            raise HostlistError(f"host list {text!r} names more than {MAX_HOSTS} hosts")
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"unbalanced ']' in host list {text!r}")
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"unbalanced '[' in host list {text!r}")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_item(item: str, text: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)
    prefix, ranges, rest = item[:open_at], item[open_at + 1:close_at], item[close_at + 1:]
    tails = _expand_item(rest, text) if rest else [""]
    names = []
    for part in ranges.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise HostlistError(f"bad range {part!r} in host list {text!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low) or int(high) - int(low) > MAX_HOSTS:
            raise HostlistError(f"bad range {part!r} in host list {text!r}")
        width = len(low)
        for number in range(int(low), int(high) + 1):
            names.extend(f"{prefix}{number:0{width}d}{tail}" for tail in tails)
    return names
