"""An image's ACL at run time on the mini-cluster: the prolog refuses users the ACL does not
list, whatever the submitting client did (a job pinned by id never asks the gateway)."""
from __future__ import annotations

import json
import tempfile

import pytest

from ci.harness.oci import File, Layout, busybox_config, busybox_entries
from tests.integration.runtime_fixtures import failed_job

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
SOMEONE_ELSE = 4242


def test_an_acl_on_a_public_image_is_enforced_at_lookup_and_at_run(cluster):
    with tempfile.TemporaryDirectory(prefix="oci-") as tmp:
        layout = Layout(tmp)
        layer = layout.add_layer(busybox_entries() + [File("etc/acl-test", "restricted\n")])
        layout.add_image([layer], busybox_config(), tag="build")
        layout.push("build", f"{cluster.registry}/acl/restricted:latest")
    image = "docker:acl/restricted:latest"
    cluster.run(["shifterimg", "pull", "--user", str(SOMEONE_ELSE), image], as_user=False, timeout=300)
    found = json.loads(cluster.run(["shifterimg", "-v", "lookup", image], as_user=False)
                       .stderr.split("Message: ", 1)[1])
    assert found["private"] is False and found["userACL"] == [0, SOMEONE_ELSE]

    hidden = cluster.run(["shifterimg", "lookup", image], check=False)
    assert hidden.returncode == 1 and "not available" in hidden.stderr
    _, error = failed_job(cluster, f"--image=id:{found['id']}")
    assert error.startswith(f"{cluster.user} may not use image sha256:{found['id']}: only the users")
