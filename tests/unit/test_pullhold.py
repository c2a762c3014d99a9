"""The markers jobs held for a pull carry (shifter_core/pullhold.py): what the
submit side, job_submit.lua, the releaser and the prolog agree on."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shifter_core import pullhold

HEX = "ab" * 32
OTHER = "cd" * 32


def test_the_pin_is_found_after_the_users_comment():
    comment = pullhold.with_pin("my run #3", HEX)
    assert comment == f"my run #3 shifter-pin=sha256:{HEX}"
    assert pullhold.pinned_digest(comment) == f"sha256:{HEX}"


def test_a_job_without_comment_gets_the_pin_alone():
    assert pullhold.with_pin("", HEX) == f"shifter-pin=sha256:{HEX}"
    assert pullhold.with_pin(None, HEX) == f"shifter-pin=sha256:{HEX}"


def test_the_last_pin_wins():
    assert pullhold.pinned_digest(f"shifter-pin=sha256:{OTHER} shifter-pin=sha256:{HEX}") == f"sha256:{HEX}"


def test_no_pin_in_empty_or_unrelated_comments():
    for comment in (None, "", "shifter-pin", "shifter-pin=sha256:", f"xshifter-pin=sha256:{HEX}",
                    f"shifter-pin=sha256:{HEX}x", f"shifter-pin=sha256:{HEX[:-1]}",
                    f"shifter-pin=sha256:{HEX.upper()}", f"shifter-pin=sha512:{HEX}"):
        assert pullhold.pinned_digest(comment) is None, comment


@given(st.text(max_size=80).filter(lambda t: "shifter-pin=" not in t))
def test_any_user_comment_keeps_exactly_its_pin(user_comment):
    assert pullhold.pinned_digest(pullhold.with_pin(user_comment, HEX)) == f"sha256:{HEX}"


def test_waiting_comments_name_their_request():
    request = "docker:127.0.0.1:5000/test/os:1.0"
    assert pullhold.waiting(request) == f"shifter: waiting for {request} to be pulled"
    assert pullhold.waiting_for(pullhold.waiting(request)) == request
    detailed = pullhold.waiting(request, "PENDING: attempt 1 failed (blob) retrying")
    assert pullhold.waiting_for(detailed) == request


def test_other_admin_comments_are_not_waiting():
    request = "docker:busybox:latest"
    for text in (None, "", "maintenance", pullhold.failed(request, "gone"),
                 pullhold.pinned(request, f"sha256:{HEX}"), "shifter: waiting for  to be pulled"):
        assert pullhold.waiting_for(text) is None, text


def test_failed_comments_name_their_request_and_reason():
    text = pullhold.failed("docker:nope:1", "image docker:nope:1 not found on http://r")
    assert text == "shifter: docker:nope:1 could not be pulled: image docker:nope:1 not found on http://r"
    assert pullhold.failed_request(text) == "docker:nope:1"
    assert pullhold.failed_request(pullhold.waiting("docker:nope:1")) is None


def test_progress_reads_like_a_sentence():
    record = {"status": "PULLING", "bytes_done": 12_300_000, "bytes_total": 40_000_000,
              "status_message": "Pulling layers"}
    assert pullhold.progress(record) == "PULLING 12.3 of 40.0 MB: Pulling layers"
    assert pullhold.progress(record, sizes=False) == "PULLING: Pulling layers"
    assert pullhold.progress({"status": "PENDING", "status_message": "MISSING"}) == "PENDING"
    assert pullhold.progress({"status": "PENDING", "status_message": "a\nb  c"}) == "PENDING: a b c"
    long = pullhold.progress({"status": "PENDING", "status_message": "x" * 1000})
    assert len(long) == 300 and long.endswith("...")


def test_the_registry_had_the_image_once_layers_are_counted_or_converted():
    assert not pullhold.found_in_registry({"status": "PENDING", "bytes_total": 0})
    assert not pullhold.found_in_registry({"status": "PULLING", "status_message": "Getting manifest"})
    assert pullhold.found_in_registry({"status": "PULLING", "bytes_total": 10})
    assert pullhold.found_in_registry({"status": "PENDING", "bytes_total": 10})     # retrying
    assert pullhold.found_in_registry({"status": "CONVERSION"})
    assert pullhold.found_in_registry({"status": "TRANSFER"})


def test_the_lua_side_uses_the_same_markers():
    import os
    lua = open(os.path.join(os.path.dirname(__file__), "..", "..", "slurm.conf.d", "job_submit.lua")).read()
    assert f'PENDING_VAR = "{pullhold.PENDING_VAR}="' in lua
    assert f'WAITING_PREFIX = "{pullhold.WAITING_PREFIX}"' in lua
    assert f'WAITING_SUFFIX = "{pullhold.WAITING_SUFFIX}"' in lua
    assert 'PIN = "shifter%-pin=sha256:%x+"' in lua and pullhold.PIN_PREFIX == "shifter-pin=sha256:"
