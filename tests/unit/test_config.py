"""udiRoot.conf parsing: Shifter's format and keys, its defects fixed, file trust."""
import os

import pytest
from hypothesis import given, strategies as st

from shifter_core import config, trust
from shifter_core.errors import ConfigError, ModuleError, VolumeError

MINIMAL = """\
udiMount=/var/udiMount
loopMount=/var/udiLoopMount
imagePath=/images
etcPath=/etc/shifter/etc_files
system=testsys
imageGateway=http://127.0.0.1:5000
"""


def parse(extra: str = "", base: str = MINIMAL):
    return config.parse(base + extra, source="udiRoot.conf")


def test_minimal_file_gives_typed_defaults():
    cfg = parse()
    assert cfg.udi_mount == "/var/udiMount"
    assert cfg.loop_mount == "/var/udiLoopMount"
    assert cfg.image_path == "/images"
    assert cfg.etc_path == "/etc/shifter/etc_files"
    assert cfg.system == "testsys"
    assert cfg.image_gateway == ("http://127.0.0.1:5000",)
    assert cfg.gateway_timeout == config.DEFAULT_GATEWAY_TIMEOUT
    assert cfg.default_image_type == "docker"
    assert cfg.rootfs_type == "tmpfs"
    assert cfg.mount_propagation_style == "private"
    assert cfg.max_group_count == 0
    assert cfg.mount_udi_root_writable is False
    assert cfg.run_dir == "/run/shifter"
    assert cfg.sshd_port == config.DEFAULT_SSHD_PORT
    assert cfg.modules == {} and cfg.default_modules == ()
    assert cfg.warnings == ()


def test_gateway_client_keys():
    cfg = parse(
        "gatewayTimeout=2.5\ndefaultImageType=custom\n",
        base=MINIMAL.replace(
            "imageGateway=http://127.0.0.1:5000",
            "imageGateway=http://gw1:5000/ https://gw2.example.org",
        ),
    )
    assert cfg.image_gateway == ("http://gw1:5000", "https://gw2.example.org")
    assert cfg.gateway_timeout == 2.5
    assert cfg.default_image_type == "custom"


@pytest.mark.parametrize("line, message", [
    ("gatewayTimeout=0", "positive"),
    ("gatewayTimeout=soon", "number of seconds"),
    ("defaultImageType=local", "not one of"),
    ("mountPropagationStyle=shared", "not one of"),
    ("rootfsType=ext4", "not one of"),
    ("maxGroupCount=-1", "count of groups"),
    ("sshdPort=70000", "TCP port"),
    ("sshdPort=\u0661\u0662", "TCP port"),
    ("allowLibcPwdCalls=maybe", "boolean"),
    ("optUdiImage=relative/dir", "absolute"),
    ("siteEnv=NOEQUALS", "NAME=VALUE"),
    ("siteEnv=1BAD=x", "environment variable name"),
    ("siteEnvAppend=PATH=", "empty value"),
    ("siteEnvUnset=A-B", "environment variable name"),
    ("siteEnvUnset=BASH_FUNC_a b()", "environment variable name"),
    ("siteEnvUnset=BASH_FUNC_()", "environment variable name"),
    ("siteEnvUnset=BASH_FUNC_module%", "environment variable name"),
    ("siteEnvAppend=BASH_FUNC_module%%=x", "environment variable name"),
])
def test_bad_values_name_file_line_and_key(line, message):
    with pytest.raises(ConfigError) as error:
        parse(line + "\n")
    text = str(error.value)
    assert text.startswith("udiRoot.conf:7: " + line.split("=")[0])
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize("url", ["gw:5000", "ftp://gw", "http://"])
def test_gateway_urls_must_be_http(url):
    with pytest.raises(ConfigError, match="imageGateway"):
        parse(base=MINIMAL.replace("http://127.0.0.1:5000", url))


@pytest.mark.parametrize("key", config.REQUIRED_KEYS)
def test_required_keys(key):
    text = "".join(line + "\n" for line in MINIMAL.splitlines() if not line.startswith(key + "="))
    with pytest.raises(ConfigError, match=f"required key missing: {key}"):
        config.parse(text)


