"""Private images: registry logins passed by `shifterimg login`/`pull`, ACLs enforced on
lookup and list, and recorded in the image's metadata for the runtime."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ci.harness.registry import Registry
from tests.integration.gateway_fixtures import (GatewayProcess, gateway_config, munged,  # noqa: F401
                                                push_busybox, registry, shared_dir, shifterimg, udiroot_conf)

pytestmark = pytest.mark.slow
OWNER, FRIEND, STRANGER, PUBLIC_PULLER = 4001, 4002, 4003, 4004


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory):
    with Registry(str(tmp_path_factory.mktemp("private-registry")), auth="htpasswd") as reg:
        yield reg


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, munged, registry, private_registry):
    workdir = str(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(workdir, munged, registry)
    config["Locations"][private_registry.host] = {"url": private_registry.url}
    with GatewayProcess(workdir, config) as gw:
        yield gw


@pytest.fixture(scope="module")
def conf(gateway, tmp_path_factory):
    return udiroot_conf(shared_dir("conf"), [gateway.url])


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    base = Path(shared_dir("homes"))
    result = {}
    for uid in (OWNER, FRIEND, STRANGER, PUBLIC_PULLER):
        home = base / str(uid)
        home.mkdir()
        os.chown(home, uid, uid)
        result[uid] = str(home)
    return result


@pytest.fixture(scope="module")
def private_image(private_registry, tmp_path_factory):
    layout = str(tmp_path_factory.mktemp("layout"))
    from ci.harness.oci import Layout, busybox_image
    busybox_image(Layout(layout), "1")
    Layout(layout).push("1", f"{private_registry.host}/private/thing:1", creds=private_registry.creds)
    return f"{private_registry.host}/private/thing:1"


def run(args, conf, munged, homes, uid, **kw):
    return shifterimg(args, conf, munged, user=uid, home=homes[uid], **kw)


def test_private_image_needs_a_login(conf, munged, homes, private_image):
    result = run(["pull", private_image], conf, munged, homes, OWNER)
    assert result.returncode == 1
    assert "needs a user name and password" in result.stderr


def test_login_pull_with_acl_and_enforcement(gateway, conf, munged, homes, private_image, private_registry):
    user, password = private_registry.creds.split(":", 1)
    login = run(["login", private_registry.host], conf, munged, homes, OWNER, input=f"{user}\n{password}\n")
    assert login.returncode == 0, login.stderr
    assert "Stored the login" in login.stderr
    cred_file = os.path.join(homes[OWNER], ".udiRoot", ".cred")
    assert oct(os.stat(cred_file).st_mode & 0o777) == "0o600"
    assert password not in open(cred_file).read()           # sealed in a munge credential

    pulled = run(["pull", "--user", str(FRIEND), private_image], conf, munged, homes, OWNER)
    assert pulled.returncode == 0, pulled.stderr + gateway.log()

    owner = run(["-v", "lookup", private_image], conf, munged, homes, OWNER)
    assert owner.returncode == 0, owner.stderr
    image_id = owner.stdout.strip()
    record = json.loads(owner.stderr.split("Message: ", 1)[1])
    assert record["private"] is True and record["userACL"] == [OWNER, FRIEND]
    assert run(["lookup", private_image], conf, munged, homes, FRIEND).stdout.strip() == image_id
    stranger = run(["lookup", private_image], conf, munged, homes, STRANGER)
    assert stranger.returncode == 1 and "not available" in stranger.stderr
    assert private_image not in run(["images"], conf, munged, homes, STRANGER).stdout
    assert private_image in run(["images"], conf, munged, homes, FRIEND).stdout

    images = os.path.join(gateway.workdir, "images")
    meta = open(os.path.join(images, f"{image_id}.meta")).read().splitlines()
    assert f"USERACL: {OWNER},{FRIEND}" in meta
    stored = json.load(open(os.path.join(images, f"{image_id}.json")))
    assert stored["private"] is True and stored["user_acl"] == [OWNER, FRIEND]

    # a stranger cannot get it by pulling without a login either
    stolen = run(["pull", private_image], conf, munged, homes, STRANGER)
    assert stolen.returncode == 1 and "needs a user name and password" in stolen.stderr
    assert run(["lookup", private_image], conf, munged, homes, STRANGER).returncode == 1


def test_acl_on_a_public_image_is_discarded(gateway, conf, munged, homes, registry, tmp_path):
    image = push_busybox(registry, str(tmp_path), "public/open")
    pulled = run(["pull", "--user", str(FRIEND), image], conf, munged, homes, PUBLIC_PULLER)
    assert pulled.returncode == 0, pulled.stderr
    looked = run(["-v", "lookup", image], conf, munged, homes, STRANGER)
    assert looked.returncode == 0
    record = json.loads(looked.stderr.split("Message: ", 1)[1])
    assert record["private"] is False and record["userACL"] == [] and record["groupACL"] == []


def test_a_login_to_a_public_repository_keeps_its_image_public(gateway, conf, munged, homes, registry,
                                                                  tmp_path):
    """Shifter's rule: private only when the registry refused anonymous access."""
    image = push_busybox(registry, str(tmp_path), "public/with-login")
    login = run(["login", registry.host], conf, munged, homes, FRIEND, input="someone\nsecret\n")
    assert login.returncode == 0, login.stderr
    pulled = run(["pull", "--user", str(FRIEND), image], conf, munged, homes, FRIEND)
    assert pulled.returncode == 0, pulled.stderr + gateway.log()
    record = json.loads(run(["-v", "lookup", image], conf, munged, homes, STRANGER)
                        .stderr.split("Message: ", 1)[1])
    assert record["private"] is False and record["userACL"] == []
