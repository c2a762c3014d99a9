"""Image configs through the real registry and gateway (gunicorn, PostgreSQL, a worker process):
a config the runtime could not use is refused in one line naming the field, at the first
attempt, and nothing of the image reaches the image directory or the database."""
from __future__ import annotations

import json
import os
import time

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from ci.harness.oci import Layout, busybox_config, busybox_entries
from gateway.models import Image
from shifter_core.imagestatus import FAILURE, READY
from tests.integration.gateway_fixtures import (GatewayProcess, client, gateway_config, munged,  # noqa: F401
                                                postgres, registry)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, munged, registry, postgres):
    workdir = str(tmp_path_factory.mktemp("gateway"))
    url = postgres.create_database("configs")
    config = gateway_config(workdir, munged, registry, DatabaseURI=url, MaxAttempts=3)
    engine = create_engine(url)
    with GatewayProcess(workdir, config, production=True) as gw:
        yield gw, engine
    engine.dispose()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    layout = Layout(str(tmp_path_factory.mktemp("layout")))
    return layout, layout.add_layer(busybox_entries())


def push(layout, registry, name: str, change=None, declared_size: int | None = None) -> str:
    """busybox with its config document changed by `change(document)`, pushed as it is."""
    layout, layer = layout
    document = busybox_config(labels={"test": name}).to_json([layer.diff_id])
    if change is not None:
        change(document)
    layout.add_raw_image([layer], document, name, declared_size=declared_size)
    layout.push_raw(name, registry.url, f"configs/{name}")
    return f"{registry.host}/configs/{name}:{name}"


def finished(gw_client, image, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = gw_client.pull(image)
        if record["status"] in (READY, FAILURE):
            return record
        time.sleep(0.2)
    raise AssertionError(f"pull of {image} did not finish: {record}")


def runtime(key, value):
    def change(document):
        document["config"][key] = value
    return change


def top(key, value):
    def change(document):
        document[key] = value
    return change


CASES = {
    "env-not-strings": (runtime("Env", ["PATH=/bin", 1, None]), "config.Env[1] is 1, not a NAME=value string"),
    "env-a-string": (runtime("Env", "PATH=/bin"), "config.Env is 'PATH=/bin', not a list"),
    "env-a-map": (runtime("Env", {"PATH": "/bin"}), "config.Env is an object, not a list"),
    "env-newline": (runtime("Env", ["A=1\nUSERACL: 0"]), "config.Env[0] holds the control character '\\n'"),
    "workdir-object": (runtime("WorkingDir", {"a": 1}), "config.WorkingDir is an object, not a string"),
    "workdir-newline": (runtime("WorkingDir", "/srv\nENV: X=1"),
                        "config.WorkingDir holds the control character '\\n'"),
    "entrypoint-string": (runtime("Entrypoint", "/bin/sh -c"), "config.Entrypoint is '/bin/sh -c', not a list"),
    "cmd-number": (runtime("Cmd", 5), "config.Cmd is 5, not a list"),
    "labels-string": (runtime("Labels", "a=b"), "config.Labels is 'a=b', not an object"),
    "config-string": (top("config", "Env=PATH"), "config is 'Env=PATH', not an object"),
    "rootfs-string": (top("rootfs", "layers"), "rootfs is 'layers', not an object"),
    "architecture-number": (top("architecture", 5), "architecture is 5, not a name like amd64 or linux"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_configs_the_runtime_cannot_use_are_refused_at_once(deployment, munged, registry, layout, name):
    gw, engine = deployment
    change, message = CASES[name]
    image = push(layout, registry, name, change)
    record = finished(client(gw, munged), image)
    assert record["status"] == FAILURE and record["attempts"] == 1, record
    assert record["status_message"] == (f"image docker:{image} is refused: its config field {message}")
    assert_nothing_of_it_anywhere(gw, engine)


@pytest.mark.parametrize("name, declared", [("size-declared-larger", 10_000), ("size-declared-smaller", 10)])
def test_a_config_whose_declared_size_is_wrong_is_refused(deployment, munged, registry, layout, name,
                                                          declared):
    gw, engine = deployment
    image = push(layout, registry, name, declared_size=declared)
    record = finished(client(gw, munged), image)
    assert record["status"] == FAILURE and record["attempts"] == 1, record
    assert f"bytes, its manifest declares {declared}" in record["status_message"]
    assert_nothing_of_it_anywhere(gw, engine)


def test_nulls_and_docker_extras_are_fine(deployment, munged, registry, layout):
    gw, engine = deployment

    def docker_style(document):
        document["config"].update({"Entrypoint": None, "Volumes": None, "OnBuild": None, "WorkingDir": "",
                                   "Hostname": "", "Env": ["PATH=/bin"]})
        document["container_config"] = {"Cmd": ["/bin/sh", "-c", "#(nop) CMD"]}
    image = push(layout, registry, "docker-style", docker_style)
    record = finished(client(gw, munged), image)
    assert record["status"] == READY, record
    assert record["ENV"] == ["PATH=/bin"] and record["ENTRY"] is None and record["WORKDIR"] is None


def assert_nothing_of_it_anywhere(gw, engine):
    """Only the image of test_nulls_and_docker_extras_are_fine may be there: files and rows agree."""
    images = os.path.join(gw.workdir, "images")
    with Session(engine) as session:
        rows = {image.image_id for image in session.scalars(select(Image))}
    on_disk = {name.split(".")[0] for name in os.listdir(images)} if os.path.isdir(images) else set()
    assert on_disk == rows, (on_disk, rows)
    for image_id in rows:
        with open(os.path.join(images, f"{image_id}.json")) as f:
            assert json.load(f)["labels"] == {"test": "docker-style"}
