"""What the gateway knows about images: lookups, listings, pull decisions, expiry.

The HTTP layer (app.py) and the workers (worker.py) both go through here, so
Shifter's rules live in one place:

* a tag names one image per system; two tags of one digest share the image;
* a pull returns the READY image if it was pulled within PullUpdateTimeout
  (and the caller may read it and asks for no other ACL), the active job if
  one is running, a FAILURE for RetryBackoff seconds after it happened
  (unless the request brings a registry login and the failed pull had
  none: the login may be what was missing), and otherwise queues a new job;
* an image with an ACL is visible only to the users and groups listed; a
  private one (the registry required a login) always has one; who may pull
  an image again and change its ACL is auth.access_after_pull, decided once
  by the worker that publishes it;
* a lookup extends the image's expiry; `autoexpire` removes expired images;
* a found image is remembered LookupCacheSeconds per process, so a moved
  tag or an expired image may still be answered for that long.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import time

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from shifter_core import imageref
from shifter_core.errors import AccessDenied, ImageNotFound, ImageRefError
from shifter_core.imagestatus import ACTIVE, EXPIRED, EXPIRING, FAILURE, READY
from shifter_core.imagestore import ImageMeta

from . import auth
from .config import GatewayConfig
from .errors import BadRequest
from .metrics import LookupLog
from .models import EXPIRE, IMPORT, PULL, Image, Job, Lookup, Tag
from .queue import JobQueue

PULLABLE_TYPES = ("docker",)
IMPORT_FORMATS = ("squashfs",)
# What an image row and its ImageMeta (<id>.json) both hold.
META_FIELDS = ("format", "env", "entrypoint", "cmd", "workdir", "user", "labels", "arch", "os", "size",
               "layers", "private", "user_acl", "group_acl")


class Catalog:
    def __init__(self, config: GatewayConfig, queue: JobQueue, clock=time.time,
                 lookup_log: LookupLog | None = None):
        self.config = config
        self.queue = queue
        self.clock = clock
        self.lookup_log = lookup_log
        self._recent = _RecentLookups(config.lookup_cache_seconds)

    # -- names ------------------------------------------------------------------

    @staticmethod
    def canonical_tag(itype: str, tag: str) -> str:
        """The tag as stored: parsed and re-rendered, `:latest` added to bare names."""
        if itype not in imageref.TYPES:
            raise BadRequest(f"unknown image type {itype!r}: use one of {', '.join(imageref.TYPES)}")
        try:
            return imageref.parse(f"{itype}:{tag}").gateway_tag
        except ImageRefError as e:
            raise BadRequest(str(e)) from None

    # -- reading ----------------------------------------------------------------

    def find(self, session: Session, system: str, itype: str, tag: str, *, lock: bool = False) -> Image | None:
        """The READY image a tag (or, for type id, an image id) names."""
        if itype == "id":
            query = select(Image).where(Image.system == system, Image.image_id == tag)
        else:
            query = select(Image).join(Tag).where(Tag.system == system, Tag.itype == itype, Tag.name == tag)
        query = query.where(Image.status == READY).options(selectinload(Image.tags))
        if lock:
            query = query.with_for_update(of=Image)
        return session.scalars(query).first()

    def lookup(self, connect, caller: auth.Caller, system: str, itype: str, tag: str) -> "ImageView":
        """The image for a tag, if the caller may see it; extends its expiry.

        The hot path of job start, when thousands of nodes ask for one tag
        at once: the answer is kept LookupCacheSeconds in this process; a
        miss costs one SELECT (image and all its tags).  It writes only when
        the expiry moved by more than 1 %; metrics are written in batches.  `connect()`
        gives a connection (Database.connection, or a session in tests).
        """
        tag = self.canonical_tag(itype, tag)
        key = (system, itype, tag)
        image = self._recent.get(key)
        with contextlib.ExitStack() as stack:
            connection = None
            if image is None:
                connection = stack.enter_context(connect())
                image = self._view(connection, system, itype, tag)
                if image is not None:
                    self._recent.put(key, image)
            if image is None or not auth.may_read(caller, image.private, image.user_acl, image.group_acl):
                raise ImageNotFound(f"{itype}:{tag} is not available on {system}: pull it first with shifterimg pull")
            now = self.clock()
            timeout = self.config.image_expiration_timeout
            if timeout is not None and (image.expiration or 0) < now + timeout * 0.99:
                connection = connection or stack.enter_context(connect())
                connection.execute(update(Image).where(Image.pk == image.pk).values(expiration=now + timeout))
                image = dataclasses.replace(image, expiration=now + timeout)
                self._recent.put(key, image)
            if self.config.metrics:
                self.lookup_log.record(user=caller.user, uid=caller.uid, system=system, itype=itype, tag=tag,
                                       image_id=image.image_id, time=now)
        return image

    @staticmethod
    def _view(connection, system: str, itype: str, tag: str) -> "ImageView | None":
        if itype == "id":
            rows = connection.execute(_BY_ID, {"system": system, "image_id": tag}).all()
        else:
            rows = connection.execute(_BY_TAG, {"system": system, "itype": itype, "tag": tag}).all()
        if not rows:
            return None
        fields = {column.key: rows[0]._mapping[column.key] for column in _VIEW_COLUMNS}
        return ImageView(**fields, tags=sorted({row[-1] for row in rows if row[-1] is not None}))

    def images(self, session: Session, caller: auth.Caller, system: str) -> list["ImageView"]:
        found = session.scalars(
            select(Image).where(Image.system == system, Image.status == READY)
            .options(selectinload(Image.tags)).order_by(Image.pk))
        return [ImageView.of(i) for i in found if auth.may_read(caller, i.private, i.user_acl, i.group_acl)]

    def metrics(self, session: Session, system: str, limit: int) -> list[Lookup]:
        """The last `limit` lookups, oldest first (this process's pending ones included).

        Ordered by when the lookup happened, not by insertion: API processes
        write their batches at different moments (metrics.py).
        """
        if self.lookup_log is not None:
            self.lookup_log.flush()
        rows = session.scalars(select(Lookup).where(Lookup.system == system)
                               .order_by(Lookup.time.desc(), Lookup.pk.desc()).limit(limit))
        return list(reversed(list(rows)))

    # -- requests ---------------------------------------------------------------

    def request_pull(self, session: Session, caller: auth.Caller, system: str, itype: str, tag: str,
                     user_acl: list[int], group_acl: list[int]) -> "ImageView | Job":
        if itype not in PULLABLE_TYPES:
            raise BadRequest(f"{itype} images cannot be pulled from a registry; only docker images can")
        tag = self.canonical_tag(itype, tag)
        user_acl, group_acl = self._with_requester(caller, user_acl, group_acl)
        job = self.queue.active(session, system, itype, tag)
        if job is not None:
            return job
        now = self.clock()
        image = self.find(session, system, itype, tag)
        same_acl = not (user_acl or group_acl) or (
            image is not None and (set(image.user_acl), set(image.group_acl)) == (set(user_acl), set(group_acl)))
        if image is not None and now < image.last_pull + self.config.pull_update_timeout and same_acl \
                and auth.may_read(caller, image.private, image.user_acl, image.group_acl):
            return ImageView.of(image)
        last = self.queue.latest(session, system, itype, tag)
        # a failure is answered again to the user whose pull it was (polling by posting
        # again), not to another: it may have been about who asked (their ACL, their login)
        if last is not None and last.status == FAILURE and now < (last.finished or 0) + self.config.retry_backoff \
                and last.uid == caller.uid and (not caller.registry_logins or last.credentials is not None):
            return last
        return self.queue.submit(session, kind=PULL, system=system, itype=itype, tag=tag, user=caller.user,
                                 uid=caller.uid, gid=caller.gid, user_acl=user_acl, group_acl=group_acl,
                                 credentials=_logins_json(caller))

    def request_import(self, session: Session, caller: auth.Caller, system: str, itype: str, tag: str,
                       path: str, fmt: str, user_acl: list[int], group_acl: list[int]) -> Job:
        if not self.config.may_import(caller.user):
            raise AccessDenied(f"{caller.user} may not import images (see ImportUsers in the gateway configuration)")
        if fmt not in IMPORT_FORMATS:
            raise BadRequest(f"cannot import format {fmt!r}: only squashfs images can be imported")
        if not path.startswith("/"):
            raise BadRequest("filepath must be an absolute path on the gateway host")
        tag = self.canonical_tag(itype, tag)
        user_acl, group_acl = self._with_requester(caller, user_acl, group_acl)
        return self.queue.submit(session, kind=IMPORT, system=system, itype=itype, tag=tag, user=caller.user,
                                 uid=caller.uid, gid=caller.gid, user_acl=user_acl, group_acl=group_acl,
                                 import_path=path)

    def expire(self, session: Session, caller: auth.Caller, system: str, itype: str, tag: str) -> "ImageView":
        """Hide the image at once and queue the removal of its files."""
        image = self.find(session, system, itype, self.canonical_tag(itype, tag), lock=True)
        if image is None:
            raise ImageNotFound(f"{itype}:{tag} is not available on {system}")
        self._expire(session, caller, image)
        return ImageView.of(image)

    def autoexpire(self, session: Session, caller: auth.Caller, system: str) -> list[str]:
        """Expire every image whose expiry has passed; drop old finished jobs."""
        now = self.clock()
        due = list(session.scalars(select(Image).where(
            Image.system == system, Image.status == READY, Image.expiration.is_not(None),
            Image.expiration < now).with_for_update()))
        for image in due:
            self._expire(session, caller, image)
        self.queue.prune(session, older_than=max(self.config.pull_update_timeout, 86400))
        return [image.image_id for image in due]

    def _expire(self, session: Session, caller: auth.Caller, image: Image) -> None:
        image.status = EXPIRING
        self.queue.submit(session, kind=EXPIRE, system=image.system, itype="id", tag=image.image_id,
                          user=caller.user, uid=caller.uid, gid=caller.gid, user_acl=[], group_acl=[],
                          image_id=image.image_id)

    @staticmethod
    def _with_requester(caller: auth.Caller, user_acl: list[int], group_acl: list[int]):
        """Shifter's rule: whoever restricts an image keeps access to it."""
        users = sorted(set(user_acl) | {caller.uid}) if user_acl else []
        groups = sorted(set(group_acl) | {caller.gid}) if group_acl else []
        return users, groups

    # -- worker side --------------------------------------------------------------

    def access_after_pull(self, job: Job, meta: ImageMeta, image: Image | None, login_required: bool) -> ImageMeta:
        """`meta` with the access the job's pull leaves its image with (auth.access_after_pull);
        `image` is its locked row, if any.  AccessDenied if the job's caller may not pull it."""
        before = None
        if image is not None and image.status != EXPIRED:
            before = auth.Access(image.private, tuple(image.user_acl), tuple(image.group_acl))
        requested = auth.Access(login_required, tuple(job.user_acl), tuple(job.group_acl))
        _, groups = auth.identity(job.uid, job.gid)
        access = auth.access_after_pull(before, requested, uid=job.uid, groups=groups, image=meta.id,
                                        admin=job.user in self.config.system(job.system).admins)
        return dataclasses.replace(meta, private=access.private, user_acl=list(access.users),
                                   group_acl=list(access.groups))

    def record_image(self, session: Session, job: Job, meta: ImageMeta) -> Image:
        """Make the published image READY under the job's tag."""
        now = self.clock()
        image = self._image_row(session, job, meta)
        for field in META_FIELDS:
            setattr(image, field, getattr(meta, field))
        image.status = READY
        image.last_pull = now
        timeout = self.config.image_expiration_timeout
        image.expiration = now + timeout if timeout is not None else None
        tag = session.get(Tag, (job.system, job.itype, job.tag), with_for_update=True)
        if tag is None:
            session.add(Tag(system=job.system, itype=job.itype, name=job.tag, image_pk=image.pk))
        else:
            tag.image_pk = image.pk
        return image

    @staticmethod
    def lock_image(session: Session, system: str, image_id: str) -> Image | None:
        """Lock an image's row (if it exists) for the rest of the transaction."""
        return session.scalars(select(Image).where(Image.system == system, Image.image_id == image_id)
                               .with_for_update()).first()

    def _image_row(self, session: Session, job: Job, meta: ImageMeta) -> Image:
        image = self.lock_image(session, job.system, meta.id)
        if image is None:
            try:
                with session.begin_nested():
                    image = Image(system=job.system, itype=job.itype, image_id=meta.id, status=READY,
                                  last_pull=self.clock())
                    session.add(image)
            except IntegrityError:
                image = self.lock_image(session, job.system, meta.id)
        return image

    @staticmethod
    def image_ids(session: Session, system: str) -> set[str]:
        """Ids of the images the system has, or is removing."""
        return set(session.scalars(select(Image.image_id).where(
            Image.system == system, Image.status.in_((READY, EXPIRING)))))

    @staticmethod
    def claimed(session: Session, system: str, image_id: str, holder: tuple[int, str] | None = None) -> bool:
        """Whether a running pull or import writes this image (other than `holder`: job pk, worker)."""
        query = select(Job.pk, Job.worker).where(
            Job.system == system, Job.image_id == image_id, Job.kind.in_((PULL, IMPORT)),
            Job.status.in_(ACTIVE))
        return any((pk, worker) != holder for pk, worker in session.execute(query))

    @staticmethod
    def image_meta(image: Image) -> ImageMeta:
        """What an image row says its `<id>.json` is."""
        return ImageMeta(digest=f"sha256:{image.image_id}",
                         **{field: getattr(image, field) for field in META_FIELDS})

    def expiring(self, session: Session, system: str, image_id: str) -> Image | None:
        """The image an expire job is about, locked, if it is still to be removed."""
        return session.scalars(select(Image).where(
            Image.system == system, Image.image_id == image_id, Image.status == EXPIRING).with_for_update()).first()

    @staticmethod
    def mark_expired(image: Image) -> None:
        image.status = EXPIRED
        image.expiration = None


class _RecentLookups:
    """Found images by (system, type, tag), each kept `seconds` (a miss is never kept,
    so an image is visible as soon as its pull ends).  Bounded; thread-safe."""

    MAX_ENTRIES = 4096

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._entries: dict[tuple, tuple[float, "ImageView"]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> "ImageView | None":
        if self.seconds <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def put(self, key: tuple, image: "ImageView") -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.seconds, image)


_VIEW_COLUMNS = (Image.pk, Image.system, Image.itype, Image.image_id, Image.status, Image.format, Image.env,
                 Image.entrypoint, Image.cmd, Image.workdir, Image.user, Image.labels, Image.arch, Image.os,
                 Image.size, Image.private, Image.user_acl, Image.group_acl, Image.last_pull, Image.expiration)


def _lookup_statements():
    """The two lookup queries, built once (building a statement costs more than running it)."""
    images, tags = Image.__table__, Tag.__table__
    named, others = tags.alias("named"), tags.alias("others")
    columns = [images.c[column.key] for column in _VIEW_COLUMNS] + [others.c.name]
    with_tags = images.outerjoin(others, others.c.image_pk == images.c.pk)
    by_id = select(*columns).select_from(with_tags).where(
        images.c.system == bindparam("system"), images.c.image_id == bindparam("image_id"),
        images.c.status == READY)
    by_tag = select(*columns).select_from(with_tags.join(named, named.c.image_pk == images.c.pk)).where(
        named.c.system == bindparam("system"), named.c.itype == bindparam("itype"),
        named.c.name == bindparam("tag"), images.c.status == READY)
    return by_id, by_tag


_BY_ID, _BY_TAG = _lookup_statements()


@dataclasses.dataclass(frozen=True)
class ImageView:
    """An image as the API shows it: its row plus the names of all its tags."""

    pk: int
    system: str
    itype: str
    image_id: str
    status: str
    format: str
    env: list
    entrypoint: list | None
    cmd: list | None
    workdir: str | None
    user: str | None
    labels: dict
    arch: str | None
    os: str | None
    size: int
    private: bool
    user_acl: list
    group_acl: list
    last_pull: float
    expiration: float | None
    tags: list[str]

    @classmethod
    def of(cls, image: Image) -> "ImageView":
        fields = {column.key: getattr(image, column.key) for column in _VIEW_COLUMNS}
        return cls(**fields, tags=sorted(t.name for t in image.tags))


def _logins_json(caller: auth.Caller) -> dict | None:
    if not caller.registry_logins:
        return None
    return {location: [user, password] for location, (user, password) in caller.registry_logins.items()}
