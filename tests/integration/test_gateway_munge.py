"""shifter_core.munge against a private munged: round trip, and every refusal a user can meet."""
from __future__ import annotations

import os
import time

import pytest

from ci.harness.munged import MungeDaemon
from shifter_core.munge import CredentialExpired, CredentialReplayed, Munge, MungeError
from tests.integration.gateway_fixtures import munged  # noqa: F401


def test_round_trip_carries_uid_gid_and_payload(munged):
    m = Munge(munged.socket)
    decoded = m.decode(m.encode(b'{"authorized_locations": {}}'))
    assert (decoded.uid, decoded.gid) == (os.getuid(), os.getgid())
    assert decoded.payload == b'{"authorized_locations": {}}'
    assert m.decode(m.encode()).payload == b""


def test_replayed_credential(munged):
    m = Munge(munged.socket)
    credential = m.encode(b"x")
    m.decode(credential)
    with pytest.raises(CredentialReplayed, match="create a new one for every request"):
        m.decode(credential)
    assert m.decode(credential, allow_stale=True).payload == b"x"     # for stored logins only


def test_expired_credential(munged):
    m = Munge(munged.socket)
    credential = m.encode(b"y", ttl=1)
    time.sleep(2.1)                     # a clock condition: nothing else has to happen meanwhile
    with pytest.raises(CredentialExpired, match="clocks"):
        m.decode(credential)
    assert m.decode(credential, allow_stale=True).payload == b"y"


def test_foreign_key_garbage_and_missing_daemon(munged):
    with MungeDaemon() as other:
        foreign = Munge(other.socket).encode()
    with pytest.raises(MungeError, match="same key"):
        Munge(munged.socket).decode(foreign)
    with pytest.raises(MungeError, match="not a munge credential|armor"):
        Munge(munged.socket).decode("hello")
    with pytest.raises(MungeError, match="not ASCII"):
        Munge(munged.socket).decode("crédential")
    with pytest.raises(MungeError, match="cannot reach munged at /nonexistent"):
        Munge("/nonexistent/socket").encode()
