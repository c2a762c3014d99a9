"""The gateway's REST API (Flask): Shifter's endpoints, with Shifter's defects fixed.

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
Errors have a real status code and `{"status", "error", "message"}`.

Production:  SHIFTER_GATEWAY_CONFIG=/etc/shifter/imagemanager.json \\
             gunicorn -w 3 -k sync -b 0.0.0.0:8000 --no-control-socket 'gateway.app:create_app()'
"""
from __future__ import annotations

import logging
import os
import threading
from http import HTTPStatus

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from shifter_core.errors import (AccessDenied, AuthenticationError, ImageNotFound, ImageRefError,
                                 ShifterError)

from . import auth
from .catalog import BadRequest, Catalog, ImageView
from .config import DEFAULT_PATH, GatewayConfig, load
from .db import Database, DatabaseUnavailable
from .models import Job
from .metrics import LookupLog
from .queue import JobQueue

CONFIG_ENV = "SHIFTER_GATEWAY_CONFIG"
DEFAULT_METRICS_LIMIT = 10
MISSING = "MISSING"

_STATUS_OF = (
    (BadRequest, 400), (ImageRefError, 400), (AuthenticationError, 401), (AccessDenied, 403),
    (ImageNotFound, 404), (DatabaseUnavailable, 503), (ShifterError, 500),
)

log = logging.getLogger(__name__)


class UnknownSystem(ImageNotFound):
    """The URL names a system the gateway does not serve."""


