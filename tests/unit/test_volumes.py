"""The volume grammar and policies: Shifter's cases (reference h.1), our fixes, properties."""
import posixpath

import pytest
from hypothesis import example, given, settings, strategies as st

from shifter_core import volumes
from shifter_core.errors import VolumeError
from shifter_core.volumes import SITE, USER, CachePolicy, PerNodeCache, VolumeMount, parse

MiB = 1024 ** 2
GiB = 1024 ** 3


def refused(spec, context=USER, policy=CachePolicy()):
    with pytest.raises(VolumeError) as error:
        parse(spec, context, policy)
    message = str(error.value)
    assert "\n" not in message and message
    return message


# --- Shifter's test_VolumeMap cases -------------------------------------------

def test_user_basic_map():
    assert parse("/path1/is/here:/target1", USER) == (VolumeMount("/path1/is/here", "/target1"),)


def test_user_cannot_bind_over_etc():
    assert "/etc belongs to the container's setup" in refused("/evilPath:/etc")


def test_user_ro_accepted_rec_refused():
    assert parse("/scratch1/test:/input:ro", USER)[0].read_only
    assert "flag rec is reserved to the site" in refused("/scratch1/test:/input:rec")
    assert parse("/scratch1/test:/input:rec", SITE)[0].recursive


def test_bare_path_is_site_only():
    assert "SOURCE:TARGET" in refused("/no/to/specified")
    assert parse("/global/cscratch1", SITE) == (VolumeMount("/global/cscratch1", "/global/cscratch1"),)
    assert parse("/global/cscratch1:/global/cscratch1:ro", SITE)[0].read_only


def test_five_site_maps_with_flags():
    mounts = parse("/a:/b;/c:/d:rec;/e:/f:rec;/none:/tmp:perNodeCache=size=100M:ro;/qq:/uu", SITE)
    assert len(mounts) == 5
    assert mounts[3] == VolumeMount("/none", "/tmp", read_only=True, per_node_cache=PerNodeCache(100 * MiB))


def test_nersc_site_fs_string():
    spec = (
        "/global/u1:/global/u1;/global/u2:/global/u2;/global/common:/global/common;"
        "/global/syscom:/global/syscom;/global/dna:/global/dna;/global/project:/global/project;"
        "/global/projecta:/global/projecta;/global/projectb:/global/projectb;"
        "/global/cscratch1:/global/cscratch1;"
        "/var/opt/cray/dws:/var/opt/cray/dws:rec:slave;"
        "/var/opt/cray/alps:/var/opt/cray/alps:rec:slave;"
        "/var/spool/slurmd:/var/spool/slurmd;"
        "/etc/opt/cray/wlm_detect:/etc/opt/cray/wlm_detect"
    )
    mounts = parse(spec, SITE)
    assert len(mounts) == 13
    assert mounts[9] == VolumeMount("/var/opt/cray/dws", "/var/opt/cray/dws", recursive=True, propagation="slave")


def test_signature_is_sorted_normalised_entries():
    mounts = parse("/d:/c;/a:/b;/q:/r;/a:/c:rec:perNodeCache=size=100M:ro", SITE)
    # Shifter printed bs=1048576, a default it never passed to mkfs.xfs; our bs
    # is the XFS block size and defaults to mkfs.xfs's own 4096.
    assert volumes.signature(mounts) == (
        "/a:/b;/a:/c:ro:rec:perNodeCache=size=104857600,bs=4096,method=loop,fstype=xfs;/d:/c;/q:/r"
    )


@pytest.mark.parametrize("target, ok", [
    ("/etc/passwd", False), ("/var/log", False), ("/var/tmp", True), ("/opt", False),
    ("opt", False), ("etc", False), ("/mnt", True), ("/opt/myStuff", True), ("/input", True),
])
def test_shifter_user_target_table(target, ok):
    spec = f"/test1Loc:{target}"
    if ok:
        assert parse(spec, USER)[0].target == target
    else:
        refused(spec)


