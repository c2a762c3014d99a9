"""How fast the gateway answers lookups: job start on thousands of nodes.

Starts PostgreSQL, a docker-registry, munged and the gateway in its
production layout (gunicorn + one worker process), pulls the busybox test
image, then sends `--lookups` lookups of it from `--clients` concurrent
clients, each lookup on its own connection with its own munge credential,
closed once the answer is read, as distinct nodes would.  Credentials are made before the clock starts (each
node makes its own, on its own CPU).  Reports lookups per second, latency
p50/p99 and the wall time for all lookups; the issue's target is 4096
lookups in at most 2 s on this 2-core machine.  Also the CPU seconds the API
processes (gunicorn and its workers) spent per round: on a shared machine it
moves much less with other work than the wall time, so it is the figure to
compare two versions of the gateway by.

    python -m bench.gateway_load [--lookups 4096] [--clients 256] [--api-processes 3] [--rounds 3]
                                 [--gunicorn "-k sync"] [--metrics] [--lookup-cache 0]

The machine is shared: the load average before the run is recorded with the
result, since other work on the two cores changes the figures a lot.

Needs root (munged and PostgreSQL run under their own accounts); stops
everything it started.
"""
from __future__ import annotations

import argparse
import datetime
import os
import selectors
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse

from bench import results
from ci.harness.munged import MungeDaemon
from ci.harness.oci import Layout, busybox_image
from ci.harness.postgres import PostgresCluster
from ci.harness.registry import Registry
from shifter_core.munge import Munge
from tests.integration.gateway_fixtures import SYSTEM, GatewayProcess, client, gateway_config



def _storm(url: str, path: str, credentials: list[str], clients: int):
    """Send one GET per credential, `clients` connections at a time; (wall, latencies, statuses).

    Like a node's one-shot client (shifterimg, curl, requests), each
    connection sends one HTTP/1.1 request, reads the answer to its
    Content-Length and closes.  Non-blocking sockets and one selector: the
    load generator shares the machine's two cores with the gateway, so it
    must cost little per request.
    """
    parsed = urllib.parse.urlsplit(url)
    address = (parsed.hostname, parsed.port)
    heads = [f"GET {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nauthentication: {cred}\r\n\r\n".encode()
             for cred in credentials]
    pending = iter(heads)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    selector = selectors.DefaultSelector()

    def open_next() -> None:
        head = next(pending, None)
        if head is None:
            return
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(address)
        selector.register(sock, selectors.EVENT_WRITE, [head, bytearray(), time.perf_counter()])

    def finish(sock, state) -> None:
        selector.unregister(sock)
        sock.close()
        latencies.append(time.perf_counter() - state[2])
        status = int(bytes(state[1][9:12]) or 0)
        statuses[status] = statuses.get(status, 0) + 1
        open_next()

    started = time.perf_counter()
    for _ in range(clients):
        open_next()
    while selector.get_map():
        for key, events in selector.select():
            sock, state = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                sock.send(state[0])
                selector.modify(sock, selectors.EVENT_READ, state)
                continue
            chunk = sock.recv(65536)
            state[1] += chunk
            end = state[1].find(b"\r\n\r\n")
            if not chunk or (end >= 0 and len(state[1]) >= end + 4 + _content_length(state[1][:end])):
                finish(sock, state)
    return time.perf_counter() - started, latencies, statuses


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62     # no length: read until the server closes


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` and its children, living and reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{process}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(value) for value in fields[11:15])     # utime stime cutime cstime
    return total / ticks


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--api-processes", type=int, default=3, help="gunicorn workers")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (best and median reported)")
    parser.add_argument("--gunicorn", default="-k sync",
                        help="gunicorn worker options (default: %(default)s)")
    parser.add_argument("--metrics", action="store_true", help="record every lookup (Metrics: true)")
    parser.add_argument("--lookup-cache", type=float, default=1.0, metavar="SECONDS",
                        help="LookupCacheSeconds (0: every lookup queries PostgreSQL)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="shifter-bench-gw-") as workdir, \
            MungeDaemon() as munged, PostgresCluster(max_connections=300) as postgres, \
            Registry(os.path.join(workdir, "registry")) as registry:
        layout = Layout(os.path.join(workdir, "layout"))
        busybox_image(layout, "latest")
        image = f"{registry.host}/bench/busybox:latest"
        layout.push("latest", image)
        config = gateway_config(workdir, munged, registry, DatabaseURI=postgres.create_database("bench"),
                                Metrics=args.metrics, ImageExpirationTimeout="30:00:00:00",
                                LookupCacheSeconds=args.lookup_cache)
        with GatewayProcess(workdir, config, production=True, api_processes=args.api_processes,
                            gunicorn_options=tuple(args.gunicorn.split())) as gateway:
            gw_client = client(gateway, munged)
            while gw_client.pull(image)["status"] not in ("READY", "FAILURE"):
                time.sleep(0.2)
            path = f"/api/lookup/{SYSTEM}/docker/{urllib.parse.quote(image, safe='')}/"
            munge = Munge(munged.socket)
            rounds = []
            for _ in range(args.rounds + 1):                # the first round warms up
                credentials = [munge.encode() for _ in range(args.lookups)]
                cpu_before = _cpu_seconds(gateway.api.process.pid)
                rounds.append((*_storm(gateway.url, path, credentials, args.clients),
                               _cpu_seconds(gateway.api.process.pid) - cpu_before))
            rounds = rounds[1:]

    for wall, _, statuses, _ in rounds:
        if statuses != {200: args.lookups}:
            print(f"unexpected answers: {statuses}", file=sys.stderr)
            return 1
    walls = [wall for wall, _, _, _ in rounds]
    latencies = [lat for _, lats, _, _ in rounds for lat in lats]
    cpu = [seconds for _, _, _, seconds in rounds]
    result = {
        "bench": "gateway_load",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "lookups": args.lookups, "clients": args.clients, "api_processes": args.api_processes,
        "gunicorn": args.gunicorn, "load_average_before": load_before,
        "metrics": args.metrics, "lookup_cache_seconds": args.lookup_cache,
        "wall_s": {"best": min(walls), "median": statistics.median(walls), "all": walls},
        "lookups_per_s": args.lookups / statistics.median(walls),
        "latency_ms": {"p50": 1000 * _percentile(latencies, 0.50), "p99": 1000 * _percentile(latencies, 0.99)},
        "api_cpu_s": {"median": statistics.median(cpu), "all": cpu},
        "target": "4096 lookups in <= 2 s",
    }
    out = results.save("gateway_load", result)
    print(f"{args.lookups} lookups, {args.clients} clients, {args.api_processes} API processes"
          f" ({args.gunicorn}, metrics {'on' if args.metrics else 'off'}, lookup cache {args.lookup_cache:g} s,"
          f" load before {load_before:.1f}): "
          f"median {result['wall_s']['median']:.2f} s (best {result['wall_s']['best']:.2f} s), "
          f"{result['lookups_per_s']:.0f} lookups/s, p50 {result['latency_ms']['p50']:.1f} ms, "
          f"p99 {result['latency_ms']['p99']:.1f} ms, API CPU {result['api_cpu_s']['median']:.2f} s per round"
          f"  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
