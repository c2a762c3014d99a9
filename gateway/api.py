"""The gateway's REST API: Shifter's endpoints, with Shifter's defects fixed.

Endpoints (all end in a slash; `<tag>` may contain `/`, usually sent as %2F):

    GET  /api/list/<system>/                      {"list": [record...]}
    GET  /api/lookup/<system>/<type>/<tag>/       record
    POST /api/pull/<system>/<type>/<tag>/         record (poll by posting again)
    POST /api/doimport/<system>/<type>/<tag>/     record
    GET  /api/expire/<system>/<type>/<tag>/       {"status": true, "id": ...}   (admins)
    GET  /api/autoexpire/<system>/                {"status": [ids]}             (admins)
                                 others get Shifter's 200 {"status": false} on these two;
                                 an image that is not there, {"status": null}
    GET  /api/metrics/<system>/?limit=N           [lookup...]                   (admins)
    GET  /api/queue/<system>/                     {"list": [{"status", "image"}]}

Every request must carry a munge credential in the `authentication` header
(the queue too, unlike Shifter).  Bodies are JSON sent as exactly
`application/json` with a Content-Length, which Shifter's C client needs.
Errors, here and for any URL no other blueprint handles, have a real status
code and `{"status", "error", "message"}`.
"""
from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Blueprint, Response, jsonify, redirect, request, url_for
from werkzeug.exceptions import HTTPException

from shifter_core.errors import (AccessDenied, AuthenticationError, ImageNotFound, ImageRefError,
                                 ShifterError)

from shifter_core.imagestatus import MISSING

from . import auth, request_body
from .catalog import ImageView
from .db import DatabaseUnavailable
from .errors import BadRequest
from .models import Job
from .services import services

DEFAULT_METRICS_LIMIT = 10

_STATUS_OF = (
    (BadRequest, 400), (ImageRefError, 400), (AuthenticationError, 401), (AccessDenied, 403),
    (ImageNotFound, 404), (DatabaseUnavailable, 503), (ShifterError, 500),
)
# lookups by outcome (the Prometheus metric), from the answer's status
_LOOKUP_OUTCOMES = {400: "bad_request", 401: "unauthenticated", 403: "denied", 404: "not_found",
                    503: "unavailable", 500: "error"}

log = logging.getLogger(__name__)
api = Blueprint("api", __name__)


class UnknownSystem(ImageNotFound):
    """The URL names a system the gateway does not serve."""


def status_of(error: Exception) -> int:
    """The HTTP status that answers `error`."""
    return next((code for kind, code in _STATUS_OF if isinstance(error, kind)), 500)


def caller(system: str) -> auth.Caller:
    gw = services()
    if system not in gw.config.systems:
        raise UnknownSystem(f"the gateway does not serve a system called {system!r}")
    return gw.authenticator.authenticate(system, request.headers.get(auth.HEADER))


def queued(result):
    if isinstance(result, Job):
        services().wake_workers()
    return result


@api.get("/")
def index():
    """Shifter's answer for programs; a browser is sent to the status page."""
    if request.accept_mimetypes.best_match(["text/plain", "text/html"]) == "text/html":
        return redirect(url_for("status.overview"))
    return Response("{lookup,pull,expire,list}\n", mimetype="text/plain")


@api.get("/api/list/<system>/")
def list_images(system):
    who = caller(system)
    gw = services()
    images = gw.in_session(lambda session: gw.catalog.images(session, who, system))
    return jsonify({"list": [image_record(i) for i in images]})


@api.get("/api/lookup/<system>/<itype>/<path:tag>/")
def lookup(system, itype, tag):
    gw = services()
    counted = system if system in gw.config.systems else ""
    try:
        who = caller(system)
        image = gw.db.retry_if_reconnected(lambda: gw.catalog.lookup(gw.db.connection, who, system, itype, tag))
    except Exception as error:
        gw.counters.lookup(counted, _LOOKUP_OUTCOMES[status_of(error)])
        raise
    gw.counters.lookup(counted, "found", image.image_id)
    return jsonify(image_record(image))


@api.post("/api/pull/<system>/<itype>/<path:tag>/")
def pull(system, itype, tag):
    who = caller(system)
    gw = services()
    body = request_body.json_object(request)
    users, groups = request_body.id_list(body, "allowed_uids"), request_body.id_list(body, "allowed_gids")
    result = gw.in_session(lambda session: record(
        queued(gw.catalog.request_pull(session, who, system, itype, tag, users, groups))))
    return jsonify(result)