def test_flag_parsing_cases():
    assert "flag rec takes no value" in refused("/a:/b:rec=key1=value1,key2=value2", SITE)
    assert "perNodeCache needs a size" in refused("/a:/b:perNodeCache")
    assert "perNodeCache needs a size" in refused("/a:/b:perNodeCache=bs=4k")
    # Shifter accepted bs=4M because it ignored bs; it is the XFS block size here.
    assert "power of two from 1K to 64K" in refused("/a:/b:perNodeCache=size=4T,bs=4M", SITE)
    cache = parse("/a:/b:perNodeCache=size=4T,bs=64K", SITE)[0].per_node_cache
    assert cache == PerNodeCache(size=4 * 1024 ** 4, block_size=65536)


@pytest.mark.parametrize("text, value", [
    ("5", 5), ("5b", 5), ("5k", 5 * 1024), ("500K", 512000), ("500KB", 512000), ("500KiB", 512000),
    ("1.5g", 3 * 512 * MiB), ("4T", 4 * 1024 ** 4), ("1P", 1024 ** 5), ("2e", 2 * 1024 ** 6),
])
def test_parse_bytes(text, value):
    assert volumes.parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "K", "5x", "5kx", "-5", "1,5G", "5 G G", "5ib", "0x10", "\u0663G"])
def test_parse_bytes_refuses(text):
    with pytest.raises(ValueError):
        volumes.parse_bytes(text)


def test_quoted_entry_is_one_entry():
    assert parse('"/a:/b:ro";"/c:/d"', USER) == (
        VolumeMount("/a", "/b", read_only=True), VolumeMount("/c", "/d"),
    )


def test_empty_entries_are_skipped():
    assert parse("", USER) == ()
    assert parse(";;/a:/b; ;", USER) == (VolumeMount("/a", "/b"),)


# --- Shifter's defects, fixed ------------------------------------------------

@pytest.mark.parametrize("target", ["/etcetera", "/variable", "/opt/udiImage2", "/devices", "/system", "/tmp"])
def test_forbidden_targets_match_whole_components(target):
    assert parse(f"/src:{target}", USER)[0].target == target


@pytest.mark.parametrize("target, reason", [
    ("/etc/x", "inside /etc"),
    ("/var/tmp/x", "inside /var"),
    ("/var", "/var belongs"),
    ("/opt/udiImage/bin", "inside /opt/udiImage"),
    ("/proc/1", "inside /proc"),
    ("/sys", "/sys belongs"),
    ("/dev/shm", "inside /dev"),
    ("/", "would hide /etc"),
    ("/opt", "would hide /opt/udiImage"),
    ("//etc//x/", "inside /etc"),
    ("/etc/./x", "inside /etc"),
])
def test_user_targets_in_or_over_protected_trees_are_refused(target, reason):
    assert reason in refused(f"/src:{target}")


@pytest.mark.parametrize("target", volumes._SITE_FORBIDDEN_TARGETS)
def test_site_forbidden_targets(target):
    assert "the site cannot bind over" in refused(f"/src:{target}", SITE)


def test_site_may_bind_below_etc_and_var():
    assert parse("/etc/opt/x:/etc/opt/x;/var/spool/slurmd", SITE)[1].target == "/var/spool/slurmd"


@pytest.mark.parametrize("spec, char", [
    ("/my data:/data", "' '"), ("/a$HOME:/b", "'$'"), ("/a:/b@c", "'@'"), ("/a,b:/c", "','"),
    ('/a:/b"', "'\"'"), ("/a\n:/b", "'\\n'"), ("/d\u00e9j\u00e0:/b", "'\u00e9'"),
])
def test_bad_characters_are_refused_not_filtered(spec, char):
    assert f"character {char} is not allowed" in refused(spec)


@pytest.mark.parametrize("spec, role", [("/a/../etc:/b", "source"), ("/a:/b/../etc", "target"), ("/a:/..", "target")])
def test_dotdot_components_are_refused(spec, role):
    assert f"the {role} must not contain '..'" in refused(spec)


def test_names_with_dots_are_fine():
    assert parse("/a/..hidden:/b/x..y", USER)[0] == VolumeMount("/a/..hidden", "/b/x..y")


def test_paths_are_normalised():
    assert parse("//a//b/./:/data/", USER)[0] == VolumeMount("/a/b", "/data")


