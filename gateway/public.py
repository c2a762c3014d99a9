"""What the anonymous status page may show, and nothing more.

A browser cannot present a munge credential, so the status page is anonymous
and shows only what anyone could learn from the registries:

* images the registry served without a login (not `private`) and without
  an ACL (`--user`/`--group` keep an image from the others), with their
  tags, configuration, layers and lookups per hour;
* pulls the registry has served without a login (`jobs.public`): their
  state and progress, and their failures (not those of an image with an
  ACL).  A pull not resolved yet, a private pull, an import or an expiry is
  only counted;
* never a user, an ACL, a registry login or a per-user lookup.

Every query returns these dataclasses, never database rows, so a template
cannot reach a field this module did not choose to show.
"""
from __future__ import annotations

import dataclasses

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.orm import Session, selectinload

from shifter_core.imagestatus import ACTIVE, FAILURE, READY

from .models import PULL, Image, ImageUsage, Job

DAY = 86400
HOUR = 3600
USAGE_DAYS = 14             # the images table's lookups per day
IMAGE_USAGE_HOURS = 7 * 24  # an image page's lookups per hour
FAILURE_DAYS = 7
MAX_FAILURES = 20


@dataclasses.dataclass(frozen=True)
class Usage:
    """Lookups per period, oldest first, ending with the current one."""

    start: float                 # epoch seconds at which counts[0] begins
    period: int                  # seconds per count
    counts: list[int]
    last: float | None           # the latest lookup within these periods

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclasses.dataclass(frozen=True)
class PublicImage:
    system: str
    image_id: str
    tags: list[str]
    size: int
    arch: str | None
    os: str | None
    last_pull: float
    expiration: float | None
    usage: Usage


@dataclasses.dataclass(frozen=True)
class ImageDetail(PublicImage):
    env: list[str]
    entrypoint: list[str] | None
    cmd: list[str] | None
    workdir: str | None
    user: str | None
    labels: dict[str, str]
    layers: list[dict]


@dataclasses.dataclass(frozen=True)
class Pull:
    tag: str
    status: str
    message: str
    bytes_done: int
    bytes_total: int
    attempts: int
    created: float
    phase_started: float | None


@dataclasses.dataclass(frozen=True)
class Queue:
    pulls: list[Pull]
    others: int                  # active jobs not shown: unresolved or private pulls, imports, expiries


@dataclasses.dataclass(frozen=True)
class Failure:
    tag: str
    reason: str
    finished: float | None
    attempts: int


def _public_images(system: str):
    return select(Image).where(Image.system == system, Image.status == READY, _open())


def _open():
    """Not private and without an ACL (JSON lists are stored as their text)."""
    return (Image.private.is_(False)) & (cast(Image.user_acl, Text) == "[]") & (cast(Image.group_acl, Text) == "[]")


def images(session: Session, system: str, now: float) -> list[PublicImage]:
    """The system's public images, most recently pulled first, with lookups per day."""
    found = session.scalars(_public_images(system).options(selectinload(Image.tags))
                            .order_by(Image.last_pull.desc(), Image.pk.desc())).all()
    usage = _usage(session, system, None, (int(now) // DAY - USAGE_DAYS + 1) * DAY, DAY, USAGE_DAYS)
    return [PublicImage(**_summary(image), usage=usage(image.image_id)) for image in found]


def image(session: Session, system: str, image_id: str, now: float) -> ImageDetail | None:
    """One public image with its configuration and lookups per hour; None if there is none."""
    found = session.scalars(_public_images(system).where(Image.image_id == image_id)
                            .options(selectinload(Image.tags))).first()
    if found is None:
        return None
    usage = _usage(session, system, image_id, (int(now) // HOUR - IMAGE_USAGE_HOURS + 1) * HOUR, HOUR,
                   IMAGE_USAGE_HOURS)
    return ImageDetail(**_summary(found), usage=usage(image_id),
                       env=list(found.env or []), entrypoint=found.entrypoint, cmd=found.cmd,
                       workdir=found.workdir, user=found.user, labels=dict(found.labels or {}),
                       layers=list(found.layers or []))


def images_stamp(session: Session, system: str) -> str:
    """Changes whenever the list of public images does (the page reloads then)."""
    images = _public_images(system).subquery()
    count, latest, keys = session.execute(
        select(func.count(), func.max(images.c.last_pull), func.sum(images.c.pk))).one()
    return f"{count}-{latest or 0}-{keys or 0}"


def queue(session: Session, system: str) -> Queue:
    """Active jobs: public pulls in full, the rest only counted."""
    jobs = session.execute(
        select(Job.kind, Job.public, Job.tag, Job.status, Job.status_message, Job.bytes_done,
               Job.bytes_total, Job.attempts, Job.created, Job.phase_started)
        .where(Job.system == system, Job.status.in_(ACTIVE)).order_by(Job.pk)).all()
    pulls = [Pull(tag=j.tag, status=j.status, message=j.status_message, bytes_done=j.bytes_done,
                  bytes_total=j.bytes_total, attempts=j.attempts, created=j.created, phase_started=j.phase_started)
             for j in jobs if _shown(j)]
    return Queue(pulls=pulls, others=len(jobs) - len(pulls))


def failures(session: Session, system: str, now: float) -> list[Failure]:
    """The latest failed public pulls of the last FAILURE_DAYS days, newest first."""
    restricted = select(Image.image_id).where(Image.system == system, ~_open())
    jobs = session.execute(
        select(Job.tag, Job.status_message, Job.finished, Job.attempts)
        .where(Job.system == system, Job.kind == PULL, Job.status == FAILURE, Job.public.is_(True),
               Job.finished >= now - FAILURE_DAYS * DAY,
               or_(Job.image_id.is_(None), Job.image_id.not_in(restricted)))
        .order_by(Job.finished.desc()).limit(MAX_FAILURES)).all()
    return [Failure(tag=j.tag, reason=j.status_message, finished=j.finished, attempts=j.attempts)
            for j in jobs]


def _shown(job) -> bool:
    return job.kind == PULL and job.public is True


def _summary(image: Image) -> dict:
    return dict(system=image.system, image_id=image.image_id, tags=sorted(t.name for t in image.tags),
                size=image.size, arch=image.arch, os=image.os, last_pull=image.last_pull,
                expiration=image.expiration)


def _usage(session: Session, system: str, image_id: str | None, start: int, period: int,
           periods: int):
    """Lookups per `period` from `start` of one image, or of all the system's: a function of the image id."""
    query = select(ImageUsage.image_id, ImageUsage.hour, ImageUsage.lookups, ImageUsage.last).where(
        ImageUsage.system == system, ImageUsage.hour >= start // HOUR)
    if image_id is not None:
        query = query.where(ImageUsage.image_id == image_id)
    counts: dict[str, list[int]] = {}
    last: dict[str, float] = {}
    for row in session.execute(query):
        index = (row.hour * HOUR - start) // period
        if index >= periods:
            continue            # recorded by a host whose clock runs ahead
        counts.setdefault(row.image_id, [0] * periods)[index] += row.lookups
        last[row.image_id] = max(last.get(row.image_id, 0.0), row.last)

    def of(key: str) -> Usage:
        return Usage(start=start, period=period, counts=counts.get(key, [0] * periods), last=last.get(key))
    return of
