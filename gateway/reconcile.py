"""Keeping every system's image directory in agreement with the database.

The database is the source of truth: lookups only ever answer from it, so a
file it does not know is unreachable, and a READY row without its files
would send jobs to nothing.  What may be in an image directory:

* the files of an image whose row is READY or EXPIRING, with the metadata
  the row holds (`<id>.json` carries the ACL the prolog enforces);
* the files of an image that a running pull or import is writing: the job
  names it (`jobs.image_id`) before it writes anything (gateway/worker.py).

Anything else is settled: unknown files are removed, metadata that differs
from the row is rewritten, a READY row whose files are gone is marked
EXPIRED (pullable again).  `settle()` does this for one image, under the
image's lock (db.lock), which every writer and remover of its files holds:

* a worker whose publish failed settles its image before the job fails, so
  a failed pull leaves nothing behind (or the metadata as it was);
* a worker that finds jobs of dead workers given up settles their images;
* at start-up (`shifter-gateway`, `shifter-gateway worker`), `reconcile()`
  settles every image of every system, which repairs what a crash between
  writing files and committing left; it lists the directory before reading
  the database, so a publish that starts meanwhile is seen as claimed;
* `shifter-admin image-orphans [--remove]` shows (and settles) the same.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import time

from shifter_core.imagestatus import EXPIRING, READY

from . import db as database
from .catalog import Catalog
from .config import GatewayConfig
from .db import Database, DatabaseUnavailable
from .queue import JobQueue
from .transfer import Destination, LocalDestination, destination

STALE_SECONDS = 3600
# Temporary files of ours in an image directory: ImageStore's atomic writes,
# copies across file systems (pipeline), imports being hashed (worker).
_TEMPORARY = re.compile(r"^([0-9a-f]{64}\.(json|meta)\.tmp\..+|\.incoming\..+\.squashfs|\.import\..+)$")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Finding:
    system: str
    image_id: str
    what: str          # "unknown files", "metadata differs", "files missing", "stale temporary file"


def lock_key(system: str, image_id: str) -> str:
    return f"image:{system}:{image_id}"


def settle(db: Database, catalog: Catalog, system: str, target: Destination, image_id: str, *,
           holder: tuple[int, str] | None = None, apply: bool = True) -> Finding | None:
    """Make one image's files agree with the database; what disagreed, if anything.

    `holder` (job pk, worker name) is a job whose own claim does not count:
    the one that failed and asks for its leftovers to go.
    """
    with db.session() as session:
        database.lock(session, lock_key(system, image_id))
        image = catalog.lock_image(session, system, image_id)
        if image is not None and image.status in (READY, EXPIRING):
            if not target.exists(image_id):
                if image.status != READY:
                    return None                 # its expiry is removing the files
                if apply:
                    catalog.mark_expired(image)
                return Finding(system, image_id, "files missing")
            wanted = catalog.image_meta(image)
            if target.read(image_id) == wanted:
                return None
            if apply:
                target.write_metadata(wanted)
            return Finding(system, image_id, "metadata differs")
        if catalog.claimed(session, system, image_id, holder) or not target.has_files(image_id):
            return None
        if apply:
            target.remove(image_id)
        return Finding(system, image_id, "unknown files")


def settle_quietly(db: Database, catalog: Catalog, system: str, target: Destination, image_id: str, *,
                   holder: tuple[int, str] | None = None) -> None:
    """settle(), for a worker cleaning up after a failure: logged, never raising."""
    try:
        finding = settle(db, catalog, system, target, image_id, holder=holder)
    except DatabaseUnavailable as error:
        log.warning("image %s on %s not settled (the next start-up does it): %s", image_id, system, error)
    except Exception:      # the failure being handled matters more than this one
        log.exception("image %s on %s not settled", image_id, system)
    else:
        if finding is not None:
            log.warning("image %s on %s: %s, settled", image_id, system, finding.what)


def reconcile(config: GatewayConfig, db: Database, systems: list[str] | None = None, *,
              apply: bool = True) -> list[Finding]:
    """Settle every image of `systems` (default: all); what disagreed."""
    catalog = Catalog(config, JobQueue.from_config(config))
    findings = []
    for system in systems or sorted(config.systems):
        target = destination(config, config.system(system))
        target.prepare()
        listed = target.image_ids()                      # first: see module docstring
        with db.session() as session:
            known = catalog.image_ids(session, system)
        for image_id in sorted(listed | known):
            finding = settle(db, catalog, system, target, image_id, apply=apply)
            if finding is not None:
                findings.append(finding)
        if isinstance(target, LocalDestination):
            findings += _stale_temporaries(system, target.store.directory, apply)
    if apply:
        for finding in findings:
            log.warning("settled image %s on %s: %s", finding.image_id, finding.system, finding.what)
    return findings


def _stale_temporaries(system: str, directory: str, apply: bool) -> list[Finding]:
    """Temporary files a crashed writer left (older than an hour)."""
    found = []
    cutoff = time.time() - STALE_SECONDS
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if _TEMPORARY.match(name) and os.lstat(path).st_mtime < cutoff:
            if apply:
                os.unlink(path)
            found.append(Finding(system, name, "stale temporary file"))
    return found
