"""What a run left behind: mounts, loop devices, namespaces, links, processes.

Containers live in mount namespaces that no shell sees, so mounts are read from
every /proc/<pid>/mountinfo (one reading per mount namespace), not just ours.
Two uses:

- `Snapshot.take()` before and after a run, `after.since(before)` is what the
  run added and did not remove (ci/test's final check on a machine of its own);
- `Scope(...).remains()` lists what is still there of one owner (the cluster's
  paths, namespaces, user and processes), which is what `ci/cluster down` checks
  on a machine that other work shares.

Command line: `python -m ci.harness.leaks snapshot FILE` then
`python -m ci.harness.leaks compare FILE` (exit 1 and a list when something leaked).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shifter_core.container import procfs

NAMESPACE_KINDS = ("mnt", "net", "uts", "ipc")
NETNS_DIR = "/run/netns"


@dataclass(frozen=True)
class Mount:
    namespace: int
    mount_id: int
    mount_point: str
    root: str
    fstype: str
    source: str

    def describe(self) -> str:
        return (f"mount {self.mount_point} ({self.fstype} from {self.source}, root {self.root})"
                f" in mount namespace {self.namespace}")


@dataclass(frozen=True)
class Loop:
    device: str
    backing_file: str

    def describe(self) -> str:
        return f"loop device {self.device} backed by {self.backing_file}"


@dataclass(frozen=True)
class Process:
    pid: int
    start_time: int
    ppid: int
    uid: int
    cmdline: str
    namespaces: tuple[int, ...]  # inodes, in NAMESPACE_KINDS order

    def describe(self) -> str:
        return f"process {self.pid} (uid {self.uid}): {self.cmdline}"


@dataclass(frozen=True)
class Snapshot:
    mounts: frozenset[Mount]
    loops: frozenset[Loop]
    netns: frozenset[str]
    links: frozenset[str]
    processes: frozenset[Process]

    @classmethod
    def take(cls) -> "Snapshot":
        processes = frozenset(_processes())
        return cls(
            mounts=frozenset(_mounts(processes)),
            loops=frozenset(_loops()),
            netns=frozenset(_netns_names()),
            links=frozenset(_bridge_and_veth_links()),
            processes=processes,
        )

    def since(self, before: "Snapshot") -> "Snapshot":
        """What is here now and was not in `before` (processes matched by pid and start time)."""
        return Snapshot(
            mounts=frozenset(m for m in self.mounts - before.mounts if not _iproute_bookkeeping(m)),
            loops=self.loops - before.loops,
            netns=self.netns - before.netns,
            links=self.links - before.links,
            processes=self.processes - before.processes,
        )

    def describe(self) -> list[str]:
        lines = [m.describe() for m in sorted(self.mounts, key=lambda m: (m.namespace, m.mount_id))]
        lines += [loop.describe() for loop in sorted(self.loops, key=lambda loop: loop.device)]
        lines += [f"network namespace {name}" for name in sorted(self.netns)]
        lines += [f"network link {name}" for name in sorted(self.links)]
        lines += [p.describe() for p in sorted(self.processes, key=lambda p: p.pid)]
        return lines

    def to_json(self) -> str:
        return json.dumps({field.name: [dataclasses.astuple(item) if dataclasses.is_dataclass(item) else item
                                        for item in getattr(self, field.name)]
                           for field in dataclasses.fields(self)})

    @classmethod
    def from_json(cls, text: str) -> "Snapshot":
        raw = json.loads(text)
        return cls(
            mounts=frozenset(Mount(*item) for item in raw["mounts"]),
            loops=frozenset(Loop(*item) for item in raw["loops"]),
            netns=frozenset(raw["netns"]),
            links=frozenset(raw["links"]),
            processes=frozenset(Process(*item[:5], tuple(item[5])) for item in raw["processes"]),
        )


@dataclass(frozen=True)
class Scope:
    """What belongs to one owner: paths, namespaces (by inode), users, pids, names."""

    paths: tuple[str, ...] = ()
    namespaces: frozenset[int] = frozenset()
    uids: frozenset[int] = frozenset()
    pids: frozenset[int] = frozenset()
    netns: frozenset[str] = frozenset()
    links: frozenset[str] = frozenset()

    def _mentions_path(self, text: str) -> bool:
        return any(text == p or text.startswith(p.rstrip("/") + "/") or f" {p}" in f" {text}"
                   for p in self.paths)

    def owns_mount(self, mount: Mount) -> bool:
        if any(self._mentions_path(text) for text in (mount.mount_point, mount.source)):
            return True
        # an nsfs mount pinning one of our namespaces looks like root "net:[4026532...]"
        return mount.fstype == "nsfs" and _inode_of(mount.root) in self.namespaces

    def owns_process(self, process: Process) -> bool:
        return (process.pid in self.pids or process.uid in self.uids
                or bool(set(process.namespaces) & self.namespaces)
                or self._mentions_path(process.cmdline))

    def select(self, snapshot: Snapshot) -> Snapshot:
        mounts = frozenset(m for m in snapshot.mounts if self.owns_mount(m))
        # a process in a mount namespace of its own that holds one of our mounts pins it
        pinning = {m.namespace for m in mounts} - {_initial_mount_namespace()}
        return Snapshot(
            mounts=mounts,
            loops=frozenset(loop for loop in snapshot.loops if self._mentions_path(loop.backing_file)),
            netns=snapshot.netns & self.netns,
            links=snapshot.links & self.links,
            processes=frozenset(p for p in snapshot.processes
                                if self.owns_process(p) or p.namespaces[0] in pinning),
        )

    def remains(self) -> list[str]:
        """Descriptions of everything of this scope still present; empty when clean."""
        return self.select(Snapshot.take()).describe()


def _inode_of(link_text: str) -> int | None:
    """'mnt:[4026531841]' -> 4026531841."""
    if link_text.endswith("]") and ":[" in link_text:
        return int(link_text[link_text.index(":[") + 2:-1])
    return None


def _initial_mount_namespace() -> int | None:
    try:
        return _inode_of(os.readlink("/proc/1/ns/mnt"))
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _process(pid: int) -> Process | None:
    stat = procfs.stat(pid)
    status = _read(f"/proc/{pid}/status")
    cmdline = _read(f"/proc/{pid}/cmdline")
    if stat is None or status is None or not cmdline:
        return None  # gone, or a kernel thread
    state, ppid, start_time = stat
    if state in ("Z", "X"):
        return None  # exited: PID 1 here does not reap, zombies are not leaks
    uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
    inodes = []
    for kind in NAMESPACE_KINDS:
        try:
            inodes.append(_inode_of(os.readlink(f"/proc/{pid}/ns/{kind}")) or 0)
        except OSError:
            return None
    return Process(pid=pid, start_time=start_time, ppid=ppid, uid=uid,
                   cmdline=cmdline.replace("\0", " ").strip(), namespaces=tuple(inodes))


def _processes() -> list[Process]:
    found = (_process(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return [p for p in found if p is not None]


def _mounts(processes: frozenset[Process]) -> list[Mount]:
    mounts: list[Mount] = []
    seen: set[int] = set()
    for process in processes:
        namespace = process.namespaces[0]
        if namespace in seen:
            continue
        text = _read(f"/proc/{process.pid}/mountinfo")
        if text is None:
            continue
        seen.add(namespace)
        for line in text.splitlines():
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            mounts.append(Mount(namespace=namespace, mount_id=int(fields[0]), root=_unescape(fields[3]),
                                mount_point=_unescape(fields[4]), fstype=tail[0],
                                source=_unescape(tail[1]) if len(tail) > 1 else ""))
    return mounts


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(escaped, plain)
    return text


def _loops() -> list[Loop]:
    loops = []
    for entry in Path("/sys/block").glob("loop*"):
        backing = _read(str(entry / "loop" / "backing_file"))
        if backing is not None:
            loops.append(Loop(device=f"/dev/{entry.name}", backing_file=backing.strip()))
    return loops


def _iproute_bookkeeping(mount: Mount) -> bool:
    """`ip netns add` turns /run/netns into a bind of itself the first time it runs
    after boot and leaves it for good: the machine's, not a leak of whoever ran first."""
    return mount.mount_point == mount.root == NETNS_DIR


