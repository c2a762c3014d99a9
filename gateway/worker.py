"""Workers: take jobs from the queue and carry them out.

A pull runs gateway.pipeline.pull_image into the system's destination store,
copies the result to the system if it is remote, checks that the image files
are really there, and only then marks the image READY.  While a job runs, a
heartbeat thread stamps it; if this worker dies, another one puts the job back
(queue.recover) and pulls again, which is safe because publishing a digest
twice gives the same files.

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
                                 RegistryAuthError, ShifterError)
from shifter_core.imagestore import ImageMeta

from . import models
from .catalog import Catalog
from .config import GatewayConfig, pipeline_settings
from .db import Database, DatabaseUnavailable
from .models import EXPIRE, IMPORT, PULL, Job
from .pipeline import pull_image
from .queue import JobQueue, LostJob
from .transfer import destination

log = logging.getLogger(__name__)

# Errors that another attempt cannot fix.
PERMANENT_ERRORS = (ImageNotFound, ImageRefError, RegistryAuthError, ImageContentError, AccessDenied)
PROGRESS_INTERVAL = 0.5
IDLE_POLL = 0.5
SQUASHFS_MAGIC = b"hsqs"


class Worker:
    def __init__(self, config: GatewayConfig, db: Database, *, systems: list[str] | None = None,
                 name: str | None = None):
        self.config = config
        self.db = db
        self.systems = systems
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queue = JobQueue.from_config(config)
        self.catalog = Catalog(config, self.queue)
        self._destinations = {}

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Work until `stop` is set; `wake` cuts the idle wait short when a job arrives."""
        log.info("worker %s started for %s", self.name, ", ".join(self.systems or self.config.platforms))
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
        if recovered:
            log.warning("requeued jobs %s of workers that stopped responding", recovered)
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
        except DatabaseUnavailable:
            raise   # the heartbeat stops; recovery retries the job
        except ShifterError as e:
            self._fail(job, str(e), retryable=not isinstance(e, PERMANENT_ERRORS))
        except Exception as e:  # a bug must fail the job visibly, not kill the worker
            log.exception("job %d failed", job.pk)
            self._fail(job, f"internal error in the gateway worker: {type(e).__name__}: {e}", retryable=True)
        return True

    def _destination(self, system: str):
        """One per system, kept: a remote one remembers which of its hosts answers."""
        if system not in self._destinations:
            self._destinations[system] = destination(self.config, self.config.platform(system))
        return self._destinations[system]

    # -- kinds --------------------------------------------------------------------

    def _pull(self, job: Job, heartbeat: "_Heartbeat") -> None:
        ref = imageref.parse(f"{job.itype}:{job.tag}")
        target = self._destination(job.system)
        login = _login(job, ref.registry or self.config.default_location)
        store = target.store(job.user_acl, job.group_acl, private=login is not None)

        def progress(status: str, info: dict) -> None:
            if "login_required" in info:      # Shifter's rule: private if the registry insisted
                store.private = bool(info["login_required"])
            heartbeat.progress(status, info)

        meta = pull_image(ref, store=store, settings=pipeline_settings(self.config),
                          credentials=login, progress=progress)
        self._install(job, heartbeat, target, store.apply(meta))

    def _import(self, job: Job, heartbeat: "_Heartbeat") -> None:
        """Publish a squashfs file from the gateway host; its id is its sha256."""
        target = self._destination(job.system)
        store = target.store(job.user_acl, job.group_acl, private=bool(job.user_acl or job.group_acl))
        heartbeat.progress("PULLING", {"message": f"reading {job.import_path}"})
        fd, staged = tempfile.mkstemp(prefix=".import.", dir=store.directory)
        os.close(fd)
        try:
            digest = _copy_hashing(job.import_path, staged, heartbeat)
            meta = ImageMeta(digest=f"sha256:{digest}", user=job.user)
            store.publish(meta, staged)
        finally:
            if os.path.exists(staged):
                os.unlink(staged)
        self._install(job, heartbeat, target, store.apply(meta))

    def _install(self, job: Job, heartbeat: "_Heartbeat", target, meta: ImageMeta) -> None:
        heartbeat.progress(models.TRANSFER, {"message": f"publishing {meta.id} on {job.system}"})
        target.install(meta)
        with self.db.session() as session:
            self.catalog.lock_image(session, job.system, meta.id)   # an expire of it waits for us
            if not target.exists(meta.id):
                raise ShifterError(f"image {meta.id} vanished from {job.system}'s image directory before it was"
                                   " recorded; pulling again")
            self.catalog.record_image(session, job, meta)
            self.queue.succeed(session, job, self.name, meta.id)
        log.info("job %d: %s:%s is READY on %s as %s", job.pk, job.itype, job.tag, job.system, meta.id)

    def _expire(self, job: Job) -> None:
        target = self._destination(job.system)
        with self.db.session() as session:
            image = self.catalog.expiring(session, job.system, job.image_id)
            if image is not None:
                target.remove(job.image_id)
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
        """The pipeline's progress callback: raises LostJob to abandon a job taken from us."""
        if self.lost is not None:
            raise self.lost
        info = info or {}
        values = {}
        if status in models.RUNNING:
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

    def _write(self) -> None:
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
            log.warning("job %d: heartbeat not recorded: %s", self.job.pk, e)

    def _beat(self) -> None:
        while not self._stop.wait(self.worker.config.heartbeat_interval):
            try:
                self._write()
            except LostJob:
                return


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
            heartbeat.progress("PULLING", {"bytes": done, "total": total})
        if first:
            raise ImageContentError(f"{path} is empty")
    return digest.hexdigest()