def test_empty_value_means_unset():
    with pytest.raises(ConfigError, match="missing: system"):
        parse(base=MINIMAL.replace("system=testsys", "system="))
    assert parse("optUdiImage=\n").opt_udi_image is None


def test_unknown_key_is_an_error_with_a_hint():
    with pytest.raises(ConfigError, match=r"udiRoot.conf:7: unknown key 'imageGateways' \(did you mean imageGateway\?\)"):
        parse("imageGateways=http://x\n")
    with pytest.raises(ConfigError, match="unknown key 'siteResources'"):
        parse("siteResources=/opt/shifter/site-resources\n")


def test_empty_key_and_missing_equals_are_errors():
    with pytest.raises(ConfigError, match=":7: a line starts with '='"):
        parse("=value\n")
    with pytest.raises(ConfigError, match=":7: expected key=value"):
        parse("justakey\n")


# Shifter's parser hands every line to its setter: list keys append, the others
# overwrite.  We follow that rule and warn with both lines.

def test_a_scalar_key_given_twice_takes_the_later_line_with_a_warning():
    cfg = parse("system=other\n")
    assert cfg.system == "other"
    assert cfg.warnings == ("udiRoot.conf:7: system is also set on line 5: this later line wins, as in Shifter",)


def test_an_empty_later_line_unsets_a_scalar_key():
    assert parse("optUdiImage=/opt/udi\noptUdiImage=\n").opt_udi_image is None
    with pytest.raises(ConfigError, match="missing: system"):
        parse("system=\n")


@pytest.mark.parametrize("lines, attribute, expected", [
    ("imageGateway=http://gw2:5000\n", "image_gateway", ("http://127.0.0.1:5000", "http://gw2:5000")),
    ("siteFs=/a\nsiteFs=/b:/c:ro\n", "site_fs", ("/a:/a", "/b:/c:ro")),
    ("siteEnv=A=1 B=1\nsiteEnv=B=2\n", "site_env", {"A": "1", "B": "2"}),
    ("siteEnvAppend=PATH=/a X=1\nsiteEnvAppend=PATH=/b\n", "site_env_append", {"PATH": "/a:/b", "X": "1"}),
    ("siteEnvPrepend=PATH=/a\nsiteEnvPrepend=PATH=/b\n", "site_env_prepend", {"PATH": "/b:/a"}),
    ("siteEnvUnset=A\nsiteEnvUnset=B\n", "site_env_unset", ("A", "B")),
    ("perNodeCacheAllowedFsType=xfs\nperNodeCacheAllowedFsType=ext4\n", "per_node_cache_allowed_fs_type",
     ("xfs", "ext4")),
    ("siteEnv=A=1\nsiteEnv=\n", "site_env", {"A": "1"}),
    ("userVolumeDevices=/dev/fuse\nuserVolumeDevices=/dev/kvm\n", "user_volume_devices",
     ("/dev/fuse", "/dev/kvm")),
])
def test_list_keys_given_twice_add_up(lines, attribute, expected):
    cfg = parse(lines)
    value = getattr(cfg, attribute)
    assert (tuple(m.render() for m in value) if attribute == "site_fs" else value) == expected
    assert len(cfg.warnings) == 1 and "the values add up, as in Shifter" in cfg.warnings[0]


def test_module_keys_given_twice_follow_shifter():
    """Shifter replaces a module's list sub-keys (its siteFs alone appends)."""
    cfg = parse("module_m_siteEnv=A=1\nmodule_m_siteFs=/a\nmodule_m_siteEnv=B=2\nmodule_m_siteFs=/b\n"
                "module_m_enabled=0\nmodule_m_enabled=1\n")
    module = cfg.modules["m"]
    assert module.site_env == {"B": "2"}
    assert [m.target for m in module.site_fs] == ["/a", "/b"]
    assert module.enabled
    assert cfg.warnings == (
        "udiRoot.conf:9: module_m_siteEnv is also set on line 7: this later line wins, as in Shifter",
        "udiRoot.conf:10: module_m_siteFs is also set on line 8: the values add up, as in Shifter",
        "udiRoot.conf:12: module_m_enabled is also set on line 11: this later line wins, as in Shifter",
    )


