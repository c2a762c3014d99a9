"""Getting images into a system's image directory: `local` or `remote` over ssh.

The pipeline builds into `Destination.store`: for a local system that is the
image directory itself; for a remote one a staging directory on the gateway
(kept, so re-pulling an unchanged tag converts nothing), from which the files
are copied over ssh.  An image arrives in two steps, so that its access can
be decided while its files are in place but not yet published:

* `place()` puts the squashfs there, unpublished (no `<id>.json` yet);
* `write_metadata()` writes `<id>.meta` then `<id>.json`, which publishes it.

Either way the runtime only ever sees whole files: each is written under a
temporary name on the far side and renamed.
"""
from __future__ import annotations

import os
import shlex
import subprocess

from shifter_core.errors import ImageContentError, ImageNotFound
from shifter_core.imagestore import ImageMeta, ImageStore, check_id, id_of_file

from .config import GatewayConfig, SshTarget, System
from .errors import TransferError

SSH = "/usr/bin/ssh"
SSH_TIMEOUT = 600
EXTENSIONS = ("json", "meta", "squashfs")
_SSH_UNREACHABLE = 255


class LocalDestination:
    """The worker writes the system's image directory itself."""

    def __init__(self, image_dir: str):
        self.store = ImageStore(image_dir)

    def prepare(self) -> None:
        os.makedirs(self.store.directory, exist_ok=True)

    def place(self, image_id: str, squashfs: str | None) -> None:
        """Put a built squashfs in place (None: the store has it already)."""
        if squashfs is not None:
            self.store.put_squashfs(image_id, squashfs)

    def write_metadata(self, meta: ImageMeta) -> None:
        self.store.write_metadata(meta)

    def read(self, image_id: str) -> ImageMeta | None:
        """The published metadata, None if there is none (or it is unusable)."""
        return _read(self.store, image_id)

    def exists(self, image_id: str) -> bool:
        return self.store.exists(image_id) and os.path.exists(self.store.image_path(image_id))

    def image_ids(self) -> set[str]:
        return self.store.ids()

    def has_files(self, image_id: str) -> bool:
        """Whether any file of the image is there, published or not."""
        return _has_files(self.store, image_id)

    def remove(self, image_id: str) -> None:
        self.store.remove(image_id)


class RemoteDestination:
    """The system's image directory on another host, reached with ssh (key auth)."""

    def __init__(self, target: SshTarget, staging_dir: str):
        self.target = target
        self.store = ImageStore(staging_dir)
        self._answering: str | None = None     # tried first next time

    def prepare(self) -> None:
        os.makedirs(self.store.directory, exist_ok=True)

    def place(self, image_id: str, squashfs: str | None) -> None:
        if squashfs is not None:
            self.store.put_squashfs(image_id, squashfs)
        name = f"{image_id}.squashfs"
        local = os.path.join(self.store.directory, name)
        if not self._remote_has(name, os.stat(local).st_size):
            self._put(local, name)

    def write_metadata(self, meta: ImageMeta) -> None:
        self.store.write_metadata(meta)
        for name in (f"{meta.id}.meta", f"{meta.id}.json"):
            self._put(os.path.join(self.store.directory, name), name)

    def read(self, image_id: str) -> ImageMeta | None:
        """What was last sent: the staging copy of the metadata."""
        return _read(self.store, image_id)

    def exists(self, image_id: str) -> bool:
        check_id(image_id)
        result = self._ssh(f"test -f {self._remote(image_id + '.json')}"
                           f" && test -f {self._remote(image_id + '.squashfs')}", check=False)
        return result.returncode == 0

    def image_ids(self) -> set[str]:
        listing = self._ssh(f"ls -1 {shlex.quote(self.target.image_dir)}").stdout.decode(errors="replace")
        return {image_id for image_id in map(id_of_file, listing.split()) if image_id} | self.store.ids()

    def has_files(self, image_id: str) -> bool:
        """Whether any file of the image is there or in staging, published or not."""
        check_id(image_id)
        names = " ".join(self._remote(f"{image_id}.{ext}") for ext in EXTENSIONS)
        there = self._ssh(f"ls {names}", check=False).stdout.strip()
        return bool(there) or _has_files(self.store, image_id)

    def remove(self, image_id: str) -> None:
        check_id(image_id)
        names = " ".join(self._remote(f"{image_id}.{ext}") for ext in EXTENSIONS)
        self._ssh(f"rm -f {names}")
        self.store.remove(image_id)

    # -- ssh ------------------------------------------------------------------

    def _remote(self, name: str) -> str:
        return shlex.quote(os.path.join(self.target.image_dir, name))

    def _remote_has(self, name: str, size: int) -> bool:
        result = self._ssh(f"stat -c %s {self._remote(name)}", check=False)
        return result.returncode == 0 and result.stdout.strip() == str(size).encode()

    def _put(self, local: str, name: str) -> None:
        """Stream `local` to a temp file beside `name` and rename it over `name`."""
        directory = shlex.quote(self.target.image_dir)
        script = (
            f"set -e; umask 077; tmp=$(mktemp {directory}/.{shlex.quote(name)}.XXXXXX);"
            f" trap 'rm -f \"$tmp\"' EXIT; cat > \"$tmp\"; chmod 0600 \"$tmp\";"
            f" mv -f \"$tmp\" {self._remote(name)}; trap - EXIT"
        )
        with open(local, "rb") as source:
            self._ssh(script, stdin=source)

    def _ssh(self, script: str, *, stdin=None, check: bool = True) -> subprocess.CompletedProcess:
        """Run `script` on the first host that answers."""
        result = None
        hosts = sorted(self.target.hosts, key=lambda h: h != self._answering)
        for host in hosts:
            if stdin is not None:
                stdin.seek(0)
            result = subprocess.run(
                self._command(host) + ["sh", "-c", shlex.quote(script)],
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                capture_output=True, timeout=SSH_TIMEOUT, env={"PATH": "/usr/bin:/bin"},
            )
            if result.returncode != _SSH_UNREACHABLE:
                self._answering = host
                break
        if check and result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            raise TransferError(
                f"copying to {self.target.image_dir} on {', '.join(self.target.hosts)} failed:"
                f" {detail[-1] if detail else f'exit {result.returncode}'}")
        return result

    def _command(self, host: str) -> list[str]:
        """ssh's first value of an option wins: the site's options go before our defaults."""
        command = [SSH, *self.target.ssh_options, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if self.target.key:
            command += ["-i", self.target.key, "-o", "IdentitiesOnly=yes"]
        if self.target.port:
            command += ["-p", str(self.target.port)]
        command.append(f"{self.target.user}@{host}" if self.target.user else host)
        return command


Destination = LocalDestination | RemoteDestination


def destination(config: GatewayConfig, system: System) -> Destination:
    if system.access_type == "local":
        return LocalDestination(system.image_dir)
    return RemoteDestination(system.ssh, os.path.join(config.expand_directory, "staging", system.name))


def _has_files(store: ImageStore, image_id: str) -> bool:
    return any(os.path.lexists(os.path.join(store.directory, f"{check_id(image_id)}.{ext}"))
               for ext in EXTENSIONS)


def _read(store: ImageStore, image_id: str) -> ImageMeta | None:
    try:
        return store.read(image_id)
    except (ImageNotFound, ImageContentError):
        return None
