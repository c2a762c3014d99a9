"""Image ACLs against a token-auth registry: logins passed by `shifterimg login`/`pull`, ACLs
enforced on lookup and list and recorded for the runtime, and pulls that cannot take an image
away from its users (gateway/auth.py: access_after_pull)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ci.harness.oci import Layout, busybox_config, busybox_image
from ci.harness.registry import Registry
from tests.integration.gateway_fixtures import (GatewayProcess, gateway_config, munged,  # noqa: F401
                                                push_busybox, registry, shared_dir, shifterimg, udiroot_conf)

pytestmark = pytest.mark.slow
OWNER, FRIEND, STRANGER, SECOND, THIRD, PUBLIC_PULLER, OUTSIDER = 4001, 4002, 4003, 4004, 4005, 4006, 4007
LOGINS = {"alice": "s3cret", "bob": "hunter2"}


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory):
    with Registry(str(tmp_path_factory.mktemp("token-registry")), auth="token", users=LOGINS) as reg:
        yield reg


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, munged, registry, private_registry):
    workdir = str(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(workdir, munged, registry)
    config["Locations"][private_registry.host] = {"url": private_registry.url}
    with GatewayProcess(workdir, config) as gw:
        yield gw


@pytest.fixture(scope="module")
def conf(gateway):
    return udiroot_conf(shared_dir("conf"), [gateway.url])


@pytest.fixture(scope="module")
def homes():
    base = Path(shared_dir("homes"))
    result = {}
    for uid in (OWNER, FRIEND, STRANGER, SECOND, THIRD, PUBLIC_PULLER, OUTSIDER):
        home = base / str(uid)
        home.mkdir()
        os.chown(home, uid, uid)
        result[uid] = str(home)
    result[None] = str(base / "root")
    os.mkdir(result[None], 0o700)
    return result


def push(reg, tmp_path, name: str) -> str:
    """A busybox image whose config names it, so that no two tests share a digest."""
    layout = Layout(str(tmp_path / "layout"))
    busybox_image(layout, "1", config=busybox_config(labels={"test": name}))
    layout.push("1", f"{reg.host}/{name}:1", creds=reg.creds)
    return f"{reg.host}/{name}:1"


def run(args, conf, munged, homes, uid, **kw):
    return shifterimg(args, conf, munged, user=uid, home=homes[uid], **kw)


def login(conf, munged, homes, uid, reg, user):
    result = run(["login", reg.host], conf, munged, homes, uid, input=f"{user}\n{LOGINS[user]}\n")
    assert result.returncode == 0, result.stderr


def pulled(args, conf, munged, homes, uid, gateway):
    result = run(["pull", *args], conf, munged, homes, uid)
    assert result.returncode == 0, result.stderr + gateway.log()
    return result


def record(image, conf, munged, homes, uid) -> dict | None:
    """The lookup record `uid` gets, None when the image is hidden from them."""
    found = run(["-v", "lookup", image], conf, munged, homes, uid)
    if found.returncode == 1 and "not available" in found.stderr:
        return None
    assert found.returncode == 0, found.stderr
    return json.loads(found.stderr.split("Message: ", 1)[1])


def readers(image, conf, munged, homes, uids) -> set[int]:
    return {uid for uid in uids if record(image, conf, munged, homes, uid) is not None}


def on_disk(gateway, image_id) -> tuple[list[str], dict]:
    images = os.path.join(gateway.workdir, "images")
    meta = [line for line in open(os.path.join(images, f"{image_id}.meta")).read().splitlines()
            if "ACL" in line]
    return meta, json.load(open(os.path.join(images, f"{image_id}.json")))


@pytest.fixture(scope="module")
def private_image(private_registry, tmp_path_factory):
    return push(private_registry, tmp_path_factory.mktemp("private"), "private/thing")


def test_private_image_needs_a_login(conf, munged, homes, private_image):
    result = run(["pull", private_image], conf, munged, homes, OWNER)
    assert result.returncode == 1
    assert "the repository may be private: give credentials" in result.stderr


def test_login_pull_with_acl_and_enforcement(gateway, conf, munged, homes, private_image, private_registry):
    login(conf, munged, homes, OWNER, private_registry, "alice")
    cred_file = os.path.join(homes[OWNER], ".udiRoot", ".cred")
    assert oct(os.stat(cred_file).st_mode & 0o777) == "0o600"
    assert LOGINS["alice"] not in open(cred_file).read()           # sealed in a munge credential

    pulled(["--user", str(FRIEND), private_image], conf, munged, homes, OWNER, gateway)
    found = record(private_image, conf, munged, homes, OWNER)
    assert found["private"] is True and found["userACL"] == [OWNER, FRIEND]
    assert readers(private_image, conf, munged, homes, (OWNER, FRIEND, STRANGER)) == {OWNER, FRIEND}
    assert private_image not in run(["images"], conf, munged, homes, STRANGER).stdout
    assert private_image in run(["images"], conf, munged, homes, FRIEND).stdout
    meta, stored = on_disk(gateway, found["id"])
    assert meta == [f"USERACL: {OWNER},{FRIEND}", "GROUPACL: "]
    assert stored["private"] is True and stored["user_acl"] == [OWNER, FRIEND]

    # a stranger cannot get it by pulling without a login either
    stolen = run(["pull", private_image], conf, munged, homes, STRANGER)
    assert stolen.returncode == 1 and "give credentials" in stolen.stderr
    assert record(private_image, conf, munged, homes, STRANGER) is None


def refused(args, conf, munged, homes, uid, why):
    result = run(["pull", *args], conf, munged, homes, uid)
    assert result.returncode == 1 and why in result.stderr, result.stderr


ONLY_ITS_USERS = "may only be pulled again by the users and groups on its ACL and by image administrators"


def test_another_login_can_neither_take_nor_use_a_private_image(gateway, conf, munged, homes,
                                                                private_image, private_registry):
    login(conf, munged, homes, SECOND, private_registry, "bob")
    refused(["--user", str(OUTSIDER), private_image], conf, munged, homes, SECOND, ONLY_ITS_USERS)
    refused([private_image], conf, munged, homes, SECOND, ONLY_ITS_USERS)
    assert readers(private_image, conf, munged, homes, (OWNER, FRIEND, SECOND, OUTSIDER)) == {OWNER, FRIEND}
    found = record(private_image, conf, munged, homes, OWNER)
    meta, stored = on_disk(gateway, found["id"])
    assert meta[0] == f"USERACL: {OWNER},{FRIEND}" and stored["user_acl"] == found["userACL"] == [OWNER, FRIEND]


def test_a_repull_without_acl_never_opens_a_private_image(gateway, conf, munged, homes, private_image,
                                                          private_registry):
    login(conf, munged, homes, THIRD, private_registry, "bob")
    refused([private_image], conf, munged, homes, THIRD, ONLY_ITS_USERS)
    pulled([private_image], conf, munged, homes, OWNER, gateway)
    assert readers(private_image, conf, munged, homes, (FRIEND, STRANGER, THIRD)) == {FRIEND}


def test_users_on_the_acl_and_admins_may_change_it(gateway, conf, munged, homes, private_image,
                                                   private_registry):
    login(conf, munged, homes, OWNER, private_registry, "alice")      # whatever ran before
    pulled(["--user", str(OUTSIDER), private_image], conf, munged, homes, OWNER, gateway)
    assert readers(private_image, conf, munged, homes, (OWNER, FRIEND, SECOND, OUTSIDER)) == {OWNER, OUTSIDER}
    login(conf, munged, homes, None, private_registry, "alice")
    pulled(["--user", f"{FRIEND},{SECOND}", private_image], conf, munged, homes, None, gateway)   # root: admin
    assert readers(private_image, conf, munged, homes, (OWNER, FRIEND, SECOND, OUTSIDER)) == {FRIEND, SECOND}
    assert record(private_image, conf, munged, homes, FRIEND)["userACL"] == [0, FRIEND, SECOND]


def test_acl_on_a_public_image_is_kept_and_enforced(gateway, conf, munged, homes, registry, tmp_path):
    image = push(registry, tmp_path, "public/open")
    pulled(["--user", str(FRIEND), image], conf, munged, homes, PUBLIC_PULLER, gateway)
    found = record(image, conf, munged, homes, FRIEND)
    assert found["private"] is False and found["userACL"] == [FRIEND, PUBLIC_PULLER]
    assert readers(image, conf, munged, homes, (PUBLIC_PULLER, FRIEND, STRANGER)) == {PUBLIC_PULLER, FRIEND}
    assert on_disk(gateway, found["id"])[0] == [f"USERACL: {FRIEND},{PUBLIC_PULLER}", "GROUPACL: "]
    refused([image], conf, munged, homes, STRANGER, ONLY_ITS_USERS)
    # an image every user may use cannot be restricted by one of them
    shared = push(registry, tmp_path, "public/shared")
    pulled([shared], conf, munged, homes, PUBLIC_PULLER, gateway)
    refused(["--user", str(FRIEND), shared], conf, munged, homes, STRANGER, "only an image administrator")
    assert readers(shared, conf, munged, homes, (OUTSIDER, FRIEND)) == {OUTSIDER, FRIEND}


def test_a_login_to_a_public_repository_keeps_its_image_public(gateway, conf, munged, homes,
                                                                  private_registry, tmp_path):
    """Shifter's rule: private only when the registry refused anonymous access."""
    image = push(private_registry, tmp_path, "public/with-login")
    login(conf, munged, homes, FRIEND, private_registry, "alice")
    pulled([image], conf, munged, homes, FRIEND, gateway)
    found = record(image, conf, munged, homes, STRANGER)
    assert found["private"] is False and found["userACL"] == []