def test_a_key_given_three_times_names_the_line_before():
    cfg = parse("system=a\nsystem=b\n")
    assert cfg.system == "b"
    assert [w.split(": ")[1] for w in cfg.warnings] == [
        "system is also set on line 5", "system is also set on line 7"]


def test_a_bad_value_is_refused_even_when_a_later_line_would_replace_it():
    with pytest.raises(ConfigError, match=r"udiRoot.conf:7: gatewayTimeout"):
        parse("gatewayTimeout=soon\ngatewayTimeout=5\n")


def test_comments_blank_lines_and_whitespace():
    cfg = config.parse(
        "# a comment\n\n   # indented comment\n" + MINIMAL.replace("system=testsys", "  system = spaced  ")
    )
    assert cfg.system == "spaced"


def test_continuation_lines_join_with_one_space():
    cfg = parse("siteEnv=A=1 \\\n   B=2\\\n C=3\n")
    assert cfg.site_env == {"A": "1", "B": "2", "C": "3"}


def test_continuation_at_end_of_file_is_an_error():
    with pytest.raises(ConfigError, match=r":7: the value continues past the end"):
        parse("siteEnv=A=1 \\\n")


def test_error_line_number_of_a_continued_value_is_its_first_line():
    with pytest.raises(ConfigError, match=r"udiRoot.conf:9: siteEnvUnset"):
        parse("siteEnv=A=1 \\\n B=2\nsiteEnvUnset=ok \\\n no-dash\n")


def test_site_environment():
    cfg = parse(
        "siteEnv=SHIFTER_RUNTIME=1 EMPTY=\n"
        "siteEnvAppend=PATH=/opt/udiImage/bin\n"
        "siteEnvPrepend=PATH=/sbin LD_LIBRARY_PATH=/opt/lib\n"
        "siteEnvUnset=LOADEDMODULES _LMFILES_\n"
    )
    assert cfg.site_env == {"SHIFTER_RUNTIME": "1", "EMPTY": ""}
    assert cfg.site_env_append == {"PATH": "/opt/udiImage/bin"}
    assert cfg.site_env_prepend == {"PATH": "/sbin", "LD_LIBRARY_PATH": "/opt/lib"}
    assert cfg.site_env_unset == ("LOADEDMODULES", "_LMFILES_")


def test_max_group_count_semantics_are_explicit():
    """Unset means 0, as in Shifter (its struct starts zeroed): the user is listed in no group."""
    assert parse().max_group_count == 0
    assert parse("maxGroupCount=unlimited\n").max_group_count is None
    assert parse("maxGroupCount=31\n").max_group_count == 31
    assert parse("maxGroupCount=0\n").max_group_count == 0


def test_shifter_tool_paths_are_obsolete_not_required():
    cfg = parse("cpPath=/bin/cp\nmodprobePath=/sbin/modprobe\nnodeContextPrefix=x\n")
    assert len(cfg.warnings) == 3
    assert cfg.warnings[0] == (
        "udiRoot.conf:7: cpPath is obsolete and ignored: "
        "shifter-py copies and mounts with system calls, not tools"
    )
    assert "nodeContextPrefix" in cfg.warnings[2]