def _netns_names() -> list[str]:
    try:
        return os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []


def _bridge_and_veth_links() -> list[str]:
    names = []
    for kind in ("bridge", "veth"):
        listing = subprocess.run(["/usr/sbin/ip", "-j", "link", "show", "type", kind],
                                 check=True, capture_output=True, text=True).stdout
        names += [link["ifname"] for link in json.loads(listing or "[]")]
    return names


def _ancestors(pid: int) -> set[int]:
    chain = set()
    while pid > 1:
        chain.add(pid)
        stat = procfs.stat(pid)
        if stat is None:
            break
        pid = stat[1]
    return chain


def lasting_leaks(before: Snapshot, settle_seconds: float = 1.0) -> Snapshot:
    """What the run that called us added since `before` and is still there `settle_seconds` later.

    A leaked process is an orphan (re-parented to PID 1, as daemons and lost
    children are) or still a descendant of our caller (the run's shell).
    Processes that merely pass by, this checker and other sessions' process
    trees are not leaks.
    """
    first = Snapshot.take().since(before)
    time.sleep(settle_seconds)
    now = Snapshot.take()
    second = now.since(before)
    mine = _ancestors(os.getpid())
    run_shell = os.getppid()
    parents = {p.pid: p.ppid for p in now.processes}

    def started_by_run(process: Process) -> bool:
        if process.ppid == 1:
            return True
        pid = process.ppid
        while pid in parents and pid > 1:
            if pid == run_shell:
                return True
            pid = parents[pid]
        return False
    return Snapshot(
        mounts=first.mounts & second.mounts,
        loops=first.loops & second.loops,
        netns=first.netns & second.netns,
        links=first.links & second.links,
        processes=frozenset(p for p in first.processes & second.processes
                            if p.pid not in mine and started_by_run(p)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ci.harness.leaks", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("snapshot", "compare"))
    parser.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.action == "snapshot":
        args.file.write_text(Snapshot.take().to_json(), encoding="utf-8")
        return 0
    leaks = lasting_leaks(Snapshot.from_json(args.file.read_text(encoding="utf-8"))).describe()
    for line in leaks:
        print(f"leaked: {line}", file=sys.stderr)
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
