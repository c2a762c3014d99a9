"""Who may use an image after a pull (auth.access_after_pull), and the API's bounded id lists."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from gateway import request_body
from gateway.auth import Access, access_after_pull
from gateway.errors import BadRequest
from shifter_core.errors import AccessDenied
from shifter_core.imagestore import readable_by

OWNER, FRIEND, OTHER, ADMIN = 1000, 1001, 2000, 0


def after(before, requested_users=(), requested_groups=(), *, private, uid=OTHER, groups=None, admin=False):
    requested = Access(private, tuple(requested_users), tuple(requested_groups))
    return access_after_pull(before, requested, uid=uid, groups=frozenset(groups or {uid}), admin=admin,
                             image="abc")


PRIVATE = Access(True, (OWNER, FRIEND))


def test_a_new_private_image_gets_the_requested_acl_or_its_puller():
    assert after(None, (OWNER, FRIEND), private=True, uid=OWNER) == Access(True, (OWNER, FRIEND))
    assert after(None, private=True, uid=OWNER) == Access(True, (OWNER,))


def test_a_new_public_image_is_open_unless_an_acl_is_asked_for():
    assert after(None, private=False) == Access(False)
    assert after(None, (OWNER, FRIEND), private=False, uid=OWNER) == Access(False, (OWNER, FRIEND))


@pytest.mark.parametrize("users", [(), (OTHER, 3000)])
def test_an_outsider_with_a_login_can_neither_use_nor_change_a_restricted_image(users):
    with pytest.raises(AccessDenied, match="^image abc may only be pulled again by the users and groups on"
                                           " its ACL and by image administrators$"):
        after(PRIVATE, users, private=True)
    with pytest.raises(AccessDenied):
        after(Access(False, (OWNER,)), users, private=False)      # public content, restricted image


def test_a_repull_without_acl_leaves_it_as_it_is():
    assert after(PRIVATE, private=True, uid=OWNER) == PRIVATE
    assert after(PRIVATE, private=True, uid=FRIEND) == PRIVATE
    assert after(Access(False), private=False) == Access(False)


def test_users_on_the_acl_and_admins_may_change_it():
    assert after(PRIVATE, (FRIEND, OTHER), private=True, uid=FRIEND) == Access(True, (FRIEND, OTHER))
    assert after(PRIVATE, (ADMIN, 42), private=True, uid=ADMIN, admin=True) == Access(True, (ADMIN, 42))
    by_group = Access(True, (OWNER,), (500,))
    assert after(by_group, (OTHER,), private=True, groups={OTHER, 500}) == Access(True, (OTHER,))


def test_content_fetched_anonymously_is_public_and_keeps_its_acl():
    assert after(PRIVATE, private=False, uid=OWNER) == Access(False, (OWNER, FRIEND))
    assert after(Access(False), private=True) == Access(False)       # once public, public


def test_nobody_but_an_admin_restricts_an_image_everyone_may_use():
    with pytest.raises(AccessDenied, match="open to every user of the system; only an image administrator"):
        after(Access(False), (OTHER,), private=False)
    assert after(Access(False), (OTHER,), private=False, admin=True) == Access(False, (OTHER,))


def test_a_private_image_without_acl_from_older_gateways_takes_its_next_puller():
    assert after(Access(True), private=True) == Access(True, (OTHER,))


@given(before=st.one_of(st.none(), st.builds(Access, st.booleans(), st.lists(st.integers(0, 5)).map(tuple),
                                              st.lists(st.integers(0, 5)).map(tuple))),
       users=st.lists(st.integers(0, 5)), groups=st.lists(st.integers(0, 5)), private=st.booleans(),
       uid=st.integers(0, 5), admin=st.booleans())
def test_invariants(before, users, groups, private, uid, admin):
    # as Catalog.request_pull asks: whoever restricts keeps access (gid == uid here)
    users, groups = (sorted({*users, uid}) if users else []), (sorted({*groups, uid}) if groups else [])

    def reads(image, who):
        return readable_by(image.private, image.users, image.groups, who, {who})

    try:
        access = after(before, users, groups, private=private, uid=uid, admin=admin)
    except AccessDenied:
        assert before is not None and not admin and not (before.restricted and reads(before, uid))
        return
    assert not access.private or access.users or access.groups     # a private image has an ACL
    # the puller can use what they pulled; an admin's pull without an ACL keeps the image's (below)
    assert reads(access, uid) or admin
    if before is not None and before.restricted and not (users or groups):
        assert access.users == before.users and access.groups == before.groups   # no request: no change


# --- request bodies ----------------------------------------------------------------------

def request(data: bytes, **kw) -> Request:
    return Request(EnvironBuilder(method="POST", data=data, **kw).get_environ())


def test_ids_from_strings_and_lists_in_order_without_duplicates():
    body = {"allowed_uids": "1000, 1001,1000,,0", "allowed_gids": [5, "6", 5]}
    assert request_body.id_list(body, "allowed_uids") == [1000, 1001]
    assert request_body.id_list(body, "allowed_gids") == [5, 6]
    assert request_body.id_list({}, "allowed_uids") == []


@pytest.mark.parametrize("value, message", [
    ("alice", "give numeric ids"), ("1e3", "give numeric ids"), ([True], "give numeric ids"),
    ("9" * 5000, "give numeric ids"), ([-1], "not a user or group id"), ("4294967295", "not a user or group"),
    ("٣", "give numeric ids"), ({"a": 1}, "comma-separated string or a list"),
])
def test_bad_ids_are_refused(value, message):
    with pytest.raises(BadRequest, match=message):
        request_body.id_list({"allowed_uids": value}, "allowed_uids")


def test_two_million_ids_are_refused_at_once():
    body = {"allowed_uids": ",".join(str(1000 + i) for i in range(2_000_000))}
    with pytest.raises(BadRequest, match="more than 1000 ids"):
        request_body.id_list(body, "allowed_uids")
    assert len(request_body.id_list({"allowed_uids": list(range(1, 1001))}, "allowed_uids")) == 1000


def test_bodies_are_bounded_and_must_be_objects():
    assert request_body.json_object(request(b"")) == {}
    assert request_body.json_object(request(json.dumps({"a": 1}).encode())) == {"a": 1}
    for data, message in ((b"[1]", "must be a JSON object"), (b"{not", "must be a JSON object"),
                          (b" " * (request_body.MAX_BODY + 1), "at most")):
        with pytest.raises(BadRequest, match=message):
            request_body.json_object(request(data))