def test_scalar_keys_map_to_attributes():
    cfg = parse(
        "optUdiImage=/opt/shifter/udiImage/\n"
        "sitePreMountHook=/etc/shifter/pre.sh\nsitePostMountHook=/etc/shifter/post.sh\n"
        "allowLibcPwdCalls=1\npopulateEtcDynamically=yes\nusersToImport=sshd nobody\n"
        "mountUdiRootWritable=1\nrootfsType=ramfs\nmkfsXfsPath=/usr/sbin/mkfs.xfs\n"
        "perNodeCachePath=/scratch/pnc\nperNodeCacheAllowedFsType=xfs\n"
        "mountPropagationStyle=slave\nrunDir=/run/shifter-test\nsshdPort=2222\n"
        "gatewayCaFile=/etc/shifter/gw-ca.pem\n"
    )
    assert cfg.opt_udi_image == "/opt/shifter/udiImage"
    assert cfg.site_pre_mount_hook == "/etc/shifter/pre.sh"
    assert cfg.site_post_mount_hook == "/etc/shifter/post.sh"
    assert cfg.allow_libc_pwd_calls is True
    assert cfg.populate_etc_dynamically is True
    assert cfg.users_to_import == ("sshd", "nobody")
    assert cfg.mount_udi_root_writable is True
    assert cfg.rootfs_type == "ramfs"
    assert cfg.mkfs_xfs_path == "/usr/sbin/mkfs.xfs"
    assert cfg.per_node_cache_path == "/scratch/pnc"
    assert cfg.per_node_cache_allowed_fs_type == ("xfs",)
    assert cfg.mount_propagation_style == "slave"
    assert cfg.run_dir == "/run/shifter-test"
    assert cfg.sshd_port == 2222
    assert cfg.gateway_ca_file == "/etc/shifter/gw-ca.pem"


# --- modules ----------------------------------------------------------------

MODULES = """\
module_mpich_copyPath=/shared/shifter/modules/mpich
module_mpich_siteEnvPrepend=LD_LIBRARY_PATH=/opt/udiImage/modules/mpich/lib64
module_mpich_userhook=/opt/udiImage/modules/mpich/bin/init.sh
module_mpich_conflict=openmpi
module_openmpi_siteEnv=OMPI=1
module_gpu_roothook=/etc/shifter/gpu-root.sh
module_gpu_siteEnvAppend=PATH=/opt/gpu/bin
module_gpu_siteEnvUnset=CUDA_CACHE
module_off_enabled=0
"""


def test_modules_are_parsed_and_conflicts_cross_linked():
    cfg = parse(MODULES + "defaultModules=mpich, gpu\n")
    mpich, openmpi, gpu = cfg.modules["mpich"], cfg.modules["openmpi"], cfg.modules["gpu"]
    assert mpich.copy_path == "/shared/shifter/modules/mpich"
    assert mpich.site_env_prepend == {"LD_LIBRARY_PATH": "/opt/udiImage/modules/mpich/lib64"}
    assert mpich.user_hook == "/opt/udiImage/modules/mpich/bin/init.sh"
    assert mpich.conflict == ("openmpi",)
    assert openmpi.conflict == ("mpich",)
    assert openmpi.site_env == {"OMPI": "1"}
    assert gpu.root_hook == "/etc/shifter/gpu-root.sh"
    assert gpu.site_env_append == {"PATH": "/opt/gpu/bin"}
    assert gpu.site_env_unset == ("CUDA_CACHE",)
    assert gpu.enabled and not cfg.modules["off"].enabled
    assert cfg.default_modules == ("mpich", "gpu")


def test_module_selection():
    cfg = parse(MODULES + "defaultModules=mpich\n")
    assert [m.name for m in cfg.select_modules()] == ["mpich"]
    assert [m.name for m in cfg.select_modules("")] == ["mpich"]
    assert cfg.select_modules("none") == ()
    assert [m.name for m in cfg.select_modules("gpu,openmpi")] == ["gpu", "openmpi"]
    with pytest.raises(ModuleError, match="unknown module 'cuda': this system offers gpu, mpich, openmpi"):
        cfg.select_modules("cuda")
    with pytest.raises(ModuleError, match="module 'off' is disabled"):
        cfg.select_modules("off")
    with pytest.raises(ModuleError, match="modules 'openmpi' and 'mpich' conflict"):
        cfg.select_modules("openmpi,gpu,mpich")
    with pytest.raises(ModuleError, match="not a module name"):
        cfg.select_modules("gpu;rm")


def test_module_subkeys_are_case_sensitive_and_checked():
    with pytest.raises(ConfigError, match=r"unknown module mpich sub-key 'siteenv' \(did you mean siteEnv\?\)"):
        parse("module_mpich_siteenv=A=1\n")
    with pytest.raises(ConfigError, match="unknown module gpu sub-key 'devices'"):
        parse("module_gpu_devices=/dev/nvidia0\n")