@pytest.mark.parametrize("spec, message", [
    ("a:/b", "the source 'a' must be an absolute path"),
    (":/b", "the source path is empty"),
    ("/a:", "the target path is empty"),
    ("/a:/b:", "empty flag"),
    ("/a:/b::ro", "empty flag"),
    ("/a:/b:ro,rec", "unknown flag 'ro,rec'"),
    ("/a:/b:rw", "unknown flag 'rw'"),
    ("/a:/b:ro:RO", "flag ro is given twice"),
    ("/a:/b:slave:private", "slave and private exclude each other"),
    ("/a:/b:ro=1", "flag ro takes no value"),
    ("/a:/b:perNodeCache=size=1G,size=2G", "option size is given twice"),
    ("/a:/b:perNodeCache=size=1G,color=red", "unknown perNodeCache option 'color'"),
    ("/a:/b:perNodeCache=size", "option 'size' is not key=value"),
    ("/a:/b:perNodeCache=size=", "option 'size=' is not key=value"),
    ("/a:/b:perNodeCache=size=lots", "'lots' is not a size"),
    ("/a:/b:perNodeCache=size=0", "size must be more than 0"),
    ("/a:/b:perNodeCache=size=1G,bs=3000", "power of two"),
    ("/a:/b:perNodeCache=size=1G,method=nbd", "method must be loop"),
    ("/a:/b:perNodeCache=size=1G,fs=btrfs", "fs must be xfs or ext4"),
    ("/a:/b:perNodeCache=size=1G,fs=ext4,bs=8K", "the ext4 block size: a power of two from 1K to 4K"),
])
def test_invalid_specs_say_why(spec, message):
    text = refused(spec, SITE)
    assert message in text
    assert text.startswith("invalid volume ") or text.startswith("the perNodeCache")


def test_flags_are_case_insensitive_and_rendered_canonically():
    mount = parse("/a:/b:PRIVATE:Rec:perNODECACHE=SIZE=1g,FsType=XFS,Method=LOOP,BS=1k:Ro", SITE)[0]
    assert mount.render() == "/a:/b:ro:rec:perNodeCache=size=1073741824,bs=1024,method=loop,fstype=xfs:private"


def test_cache_policy():
    policy = CachePolicy(size_limit=10 * GiB, min_sizes=volumes.MIN_SIZES)
    assert parse("/x:/cache:perNodeCache=size=10G", USER, policy)[0].per_node_cache.size == 10 * GiB
    assert "exceeds the site's limit of 10G" in refused("/x:/cache:perNodeCache=size=11G", USER, policy)
    assert "at least 300M for xfs" in refused("/x:/cache:perNodeCache=size=100M", USER, policy)
    assert parse("/x:/cache:perNodeCache=size=100M,fs=ext4", USER, policy)[0].per_node_cache.fs_type == "ext4"
    assert "at least 16M for ext4" in refused("/x:/cache:perNodeCache=size=1M,fs=ext4", USER, policy)
    assert "total 12G, more than the site's limit of 10G" in refused(
        "/x:/c1:perNodeCache=size=6G;/x:/c2:perNodeCache=size=6G", USER, policy
    )
    assert "not available on this system" in refused(
        "/x:/cache:perNodeCache=size=1G", USER, CachePolicy(available=False)
    )
    assert parse("/a:/b", USER, CachePolicy(available=False))


def test_a_cache_without_fs_gets_the_sites_first_type():
    ext4_site = CachePolicy(fs_types=("ext4",))
    assert parse("/x:/c:perNodeCache=size=1G", USER, ext4_site)[0].per_node_cache.fs_type == "ext4"
    assert "offers perNodeCache as ext4, not xfs" in refused("/x:/c:perNodeCache=size=1G,fs=xfs", USER, ext4_site)
    assert parse("/x:/c:perNodeCache=size=1G", USER)[0].per_node_cache.fs_type == "xfs"


def test_render_of_a_spec_round_trips():
    spec = "/a:/b:ro;/x:/cache:perNodeCache=size=1G,bs=1k;/c:/d"
    mounts = parse(spec, USER)
    assert parse(volumes.render(mounts), USER) == mounts


