"""The gateway's tables (SQLAlchemy 2 declarative).  Migrations create them.

* `images`: one row per image published on a system (an image is a manifest
  digest, whatever tags point at it), with what the runtime and `shifterimg`
  read back: ENV, ENTRY, CMD, WORKDIR, ACLs, expiry.
* `tags`: which image a tag names on a system; a tag names one image.
* `jobs`: the work queue: pulls, imports and expiries, with their lifecycle
  status, the worker holding them, its heartbeat, attempts and backoff.  A
  partial unique index allows one active job per (system, type, tag): that is
  what makes eight concurrent pull requests one conversion.
* `lookups`: lookup metrics (Shifter's `metrics` collection), per user.
* `image_usage`: lookups per image and hour, without users (the status page).
* `counters`: Prometheus counters and histogram buckets, added to by every
  gateway process (gateway/metrics.py), read at scrape time.

Times are float epoch seconds, as Shifter's API reports them.
"""
from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shifter_core.imagestatus import ACTIVE

# Job kinds.
PULL, IMPORT, EXPIRE = "pull", "import", "expire"

_ACTIVE_SQL = f"status IN ({', '.join(repr(status) for status in ACTIVE)})"


class Base(DeclarativeBase):
    pass


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("system", "image_id", name="uq_images_system_image_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    system: Mapped[str] = mapped_column(String(64))
    itype: Mapped[str] = mapped_column(String(16))
    image_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16), default="squashfs")
    env: Mapped[list] = mapped_column(JSON, default=list)
    entrypoint: Mapped[list | None] = mapped_column(JSON, nullable=True)
    cmd: Mapped[list | None] = mapped_column(JSON, nullable=True)
    workdir: Mapped[str | None] = mapped_column(Text, nullable=True)
    user: Mapped[str | None] = mapped_column(Text, nullable=True)
    labels: Mapped[dict] = mapped_column(JSON, default=dict)
    arch: Mapped[str | None] = mapped_column(String(32), nullable=True)
    os: Mapped[str | None] = mapped_column(String(32), nullable=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    layers: Mapped[list] = mapped_column(JSON, default=list)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    user_acl: Mapped[list] = mapped_column(JSON, default=list)
    group_acl: Mapped[list] = mapped_column(JSON, default=list)
    last_pull: Mapped[float] = mapped_column(Float)
    expiration: Mapped[float | None] = mapped_column(Float, nullable=True)

    tags: Mapped[list["Tag"]] = relationship(back_populates="image", cascade="all, delete-orphan",
                                             passive_deletes=True)


class Tag(Base):
    __tablename__ = "tags"

    system: Mapped[str] = mapped_column(String(64), primary_key=True)
    itype: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    image_pk: Mapped[int] = mapped_column(ForeignKey("images.pk", ondelete="CASCADE"), index=True)

    image: Mapped[Image] = relationship(back_populates="tags")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("uq_jobs_active_tag", "system", "itype", "tag", unique=True,
              postgresql_where=text(_ACTIVE_SQL), sqlite_where=text(_ACTIVE_SQL)),
        Index("ix_jobs_claim", "status", "not_before"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    system: Mapped[str] = mapped_column(String(64))
    itype: Mapped[str] = mapped_column(String(16))
    tag: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str] = mapped_column(Text, default="")
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    user: Mapped[str] = mapped_column(String(256))
    uid: Mapped[int] = mapped_column(BigInteger)
    gid: Mapped[int] = mapped_column(BigInteger)
    user_acl: Mapped[list] = mapped_column(JSON, default=list)
    group_acl: Mapped[list] = mapped_column(JSON, default=list)
    # Registry logins for a private image; erased when the job ends (to {}: it had some).
    credentials: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    import_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    # True once the registry served the manifest without a login (the status page shows the pull)
    public: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    image_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)
    created: Mapped[float] = mapped_column(Float)
    started: Mapped[float | None] = mapped_column(Float, nullable=True)          # this attempt's claim
    phase_started: Mapped[float | None] = mapped_column(Float, nullable=True)    # when status last changed
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)


class Lookup(Base):
    __tablename__ = "lookups"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(256))
    uid: Mapped[int] = mapped_column(BigInteger)
    system: Mapped[str] = mapped_column(String(64), index=True)
    itype: Mapped[str] = mapped_column(String(16))
    tag: Mapped[str] = mapped_column(String(512))
    image_id: Mapped[str] = mapped_column(String(64))
    time: Mapped[float] = mapped_column(Float)


class ImageUsage(Base):
    __tablename__ = "image_usage"

    system: Mapped[str] = mapped_column(String(64), primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)         # epoch seconds // 3600
    image_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lookups: Mapped[int] = mapped_column(BigInteger)
    last: Mapped[float] = mapped_column(Float)


class Counter(Base):
    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    labels: Mapped[str] = mapped_column(String(1024), primary_key=True)  # JSON object, keys sorted
    value: Mapped[float] = mapped_column(Float)
