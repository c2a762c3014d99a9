"""The releaser: starts jobs held until their image is pulled (holdJobsForPull=1;
shifter_core/pullhold.py holds the contract between the parts).

    shifter-admin release-held-jobs [--config /etc/shifter/udiRoot.conf] [--interval 2]

It runs as root on a host with the Slurm client commands and munge (the
controller, for instance): Slurm lets only a job's owner or an administrator
change a job, and only root can ask the gateway in each job's user's name,
which a private image needs.  Each round it lists the pending jobs whose
AdminComment says they wait for an image and asks the gateway, once per user
and image, how the pull goes:

    READY        append the pin to the job's Comment, release the job, then
                 note the digest in AdminComment
    FAILURE      write the pull's reason into AdminComment, then cancel the job
    in progress  keep the pull's progress in AdminComment

Each round starts afresh from what slurmctld holds and every step can be
repeated, so a releaser that dies at any point, or two of them, lose nothing:
a job whose pin was written but not yet released is released next round, a
job marked failed but not yet cancelled is cancelled next round, and a pin
once written is never changed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pwd
import threading

from . import imageref, pullhold
from .errors import ImageNotFound, ShifterError
from .gwclient import GatewayClient
from .imagestatus import FAILURE, READY
from .slurmctl import Slurm

log = logging.getLogger("shifter.releaser")


@dataclasses.dataclass(frozen=True)
class HeldJob:
    """A pending job whose AdminComment is ours."""

    job_id: int
    uid: int
    comment: str
    admin_comment: str
    held: bool

    @property
    def request(self) -> str | None:
        return pullhold.waiting_for(self.admin_comment)


@dataclasses.dataclass(frozen=True)
class PullState:
    """What the gateway says about one image for one user."""

    image_id: str | None = None      # READY
    failure: str | None = None       # FAILURE, with the reason
    progress: str = ""               # otherwise


def held_jobs(slurm: Slurm) -> list[HeldJob]:
    """Pending jobs whose AdminComment one of the parts of pullhold wrote."""
    jobs = []
    for job in slurm.pending_jobs():
        admin_comment = job.get("admin_comment") or ""
        if admin_comment.startswith(pullhold.ADMIN_PREFIX):
            jobs.append(HeldJob(job_id=int(job["job_id"]), uid=int(job["user_id"]),
                                comment=job.get("comment") or "", admin_comment=admin_comment,
                                held=job.get("priority") == 0))
    return jobs


def ask_gateway(cfg, uid: int, request: str) -> PullState:
    """How the pull of `request` goes, asked in the name of user `uid`.

    In a child process that takes the user's identity: the gateway then
    answers what this user may see (a private image) and judges the pull by
    this user's rights, as it did when the user submitted the job.
    """
    reader, writer = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        try:
            _become(uid)
            answer = dataclasses.asdict(_pull_state(cfg, request))
        except BaseException as error:      # noqa: BLE001 - the parent reports it
            answer = {"error": str(error) if isinstance(error, ShifterError) else repr(error)}
        try:
            os.write(writer, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(writer)
    try:
        with os.fdopen(reader, "rb") as pipe:
            data = pipe.read()
    finally:
        os.waitpid(pid, 0)
    answer = json.loads(data or b'{"error": "the gateway query died"}')
    if "error" in answer:
        raise ShifterError(answer["error"])
    return PullState(**answer)


def _become(uid: int) -> None:
    account = pwd.getpwuid(uid)
    os.setgroups(os.getgrouplist(account.pw_name, account.pw_gid))
    os.setgid(account.pw_gid)
    os.setuid(uid)
    os.environ.clear()
    os.environ.update({"HOME": account.pw_dir, "USER": account.pw_name, "PATH": "/usr/bin:/bin"})


def _pull_state(cfg, request: str) -> PullState:
    ref = imageref.parse(request, cfg.default_image_type)
    client = GatewayClient(cfg.image_gateway, cfg.system, cfg.gateway_timeout,
                           ca_file=cfg.gateway_ca_file, default_type=cfg.default_image_type)
    try:
        return PullState(image_id=client.lookup(ref)["id"])
    except ImageNotFound:
        pass
    record = client.pull_status(ref)
    if record.get("status") == READY:
        return PullState(image_id=record["id"])
    if record.get("status") == FAILURE:
        return PullState(failure=str(record.get("status_message") or "the pull failed"))
    return PullState(progress=pullhold.progress(record, sizes=False))


class Releaser:
    def __init__(self, cfg, slurm: Slurm, gateway=ask_gateway):
        self.cfg = cfg
        self.slurm = slurm
        self.gateway = gateway

    def run(self, interval: float, stop: threading.Event) -> None:
        """Rounds every `interval` seconds until `stop`; a failed round is logged and retried."""
        log.info("releasing jobs held for images of system %s every %g s", self.cfg.system, interval)
        while not stop.is_set():
            try:
                self.round()
            except ShifterError as error:
                log.error("%s", error)
            except Exception:           # noqa: BLE001 - a bug must not stop the releases
                log.exception("the round failed")
            stop.wait(interval)

    def round(self) -> None:
        states: dict[tuple[int, str], PullState] = {}
        for job in held_jobs(self.slurm):
            try:
                self._advance(job, states)
            except ShifterError as error:
                log.error("job %d: %s", job.job_id, error)

    def _advance(self, job: HeldJob, states: dict) -> None:
        pin = pullhold.pinned_digest(job.comment)
        failed = pullhold.failed_request(job.admin_comment)
        request = job.request
        if failed:
            log.info("job %d: cancelled, %s", job.job_id, job.admin_comment)
            self.slurm.cancel(job.job_id)
        elif request and pin:
            self._release(job, request, pin)
        elif request:
            key = (job.uid, request)
            if key not in states:
                try:
                    states[key] = self.gateway(self.cfg, job.uid, request)
                except ShifterError as error:
                    states[key] = PullState(progress=f"cannot ask the gateway: {error}")
            self._apply(job, request, states[key])

    def _apply(self, job: HeldJob, request: str, state: PullState) -> None:
        if state.image_id:
            self.slurm.set_comment(job.job_id, pullhold.with_pin(job.comment, state.image_id))
            self._release(job, request, f"sha256:{state.image_id}")
        elif state.failure:
            self.slurm.set_admin_comment(job.job_id, pullhold.failed(request, state.failure))
            log.info("job %d: %s could not be pulled (%s); cancelling it", job.job_id, request, state.failure)
            self.slurm.cancel(job.job_id)
        else:
            text = pullhold.waiting(request, state.progress)
            if text != job.admin_comment:
                self.slurm.set_admin_comment(job.job_id, text)

    def _release(self, job: HeldJob, request: str, digest: str) -> None:
        if job.held:
            self.slurm.release(job.job_id)
            log.info("job %d: %s is ready; released, pinned to %s", job.job_id, request, digest)
        self.slurm.set_admin_comment(job.job_id, pullhold.pinned(request, digest))


def main(config_path: str, interval: float, once: bool) -> None:
    """`shifter-admin release-held-jobs`: run rounds until SIGTERM or SIGINT."""
    import signal

    from . import config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = config.load(config_path)
    releaser = Releaser(cfg, Slurm(os.environ.get("SLURM_CONF")))
    if once:
        releaser.round()
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    releaser.run(interval, stop)
