"""An image's ACL at run time on the mini-cluster: the prolog refuses a user the ACL does not
list, whatever happened at submit (here the ACL changes while the job waits)."""
from __future__ import annotations

import json
import pwd
import tempfile

import pytest

from ci.harness.oci import File, Layout, busybox_config, busybox_entries
from tests.integration import waiting
from tests.integration.runtime_fixtures import FAILING_NODE, assert_in_service

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
SOMEONE_ELSE = 4242


def acl_of(cluster, image: str) -> dict:
    looked = cluster.run(["shifterimg", "-v", "lookup", image], as_user=False)
    return json.loads(looked.stderr.split("Message: ", 1)[1])


def test_an_acl_on_a_public_image_is_enforced_at_lookup_and_at_run(cluster):
    with tempfile.TemporaryDirectory(prefix="oci-") as tmp:
        layout = Layout(tmp)
        layer = layout.add_layer(busybox_entries() + [File("etc/acl-test", "restricted\n")])
        layout.add_image([layer], busybox_config(), tag="build")
        layout.push("build", f"{cluster.registry}/acl/restricted:latest")
    image = "docker:acl/restricted:latest"
    user = pwd.getpwnam(cluster.user).pw_uid
    cluster.run(["shifterimg", "pull", "--user", str(user), image], as_user=False, timeout=300)
    assert acl_of(cluster, image)["userACL"] == [0, user]
    job = cluster.sbatch("#!/bin/sh\necho the job ran\n", "--hold", "-w", FAILING_NODE, f"--image={image}")

    # while the job waits, an administrator gives the image to someone else
    cluster.run(["shifterimg", "pull", "--user", str(SOMEONE_ELSE), image], as_user=False, timeout=300)
    # a gateway process keeps a found image LookupCacheSeconds (1 s here): sbatch's lookup
    # may still be the answer for that long
    found = waiting.until(lambda: (acl := acl_of(cluster, image))["userACL"] == [0, SOMEONE_ELSE] and acl, 30,
                          "the lookup never showed the new ACL")
    assert found["private"] is False
    hidden = cluster.run(["shifterimg", "lookup", image], check=False)
    assert hidden.returncode == 1 and "not available" in hidden.stderr

    cluster.run(["scontrol", "release", str(job)], as_user=False)
    assert cluster.wait(job) == "FAILED", cluster.job_fields(job)
    output = cluster.output(job)
    assert "the job ran" not in output
    assert f"{cluster.user} may not use image sha256:{found['id']}: only the users and groups on its ACL" \
        in output
    assert_in_service(cluster, FAILING_NODE)
