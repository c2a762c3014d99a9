"""The work queue, kept in the database so any number of API processes and
workers on any hosts share it.

* One active job per (system, type, tag): a partial unique index; a second
  request for the same tag finds the first job instead of adding one.
* Claiming is one UPDATE of the oldest due PENDING row, chosen with
  `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite serialises writers anyway),
  so two workers never get the same job.
* A worker stamps a heartbeat while it holds a job; a job whose heartbeat is
  older than the timeout belonged to a dead worker and is put back (or failed
  once its attempts are used up).  Every later write by the dead worker is
  refused because the job names another holder.
* A failed attempt is retried after an exponential backoff unless the error
  cannot go away by itself (unknown image, refused login, hostile content).
* How attempts end, how long pulls and conversions took, is counted
  (gateway/metrics.py) in the transaction that records it.
"""
from __future__ import annotations

import time

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shifter_core.imagestatus import ACTIVE, CONVERSION, FAILURE, PENDING, PULLING, READY, RUNNING

from . import metrics
from .models import EXPIRE, Job


class LostJob(Exception):
    """The job was taken away from this worker (it was presumed dead)."""


class JobQueue:
    def __init__(self, *, heartbeat_timeout: float, max_attempts: int, retry_backoff: float, clock=time.time):
        self.heartbeat_timeout = heartbeat_timeout
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.clock = clock

    @classmethod
    def from_config(cls, config) -> "JobQueue":
        return cls(heartbeat_timeout=config.heartbeat_timeout, max_attempts=config.max_attempts,
                   retry_backoff=config.retry_backoff)

    # -- producers ------------------------------------------------------------

    def active(self, session: Session, system: str, itype: str, tag: str) -> Job | None:
        return session.scalars(
            select(Job).where(Job.system == system, Job.itype == itype, Job.tag == tag,
                              Job.status.in_(ACTIVE))
        ).first()

    def latest(self, session: Session, system: str, itype: str, tag: str) -> Job | None:
        """The most recent job of any status for this tag."""
        return session.scalars(
            select(Job).where(Job.system == system, Job.itype == itype, Job.tag == tag)
            .order_by(Job.pk.desc()).limit(1)
        ).first()

    def submit(self, session: Session, **fields) -> Job:
        """Queue a job, or return the active one for the same tag.

        A job is PENDING from the start: Shifter's INIT (inserted, not yet
        queued) never exists here because inserting is queueing.

        Older finished jobs of the tag are deleted: the newest is all a
        client ever sees.  Runs in a savepoint so losing the race to another
        request does not abort the caller's transaction.
        """
        now = self.clock()
        job = Job(status=PENDING, status_message="", bytes_done=0, bytes_total=0, attempts=0,
                  not_before=now, created=now, **fields)
        try:
            with session.begin_nested():
                session.add(job)
                session.flush()
        except IntegrityError:
            existing = self.active(session, fields["system"], fields["itype"], fields["tag"])
            if existing is None:
                raise
            return existing
        session.execute(delete(Job).where(
            Job.system == job.system, Job.itype == job.itype, Job.tag == job.tag,
            Job.pk != job.pk, Job.status.not_in(ACTIVE)))
        return job

    # -- workers --------------------------------------------------------------

    def claim(self, session: Session, worker: str, systems: list[str] | None = None) -> Job | None:
        """Take the oldest due PENDING job for `systems` (all when None)."""
        now = self.clock()
        due = select(Job.pk).where(Job.status == PENDING, Job.not_before <= now)
        if systems is not None:
            due = due.where(Job.system.in_(systems))
        due = due.order_by(Job.not_before, Job.pk).limit(1).with_for_update(skip_locked=True)
        pk = session.execute(
            update(Job).where(Job.pk == due.scalar_subquery(), Job.status == PENDING)
            .values(status=PULLING, worker=worker, heartbeat=now, started=now, phase_started=now,
                    attempts=Job.attempts + 1, status_message="")
            .returning(Job.pk)
        ).scalar()
        return session.get(Job, pk, populate_existing=True) if pk is not None else None

    def progress(self, session: Session, job: Job, worker: str, **values) -> None:
        """Record status/bytes and the heartbeat; LostJob if no longer ours."""
        now = self.clock()
        counts = {}
        if "status" in values:
            before = session.execute(select(Job.status, Job.phase_started).where(Job.pk == job.pk)).first()
            if before is not None and before.status != values["status"]:
                values["phase_started"] = now
                if before.status == CONVERSION and before.phase_started is not None:
                    counts = metrics.CONVERSION_SECONDS.increments(now - before.phase_started, system=job.system)
        result = session.execute(
            update(Job).where(Job.pk == job.pk, Job.worker == worker, Job.status.in_(RUNNING))
            .values(heartbeat=now, **values)
        )
        if result.rowcount != 1:
            raise LostJob(f"job {job.pk} is no longer held by {worker}")
        metrics.add(session, counts)

    def succeed(self, session: Session, job: Job, worker: str, image_id: str | None, message: str = "") -> None:
        started = self._finish(session, job, worker, status=READY, image_id=image_id, status_message=message)
        counts = _ended(job, "ready")
        if job.kind != EXPIRE and started is not None:
            counts.update(metrics.PULL_SECONDS.increments(self.clock() - started, system=job.system, kind=job.kind))
        metrics.add(session, counts)

    def fail(self, session: Session, job: Job, worker: str, reason: str, retryable: bool) -> bool:
        """Fail this attempt; True if the job was put back for another one."""
        attempts = session.scalar(select(Job.attempts).where(Job.pk == job.pk))
        if retryable and attempts is not None and attempts < self.max_attempts:
            delay = self.retry_backoff * 2 ** (attempts - 1)
            result = session.execute(
                update(Job).where(Job.pk == job.pk, Job.worker == worker, Job.status.in_(RUNNING))
                .values(status=PENDING, worker=None, heartbeat=None, not_before=self.clock() + delay,
                        status_message=f"attempt {attempts} failed, retrying in {delay:g} s: {reason}")
            )
            if result.rowcount != 1:
                raise LostJob(f"job {job.pk} is no longer held by {worker}")
            metrics.add(session, _ended(job, "retry"))
            return True
        self._finish(session, job, worker, status=FAILURE, status_message=reason)
        metrics.add(session, _ended(job, "failure"))
        return False

    def _finish(self, session: Session, job: Job, worker: str, **values) -> float | None:
        """End the job; return when this attempt started."""
        started = session.execute(
            update(Job).where(Job.pk == job.pk, Job.worker == worker, Job.status.in_(RUNNING))
            .values(finished=self.clock(), heartbeat=None, credentials={} if job.credentials else None, **values)
            .returning(Job.started)
        ).first()
        if started is None:
            raise LostJob(f"job {job.pk} is no longer held by {worker}")
        return started[0]

    def release(self, session: Session, job: Job, worker: str) -> None:
        """Put a job back at once, its attempt not counted: its worker is stopping."""
        result = session.execute(
            update(Job).where(Job.pk == job.pk, Job.worker == worker, Job.status.in_(RUNNING))
            .values(status=PENDING, worker=None, heartbeat=None, not_before=self.clock(),
                    attempts=Job.attempts - 1, status_message="its worker stopped; queued again")
        )
        if result.rowcount != 1:
            raise LostJob(f"job {job.pk} is no longer held by {worker}")

    def recover(self, session: Session) -> list[int]:
        """Put back the jobs of workers whose heartbeat stopped; return their ids."""
        now = self.clock()
        stale = or_(Job.heartbeat.is_(None), Job.heartbeat < now - self.heartbeat_timeout)
        dead = session.execute(
            select(Job.pk, Job.attempts, Job.system, Job.kind).where(Job.status.in_(RUNNING), stale)
            .with_for_update(skip_locked=True)
        ).all()
        lost = {}
        for pk, attempts, system, kind in dead:
            if attempts >= self.max_attempts:
                values = dict(status=FAILURE, finished=now, credentials=None,
                              status_message=f"the worker stopped responding {attempts} times; giving up")
            else:
                values = dict(status=PENDING, not_before=now,
                              status_message="the worker stopped responding; the job was queued again")
            session.execute(update(Job).where(Job.pk == pk, Job.status.in_(RUNNING), stale)
                            .values(worker=None, heartbeat=None, **values))
            for key, value in metrics.JOBS.increments(system=system, kind=kind, outcome="lost").items():
                lost[key] = lost.get(key, 0) + value
        metrics.add(session, lost)
        return [row.pk for row in dead]

    def abandoned_images(self, session: Session, pks: list[int]) -> list[tuple[str, str]]:
        """(system, image id) that jobs among `pks` named and no longer write: they gave up."""
        return list(session.execute(select(Job.system, Job.image_id).where(
            Job.pk.in_(pks), Job.status.not_in(ACTIVE), Job.image_id.is_not(None))).all())

    def queued(self, session: Session, system: str) -> list[Job]:
        return list(session.scalars(
            select(Job).where(Job.system == system, Job.status.in_(ACTIVE)).order_by(Job.pk)))

    def prune(self, session: Session, older_than: float) -> int:
        """Delete finished jobs older than `older_than` seconds."""
        cutoff = self.clock() - older_than
        result = session.execute(delete(Job).where(
            Job.status.not_in(ACTIVE), and_(Job.finished.is_not(None), Job.finished < cutoff)))
        return result.rowcount


def _ended(job: Job, outcome: str) -> dict:
    return metrics.JOBS.increments(system=job.system, kind=job.kind, outcome=outcome)
