"""Workers: take jobs from the queue and carry them out.

A pull runs gateway.pipeline.fetch_image for the system's destination, then
publishes what it built in three steps, so the image directory and the
database agree whatever fails (gateway/reconcile.py):

1. the job names the image id it is about to write (`jobs.image_id`), so no
   one takes its files for orphans;
2. the squashfs is put in place, unpublished;
3. in one transaction holding the image's lock: who may use the image is
   decided (Catalog.access_after_pull, once), its metadata written (which
   publishes it), its files checked, and it is recorded READY.

If any step fails, the image's files are made to agree with the database
again (reconcile.settle) before the job fails or is retried.  While a job
runs, a heartbeat thread stamps it; if this worker dies, another one puts the
job back (queue.recover) and pulls again, which is safe because publishing a
digest twice gives the same files.  A worker told to stop abandons its job at
the next progress report and puts it back in the queue at once.

    worker = Worker(config, db)
    worker.run(stop_event)       # until stop_event is set
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
import uuid

from shifter_core import imageref
from shifter_core.errors import (AccessDenied, ImageContentError, ImageNotFound, ImageRefError,
                                 ShifterError)
from shifter_core.imagestatus import PULLING, RUNNING, TRANSFER
from shifter_core.imagestore import ImageMeta

from . import db as database
from . import reconcile
from .catalog import Catalog
from .config import GatewayConfig, pipeline_settings
from .db import Database, DatabaseUnavailable
from .errors import BadRequest, RegistryAuthError
from .models import EXPIRE, IMPORT, PULL, Job
from .pipeline import fetch_image
from .queue import JobQueue, LostJob
from .transfer import Destination, destination

log = logging.getLogger(__name__)

# Errors that another attempt cannot fix.
PERMANENT_ERRORS = (ImageNotFound, ImageRefError, RegistryAuthError, ImageContentError, AccessDenied,
                    BadRequest)
PROGRESS_INTERVAL = 0.5
IDLE_POLL = 0.5
SQUASHFS_MAGIC = b"hsqs"


class Stopping(Exception):
    """The worker was told to stop: its job goes back to the queue."""


class Worker:
    def __init__(self, config: GatewayConfig, db: Database, *, systems: list[str] | None = None,
                 name: str | None = None):
        self.config = config
        self.db = db
        self.systems = systems
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queue = JobQueue.from_config(config)
        self.catalog = Catalog(config, self.queue)
        self.stop = threading.Event()
        self._destinations = {}

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Work until `stop` is set; `wake` cuts the idle wait short when a job arrives."""
        self.stop = stop
        log.info("worker %s started for %s", self.name, ", ".join(self.systems or self.config.systems))
        while not stop.is_set():
            try:
                busy = self.run_once()
            except DatabaseUnavailable as e:
                log.warning("worker %s: %s", self.name, e)
                busy = False
            if not busy:
                (wake or stop).wait(IDLE_POLL)
                if wake is not None:
                    wake.clear()

    def run_once(self) -> bool:
        """Recover dead workers' jobs, then do one job; False when there was none."""
        with self.db.session() as session:
            recovered = self.queue.recover(session)
            abandoned = self.queue.abandoned_images(session, recovered) if recovered else []
        if recovered:
            log.warning("requeued jobs %s of workers that stopped responding", recovered)
        for system, image_id in abandoned:
            reconcile.settle_quietly(self.db, self.catalog, system, self._destination(system), image_id)
        with self.db.session() as session:
            job = self.queue.claim(session, self.name, self.systems)
        if job is None:
            return False
        log.info("job %d: %s %s:%s on %s (attempt %d)", job.pk, job.kind, job.itype, job.tag, job.system,
                 job.attempts)
        try:
            with _Heartbeat(self, job) as heartbeat:
                if job.kind == PULL:
                    self._pull(job, heartbeat)
                elif job.kind == IMPORT:
                    self._import(job, heartbeat)
                elif job.kind == EXPIRE:
                    self._expire(job)
                else:
                    raise ShifterError(f"unknown job kind {job.kind!r}")
        except LostJob as e:
            log.warning("job %d: %s", job.pk, e)
        except Stopping:
            self._release(job)
        except DatabaseUnavailable:
            raise   # the heartbeat stops; recovery retries the job
        except ShifterError as e:
            self._fail(job, str(e), retryable=not isinstance(e, PERMANENT_ERRORS))
        except Exception as e:  # a bug must fail the job visibly, not kill the worker
            log.exception("job %d failed", job.pk)
            self._fail(job, f"internal error in the gateway worker ({_one_line(e)}); see the gateway's log",
                       retryable=True)
        return True

    def _destination(self, system: str) -> Destination:
        """One per system, kept: a remote one remembers which of its hosts answers."""
        if system not in self._destinations:
            self._destinations[system] = destination(self.config, self.config.system(system))
        return self._destinations[system]

    # -- kinds --------------------------------------------------------------------

    def _pull(self, job: Job, heartbeat: "_Heartbeat") -> None:
        ref = imageref.parse(f"{job.itype}:{job.tag}")
        target = self._destination(job.system)
        target.prepare()
        login = _login(job, ref.registry or self.config.default_location)
        with fetch_image(ref, store=target.store, settings=pipeline_settings(self.config),
                         credentials=login, progress=heartbeat.progress) as pulled:
            self._publish(job, heartbeat, target, pulled.meta, pulled.squashfs, pulled.login_required)

    def _import(self, job: Job, heartbeat: "_Heartbeat") -> None:
        """Publish a squashfs file from the gateway host; its id is its sha256."""
        target = self._destination(job.system)
        target.prepare()
        heartbeat.progress(PULLING, {"message": f"reading {job.import_path}"})
        fd, staged = tempfile.mkstemp(prefix=".import.", dir=target.store.directory)
        os.close(fd)
        try:
            digest = _copy_hashing(job.import_path, staged, heartbeat)
            meta = ImageMeta(digest=f"sha256:{digest}", user=job.user, size=os.stat(staged).st_size)
            self._publish(job, heartbeat, target, meta, staged, login_required=False)
        finally:
            if os.path.exists(staged):
                os.unlink(staged)

    def _publish(self, job: Job, heartbeat: "_Heartbeat", target: Destination, meta: ImageMeta,
                 squashfs: str | None, login_required: bool) -> None:
        """Put the image on the system, decide who may use it, publish and record it (see module docstring)."""
        heartbeat.claim(meta.id)
        heartbeat.progress(TRANSFER, {"message": f"publishing {meta.id} on {job.system}"})
        try:
            target.place(meta.id, squashfs)
            with self.db.session() as session:
                database.lock(session, reconcile.lock_key(job.system, meta.id))
                image = self.catalog.lock_image(session, job.system, meta.id)
                meta = self.catalog.access_after_pull(job, meta, image, login_required)
                target.write_metadata(meta)
                if not target.exists(meta.id):
                    raise ShifterError(f"image {meta.id} vanished from {job.system}'s image directory"
                                       " before it was recorded; pulling again")
                self.catalog.record_image(session, job, meta)
                self.queue.succeed(session, job, self.name, meta.id)
        except BaseException:
            reconcile.settle_quietly(self.db, self.catalog, job.system, target, meta.id,
                                     holder=(job.pk, self.name))
            raise
        log.info("job %d: %s:%s is READY on %s as %s", job.pk, job.itype, job.tag, job.system, meta.id)

    def _expire(self, job: Job) -> None:
        target = self._destination(job.system)
        with self.db.session() as session:
            database.lock(session, reconcile.lock_key(job.system, job.image_id))
            image = self.catalog.expiring(session, job.system, job.image_id)
            if image is not None:
                if not self.catalog.claimed(session, job.system, job.image_id):
                    target.remove(job.image_id)       # else a pull of it is writing them now
                self.catalog.mark_expired(image)
            self.queue.succeed(session, job, self.name, job.image_id,
                               "expired" if image is not None else "the image was pulled again; kept")

    def _fail(self, job: Job, reason: str, retryable: bool) -> None:
        try:
            with self.db.session() as session:
                again = self.queue.fail(session, job, self.name, reason, retryable)
            log.warning("job %d failed%s: %s", job.pk, ", will retry" if again else "", reason)
        except LostJob as e:
            log.warning("job %d: %s", job.pk, e)

    def _release(self, job: Job) -> None:
        try:
            with self.db.session() as session:
                self.queue.release(session, job, self.name)
            log.info("job %d: put back in the queue, worker %s is stopping", job.pk, self.name)
        except (LostJob, DatabaseUnavailable) as e:
            log.warning("job %d: %s", job.pk, e)


