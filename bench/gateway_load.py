"""How fast the gateway answers lookups: job start on thousands of nodes.

Starts PostgreSQL, a docker-registry, munged and the gateway in its
production layout (gunicorn + one worker process), pulls the busybox test
image, then sends `--lookups` lookups of it from `--clients` concurrent
clients, each lookup on its own connection with its own munge credential,
as distinct nodes would.  Credentials are made before the clock starts (each
node makes its own, on its own CPU).  Reports lookups per second, latency
p50/p99 and the wall time for all lookups; the issue's target is 4096
lookups in at most 2 s on this 2-core machine.

    python -m bench.gateway_load [--lookups 4096] [--clients 256] [--api-processes 3] [--rounds 3]

Needs root (munged and PostgreSQL run under their own accounts); stops
everything it started.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse

from ci.harness.munged import MungeDaemon
from ci.harness.oci import Layout, busybox_image
from ci.harness.postgres import PostgresCluster
from ci.harness.registry import Registry
from shifter_core.munge import Munge
from tests.integration.gateway_fixtures import SYSTEM, GatewayProcess, client, gateway_config

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


async def _lookup(host: str, port: int, request_head: bytes, latencies: list[float]) -> int:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request_head)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    writer.close()
    latencies.append(time.perf_counter() - started)
    return int(status_line.split()[1])


async def _storm(url: str, path: str, credentials: list[str], clients: int):
    parsed = urllib.parse.urlsplit(url)
    heads = [(f"GET {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nauthentication: {cred}\r\n"
              "Connection: close\r\n\r\n").encode() for cred in credentials]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(heads)

    async def one_client():
        for head in queue:
            status = await _lookup(parsed.hostname, parsed.port, head, latencies)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return time.perf_counter() - started, latencies, statuses


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--api-processes", type=int, default=3, help="gunicorn workers")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (best and median reported)")
    parser.add_argument("--metrics", action="store_true", help="record every lookup (Metrics: true)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="shifter-bench-gw-") as workdir, \
            MungeDaemon() as munged, PostgresCluster(max_connections=300) as postgres, \
            Registry(os.path.join(workdir, "registry")) as registry:
        layout = Layout(os.path.join(workdir, "layout"))
        busybox_image(layout, "latest")
        image = f"{registry.host}/bench/busybox:latest"
        layout.push("latest", image)
        config = gateway_config(workdir, munged, registry, DatabaseURI=postgres.create_database("bench"),
                                Metrics=args.metrics, ImageExpirationTimeout="30:00:00:00")
        with GatewayProcess(workdir, config, production=True, api_processes=args.api_processes) as gateway:
            gw_client = client(gateway, munged)
            while gw_client.pull(image)["status"] not in ("READY", "FAILURE"):
                time.sleep(0.2)
            path = f"/api/lookup/{SYSTEM}/docker/{urllib.parse.quote(image, safe='')}/"
            munge = Munge(munged.socket)
            rounds = []
            for _ in range(args.rounds + 1):                # the first round warms up
                credentials = [munge.encode() for _ in range(args.lookups)]
                rounds.append(asyncio.run(_storm(gateway.url, path, credentials, args.clients)))
            rounds = rounds[1:]

    for wall, _, statuses in rounds:
        if statuses != {200: args.lookups}:
            print(f"unexpected answers: {statuses}", file=sys.stderr)
            return 1
    walls = [wall for wall, _, _ in rounds]
    latencies = [lat for _, lats, _ in rounds for lat in lats]
    result = {
        "bench": "gateway_load",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "lookups": args.lookups, "clients": args.clients, "api_processes": args.api_processes,
        "metrics": args.metrics,
        "wall_s": {"best": min(walls), "median": statistics.median(walls), "all": walls},
        "lookups_per_s": args.lookups / statistics.median(walls),
        "latency_ms": {"p50": 1000 * _percentile(latencies, 0.50), "p99": 1000 * _percentile(latencies, 0.99)},
        "target": "4096 lookups in <= 2 s",
    }
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, f"gateway_load-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{args.lookups} lookups, {args.clients} clients, {args.api_processes} API processes: "
          f"median {result['wall_s']['median']:.2f} s (best {result['wall_s']['best']:.2f} s), "
          f"{result['lookups_per_s']:.0f} lookups/s, p50 {result['latency_ms']['p50']:.1f} ms, "
          f"p99 {result['latency_ms']['p99']:.1f} ms  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