def test_copypath_as_in_shifters_example_is_copy_path():
    cfg = parse("module_mpich_copypath=/opt/mpich/\n")
    assert cfg.modules["mpich"].copy_path == "/opt/mpich"
    assert cfg.warnings == ("udiRoot.conf:7: module_mpich_copypath is read as module_mpich_copyPath "
                            "(Shifter ignored this spelling)",)
    both = parse("module_mpich_copyPath=/a\nmodule_mpich_copypath=/b\n")
    assert both.modules["mpich"].copy_path == "/b"
    assert "module_mpich_copyPath is also set on line 7" in both.warnings[1]


def test_site_env_unset_takes_bash_exported_functions():
    cfg = parse("siteEnvUnset=LOADEDMODULES BASH_FUNC_module() BASH_FUNC_ml%% BASH_FUNC__module_raw()\n"
                "module_lmod_siteEnvUnset=BASH_FUNC_switchml%%\n")
    assert cfg.site_env_unset == ("LOADEDMODULES", "BASH_FUNC_module()", "BASH_FUNC_ml%%", "BASH_FUNC__module_raw()")
    assert cfg.modules["lmod"].site_env_unset == ("BASH_FUNC_switchml%%",)


@pytest.mark.parametrize("extra, message", [
    ("module_a_conflict=b\n", "module 'b' is not defined"),
    ("defaultModules=nosuch\n", "defaultModules: unknown module 'nosuch'"),
    ("module_off_enabled=0\ndefaultModules=off\n", "defaultModules: module 'off' is disabled"),
    ("module_a_conflict=b\nmodule_b_enabled=1\ndefaultModules=a,b\n", "'a' and 'b' conflict"),
    ("module_none_enabled=1\n", "'none' cannot be a module name"),
])
def test_module_configuration_errors(extra, message):
    with pytest.raises(ConfigError, match=message):
        parse(extra)


# --- reading files and trust --------------------------------------------------

def write(path, text, mode=0o644):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_load_untrusted_reads_any_file(tmp_path):
    cfg = config.load(write(tmp_path / "udiRoot.conf", MINIMAL), trusted=False)
    assert cfg.system == "testsys"
    assert cfg.path == str(tmp_path / "udiRoot.conf")


def test_load_errors_name_the_file(tmp_path):
    path = write(tmp_path / "udiRoot.conf", MINIMAL + "bogus=1\n")
    with pytest.raises(ConfigError, match=f"^{path}:7: unknown key 'bogus'"):
        config.load(path, trusted=False)
    with pytest.raises(ConfigError, match="cannot read .*: No such file"):
        config.load(str(tmp_path / "missing.conf"), trusted=False)


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own and chown files")


@root_only
def test_trusted_load_accepts_a_root_owned_file(tmp_path):
    os.chmod(tmp_path, 0o755)
    assert config.load(write(tmp_path / "udiRoot.conf", MINIMAL)).system == "testsys"


@root_only
@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_trusted_load_refuses_group_or_other_writable(tmp_path, mode):
    os.chmod(tmp_path, 0o755)
    path = write(tmp_path / "udiRoot.conf", MINIMAL, mode)
    with pytest.raises(ConfigError, match="must not be writable by group or others"):
        config.load(path)


@root_only
def test_trusted_load_refuses_a_file_not_owned_by_root(tmp_path):
    os.chmod(tmp_path, 0o755)
    path = write(tmp_path / "udiRoot.conf", MINIMAL)
    os.chown(path, 1000, 1000)
    with pytest.raises(ConfigError, match="must be owned by root"):
        config.load(path)


@root_only
def test_trusted_load_refuses_a_directory_others_control(tmp_path):
    directory = tmp_path / "etc"
    directory.mkdir()
    path = write(directory / "udiRoot.conf", MINIMAL)
    os.chmod(tmp_path, 0o755)
    os.chown(directory, 1000, 1000)
    with pytest.raises(ConfigError, match=f"directory {directory} holding configuration file"):
        config.load(path)
    os.chown(directory, 0, 0)
    os.chmod(directory, 0o777)
    with pytest.raises(ConfigError, match="must not be writable by group or others"):
        config.load(path)
    os.chmod(directory, 0o1777)
    assert config.load(path).system == "testsys"


