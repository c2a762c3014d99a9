"""The image schema: registry configs the gateway accepts, <id>.json the nodes read, .meta it writes."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, strategies as st

from shifter_core.errors import ImageContentError, ImageNotFound
from shifter_core.imageconfig import from_image_config
from shifter_core.imagestore import ImageMeta, ImageStore

DIFF_ID = "sha256:" + "12" * 32
GOOD = {
    "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
    "config": {"Env": ["PATH=/bin", "EMPTY="], "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo a\necho b"],
               "WorkingDir": "/srv", "User": "1000:1000", "Labels": {"a": "b\nc"},
               "ExposedPorts": {"80/tcp": {}}, "Volumes": None, "OnBuild": None, "Hostname": ""},
    "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]},
    "history": [{"created_by": "x", "empty_layer": True}],
}


def config_with(path: str, value):
    """GOOD with the field at `path` ("config.Env", "rootfs") set to `value`."""
    document = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    target[last] = value
    return document


def test_a_docker_config_gives_what_the_runtime_uses():
    config = from_image_config(GOOD, "docker:x:1")
    assert config.env == ["PATH=/bin", "EMPTY="] and config.entrypoint == ["/bin/sh", "-c"]
    assert config.cmd == ["echo a\necho b"]            # argv may hold line breaks: .meta escapes them
    assert (config.workdir, config.user, config.labels) == ("/srv", "1000:1000", {"a": "b\nc"})
    assert (config.architecture, config.os, config.diff_ids) == ("amd64", "linux", [DIFF_ID])


@pytest.mark.parametrize("path, value", [
    ("config", None), ("config.Env", None), ("config.Entrypoint", None), ("config.Cmd", []),
    ("config.WorkingDir", ""), ("config.User", ""), ("config.Labels", None), ("history", None),
])
def test_null_and_empty_optional_fields_mean_unset(path, value):
    config = from_image_config(config_with(path, value), "docker:x:1")
    assert config.architecture == "amd64"


@pytest.mark.parametrize("path, value, message", [
    ("config.Env", ["PATH=/bin", 1, None], "config.Env[1] is 1, not a NAME=value string"),
    ("config.Env", "PATH=/bin", "config.Env is 'PATH=/bin', not a list"),
    ("config.Env", {"PATH": "/bin"}, "config.Env is an object, not a list"),
    ("config.Env", ["NOVALUE"], "config.Env[0] is 'NOVALUE', not a NAME=value string"),
    ("config.Env", ["=value"], "config.Env[0] is '=value', not a NAME=value string"),
    ("config.Env", ["A=1\nUSERACL: 0"], "config.Env[0] holds the control character '\\n'"),
    ("config.Env", ["A=\u2028"], "config.Env[0] holds the control character"),
    ("config.WorkingDir", {"a": 1}, "config.WorkingDir is an object, not a string"),
    ("config.WorkingDir", "/srv\nUSERACL: 0", "config.WorkingDir holds the control character '\\n'"),
    ("config.WorkingDir", "relative/dir", "config.WorkingDir is 'relative/dir', not an absolute path"),
    ("config.User", 0, "config.User is 0, not a string"),
    ("config.User", "root\r", "config.User holds the control character '\\r'"),
    ("config.Entrypoint", "/bin/sh -c", "config.Entrypoint is '/bin/sh -c', not a list"),
    ("config.Entrypoint", ["/bin/sh", 5], "config.Entrypoint[1] is 5, not a string"),
    ("config.Cmd", 5, "config.Cmd is 5, not a list"),
    ("config.Cmd", ["a\0b"], "config.Cmd[0] holds a NUL byte"),
    ("config.Cmd", ["\ud800"], "config.Cmd[0] is not valid Unicode"),
    ("config.Labels", {"k": "\udcff"}, "config.Labels['k'] is not valid Unicode"),
    ("config.Labels", "a=b", "config.Labels is 'a=b', not an object"),
    ("config.Labels", {"a": 1}, "config.Labels['a'] is 1, not a string"),
    ("config.ExposedPorts", ["80/tcp"], "config.ExposedPorts is a list, not an object"),
    ("config", "Env=PATH", "config is 'Env=PATH', not an object"),
    ("rootfs", "layers", "rootfs is 'layers', not an object"),
    ("rootfs", None, "rootfs is None, not an object"),
    ("rootfs.type", "tarballs", "rootfs.type is 'tarballs', not \"layers\""),
    ("rootfs.diff_ids", ["sha256:xyz"], "rootfs.diff_ids[0] is 'sha256:xyz', not a sha256 digest"),
    ("rootfs.diff_ids", DIFF_ID, "rootfs.diff_ids is '"),
    ("architecture", 5, "architecture is 5, not a name like amd64 or linux"),
    ("architecture", "x" * 33, "architecture is 'xxx"),
    ("os", None, "os is None, not a name"),
    ("created", 2023, "created is 2023, not a string"),
    ("history", "none", "history is 'none', not a list"),
])
def test_a_refusal_names_the_field_and_what_is_wrong(path, value, message):
    with pytest.raises(ImageContentError) as info:
        from_image_config(config_with(path, value), "docker:reg/x:1")
    text = str(info.value)
    assert text.startswith("image docker:reg/x:1 is refused: its config field ")
    assert message in text and "\n" not in text


def test_the_config_must_be_an_object():
    with pytest.raises(ImageContentError, match="top level is a list, not an object"):
        from_image_config([GOOD], "docker:x:1")


# --- ImageMeta: what the nodes read ------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32


def stored(tmp_path, **fields) -> ImageStore:
    data = json.loads(ImageMeta(digest=DIGEST, env=["A=1"]).to_json())
    data.update(fields)
    (tmp_path / f"{DIGEST[7:]}.json").write_text(json.dumps(data))
    return ImageStore(str(tmp_path))


def test_metadata_round_trips_and_unknown_keys_are_ignored(tmp_path):
    meta = ImageMeta(digest=DIGEST, env=["A=1"], entrypoint=["/x"], workdir="/w", user="u",
                     labels={"k": "v"}, private=True, user_acl=[0, 1000], group_acl=[5], size=7)
    (tmp_path / f"{meta.id}.json").write_text(meta.to_json()[:-1] + ', "future": 1}')
    assert ImageStore(str(tmp_path)).read(meta.id) == meta


@pytest.mark.parametrize("fields, message", [
    ({"env": ["PATH=/bin", 1, None]}, "its field env[1] is 1, not a NAME=value string"),
    ({"env": "PATH=/bin"}, "its field env is 'PATH=/bin', not a list"),
    ({"workdir": {"a": 1}}, "its field workdir is an object, not a string"),
    ({"workdir": "/x\nUSERACL: 0"}, "its field workdir holds the control character"),
    ({"entrypoint": "sh"}, "its field entrypoint is 'sh', not a list"),
    ({"labels": "x"}, "its field labels is 'x', not an object"),
    ({"user_acl": ["1000"]}, "its field user_acl[0] is '1000', not a user or group id"),
    ({"private": "yes"}, "its field private is 'yes', not true or false"),
    ({"size": -1}, "its field size is -1, not a size in bytes"),
    ({"format": "ext4"}, "its field format is 'ext4', not one of squashfs"),
    ({"digest": None}, "its field digest is None, not a sha256 digest"),
])
def test_a_node_refuses_unusable_metadata_in_one_line(tmp_path, fields, message):
    with pytest.raises(ImageContentError) as info:
        stored(tmp_path, **fields).read(DIGEST[7:])
    text = str(info.value)
    assert text.startswith(f"the metadata of image {DIGEST[7:]} is unusable: ")
    assert message in text and text.endswith("pull the image again") and "\n" not in text


def test_metadata_that_is_not_json_or_not_an_object_is_refused(tmp_path):
    path = tmp_path / f"{DIGEST[7:]}.json"
    for text, message in (("{not json", "is not valid JSON"), ("[1]", "top level is a list")):
        path.write_text(text)
        with pytest.raises(ImageContentError, match=message):
            ImageStore(str(tmp_path)).read(DIGEST[7:])
    path.unlink()
    with pytest.raises(ImageNotFound):
        ImageStore(str(tmp_path)).read(DIGEST[7:])


def test_dot_meta_is_one_line_per_value(tmp_path):
    meta = ImageMeta(digest=DIGEST, env=["A=1", "B=2"], entrypoint=["/bin/sh", "-c"],
                     cmd=["echo a\necho b"], workdir="/srv", user="u", user_acl=[1000], group_acl=[])
    assert meta.to_shifter_meta().splitlines() == [
        "FORMAT: squashfs", 'ENTRY: ["/bin/sh", "-c"]', 'CMD: ["echo a\\necho b"]', "WORKDIR: /srv",
        "USER: u", "USERACL: 1000", "GROUPACL: ", "ENV: A=1", "ENV: B=2"]
    assert "USERACL" not in ImageMeta(digest=DIGEST).to_shifter_meta()     # public, no ACL: no lines


@given(st.text(min_size=1))
def test_dot_meta_never_carries_a_line_break_whatever_the_fields_hold(text):
    for field in ("workdir", "user", "env", "entrypoint"):
        value = [f"A={text}"] if field == "env" else [text] if field == "entrypoint" else f"/{text}"
        meta = ImageMeta(digest=DIGEST, **{field: value})
        try:
            written = meta.to_shifter_meta()
        except ImageContentError as error:
            assert "control character" in str(error) and "\n" not in str(error)
            continue
        assert all(line.split(": ", 1)[0] in ("FORMAT", "ENV", "ENTRY", "WORKDIR", "USER")
                   for line in written.split("\n")[:-1])
        assert written.count("\n") == 2
