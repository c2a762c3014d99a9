"""`GET /metrics`: the gateway's Prometheus metrics, read from the database at scrape time.

Counters and histograms are the `counters` rows every gateway process adds
to (gateway/metrics.py); gauges are counted when scraped: jobs in the queue,
images and their bytes per system (as recorded by the gateway, so remote
systems count too), and the bytes of the layer cache on this host.  So any
API process answers for all of them, and the numbers agree whichever one
a scrape reaches.  Anonymous like the status page: counts only, no names.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            Metric)
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select

from shifter_core.imagestatus import ACTIVE, INIT, READY

from . import metrics
from .layercache import stored_bytes
from .models import Counter, Image, Job
from .services import services

QUEUE_STATES = tuple(state for state in ACTIVE if state != INIT)    # INIT is never stored

prometheus = Blueprint("prometheus", __name__)


@prometheus.get("/metrics")
def scrape():
    gw = services()
    gw.counters.flush()         # this process's last second; the others' arrive within FLUSH_SECONDS
    families = gw.in_session(lambda session: [*counted(session), *gauges(session, list(gw.config.systems))])
    families.append(_layer_cache(gw.config.cache_directory))
    return Response(generate_latest(_Families(families)), mimetype=CONTENT_TYPE_LATEST)


class _Families:
    """What generate_latest() reads: an object whose collect() gives metric families."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def counted(session) -> list[Metric]:
    """Every counter and histogram of gateway/metrics.py from the `counters` table."""
    rows = defaultdict(list)
    for name, labels, value in session.execute(select(Counter.name, Counter.labels, Counter.value)):
        rows[name].append((json.loads(labels), value))
    return [_histogram(metric, rows) if metric.buckets else _counter(metric, rows[metric.name])
            for metric in metrics.COUNTED]


def _counter(metric: metrics.Metric, rows: list[tuple[dict, float]]) -> Metric:
    names = sorted({key for labels, _ in rows for key in labels})
    family = CounterMetricFamily(metric.name, metric.help, labels=names)
    for labels, value in sorted(rows, key=lambda row: sorted(row[0].items())):
        family.add_metric([labels.get(name, "") for name in names], value)
    return family


def _histogram(metric: metrics.Metric, rows: dict[str, list[tuple[dict, float]]]) -> Metric:
    """Cumulative buckets (+Inf is the count) from the per-bucket rows."""
    buckets: dict[tuple, dict[float, float]] = defaultdict(dict)
    sums: dict[tuple, float] = {}
    for labels, value in rows[f"{metric.name}_bucket"]:
        bound = float(labels.pop("le"))
        buckets[tuple(sorted(labels.items()))][bound] = value
    for labels, value in rows[f"{metric.name}_sum"]:
        sums[tuple(sorted(labels.items()))] = value
    names = sorted({key for series in buckets for key, _ in series})
    family = HistogramMetricFamily(metric.name, metric.help, labels=names)
    for series in sorted(buckets):
        counts = buckets[series]
        cumulative, total = [], 0.0
        for bound in sorted({*metric.buckets, *counts, math.inf}):
            total += counts.get(bound, 0)
            cumulative.append((floatToGoString(bound), total))
        values = dict(series)
        family.add_metric([values.get(name, "") for name in names], cumulative, sums.get(series, 0.0))
    return family


def gauges(session, systems: list[str]) -> list[Metric]:
    """Queue depth and images per system, counted now."""
    queue = GaugeMetricFamily("shifter_gateway_queue_jobs", "Jobs waiting or running, by system and state",
                              labels=["system", "state"])
    waiting = dict.fromkeys(((system, state) for system in systems for state in QUEUE_STATES), 0)
    for system, state, count in session.execute(
            select(Job.system, Job.status, func.count()).where(Job.status.in_(QUEUE_STATES))
            .group_by(Job.system, Job.status)):
        waiting[(system, state)] = count
    for (system, state), count in sorted(waiting.items()):
        queue.add_metric([system, state], count)

    images = GaugeMetricFamily("shifter_gateway_images", "READY images, by system", labels=["system"])
    image_bytes = GaugeMetricFamily("shifter_gateway_image_bytes", "Bytes of the READY images' squashfs files"
                                    " in each system's image directory", labels=["system"])
    held = dict.fromkeys(systems, (0, 0))
    for system, count, total in session.execute(
            select(Image.system, func.count(), func.coalesce(func.sum(Image.size), 0))
            .where(Image.status == READY).group_by(Image.system)):
        held[system] = (count, total)
    for system, (count, total) in sorted(held.items()):
        images.add_metric([system], count)
        image_bytes.add_metric([system], total)
    return [queue, images, image_bytes]


def _layer_cache(directory: str) -> Metric:
    family = GaugeMetricFamily("shifter_gateway_layer_cache_bytes",
                               "Bytes in the layer cache (CacheDirectory) on the host that answered")
    size = stored_bytes(directory)
    if size is not None:
        family.add_metric([], size)
    return family
