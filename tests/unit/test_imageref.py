"""Image descriptors: Shifter's cases (reference h.2) and properties of the parser."""
import re

import pytest
from hypothesis import example, given, settings, strategies as st

from shifter_core import imageref
from shifter_core.errors import ImageRefError
from shifter_core.imageref import ImageRef, parse

HEX = "0123456789abcdef" * 4


# --- Shifter's test_ImageData cases -------------------------------------------

def test_typed_docker_descriptor():
    ref = parse("docker:ubuntu:14.04")
    assert (ref.type, ref.repository, ref.tag, ref.registry) == ("docker", "ubuntu", "14.04", None)
    assert ref.gateway_tag == "ubuntu:14.04"


def test_untyped_descriptor_takes_the_default_type():
    assert parse("ubuntu:14.04") == parse("docker:ubuntu:14.04")
    assert parse("myimage:1", default_type="custom") == ImageRef("custom", "myimage", "1")


@pytest.mark.parametrize("text", ["this is *incorrect*", "/this/is/not/allowed", "local:"])
def test_what_shifter_filtered_is_refused(text):
    # Shifter deleted the characters it disliked ("thisisincorrect"); a typo
    # must not silently select another image, so we refuse.
    with pytest.raises(ImageRefError):
        parse(text)


@pytest.mark.parametrize("default_type", ["invalid", None, "local"])
def test_invalid_default_type_is_an_error(default_type):
    with pytest.raises(ImageRefError, match="defaultImageType"):
        parse("ubuntu:14.04", default_type=default_type)


# --- our forms ----------------------------------------------------------------

@pytest.mark.parametrize("text, fields, canonical", [
    ("ubuntu", ("docker", None, "ubuntu", "latest", None), "docker:ubuntu:latest"),
    ("DOCKER:ubuntu", ("docker", None, "ubuntu", "latest", None), "docker:ubuntu:latest"),
    ("docker:127.0.0.1:5000/test/os:1.0", ("docker", "127.0.0.1:5000", "test/os", "1.0", None),
     "docker:127.0.0.1:5000/test/os:1.0"),
    ("localhost/x", ("docker", "localhost", "x", "latest", None), "docker:localhost/x:latest"),
    (f"python@sha256:{HEX}", ("docker", None, "python", None, f"sha256:{HEX}"), f"docker:python@sha256:{HEX}"),
    (f"registry.example.org:443/a/b:t@sha256:{HEX}",
     ("docker", "registry.example.org:443", "a/b", "t", f"sha256:{HEX}"),
     f"docker:registry.example.org:443/a/b:t@sha256:{HEX}"),
    ("custom:mytool", ("custom", None, "mytool", None, None), "custom:mytool"),
    ("custom:my.tool_2+x:v1.0", ("custom", None, "my.tool_2+x", "v1.0", None), "custom:my.tool_2+x:v1.0"),
    (f"id:{HEX}", ("id", None, "", None, f"sha256:{HEX}"), f"id:{HEX}"),
    (f"id:sha256:{HEX}", ("id", None, "", None, f"sha256:{HEX}"), f"id:{HEX}"),
])
def test_accepted_forms(text, fields, canonical):
    ref = parse(text)
    assert (ref.type, ref.registry, ref.repository, ref.tag, ref.digest) == fields
    assert str(ref) == canonical


@pytest.mark.parametrize("text, message", [
    ("", "empty image name"),
    ("   ", "empty image name"),
    ("docker:", "nothing after docker:"),
    ("docker:Ubuntu", "must be lower-case"),
    ("docker:ubuntu:", "tag ''"),
    ("docker:ubuntu:-x", "tag '-x'"),
    ("docker:ubuntu:" + "x" * 129, "at most 128"),
    ("docker:a//b", "repository part ''"),
    ("docker:a/b/", "repository part ''"),
    ("docker:@sha256:" + HEX, "no repository name"),
    ("docker:ubuntu@sha256:abc", "a digest is sha256:"),
    ("docker:ubuntu@md5:" + HEX[:32], "a digest is sha256:"),
    ("docker:bad_host:5000/x", "bad registry host"),
    ("docker:" + "a" * 256, "longer than 255"),
    ("id:xyz", "64 lower-case hex"),
    ("custom:a/b", "custom names use"),
    ("custom:..", "only dots"),
    ("ubuntu:\u00e9", "tag '\u00e9'"),
    ("ubuntu 22.04", "whitespace"),
])
def test_refusals_say_why(text, message):
    with pytest.raises(ImageRefError, match=re.escape(message)):
        parse(text)