@root_only
def test_trusted_load_refuses_a_user_owned_symlink(tmp_path):
    os.chmod(tmp_path, 0o755)
    real = write(tmp_path / "udiRoot.conf", MINIMAL)
    link = tmp_path / "link.conf"
    link.symlink_to(real)
    assert config.load(str(link)).system == "testsys"
    os.lchown(link, 1000, 1000)
    with pytest.raises(ConfigError, match=f"symlink {link} leading to configuration file"):
        config.load(str(link))


@root_only
def test_trusted_load_follows_symlinks_to_check_the_real_file(tmp_path):
    os.chmod(tmp_path, 0o755)
    users = tmp_path / "users"
    users.mkdir()
    os.chown(users, 1000, 1000)
    real = write(users / "udiRoot.conf", MINIMAL)
    link = tmp_path / "link.conf"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match=f"directory {users} holding"):
        config.load(str(link))


@root_only
def test_check_config_prints_the_warnings_jobs_never_show(tmp_path):
    from click.testing import CliRunner
    from shifter_core.cli import admin

    os.chmod(tmp_path, 0o755)
    path = write(tmp_path / "udiRoot.conf", MINIMAL + "system=other\ncpPath=/bin/cp\n")
    result = CliRunner().invoke(admin.main, ["check-config", "--config", path])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"warning: {path}:7: system is also set on line 5: this later line wins, as in Shifter",
        f"warning: {path}:8: cpPath is obsolete and ignored: shifter-py copies and mounts with system calls, not tools",
        f"{path}: usable, 2 warning(s)",
    ]
    broken = write(tmp_path / "broken.conf", MINIMAL + "bogus=1\n")
    result = CliRunner().invoke(admin.main, ["check-config", "--config", broken])
    assert result.exit_code == 1 and f"{broken}:7: unknown key 'bogus'" in result.output


def test_require_root_owned_reports_missing_paths(tmp_path):
    with pytest.raises(ConfigError, match="cannot check hook .*No such file"):
        trust.require_root_owned(str(tmp_path / "nope.sh"), "hook")


# --- siteFs and perNodeCache -------------------------------------------------

def test_site_fs_is_parsed_with_the_site_grammar():
    cfg = parse(
        "siteFs=/global/u1;/scratch:/scratch:rec:slave;\\\n"
        "  /var/spool/slurmd:/var/spool/slurmd:ro\n"
        "module_cvmfs_siteFs=/cvmfs_nfs:/cvmfs\n"
    )
    assert [m.render() for m in cfg.site_fs] == [
        "/global/u1:/global/u1", "/scratch:/scratch:rec:slave", "/var/spool/slurmd:/var/spool/slurmd:ro",
    ]
    assert [m.render() for m in cfg.modules["cvmfs"].site_fs] == ["/cvmfs_nfs:/cvmfs"]


def test_site_fs_errors_name_the_line():
    with pytest.raises(ConfigError, match=r"^udiRoot.conf:7: siteFs: invalid volume '/x:/etc': the site cannot bind over /etc$"):
        parse("siteFs=/x:/etc\n")
    with pytest.raises(ConfigError, match=r":7: module_m_siteFs: invalid volume '/x y:/z': character ' '"):
        parse("module_m_siteFs=/x y:/z\n")


CACHE = "perNodeCachePath=/scratch/pnc\nmkfsXfsPath=/usr/sbin/mkfs.xfs\n"