def test_format_bytes():
    assert volumes.format_bytes(300 * MiB) == "300M"
    assert volumes.format_bytes(1536) == "1536 bytes"
    assert volumes.format_bytes(2048) == "2K"
    assert volumes.format_bytes(1000) == "1000 bytes"
    assert volumes.format_bytes(1024 ** 4) == "1T"


def test_unknown_context_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown volume context"):
        parse("/a:/b", "root")


# --- several volumes, relative sources, devices ----------------------------------

def test_an_entry_given_twice_is_kept_once_in_its_first_place():
    assert volumes.render(parse("/a:/b;/c:/d:ro;/a:/b;/c:/d:RO;/a:/b:ro", USER)) == "/a:/b;/c:/d:ro;/a:/b:ro"


def test_relative_sources_start_from_the_base_only_when_one_is_given():
    assert "the source 'data' must be an absolute path" in refused("data:/data")
    base = lambda: "/home/me/run"    # noqa: E731
    mounts = parse("./data:/data;in/x.yaml:/opt/x.yaml:ro;../shared:/shared;/abs:/abs;.:/here", USER, base=base)
    assert volumes.render(mounts) == ("/home/me/run/data:/data;/home/me/run/in/x.yaml:/opt/x.yaml:ro;"
                                      "/home/me/shared:/shared;/abs:/abs;/home/me/run:/here")
    assert "the target './t' must be an absolute path" in str(_refused_with_base("/a:./t", base))


def test_a_relative_source_without_a_base_directory_says_why():
    def nowhere():
        raise ValueError("/tmp/x is not on a file system the container shows")
    message = str(_refused_with_base("./data:/data", nowhere))
    assert message == ("invalid volume './data:/data': a relative source starts from the directory you submit"
                       " from, but /tmp/x is not on a file system the container shows")
    assert parse("/abs:/abs", USER, base=nowhere)        # asked only for relative sources
    assert "cannot hold its character ' '" in str(_refused_with_base("d:/d", lambda: "/home/me/My Run"))


def _refused_with_base(spec, base):
    with pytest.raises(VolumeError) as error:
        parse(spec, USER, base=base)
    return error.value


def test_container_path_follows_the_deepest_site_bind():
    binds = parse("/home;/global/u1:/home/u1;/lustre/scratch:/scratch;/x:/c:perNodeCache=size=1G", SITE)
    assert volumes.container_path("/home/me/run", binds) == "/home/me/run"
    assert volumes.container_path("/global/u1/me/", binds) == "/home/u1/me"
    assert volumes.container_path("/lustre/scratch", binds) == "/scratch"
    assert volumes.container_path("/lustre/scratchy", binds) is None
    assert volumes.container_path("/x/y", binds) is None          # a cache shows nothing of the host
    assert volumes.container_path("/tmp", ()) is None


@pytest.mark.parametrize("spec, allowed, ok", [
    ("/dev/fuse:/opt/fuse", (), False),
    ("/dev/fuse:/opt/fuse", ("/dev/fuse",), True),
    ("/dev/shm:/shm", ("/dev/fuse",), False),
    ("/dev:/d", ("/dev/fuse",), False),
    ("/device:/d", (), True),
    ("/x:/dev-cache:perNodeCache=size=1G", (), True),
])
def test_sources_in_dev_must_be_listed(spec, allowed, ok):
    mounts = parse(spec, USER)
    if ok:
        volumes.check_devices(mounts, allowed)
    else:
        with pytest.raises(VolumeError, match="is a device or in /dev"):
            volumes.check_devices(mounts, allowed)


# --- properties ---------------------------------------------------------------

