"""Images made for one test and pushed to the mini-cluster's registry.

Each image is the busybox test image plus a small layer of its own, which
holds /etc/shifter-test-version (what a job prints to show which image it
runs) and a nonce, so its digest is new and the gateway has never seen it:

    image = push_image(cluster, "pinning", "v1", version="A")
    image.descriptor    # docker:test/pinning-<nonce>:v1
    image.digest        # sha256:... of its manifest, which is the gateway's image id
    with image.broken():  # its own layer is served damaged until the block ends
        ...

A damaged layer makes the gateway's pull fail on the digest check and retry;
repairing it lets the next attempt succeed: a pull that takes as long as the
test wants, with nothing slowed down for anyone else.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import uuid
from pathlib import Path

from ci.harness import oci

VERSION_FILE = "etc/shifter-test-version"


@dataclasses.dataclass
class PushedImage:
    descriptor: str            # docker:<repository>:<tag>, the default location being the registry
    digest: str                # sha256:<hex> of the manifest
    layer_blob: Path           # where the registry stores the image's own layer

    @contextlib.contextmanager
    def broken(self):
        """Serve the image's own layer with one byte changed (same size) until the block ends."""
        good = self.layer_blob.read_bytes()
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        self.layer_blob.write_bytes(bytes(bad))
        try:
            yield self
        finally:
            self.layer_blob.write_bytes(good)

    def break_for_good(self) -> None:
        """Damage the layer and leave it so (the image is unique to one test)."""
        data = bytearray(self.layer_blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        self.layer_blob.write_bytes(bytes(data))


def push_image(cluster, name: str, tag: str, *, version: str, repository: str | None = None) -> PushedImage:
    """Build and push `test/<name>-<nonce>:<tag>` (or `repository:tag`) holding `version`."""
    repository = repository or f"test/{name}-{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="shifter-test-image-") as tmp:
        layout = oci.Layout(tmp)
        base = layout.add_layer(oci.busybox_entries())
        own = layout.add_layer([oci.File(VERSION_FILE, f"{version}\n"),
                                oci.File("etc/shifter-test-nonce", uuid.uuid4().hex)])
        manifest = layout.add_image([base, own], oci.busybox_config(), tag="build")
        layout.push("build", f"{cluster.registry}/{repository}:{tag}")
    hexdigest = own.digest.split(":", 1)[1]
    blob = (cluster.layout.root / "registry" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
            / hexdigest[:2] / hexdigest / "data")
    assert blob.is_file(), f"the registry did not store {own.digest} at {blob}"
    return PushedImage(descriptor=f"docker:{repository}:{tag}", digest=manifest.digest, layer_blob=blob)


def lookup(cluster, descriptor: str) -> str:
    """The digest the gateway gives for `descriptor` now (shifterimg lookup prints the id)."""
    image_id = cluster.run(["shifterimg", "lookup", descriptor]).stdout.strip()
    return f"sha256:{image_id}"


def job_fields(cluster, job_id: int) -> dict[str, str]:
    """`scontrol show job` as a dict; values may hold spaces (Comment, AdminComment)."""
    text = cluster.run(["scontrol", "show", "job", str(job_id)], check=False).stdout
    return parse_job(text)


def parse_job(text: str) -> dict[str, str]:
    """Split scontrol's `Key=value` words where a value may contain spaces.

    scontrol prints comments on lines of their own (`   Comment=a b c`), so
    a line that starts with Comment= or AdminComment= is one field.
    """
    fields = {}
    for line in text.splitlines():
        stripped = line.strip()
        key, sep, value = stripped.partition("=")
        if sep and key in ("Comment", "AdminComment", "SystemComment"):
            fields[key] = value
            continue
        for word in stripped.split():
            key, sep, value = word.partition("=")
            if sep and key not in fields:
                fields[key] = value
    return fields
