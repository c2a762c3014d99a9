"""Layer merge semantics: whiteouts, opaque directories, type changes, hardlinks, hostility."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from gateway.merge import DEVICE, DIR, FIFO, FILE, HARDLINK, SYMLINK, Member, Tree
from shifter_core.errors import ImageContentError


def d(name, mode=0o755):
    return Member(name, DIR, mode=mode)


def f(name, content="x", mode=0o644):
    return Member(name, FILE, mode=mode, size=len(content), source=content)


def link(name, target):
    return Member(name, SYMLINK, mode=0o777, linkname=target)


def hard(name, target):
    return Member(name, HARDLINK, linkname=target)


def merged(*layers) -> dict[str, tuple]:
    tree = Tree("test")
    for index, layer in enumerate(layers):
        tree.apply(index, layer)
    tree.drop_devices()
    return {path: (node.kind, node.source or node.target or None) for path, node in tree.walk()}


def paths(*layers) -> set[str]:
    return set(merged(*layers)) - {""}


def test_layers_add_up_and_later_content_wins():
    result = merged([d("etc"), f("etc/a", "1"), f("etc/b", "1")], [f("etc/b", "2")])
    assert result["etc/a"] == (FILE, "1")
    assert result["etc/b"] == (FILE, "2")


def test_names_are_normalised_and_parents_created():
    assert paths([f("./usr/bin/tool"), f("/abs/file")]) == {
        "usr", "usr/bin", "usr/bin/tool", "abs", "abs/file"}


def test_whiteout_removes_lower_file_and_directory_tree():
    lower = [d("etc"), f("etc/motd"), d("usr"), d("usr/share"), d("usr/share/doc"),
             f("usr/share/doc/readme"), f("usr/share/keep")]
    upper = [f("etc/.wh.motd"), f("usr/share/.wh.doc")]
    assert paths(lower, upper) == {"etc", "usr", "usr/share", "usr/share/keep"}


@pytest.mark.parametrize("order", ["whiteout-first", "entry-first"])
def test_whiteout_never_hides_its_own_layer(order):
    upper = [f("etc/.wh.conf"), f("etc/conf", "new")]
    if order == "entry-first":
        upper.reverse()
    assert merged([d("etc"), f("etc/conf", "old")], upper)["etc/conf"] == (FILE, "new")


def test_whiteout_of_directory_recreated_in_same_layer_drops_lower_children():
    result = paths([d("a"), f("a/old")], [d("a"), f("a/new"), f(".wh.a")])
    assert result == {"a", "a/new"}


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory_hides_lower_children_only(marker_first):
    lower = [d("opt"), f("opt/old"), d("opt/sub"), f("opt/sub/old"), f("other")]
    upper = [d("opt"), f("opt/new"), f("opt/sub/new")]
    marker = f("opt/.wh..wh..opq")
    upper = [marker] + upper if marker_first else upper + [marker]
    assert paths(lower, upper) == {"opt", "opt/new", "opt/sub", "opt/sub/new", "other"}


def test_opaque_on_new_directory_is_harmless():
    # overlayfs marks every new directory opaque (environment.md §7)
    assert paths([d("lib")], [d("lib/py"), f("lib/py/.wh..wh..opq"), f("lib/py/m.py")]) == {
        "lib", "lib/py", "lib/py/m.py"}


def test_type_changes():
    lower = [d("a"), f("a/child"), f("b"), link("c", "/x"), d("e"), f("e/child")]
    upper = [f("a", "now-a-file"), d("b"), f("b/inside"), d("c"), link("e", "/target")]
    result = merged(lower, upper)
    assert result["a"] == (FILE, "now-a-file") and "a/child" not in result
    assert result["b"][0] == DIR and "b/inside" in result
    assert result["c"][0] == DIR
    assert result["e"] == (SYMLINK, "/target") and "e/child" not in result


def test_directory_restated_keeps_children_and_takes_new_mode():
    tree = Tree("t")
    tree.apply(0, [d("srv", 0o755), f("srv/file")])
    tree.apply(1, [d("srv", 0o700)])
    nodes = dict(tree.walk())
    assert nodes["srv"].mode == 0o700 and "srv/file" in nodes


def test_hardlinks_share_the_node_as_it_was_when_linked():
    tree = Tree("t")
    tree.apply(0, [d("bin"), f("bin/su", "v1", mode=0o4755)])
    tree.apply(1, [hard("bin/su2", "bin/su"), hard("bin/su3", "/bin/su")])
    tree.apply(2, [f("bin/su", "v2")])
    nodes = dict(tree.walk())
    assert nodes["bin/su2"] is nodes["bin/su3"]
    assert nodes["bin/su2"].source == "v1" and nodes["bin/su2"].mode == 0o4755
    assert nodes["bin/su"].source == "v2"


def test_hardlinked_name_from_upper_layer_survives_opaque_of_that_layer():
    tree = Tree("t")
    tree.apply(0, [d("a"), f("a/orig"), d("b")])
    tree.apply(1, [hard("b/link", "a/orig"), f("b/.wh..wh..opq")])
    assert "b/link" in dict(tree.walk())


def test_devices_are_dropped_and_replace_what_was_there():
    tree = Tree("t")
    tree.apply(0, [d("dev"), f("dev/null")])
    tree.apply(1, [Member("dev/null", DEVICE), Member("dev/sda", DEVICE), Member("p", FIFO)])
    tree.drop_devices()
    nodes = dict(tree.walk())
    assert "dev/null" not in nodes and "dev/sda" not in nodes
    assert nodes["p"].kind == FIFO
    assert tree.dropped == ["dev/null", "dev/sda"]


def test_hardlinks_to_a_device_are_dropped_with_it():
    assert paths([d("dev"), Member("dev/kmem", DEVICE), hard("dev/mem", "dev/kmem"), f("keep")]) == {
        "dev", "keep"}


def test_a_device_keeps_its_directory_through_a_whiteout_of_the_lower_one():
    # umoci keeps "a": the layer put something in it, even if that is a device we drop
    lower = [d("a"), f("a/old")]
    upper = [Member("a/dev", DEVICE), f(".wh.a")]
    assert paths(lower, upper) == paths(lower, list(reversed(upper))) == {"a"}


def test_markers_below_a_symlink_are_refused_like_any_entry():
    lower = [d("etc"), f("etc/passwd"), link("link", "etc")]
    for marker in ("link/.wh.passwd", "link/.wh..wh..opq"):
        with pytest.raises(ImageContentError, match="below link, a symlink"):
            merged(lower, [f(marker)])
    assert paths([f("file")], [f("file/.wh.x")]) == {"file"}     # below a file: nothing to hide


def test_root_entry_sets_root_metadata_and_utf8_names_survive():
    tree = Tree("t")
    tree.apply(0, [Member("./", DIR, mode=0o750, mtime=5), f("données-日本語.txt")])
    nodes = dict(tree.walk())
    assert nodes[""].mode == 0o750 and "données-日本語.txt" in nodes


@pytest.mark.parametrize("layers, why", [
    ([[f("../escape")]], "leaves the image root"),
    ([[f("a/../../escape")]], "leaves the image root"),
    ([[link("evil", "/etc"), f("evil/passwd")]], "below evil, a symlink"),
    ([[link("evil", "../../..")], [f("evil/x")]], "below evil, a symlink"),
    ([[f("file"), f("file/x")]], "below file, a file"),
    ([[hard("h", "../../etc/shadow")]], "leaves the image root"),
    ([[hard("h", "missing")]], "not in the image"),
    ([[f("h"), hard("h", "/h")]], "hardlink to itself"),
    ([[d("d"), f("d/f"), link("s", "d"), hard("h", "s/f")]], "hardlink through s, a symlink"),
    ([[d("dir"), hard("h", "dir")]], "hardlink to a directory"),
    ([[d("etc"), f("etc/.wh.")]], "malformed whiteout"),
    ([[f(".wh..wh.x")]], "malformed whiteout"),
    ([[f("a\0b")]], "NUL byte"),
    ([[link("l", "a\0b")]], "NUL target"),
    ([[link("l", "")]], "empty or NUL target"),
    ([[f("/".join(["d"] * 201))]], "deeper than 200"),
    ([[f("x" * 256)]], "longer than 255 bytes"),
    ([[f("missing/.wh.")]], "malformed whiteout"),
])
def test_hostile_entries_refuse_the_image(layers, why):
    with pytest.raises(ImageContentError, match=why) as info:
        merged(*layers)
    assert "image test: layer" in str(info.value)


def test_hardlink_with_absolute_target_stays_inside():
    result = merged([d("etc"), f("etc/shadow", "image-shadow")], [hard("copy", "/etc/shadow")])
    assert result["copy"] == (FILE, "image-shadow")


_names = st.sampled_from(["a", "b", "c", ".wh.a", ".wh.b", ".wh..wh..opq"])
_member = st.builds(
    lambda parts, kind: Member("/".join(parts), kind, size=0,
                               linkname="a" if kind in (SYMLINK, HARDLINK) else ""),
    st.lists(_names, min_size=1, max_size=3),
    st.sampled_from([DIR, FILE, SYMLINK, HARDLINK, FIFO, DEVICE]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_member, max_size=8), min_size=1, max_size=4))
def test_any_layer_stack_gives_a_clean_tree_or_a_refusal(layers):
    tree = Tree("t")
    try:
        for index, layer in enumerate(layers):
            tree.apply(index, layer)
    except ImageContentError:
        return
    tree.drop_devices()
    for path, node in tree.walk():
        assert ".wh." not in path
        assert node.kind in (DIR, FILE, SYMLINK, FIFO)
        assert (node.children is not None) == (node.kind == DIR)