SEGMENT_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-"
segment = st.text(SEGMENT_ALPHABET, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
path = st.lists(segment, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
cache = st.sampled_from(volumes.CACHE_FS_TYPES).flatmap(lambda fs: st.builds(
    PerNodeCache,
    size=st.integers(1, 2 ** 60),
    block_size=st.sampled_from(volumes.BLOCK_SIZES[fs]),
    fs_type=st.just(fs),
))


def protected_for_user(target):
    """Independent statement of the user rule via commonpath."""
    if target == "/var/tmp":
        return False
    for tree in ("/etc", "/var", "/opt/udiImage", "/proc", "/sys", "/dev"):
        if posixpath.commonpath([target, tree]) in (target, tree):
            return True
    return False


site_mount = st.builds(
    VolumeMount,
    source=path,
    target=path.filter(lambda p: p not in volumes._SITE_FORBIDDEN_TARGETS),
    read_only=st.booleans(),
    recursive=st.booleans(),
    propagation=st.sampled_from([None, "slave", "private"]),
    per_node_cache=st.none() | cache,
)
user_mount = st.builds(
    VolumeMount,
    source=path,
    target=path.filter(lambda p: not protected_for_user(p)),
    read_only=st.booleans(),
    per_node_cache=st.none() | cache,
)


@given(site_mount)
def test_parse_of_render_is_identity_site(mount):
    assert parse(mount.render(), SITE) == (mount,)


@given(user_mount)
def test_parse_of_render_is_identity_user(mount):
    assert parse(mount.render(), USER) == (mount,)


@given(st.lists(user_mount, max_size=6, unique_by=lambda m: m.target), st.randoms())
def test_signature_ignores_order_and_render_round_trips(mounts, random):
    shuffled = list(mounts)
    random.shuffle(shuffled)
    assert volumes.signature(mounts) == volumes.signature(shuffled)
    assert parse(volumes.render(mounts), USER) == tuple(mounts)
    assert sorted(parse(volumes.signature(mounts), USER), key=repr) == sorted(mounts, key=repr)


# Specs built from pieces that tend to hit the edges of the rules: mostly
# plausible segments near the protected trees, sometimes invalid ones.
PLAUSIBLE = ["etc", "var", "tmp", "opt", "udiImage", "proc", "sys", "dev", "etcetera", "variable",
             "udiImage2", "a", "passwd"]
INVALID = ["..", ".", "", "x y", "$HOME", "\u00e9"]
tricky_segment = st.sampled_from(PLAUSIBLE * 4 + INVALID)
tricky_path = st.builds(
    lambda parts, absolute: ("/" if absolute else "") + "/".join(parts),
    st.lists(tricky_segment, min_size=1, max_size=3), st.sampled_from([True] * 9 + [False]),
)
tricky_flag = st.sampled_from(
    ["ro", "RO", "perNodeCache=size=1G"] * 3
    + ["rec", "slave", "private", "perNodeCache", "perNodeCache=size=1G,bs=4M", "", "rw", "ro=1"]
)
tricky_entry = st.builds(
    lambda s, t, flags, quoted: ('"%s"' if quoted else "%s") % ":".join([s, t, *flags]),
    tricky_path, tricky_path, st.lists(tricky_flag, max_size=2), st.booleans(),
)
tricky_spec = st.lists(tricky_entry, min_size=1, max_size=2).map(";".join)


@settings(max_examples=1000)
@given(tricky_spec)
@example("/src:/etc;/a:/b")
@example("/src:/var/tmp")
def test_no_accepted_user_spec_reaches_a_protected_tree(spec):
    try:
        mounts = parse(spec, USER)
    except VolumeError:
        return
    for mount in mounts:
        assert not protected_for_user(mount.target)
        for p in (mount.source, mount.target):
            assert p.startswith("/") and ".." not in p.split("/")
            assert set(p) <= set(SEGMENT_ALPHABET + "/")
        assert not mount.recursive and mount.propagation is None


@settings(max_examples=300)
@given(tricky_spec)
def test_site_accepts_whatever_user_accepts_and_targets_stay_clean(spec):
    try:
        mounts = parse(spec, USER)
    except VolumeError:
        return
    assert parse(spec, SITE) == mounts


@given(st.text(max_size=60))
def test_anything_else_is_a_volume_error(text):
    for context in (USER, SITE):
        try:
            mounts = parse(text, context)
        except VolumeError as error:
            assert "\n" not in str(error)
        else:
            assert parse(volumes.render(mounts), context) == mounts


@given(st.integers(0, 2 ** 40), st.sampled_from(["", "b", "k", "K", "kb", "KiB", "m", "g", "t"]))
def test_parse_bytes_scales_by_1024(number, unit):
    powers = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}
    assert volumes.parse_bytes(f"{number}{unit}") == number * 1024 ** powers[unit[:1].lower()]