def test_non_text_is_refused():
    with pytest.raises(ImageRefError):
        parse(None)


def test_image_id_and_name():
    ref = parse(f"docker:127.0.0.1:5000/a/b:1@sha256:{HEX}")
    assert ref.image_id == HEX
    assert ref.name == "127.0.0.1:5000/a/b"
    assert parse("ubuntu").image_id is None


# --- properties ---------------------------------------------------------------

component = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", fullmatch=True).filter(lambda c: len(c) <= 30)
domain_label = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
registry = st.builds(
    lambda labels, port: ".".join(labels) + (f":{port}" if port is not None else ""),
    st.lists(domain_label, min_size=2, max_size=3), st.none() | st.integers(1, 65535),
) | st.just("localhost") | st.builds(lambda p: f"localhost:{p}", st.integers(1, 65535))
tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
digest = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}")


@st.composite
def docker_refs(draw):
    reg = draw(st.none() | registry)
    parts = draw(st.lists(component, min_size=1, max_size=3))
    if reg is None and len(parts) > 1:
        # Docker reads a first part with a dot as a registry host
        parts[0] = parts[0].replace(".", "-")
        if parts[0] == "localhost":
            reg, parts = parts[0], parts[1:]
    tag_value, digest_value = draw(st.none() | tag), draw(st.none() | digest)
    if tag_value is None and digest_value is None:
        tag_value = imageref.DEFAULT_TAG
    return ImageRef("docker", registry=reg, repository="/".join(parts), tag=tag_value, digest=digest_value)


custom_refs = st.builds(
    lambda name, tag_value: ImageRef("custom", repository=name, tag=tag_value),
    st.from_regex(r"[A-Za-z0-9_.+-]{1,40}", fullmatch=True).filter(lambda n: n.strip(".")),
    st.none() | tag,
)
id_refs = digest.map(lambda d: ImageRef("id", digest=d))


@given(docker_refs() | custom_refs | id_refs)
def test_str_parses_back_to_the_same_reference(ref):
    assert parse(str(ref)) == ref
    assert parse(f"{ref.type}:{ref.gateway_tag}") == ref


@given(docker_refs())
def test_a_docker_gateway_tag_alone_parses_with_the_docker_default(ref):
    assert parse(ref.gateway_tag) == ref


URL_SAFE = re.compile(r"^[A-Za-z0-9._:/@+-]+$")


@settings(max_examples=500)
@given(st.text(max_size=40) | st.from_regex(r"(docker:|custom:|id:)?[a-z0-9./:@_+-]{0,30}", fullmatch=True))
@example("custom:..")
@example("custom:.")
@example("ubuntu:\u00e9")
@example("ubuntu:\u0663")
@example("custom:a:\u00e9")
def test_anything_accepted_is_canonical_and_safe_in_a_url(text):
    try:
        ref = parse(text)
    except ImageRefError as error:
        assert "\n" not in str(error)
        return
    assert parse(str(ref)) == ref
    assert URL_SAFE.match(ref.gateway_tag), ref.gateway_tag
    assert all(segment not in (".", "..") for segment in ref.gateway_tag.split("/"))
    assert ref.gateway_tag.isascii()


def test_local_trees_are_absolute_clean_paths_named_by_a_digest_of_the_path():
    ref = parse("local:/home/me/./tree/")
    assert (ref.type, ref.repository, str(ref)) == ("local", "/home/me/tree", "local:/home/me/tree")
    assert ref.digest == parse("local:/home/me/tree").digest != parse("local:/home/me/other").digest
    assert parse("local:/").repository == "/"
    for bad in ("local:relative", "local:/a/../b", "local:/a*b", "local:"):
        with pytest.raises(ImageRefError):
            parse(bad)
