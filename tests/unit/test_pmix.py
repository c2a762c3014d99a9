"""Finding the step's PMIx server directory (shifter_core/pmix.py) from slurmd's configuration."""
from __future__ import annotations

import os

import pytest

from shifter_core import pmix
from shifter_core.errors import ContainerError, ShifterError


def conf(directory, text: str, name: str = "slurm.conf") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def test_spool_dir_as_slurmd_reads_it(tmp_path):
    path = conf(tmp_path, "ClusterName=c\n# SlurmdSpoolDir=/commented\n"
                          "SLURMDSPOOLDIR=/first SlurmdPort=6818\nslurmdspooldir=\"/var/spool/%n\" # note\n")
    assert pmix.slurmd_spool_dir(path, "n7") == "/var/spool/n7"


def test_spool_dir_from_included_files_in_order(tmp_path):
    (tmp_path / "conf.d").mkdir()
    conf(tmp_path / "conf.d", "SlurmdSpoolDir=/from/a\n", "a.conf")
    conf(tmp_path / "conf.d", "SlurmdSpoolDir=/from/b/%h\n", "b.conf")
    path = conf(tmp_path, "SlurmdSpoolDir=/before\nInclude conf.d/*.conf\n")
    assert pmix.slurmd_spool_dir(path, "n1") == f"/from/b/{os.uname().nodename}"
    assert pmix.slurmd_spool_dir(conf(tmp_path, "include conf.d/a.conf\nSlurmdSpoolDir=/after\n", "2.conf"),
                                 "n1") == "/after"


def test_spool_dir_defaults_to_slurms(tmp_path):
    assert pmix.slurmd_spool_dir(conf(tmp_path, "ClusterName=c\n"), "n1") == pmix.DEFAULT_SPOOL_DIR


def test_an_include_loop_is_an_error(tmp_path):
    path = conf(tmp_path, "Include slurm.conf\n")
    with pytest.raises(ContainerError, match="Include nested more than"):
        pmix.slurmd_spool_dir(path, "n1")


@pytest.fixture
def spool(tmp_path, monkeypatch):
    spool = tmp_path / "spool" / "n1"
    spool.mkdir(parents=True)
    monkeypatch.setenv("SLURM_CONF", conf(tmp_path, f"SlurmdSpoolDir={tmp_path}/spool/%n\n"))
    return spool


@pytest.mark.root
def test_the_steps_directory_when_slurm_made_one(spool):
    assert pmix.server_directory(42, 0, "n1", 1000) is None
    (spool / "pmix.42.0").mkdir()
    os.chown(spool / "pmix.42.0", 1000, 1000)
    assert pmix.server_directory(42, 0, "n1", 1000) == f"{spool}/pmix.42.0"
    assert pmix.server_directory(42, 1, "n1", 1000) is None


@pytest.mark.root
def test_what_slurm_would_not_have_made_is_refused(spool):
    (spool / "pmix.42.0").mkdir()
    os.chown(spool / "pmix.42.0", 2000, 2000)
    with pytest.raises(ContainerError, match="is not the directory Slurm's PMIx plugin makes"):
        pmix.server_directory(42, 0, "n1", 1000)
    (spool / "pmix.42.1").symlink_to("/etc")
    with pytest.raises(ContainerError, match="is not the directory"):
        pmix.server_directory(42, 1, "n1", 1000)


@pytest.mark.root
def test_a_spool_others_can_write_is_refused(spool):
    (spool / "pmix.42.0").mkdir()
    spool.chmod(0o777)
    with pytest.raises(ShifterError, match="SlurmdSpoolDir"):
        pmix.server_directory(42, 0, "n1", 0)