def test_ext4_caches_are_offered_when_the_site_allows_them():
    cfg = parse(CACHE + "perNodeCacheAllowedFsType=xfs ext4\n")
    assert cfg.per_node_cache_allowed_fs_type == ("xfs", "ext4")
    assert cfg.mkfs_path("ext4") == config.DEFAULT_MKFS_EXT4
    assert cfg.cache_policy().fs_types == ("xfs", "ext4")
    assert cfg.user_volumes("/x:/c:perNodeCache=size=1G")[0].per_node_cache.fs_type == "xfs"
    ext4 = cfg.user_volumes("/x:/c:perNodeCache=size=20M,fs=ext4,bs=1K")[0].per_node_cache
    assert (ext4.fs_type, ext4.size, ext4.block_size) == ("ext4", 20 * 1024 ** 2, 1024)
    with pytest.raises(VolumeError, match="at least 16M for ext4"):
        cfg.user_volumes("/x:/c:perNodeCache=size=8M,fs=ext4")
    with pytest.raises(VolumeError, match="ext4 block size: a power of two from 1K to 4K"):
        cfg.user_volumes("/x:/c:perNodeCache=size=1G,fs=ext4,bs=64K")
    with pytest.raises(VolumeError, match="this system offers perNodeCache as xfs, not ext4"):
        parse(CACHE).user_volumes("/x:/c:perNodeCache=size=1G,fs=ext4")


def test_the_first_type_with_its_mkfs_is_the_default():
    ext4_first = parse(CACHE + "perNodeCacheAllowedFsType=ext4 xfs\nmkfsExt4Path=/usr/sbin/mkfs.ext4\n")
    assert ext4_first.mkfs_path("ext4") == "/usr/sbin/mkfs.ext4"
    assert ext4_first.user_volumes("/x:/c:perNodeCache=size=1G")[0].per_node_cache.fs_type == "ext4"
    no_xfs_tool = parse("perNodeCachePath=/scratch/pnc\nperNodeCacheAllowedFsType=xfs ext4\n")
    assert no_xfs_tool.cache_policy().available and no_xfs_tool.cache_policy().fs_types == ("ext4",)
    assert not parse("perNodeCachePath=/scratch/pnc\n").cache_policy().available


def test_cache_types_we_cannot_make_are_dropped_with_a_warning_never_refused():
    cfg = parse(CACHE + "perNodeCacheAllowedFsType=XFS btrfs ext4\n")
    assert cfg.per_node_cache_allowed_fs_type == ("xfs", "ext4")
    assert cfg.warnings == ("udiRoot.conf:9: perNodeCacheAllowedFsType: shifter-py cannot make btrfs caches "
                            "(it makes xfs and ext4); keeping xfs ext4",)
    only_unknown = parse(CACHE + "perNodeCacheAllowedFsType=zfs\n")
    assert only_unknown.per_node_cache_allowed_fs_type == ("xfs",)
    assert only_unknown.warnings[0].endswith("keeping xfs, the default")


def test_per_node_cache_policy_comes_from_the_config():
    assert not parse().cache_policy().available
    cfg = parse(CACHE + "perNodeCacheSizeLimit=10G\n")
    assert cfg.per_node_cache_size_limit == 10 * 1024 ** 3
    assert cfg.cache_policy().available and cfg.cache_policy().size_limit == 10 * 1024 ** 3
    mounts = cfg.user_volumes("/x:/cache:perNodeCache=size=2G;/data:/data:ro")
    assert mounts[0].per_node_cache.size == 2 * 1024 ** 3
    with pytest.raises(VolumeError, match="exceeds the site's limit of 10G"):
        cfg.user_volumes("/x:/cache:perNodeCache=size=20G")
    with pytest.raises(VolumeError, match="at least 300M"):
        cfg.user_volumes("/x:/cache:perNodeCache=size=100M")
    with pytest.raises(VolumeError, match="not available on this system"):
        parse().user_volumes("/x:/cache:perNodeCache=size=1G")
    with pytest.raises(VolumeError, match="reserved to the site"):
        cfg.user_volumes("/x:/y:rec")


