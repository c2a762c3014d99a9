"""The releaser's decisions, one round at a time (shifter_core/releaser.py).

Slurm and the gateway are replaced by recorders here: these tests are about
the order of the steps and about what a round does after a crash left a job
half-way; tests/integration/test_pending_pull.py runs the real thing."""
from __future__ import annotations

import dataclasses

from shifter_core import pullhold
from shifter_core.errors import GatewayError
from shifter_core.releaser import HeldJob, PullState, Releaser

REQUEST = "docker:busybox:1.0"
IMAGE = "ef" * 32


class RecordingSlurm:
    def __init__(self, *jobs: HeldJob):
        self.jobs = list(jobs)
        self.calls: list[tuple] = []

    def pending_jobs(self):
        """As squeue --json shows them (shifter_core.slurmctl)."""
        return [{"job_id": job.job_id, "user_id": job.uid, "comment": job.comment,
                 "admin_comment": job.admin_comment, "priority": 0 if job.held else 1}
                for job in self.jobs]

    def set_comment(self, job_id, text):
        self.calls.append(("comment", job_id, text))

    def set_admin_comment(self, job_id, text):
        self.calls.append(("admin", job_id, text))

    def release(self, job_id):
        self.calls.append(("release", job_id))

    def cancel(self, job_id):
        self.calls.append(("cancel", job_id))


class Gateway:
    def __init__(self, state: PullState | Exception):
        self.state = state
        self.asked: list[tuple[int, str]] = []

    def __call__(self, cfg, uid, request):
        self.asked.append((uid, request))
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


def held(job_id=7, uid=1001, comment="", admin=None, held=True):
    return HeldJob(job_id=job_id, uid=uid, comment=comment,
                   admin_comment=admin if admin is not None else pullhold.waiting(REQUEST), held=held)


def round_with(state, *jobs):
    slurm, gateway = RecordingSlurm(*jobs), Gateway(state)
    Releaser(cfg=None, slurm=slurm, gateway=gateway).round()
    return slurm.calls, gateway.asked


def test_ready_pins_then_releases_then_says_so():
    calls, _ = round_with(PullState(image_id=IMAGE), held(comment="mine"))
    assert calls == [("comment", 7, f"mine shifter-pin=sha256:{IMAGE}"), ("release", 7),
                     ("admin", 7, pullhold.pinned(REQUEST, f"sha256:{IMAGE}"))]


def test_failure_is_written_down_before_the_job_is_cancelled():
    calls, _ = round_with(PullState(failure="manifest unknown"), held())
    assert calls == [("admin", 7, pullhold.failed(REQUEST, "manifest unknown")), ("cancel", 7)]


def test_progress_is_written_only_when_it_changes():
    calls, _ = round_with(PullState(progress="PULLING: Pulling layers"), held())
    assert calls == [("admin", 7, pullhold.waiting(REQUEST, "PULLING: Pulling layers"))]
    calls, _ = round_with(PullState(progress="PULLING: Pulling layers"),
                          held(admin=pullhold.waiting(REQUEST, "PULLING: Pulling layers")))
    assert calls == []


def test_a_pin_written_by_a_releaser_that_died_is_released_without_asking_the_gateway():
    calls, asked = round_with(PullState(failure="must not be used"),
                              held(comment=pullhold.with_pin("", IMAGE)))
    assert asked == []
    assert calls == [("release", 7), ("admin", 7, pullhold.pinned(REQUEST, f"sha256:{IMAGE}"))]


def test_a_released_job_still_marked_waiting_only_gets_its_admin_comment():
    calls, _ = round_with(None, held(comment=pullhold.with_pin("", IMAGE), held=False))
    assert calls == [("admin", 7, pullhold.pinned(REQUEST, f"sha256:{IMAGE}"))]


def test_a_job_marked_failed_but_not_cancelled_is_cancelled():
    calls, asked = round_with(None, held(admin=pullhold.failed(REQUEST, "gone")))
    assert calls == [("cancel", 7)] and asked == []


def test_pinned_jobs_waiting_for_nodes_are_left_alone():
    calls, _ = round_with(None, held(admin=pullhold.pinned(REQUEST, f"sha256:{IMAGE}"), held=False,
                                     comment=pullhold.with_pin("", IMAGE)))
    assert calls == []


def test_the_gateway_is_asked_once_per_user_and_image():
    jobs = [held(job_id=1), held(job_id=2), held(job_id=3, uid=1002),
            held(job_id=4, admin=pullhold.waiting("docker:other:2"))]
    calls, asked = round_with(PullState(progress="PENDING"), *jobs)
    assert sorted(asked) == [(1001, REQUEST), (1001, "docker:other:2"), (1002, REQUEST)]
    assert [c[1] for c in calls] == [1, 2, 3, 4]


def test_an_unreachable_gateway_keeps_the_job_waiting_and_says_why():
    calls, _ = round_with(GatewayError("no image gateway answered: http://gw: cannot connect"), held())
    assert calls == [("admin", 7, pullhold.waiting(
        REQUEST, "cannot ask the gateway: no image gateway answered: http://gw: cannot connect"))]


def test_one_job_failing_does_not_stop_the_others():
    class Refusing(RecordingSlurm):
        def release(self, job_id):
            if job_id == 1:
                raise GatewayError("scontrol: Access/permission denied")
            super().release(job_id)

    slurm = Refusing(held(job_id=1), held(job_id=2))
    Releaser(cfg=None, slurm=slurm, gateway=Gateway(PullState(image_id=IMAGE))).round()
    assert ("release", 2) in slurm.calls


def test_held_job_request_comes_from_the_admin_comment():
    assert dataclasses.replace(held(), admin_comment=pullhold.waiting("docker:a:b", "x")).request == "docker:a:b"
