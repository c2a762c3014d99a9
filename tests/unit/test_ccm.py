"""--ccm's pure parts: the job secret, the keys derived from it, the ssh configurations."""
from __future__ import annotations

import subprocess

import pytest

from shifter_core import ccm, config, container, etcfiles
from shifter_core.errors import CcmError
from shifter_core.imagestore import ImageMeta
from shifter_core.spank import settings

SECRET = bytes(range(32))


def test_keys_are_the_same_on_every_node_and_differ_between_jobs_and_roles():
    keys = ccm.JobKeys(SECRET, 41)
    again = ccm.JobKeys(SECRET, 41)
    assert (keys.host_public, keys.user_public) == (again.host_public, again.user_public)
    assert keys.host_public != keys.user_public
    assert ccm.JobKeys(SECRET, 42).user_public != keys.user_public
    assert ccm.JobKeys(bytes(32), 41).user_public != keys.user_public
    assert keys.user_public.startswith("ssh-ed25519 ") and keys.user_public.endswith(" shifter-ccm-job41")


def test_derived_private_key_is_one_openssh_reads(tmp_path):
    keys = ccm.JobKeys(SECRET, 7)
    path = tmp_path / "id"
    path.write_text(keys.user_private)
    path.chmod(0o600)
    public = subprocess.run(["/usr/bin/ssh-keygen", "-y", "-f", str(path)], capture_output=True,
                            text=True, check=True).stdout.split()
    assert public[:2] == keys.user_public.split()[:2]


def test_disabled_plugin_refuses_ccm_with_a_sentence():
    with pytest.raises(CcmError, match="enable_ccm=0"):
        ccm.require_enabled(settings.PluginArgs(venv="/v", enable_ccm=False))
    ccm.require_enabled(settings.PluginArgs(venv="/v"))


def _spec(env=()):
    user = etcfiles.User("alice", 1000, 1000, "", "/home/alice", "/bin/bash", (1000,))
    return container.ContainerSpec(job_id=41, node="n1", image=ImageMeta(digest="sha256:" + "ab" * 32,
                                   env=list(env)), image_file="/i/x.squashfs", user=user,
                                   hosts=("n1", "n1", "n2"))


def _cfg(**values):
    return config.UdiRootConfig(udi_mount="/u", loop_mount="/l", image_path="/i", etc_path="/e",
                                system="s", image_gateway=("http://g",), opt_udi_image="/nonexistent",
                                sshd_port=2222, **values)


def test_sshd_config_admits_only_the_job_user_by_its_key():
    text = ccm.sshd_config(_cfg(), _spec(), ccm.JobKeys(SECRET, 41))
    lines = text.splitlines()
    for line in ("Port 2222", 'AllowUsers "alice"', "AuthenticationMethods publickey",
                 "PasswordAuthentication no", "UsePAM no", "PermitRootLogin no", "PidFile none",
                 f"AuthorizedKeysFile {ccm.AUTHORIZED_KEYS}", f"HostKey {ccm.HOST_KEY}"):
        assert line in lines


def test_sessions_get_the_image_and_site_environment_that_sshd_config_can_quote():
    cfg = _cfg(site_env_append={"PATH": "/opt/udiImage/bin"})
    env = ccm.session_environment(cfg, _spec(["PATH=/usr/bin:/bin", 'BAD="x"', "LANG=C.UTF-8"]))
    assert env["PATH"] == "/usr/bin:/bin:/opt/udiImage/bin"
    assert env["LANG"] == "C.UTF-8"
    assert env["SHIFTER_IMAGE_DIGEST"] == "sha256:" + "ab" * 32
    assert "BAD" not in env
    text = ccm.sshd_config(cfg, _spec(["PATH=/usr/bin:/bin"]), ccm.JobKeys(SECRET, 41))
    assert '"PATH=/usr/bin:/bin:/opt/udiImage/bin"' in text


def test_ssh_config_covers_each_node_of_the_job_once_with_the_job_host_key_alias():
    text = ccm.ssh_config(_cfg(), _spec(), ccm.JobKeys(SECRET, 41))
    lines = [line.strip() for line in text.splitlines()]
    assert "Host n1 n2" in lines
    for line in ("Port 2222", "HostKeyAlias shifter-ccm-job41", "StrictHostKeyChecking yes",
                 "UserKnownHostsFile /dev/null", f"IdentityFile {ccm.USER_KEY}", "IdentitiesOnly yes"):
        assert line in lines
