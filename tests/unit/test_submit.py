"""The submit side's pure logic: the container path of the submit directory
(relative --volume sources) and the view a step shares with its job or not."""
import os

import pytest

from shifter_core import config, volumes
from shifter_core.spank import submit
from tests.unit.test_config import MINIMAL as SITE


def site(tmp_path, binds: str) -> config.UdiRootConfig:
    return config.parse(SITE + f"siteFs={binds.format(tmp=tmp_path)}\n")


def test_the_submit_directory_is_seen_through_the_deepest_site_bind(tmp_path, monkeypatch):
    (tmp_path / "global/u1/me/run").mkdir(parents=True)
    cfg = site(tmp_path, "{tmp}/global/u1:/home;{tmp}/global:/global")
    monkeypatch.chdir(tmp_path / "global/u1/me/run")
    monkeypatch.delenv("PWD", raising=False)
    assert submit._submit_directory(cfg, ()) == "/home/me/run"
    mounts = cfg.user_volumes("./data:/data;../x.yaml:/x.yaml:ro",
                              base=lambda: submit._submit_directory(cfg, ()))
    assert volumes.render(mounts) == "/home/me/run/data:/data;/home/me/x.yaml:/x.yaml:ro"


def test_the_shells_pwd_comes_first_when_it_names_the_same_directory(tmp_path, monkeypatch):
    (tmp_path / "real/me").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "home")
    cfg = site(tmp_path, "{tmp}/home")                 # the site binds the symlinked name
    monkeypatch.chdir(tmp_path / "home/me")
    monkeypatch.setenv("PWD", str(tmp_path / "home/me"))
    assert submit._submit_directory(cfg, ()) == f"{tmp_path}/home/me"
    monkeypatch.setenv("PWD", str(tmp_path / "gone"))   # stale: ignored
    with pytest.raises(ValueError, match=f"^{tmp_path}/real/me is not on a file system the container shows"
                                         f" \\(the site binds {tmp_path}/home\\)$"):
        submit._submit_directory(cfg, ())


def test_module_binds_show_the_submit_directory_too(tmp_path, monkeypatch):
    cfg = config.parse(SITE + f"module_sw_siteFs={tmp_path}:/sw\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PWD", raising=False)
    with pytest.raises(ValueError, match="the site binds nothing"):
        submit._submit_directory(cfg, ())
    assert submit._submit_directory(cfg, cfg.select_modules("sw")) == "/sw"


def test_the_view_a_job_pins_is_its_image_volumes_and_modules():
    assert submit._view({}) is None                     # no image: no container to share
    env = {"SHIFTER_IMAGEREQUEST": "docker:ubuntu:22.04", "SHIFTER_IMAGE_DIGEST": "sha256:" + "a" * 64,
           "SHIFTER_VOLUME": "/a:/b", "SHIFTER_MODULE": "mpich"}
    assert submit._view(env) == ("sha256:" + "a" * 64, "/a:/b", "mpich")
    assert submit._view({"SHIFTER_IMAGEREQUEST": "docker:x:1"}) == ("", "", "")   # held for its pull