class _Heartbeat:
    """Stamps the job while it runs and forwards pipeline progress, throttled."""

    def __init__(self, worker: Worker, job: Job):
        self.worker = worker
        self.job = job
        self.lost: LostJob | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict = {}
        self._last_write = 0.0
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job.pk}", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def progress(self, status: str, info: dict | None = None) -> None:
        """The pipeline's progress callback: raises LostJob to abandon a job taken from us,
        Stopping when the worker is told to stop."""
        if self.lost is not None:
            raise self.lost
        if self.worker.stop.is_set():
            raise Stopping(f"worker {self.worker.name} is stopping")
        info = info or {}
        values = {}
        if status in RUNNING:
            values["status"] = status
        for ours, theirs in (("bytes_done", "bytes"), ("bytes_total", "total")):
            if isinstance(info.get(theirs), int):
                values[ours] = info[theirs]
        message = info.get("message")
        if message:
            values["status_message"] = str(message)[:1000]
        if "login_required" in info:      # the status page shows only pulls the registry serves to anyone
            values["public"] = not info["login_required"]
        with self._lock:
            changed = values.get("status") not in (None, self._pending.get("status"))
            self._pending.update(values)
            due = changed or time.monotonic() - self._last_write >= PROGRESS_INTERVAL
        if due:
            self._write()

    def claim(self, image_id: str) -> None:
        """Record, before any file of it is written, which image this job writes (or raise)."""
        with self._lock:
            self._pending["image_id"] = image_id
        self._write(must=True)

    def _write(self, must: bool = False) -> None:
        with self._lock:
            values, self._pending = dict(self._pending), {}
            self._last_write = time.monotonic()
        try:
            with self.worker.db.session() as session:
                self.worker.queue.progress(session, self.job, self.worker.name, **values)
        except LostJob as e:
            self.lost = e
            raise
        except DatabaseUnavailable as e:
            if must:
                raise
            log.warning("job %d: heartbeat not recorded: %s", self.job.pk, e)

    def _beat(self) -> None:
        while not self._stop.wait(self.worker.config.heartbeat_interval):
            try:
                self._write()
            except LostJob:
                return


def _one_line(error: Exception) -> str:
    """What went wrong, for a status message: a database error's own first line, not the SQL."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:300] if lines else ''}"


def _login(job: Job, location: str | None) -> tuple[str, str] | None:
    logins = job.credentials or {}
    pair = logins.get(location or "default") or logins.get("default")
    return (pair[0], pair[1]) if pair else None


def _copy_hashing(path: str, copy: str, heartbeat: _Heartbeat) -> str:
    """Copy `path` to `copy` while hashing it; refuse anything but a squashfs."""
    digest = hashlib.sha256()
    try:
        source = open(path, "rb")
    except OSError as e:
        raise ImageNotFound(f"cannot read {path} on the gateway host: {e.strerror}") from None
    with source, open(copy, "wb") as out:
        total = os.fstat(source.fileno()).st_size
        done = 0
        first = True
        while chunk := source.read(1 << 20):
            if first and not chunk.startswith(SQUASHFS_MAGIC):
                raise ImageContentError(f"{path} is not a squashfs image")
            first = False
            digest.update(chunk)
            out.write(chunk)
            done += len(chunk)
            heartbeat.progress(PULLING, {"bytes": done, "total": total})
        if first:
            raise ImageContentError(f"{path} is empty")
    return digest.hexdigest()
