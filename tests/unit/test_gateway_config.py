"""gateway.config: Shifter's imagemanager.json keys, its typos, our keys, and errors."""
from __future__ import annotations

import json

import pytest

from gateway import config as gwconfig
from shifter_core.errors import ConfigError

PLATFORMS = {"cluster": {"mungeSocketPath": "/run/munge/munge.socket.2", "accesstype": "local",
                         "admins": ["alice"], "local": {"imageDir": "/images"}}}


def load(tmp_path, data):
    path = tmp_path / "imagemanager.json"
    path.write_text(json.dumps(data))
    return gwconfig.load(str(path))


def test_shifter_example_file_is_accepted(tmp_path):
    data = {
        "WorkerThreads": 2, "LogLevel": "warn", "DefaultImageLocation": "index.docker.io",
        "DefaultImageFormat": "squashfs", "PullUpdateTimeout": 60, "ImageExpirationTimeout": "90:00:00:00",
        "MongoDBURI": "mongodb://localhost/", "MongoDB": "Shifter", "CacheDirectory": "/images/cache/",
        "ExpandDirectory": "/images/expand/", "Metrics": True, "ImportUsers": ["alice"],
        "DefaultLustreReplication": 1, "DefaultOstCount": 16,
        "ConverterOptions": {"squashfs": ["-comp", "zstd", "-Xcompression-level", "3", "-no-xattrs"]},
        "Locations": {"index.docker.io": {"remotetype": "dockerv2", "authentication": "http"},
                      "local": {"remotetype": "dockerv2", "url": "http://localhost:5000", "authMethod": "basic"}},
        "Platforms": {"cluster": {"mungeSocketPath": "/var/run/munge/munge.socket.2", "accesstype": "remote",
                                  "admins": ["root"], "host": ["login1", "login2"], "usergroupService": "x",
                                  "ssh": {"username": "shifter", "key": "/etc/ssh/key", "imageDir": "/images",
                                          "sshCmdOptions": ["-o", "StrictHostKeyChecking=no"],
                                          "scpCmdOptions": "-C"}}},
    }
    cfg = load(tmp_path, data)
    assert cfg.worker_threads == 2 and cfg.log_level == "WARNING"
    assert cfg.pull_update_timeout == 60
    assert cfg.image_expiration_timeout == 90 * 86400
    assert cfg.compressor == "zstd" and cfg.compression_level == 3
    assert cfg.locations["index.docker.io"].url == "https://index.docker.io"
    assert not cfg.locations["index.docker.io"].insecure
    assert cfg.locations["local"].insecure and cfg.locations["local"].auth_method == "basic"
    system = cfg.system("cluster")
    assert system.access_type == "remote" and system.ssh.hosts == ("login1", "login2")
    assert system.ssh.ssh_options == ("-o", "StrictHostKeyChecking=no")
    assert cfg.may_import("alice") and not cfg.may_import("bob")
    assert any("MongoDBURI" in w for w in cfg.warnings)
    assert any("usergroupService" in w for w in cfg.warnings)
    assert any("scpCmdOptions" in w for w in cfg.warnings)


def test_defaults_and_relative_paths(tmp_path):
    cfg = load(tmp_path, {"Platforms": PLATFORMS, "StateDirectory": "state"})
    assert cfg.state_directory == str(tmp_path / "state")
    assert cfg.database_uri == f"sqlite:///{tmp_path / 'state' / 'gateway.sqlite'}"
    assert cfg.cache_directory == str(tmp_path / "state" / "cache")
    assert cfg.pull_update_timeout == 300 and cfg.image_expiration_timeout is None
    assert cfg.import_users is None and not cfg.may_import("root")


def test_pull_update_time_typo_is_the_same_key(tmp_path):
    assert load(tmp_path, {"Platforms": PLATFORMS, "PullUpdateTime": 42}).pull_update_timeout == 42
    with pytest.raises(ConfigError, match="disagree"):
        load(tmp_path, {"Platforms": PLATFORMS, "PullUpdateTime": 42, "PullUpdateTimeout": 43})


def test_convert_options_typo_is_accepted(tmp_path):
    cfg = load(tmp_path, {"Platforms": PLATFORMS, "ConvertOptions": {"squashfs": "-comp lz4"}})
    assert cfg.compressor == "lz4"


@pytest.mark.parametrize("data, message", [
    ({"Platform": PLATFORMS}, "Platforms must name"),
    ({"Platforms": PLATFORMS, "WorkerTheads": 2}, "unknown key.*WorkerTheads"),
    ({"Platforms": PLATFORMS, "Authentication": "mock"}, "munge"),
    ({"Platforms": PLATFORMS, "DefaultImageFormat": "cramfs"}, "squashfs"),
    ({"Platforms": PLATFORMS, "examiner": "/bin/true"}, "examiner"),
    ({"Platforms": PLATFORMS, "ConverterOptions": {"squashfs": ["-xattrs"]}}, "-xattrs is not supported"),
    ({"Platforms": PLATFORMS, "DefaultImageLocation": "nowhere"}, "not in Locations"),
    ({"Platforms": PLATFORMS, "ImageExpirationTimeout": "1:2:3:4:5"}, "D:H:M:S"),
    ({"Platforms": PLATFORMS, "WorkerThreads": "2"}, "WorkerThreads must be a whole number"),
    ({"Platforms": PLATFORMS, "HeartbeatInterval": 10, "HeartbeatTimeout": 15}, "twice"),
    ({"Platforms": {"c": {"accesstype": "local"}}}, "local.imageDir"),
    ({"Platforms": {"c": {"accesstype": "remote", "ssh": {"imageDir": "/i"}}}}, "host"),
    ({"Platforms": {"c": {"accesstype": "ftp"}}}, "local or remote"),
    ({"Platforms": {"c": {**PLATFORMS["cluster"], "admin": ["x"]}}}, "Platforms.c.admin"),
    ({"Platforms": PLATFORMS, "Locations": {"r": {"url": "ftp://x"}}}, "http"),
    ({"Platforms": PLATFORMS, "Locations": {"r": {"remotetype": "dockerhub"}}}, "dockerv2"),
    ({"Platforms": PLATFORMS, "ImportUsers": 3}, "ImportUsers"),
])
def test_errors_name_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, data)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        gwconfig.load(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        gwconfig.load(str(tmp_path / "bad.json"))


def test_unknown_system_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not configured"):
        load(tmp_path, {"Platforms": PLATFORMS}).system("other")


def test_pipeline_settings_carry_locations_and_compression(tmp_path):
    cfg = load(tmp_path, {"Platforms": PLATFORMS, "Compressor": "lz4", "CompressionLevel": 1,
                          "Locations": {"reg:5000": {"url": "http://127.0.0.1:5000"}},
                          "DefaultImageLocation": "reg:5000"})
    settings = gwconfig.pipeline_settings(cfg)
    assert settings.compressor == "lz4" and settings.compression_level == 1
    assert settings.default_location == "reg:5000"
    assert settings.locations["reg:5000"].insecure
    assert settings.cache_dir == cfg.cache_directory and settings.scratch_dir == cfg.expand_directory