@api.post("/api/doimport/<system>/<itype>/<path:tag>/")
def doimport(system, itype, tag):
    who = caller(system)
    gw = services()
    body = request_body.json_object(request)
    missing = [key for key in ("filepath", "format") if not isinstance(body.get(key), str)]
    if missing:
        raise BadRequest(f"the import request needs {' and '.join(missing)} in its JSON body")
    users, groups = request_body.id_list(body, "allowed_uids"), request_body.id_list(body, "allowed_gids")
    return jsonify(gw.in_session(lambda session: job_record(queued(gw.catalog.request_import(
        session, who, system, itype, tag, body["filepath"], body["format"], users, groups)))))


def refused_unless_admin(who: auth.Caller, system: str):
    """Shifter's answer to a non-admin on expire and autoexpire: 200 {"status": false}
    (its client exits 0 on it), with the refusal in our log."""
    try:
        auth.require_admin(who, services().config.system(system))
    except AccessDenied as error:
        log.warning("%s %s refused: %s", request.method, request.path, error)
        return jsonify({"status": False})
    return None


@api.get("/api/expire/<system>/<itype>/<path:tag>/")
def expire(system, itype, tag):
    who = caller(system)
    gw = services()
    refusal = refused_unless_admin(who, system)
    if refusal is not None:
        return refusal
    try:
        image = gw.in_session(lambda session: gw.catalog.expire(session, who, system, itype, tag))
    except ImageNotFound as error:          # Shifter's answer: 200 {"status": null}
        log.info("%s %s: %s", request.method, request.path, error)
        return jsonify({"status": None})
    gw.wake_workers()
    return jsonify({"status": True, "id": image.image_id})


@api.get("/api/autoexpire/<system>/")
def autoexpire(system):
    who = caller(system)
    gw = services()
    refusal = refused_unless_admin(who, system)
    if refusal is not None:
        return refusal
    expired = gw.in_session(lambda session: gw.catalog.autoexpire(session, who, system))
    if expired:
        gw.wake_workers()
    return jsonify({"status": expired})


@api.get("/api/metrics/<system>/")
def metrics(system):
    who = caller(system)
    gw = services()
    auth.require_admin(who, gw.config.system(system))
    limit = request.args.get("limit", str(DEFAULT_METRICS_LIMIT))
    if not limit.isdigit() or int(limit) < 1:
        raise BadRequest("limit must be a positive whole number")
    rows = gw.in_session(lambda session: [
        {"user": m.user, "uid": m.uid, "system": m.system, "type": m.itype, "tag": m.tag,
         "id": m.image_id, "time": m.time} for m in gw.catalog.metrics(session, system, int(limit))])
    return jsonify(rows)


@api.get("/api/queue/<system>/")
def queue(system):
    caller(system)
    gw = services()
    jobs = gw.in_session(lambda session: [
        {"status": j.status, "image": f"{j.itype}:{j.tag}", "kind": j.kind,
         "status_message": j.status_message} for j in gw.catalog.queue.queued(session, system)])
    return jsonify({"list": jobs})


@api.app_errorhandler(ShifterError)
def shifter_error(error: ShifterError):
    status = status_of(error)
    if status == 500:
        log.error("%s %s: %s", request.method, request.path, error)
    return _error(status, str(error))


@api.app_errorhandler(HTTPException)
def http_error(error: HTTPException):
    return _error(error.code, error.description)


@api.app_errorhandler(Exception)
def unexpected(error: Exception):
    log.exception("%s %s failed", request.method, request.path)
    return _error(500, f"internal error in the gateway ({type(error).__name__}); see the gateway log")


def record(result: ImageView | Job) -> dict:
    return image_record(result) if isinstance(result, ImageView) else job_record(result)


def image_record(image: ImageView) -> dict:
    """Shifter's create_response for an image, plus CMD, USER and a few facts of ours."""
    return {
        "id": image.image_id, "system": image.system, "itype": image.itype,
        "tag": image.tags, "status": image.status,
        "userACL": image.user_acl, "groupACL": image.group_acl,
        "ENV": image.env, "ENTRY": image.entrypoint, "WORKDIR": image.workdir, "LABELS": image.labels,
        "last_pull": image.last_pull, "status_message": "",
        "CMD": image.cmd, "USER": image.user, "private": image.private, "format": image.format,
        "size": image.size, "arch": image.arch, "os": image.os, "expiration": image.expiration,
    }


def job_record(job: Job) -> dict:
    """A pull in progress (or failed), shaped like an image record."""
    return {
        "id": job.image_id or MISSING, "system": job.system, "itype": job.itype, "tag": [job.tag],
        "status": job.status, "userACL": job.user_acl, "groupACL": job.group_acl,
        "ENV": MISSING, "ENTRY": MISSING, "WORKDIR": MISSING, "LABELS": MISSING,
        "last_pull": job.created, "status_message": job.status_message,
        "bytes_done": job.bytes_done, "bytes_total": job.bytes_total, "attempts": job.attempts,
    }


def _error(status: int, message: str):
    response = jsonify({"status": status, "error": HTTPStatus(status).phrase, "message": message})
    response.status_code = status
    return response
