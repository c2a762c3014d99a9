"""The gateway's read-only status page: what admins and users look at instead of logs.

    GET /status/                               every system: images, pull queue, failures
    GET /status/<system>/images/<id>/          one image: configuration, layers, tags, lookups
    GET /status/<system>/queue                 the queue part alone (the page refreshes it)

Server-rendered (Jinja2); a small script refreshes the queue every
REFRESH_SECONDS and reloads the page when the list of images changed.  The
page is anonymous, so it shows only what gateway/public.py selects; put it
behind the site's web server as docs/gateway.md describes.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import time

from flask import Blueprint, abort, render_template, request
from werkzeug.exceptions import HTTPException

from shifter_core.errors import ShifterError

from . import public
from .api import status_of
from .services import services

REFRESH_SECONDS = 2
CHART_HEIGHT = 40
CONTENT_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                  " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

log = logging.getLogger(__name__)
status = Blueprint("status", __name__, url_prefix="/status", template_folder="templates",
                   static_folder="static")


@status.get("/")
def overview():
    gw = services()
    now = time.time()

    def read(session):
        return [_system_view(session, system, now) for system in gw.config.systems]
    return render_template("status/overview.html", systems=gw.in_session(read), now=now,
                           refresh_ms=REFRESH_SECONDS * 1000, failure_days=public.FAILURE_DAYS)


@status.get("/<system>/queue")
def queue(system):
    gw = services()
    _known(system)
    pulls, stamp = gw.in_session(lambda session: (public.queue(session, system),
                                                  public.images_stamp(session, system)))
    response = render_template("status/queue.html", system=system, queue=pulls, stamp=stamp, now=time.time())
    return response, {"Cache-Control": "no-store"}


@status.get("/<system>/images/<image_id>/")
def image(system, image_id):
    gw = services()
    _known(system)
    now = time.time()
    found = gw.in_session(lambda session: public.image(session, system, image_id, now))
    if found is None:
        abort(404, f"{system} has no public image {image_id}")
    return render_template("status/image.html", system=system, image=found, now=now,
                           chart=chart(found.usage, width=720, height=120))


@status.after_request
def _headers(response):
    response.headers["Content-Security-Policy"] = CONTENT_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@status.errorhandler(Exception)
def _error(error: Exception):
    if isinstance(error, HTTPException):
        code, message = error.code, error.description
    elif isinstance(error, ShifterError):
        code, message = status_of(error), str(error)
    else:
        log.exception("%s %s failed", request.method, request.path)
        code, message = 500, f"internal error in the gateway ({type(error).__name__}); see the gateway log"
    return render_template("status/error.html", code=code, message=message), code


def _known(system: str) -> None:
    if system not in services().config.systems:
        abort(404, f"the gateway does not serve a system called {system!r}")


def _system_view(session, system: str, now: float) -> dict:
    images = public.images(session, system, now)
    return {"name": system, "images": images, "queue": public.queue(session, system),
            "stamp": public.images_stamp(session, system), "failures": public.failures(session, system, now),
            "charts": {i.image_id: chart(i.usage, width=140, height=CHART_HEIGHT) for i in images}}


# --- charts --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclasses.dataclass(frozen=True)
class Chart:
    """Lookups per period as SVG bars, tallest = `height`; drawn by templates/status/chart.html."""

    width: int
    height: int
    bars: list[Bar]
    summary: str


def chart(usage: public.Usage, *, width: int, height: int) -> Chart:
    step = width / len(usage.counts)
    peak = max(usage.counts) or 1
    bars = []
    for index, count in enumerate(usage.counts):
        if count:
            tall = max(1.0, height * count / peak)
            start = usage.start + index * usage.period
            bars.append(Bar(x=round(index * step + step * 0.1, 2), y=round(height - tall, 2),
                            width=round(step * 0.8, 2), height=round(tall, 2),
                            title=f"{_period(start, usage.period)}: {count} lookup{'s' * (count != 1)}"))
    unit = "day" if usage.period >= public.DAY else "hour"
    span = len(usage.counts) * usage.period
    span_text = f"{span // public.DAY} days" if span % public.DAY == 0 else f"{span // public.HOUR} hours"
    return Chart(width=width, height=height, bars=bars,
                 summary=f"{usage.total} lookups in the last {span_text}, at most {max(usage.counts)} per {unit}")


def _period(start: float, period: int) -> str:
    moment = datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d") if period >= public.DAY else moment.strftime("%Y-%m-%d %H:00 UTC")


# --- template filters ------------------------------------------------------------

@status.app_template_filter("size")
def size(nbytes: int) -> str:
    """Bytes as people read them: 1.5 MB (powers of 1000, like registries and `du --si`)."""
    units = ("B", "kB", "MB", "GB", "TB")
    value, unit = float(nbytes), 0
    while value >= 1000 and unit < len(units) - 1:
        value, unit = value / 1000, unit + 1
    return f"{nbytes} B" if unit == 0 else f"{value:.1f} {units[unit]}"


@status.app_template_filter("when")
def when(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@status.app_template_filter("duration")
def duration(seconds: float) -> str:
    """3 s, 4 min, 2 h, 5 d: the largest unit that fits."""
    seconds = max(0, int(seconds))
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length} {unit}"
    return f"{seconds} s"