def test_user_volume_devices_are_paths_below_dev_and_bind_only_those():
    assert parse().user_volume_devices == ()
    cfg = parse("userVolumeDevices=/dev/fuse /dev//kvm\n")
    assert cfg.user_volume_devices == ("/dev/fuse", "/dev/kvm")
    assert [m.source for m in cfg.user_volumes("/dev/fuse:/opt/fuse;/dev/kvm:/opt/kvm")] == ["/dev/fuse", "/dev/kvm"]
    with pytest.raises(VolumeError, match=r"/dev/sda is a device or in /dev, and this site lets --volume bind only"
                                          r" /dev/fuse, /dev/kvm from there \(udiRoot.conf userVolumeDevices\)"):
        cfg.user_volumes("/dev/sda:/disk")
    with pytest.raises(VolumeError, match="this site lets --volume bind no device"):
        parse().user_volumes("/a:/b;/dev/fuse:/opt/fuse")
    for bad in ("/etc/passwd", "/dev", "fuse", "/devices/x"):
        with pytest.raises(ConfigError, match=r":7: userVolumeDevices: .*(not a path below /dev|absolute)"):
            parse(f"userVolumeDevices={bad}\n")


def test_site_fs_caches_obey_the_policy_too():
    with pytest.raises(ConfigError, match=r"udiRoot.conf:7: siteFs: .*perNodeCache is not available"):
        parse("siteFs=/x:/scratch:perNodeCache=size=1G\n")
    with pytest.raises(ConfigError, match=r"udiRoot.conf:9: siteFs: .*limit of 1G"):
        parse(CACHE + "siteFs=/x:/scratch:perNodeCache=size=2G\nperNodeCacheSizeLimit=1G\n")
    assert parse(CACHE + "siteFs=/x:/scratch:perNodeCache=size=1G\n").site_fs[0].per_node_cache


@pytest.mark.parametrize("value", ["0", "lots", "-1G"])
def test_per_node_cache_size_limit_values(value):
    with pytest.raises(ConfigError, match="perNodeCacheSizeLimit"):
        parse(f"perNodeCacheSizeLimit={value}\n")


# --- the reference configuration ---------------------------------------------

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "udiRoot.conf.example")


def test_the_example_configuration_loads_cleanly():
    cfg = config.load(EXAMPLE, trusted=False)
    assert cfg.warnings == ()
    assert cfg.system == "mycluster"
    assert [m.target for m in cfg.site_fs] == ["/home", "/scratch", "/var/spool/slurmd"]
    assert [m.name for m in cfg.select_modules()] == ["mpich"]
    assert cfg.modules["openmpi"].conflict == ("mpich",)
    assert len(cfg.modules["gpu"].site_fs) == 3


def test_the_example_documents_every_key():
    with open(EXAMPLE) as handle:
        text = handle.read()
    for key in list(config._KEYS) + list(config._OBSOLETE):
        assert f"{key}=" in text or f" {key} " in text or f" {key}\n" in text, key
    for sub in config._MODULE_KEYS:
        assert sub in text, sub
    uncommented = "\n".join(line[1:] if line.startswith("#") and "=" in line and " " not in line.split("=")[0]
                            else line for line in text.splitlines())
    assert config.parse(uncommented, source="example, all keys on").per_node_cache_size_limit == 200 * 1024 ** 3


# --- properties ---------------------------------------------------------------

@given(st.text(max_size=200))
def test_any_text_is_a_config_or_one_config_error(text):
    try:
        config.parse(MINIMAL + text)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error).startswith("udiRoot.conf")


env_word = st.builds(
    lambda name, value: f"{name}={value}",
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\\"), min_size=1, max_size=12),
)


@given(st.lists(env_word, min_size=1, max_size=8, unique_by=lambda w: w.split("=")[0]),
       st.lists(st.booleans(), min_size=8, max_size=8))
def test_continuation_lines_do_not_change_the_value(words, breaks):
    one_line = parse(f"siteEnv={' '.join(words)}\n").site_env
    pieces = [words[0]]
    for word, newline in zip(words[1:], breaks):
        pieces.append(("\\\n   " if newline else " ") + word)
    continued = parse(f"siteEnv={''.join(pieces)}\n").site_env
    assert continued == one_line == dict(w.split("=", 1) for w in words)


def test_local_images_are_off_unless_the_site_allows_them():
    assert not config.parse(MINIMAL).allow_local_chroot
    assert config.parse(MINIMAL + "allowLocalChroot=1\n").allow_local_chroot