def create_app(config: GatewayConfig | str | None = None, *, db: Database | None = None,
               job_submitted: threading.Event | None = None) -> Flask:
    """The WSGI application.  `config` defaults to $SHIFTER_GATEWAY_CONFIG.

    `job_submitted` is set whenever a job is queued, so in-process workers
    start at once instead of at their next poll.
    """
    if not isinstance(config, GatewayConfig):
        config = load(config or os.environ.get(CONFIG_ENV, DEFAULT_PATH))
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for warning in config.warnings:
        log.warning("configuration: %s", warning)
    db = db or Database(config.database_uri)
    catalog = Catalog(config, JobQueue.from_config(config), lookup_log=LookupLog(db))
    authenticator = auth.Authenticator(config)
    app = Flask("shifter-gateway")
    app.json.sort_keys = False
    app.json.compact = True

    def caller(system: str) -> auth.Caller:
        if system not in config.platforms:
            raise UnknownSystem(f"the gateway does not serve a system called {system!r}")
        return authenticator.authenticate(system, request.headers.get(auth.HEADER))

    def queued(result):
        if isinstance(result, Job) and job_submitted is not None:
            job_submitted.set()
        return result

    @app.get("/")
    def index():
        return Response("{lookup,pull,expire,list}\n", mimetype="text/plain")

    def in_session(work):
        """work(session) in a transaction, repeated once after a database restart."""
        def attempt():
            with db.session() as session:
                return work(session)
        return db.retry_if_reconnected(attempt)

    @app.get("/api/list/<system>/")
    def list_images(system):
        who = caller(system)
        images = in_session(lambda session: catalog.images(session, who, system))
        return jsonify({"list": [image_record(i) for i in images]})

    @app.get("/api/lookup/<system>/<itype>/<path:tag>/")
    def lookup(system, itype, tag):
        who = caller(system)
        image = db.retry_if_reconnected(lambda: catalog.lookup(db.connection, who, system, itype, tag))
        return jsonify(image_record(image))

    @app.post("/api/pull/<system>/<itype>/<path:tag>/")
    def pull(system, itype, tag):
        who = caller(system)
        body = _json_body()
        users, groups = _id_list(body, "allowed_uids"), _id_list(body, "allowed_gids")
        result = in_session(lambda session: record(
            queued(catalog.request_pull(session, who, system, itype, tag, users, groups))))
        return jsonify(result)

    @app.post("/api/doimport/<system>/<itype>/<path:tag>/")
    def doimport(system, itype, tag):
        who = caller(system)
        body = _json_body()
        missing = [key for key in ("filepath", "format") if not isinstance(body.get(key), str)]
        if missing:
            raise BadRequest(f"the import request needs {' and '.join(missing)} in its JSON body")
        users, groups = _id_list(body, "allowed_uids"), _id_list(body, "allowed_gids")
        return jsonify(in_session(lambda session: job_record(queued(catalog.request_import(
            session, who, system, itype, tag, body["filepath"], body["format"], users, groups)))))

    def refused_unless_admin(who: auth.Caller, system: str):
        """Shifter's answer to a non-admin on expire and autoexpire: 200 {"status": false}
        (its client exits 0 on it), with the refusal in our log."""
        try:
            auth.require_admin(who, config.platform(system))
        except AccessDenied as error:
            log.warning("%s %s refused: %s", request.method, request.path, error)
            return jsonify({"status": False})
        return None

    @app.get("/api/expire/<system>/<itype>/<path:tag>/")
    def expire(system, itype, tag):
        who = caller(system)
        refusal = refused_unless_admin(who, system)
        if refusal is not None:
            return refusal
        try:
            image = in_session(lambda session: catalog.expire(session, who, system, itype, tag))
        except ImageNotFound as error:          # Shifter's answer: 200 {"status": null}
            log.info("%s %s: %s", request.method, request.path, error)
            return jsonify({"status": None})
        if job_submitted is not None:
            job_submitted.set()
        return jsonify({"status": True, "id": image.image_id})

    @app.get("/api/autoexpire/<system>/")
    def autoexpire(system):
        who = caller(system)
        refusal = refused_unless_admin(who, system)
        if refusal is not None:
            return refusal
        expired = in_session(lambda session: catalog.autoexpire(session, who, system))
        if expired and job_submitted is not None:
            job_submitted.set()
        return jsonify({"status": expired})

    @app.get("/api/metrics/<system>/")
    def metrics(system):
        who = caller(system)
        auth.require_admin(who, config.platform(system))
        limit = request.args.get("limit", str(DEFAULT_METRICS_LIMIT))
        if not limit.isdigit() or int(limit) < 1:
            raise BadRequest("limit must be a positive whole number")
        rows = in_session(lambda session: [
            {"user": m.user, "uid": m.uid, "system": m.system, "type": m.itype, "tag": m.tag,
             "id": m.image_id, "time": m.time} for m in catalog.metrics(session, system, int(limit))])
        return jsonify(rows)

    @app.get("/api/queue/<system>/")
    def queue(system):
        caller(system)
        jobs = in_session(lambda session: [
            {"status": j.status, "image": f"{j.itype}:{j.tag}", "kind": j.kind,
             "status_message": j.status_message} for j in catalog.queue.queued(session, system)])
        return jsonify({"list": jobs})

    @app.errorhandler(ShifterError)
    def shifter_error(error: ShifterError):
        status = next(code for kind, code in _STATUS_OF if isinstance(error, kind))
        if status == 500:
            log.error("%s %s: %s", request.method, request.path, error)
        return _error(status, str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return _error(error.code, error.description)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"internal error in the gateway ({type(error).__name__}); see the gateway log")

    app.extensions["shifter"] = {"config": config, "db": db, "catalog": catalog}
    return app


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


def _json_body() -> dict:
    if not request.get_data():
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _id_list(body: dict, key: str) -> list[int]:
    """Shifter's "1000,1001" strings (or JSON lists) to a list of positive ids."""
    value = body.get(key)
    if value in (None, ""):
        return []
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else None
    if items is None:
        raise BadRequest(f"{key} must be a comma-separated string or a list of numeric ids")
    ids = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit():
            raise BadRequest(f"{key} holds {text!r}: give numeric ids (shifterimg resolves names)")
        if int(text) > 0 and int(text) not in ids:
            ids.append(int(text))
    return ids
