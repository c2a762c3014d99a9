"""Getting images into a system's image directory: `local` or `remote` over ssh.

The pipeline publishes into `Destination.store`: for a local system that is
the image directory itself; for a remote one a staging directory on the
gateway (kept, so re-pulling an unchanged tag converts nothing), from which
`install()` copies the files over ssh.  Either way the runtime only ever sees
whole files: each is written under a temporary name on the far side and
renamed, squashfs first and `<id>.json` last.

Private images get their ACLs when they are first written (`AclStore`), so
there is no moment at which a private image is published without them.
"""
from __future__ import annotations

import os
import shlex
import subprocess

from shifter_core.errors import ShifterError
from shifter_core.imagestore import ImageMeta, ImageStore, check_id

from .config import GatewayConfig, Platform, SshTarget

SSH = "/usr/bin/ssh"
SSH_TIMEOUT = 600
_SSH_UNREACHABLE = 255


class TransferError(ShifterError):
    """Copying an image to a system's image directory failed."""


class AclStore(ImageStore):
    """An ImageStore that stamps the requested ACLs on private images as they are published.

    Whether an image is private is decided by each pull: one for which the
    registry refused anonymous access (the pipeline reports it as
    `login_required` once the manifest is resolved; the worker sets `private`)
    or an import with ACLs makes it private; one that got the same digest
    anonymously makes it public, since anyone can get it.
    """

    def __init__(self, directory: str, user_acl, group_acl, private: bool = False):
        super().__init__(directory)
        self.user_acl = list(user_acl)
        self.group_acl = list(group_acl)
        self.private = private

    def apply(self, meta: ImageMeta) -> ImageMeta:
        """Shifter's rule: ACLs count only for private images; public ones have none."""
        meta.private = self.private
        meta.user_acl = list(self.user_acl) if meta.private else []
        meta.group_acl = list(self.group_acl) if meta.private else []
        return meta

    def publish(self, meta: ImageMeta, squashfs_file: str) -> None:
        super().publish(self.apply(meta), squashfs_file)


class LocalDestination:
    """The worker writes the system's image directory itself."""

    def __init__(self, image_dir: str):
        self.image_dir = image_dir

    def store(self, user_acl=(), group_acl=(), private: bool = False) -> AclStore:
        os.makedirs(self.image_dir, exist_ok=True)
        return AclStore(self.image_dir, user_acl, group_acl, private)

    def install(self, meta: ImageMeta) -> None:
        """Nothing to copy; rewrite metadata if the ACLs differ from what is published."""
        store = ImageStore(self.image_dir)
        if store.read(meta.id) != meta:
            store.write_metadata(meta)

    def exists(self, image_id: str) -> bool:
        store = ImageStore(self.image_dir)
        if not store.exists(image_id):
            return False
        return os.path.exists(store.image_path(image_id, store.read(image_id).format))

    def remove(self, image_id: str) -> None:
        ImageStore(self.image_dir).remove(image_id)


class RemoteDestination:
    """The system's image directory on another host, reached with ssh (key auth)."""

    def __init__(self, target: SshTarget, staging_dir: str):
        self.target = target
        self.staging_dir = staging_dir
        self._answering: str | None = None     # tried first next time

    def store(self, user_acl=(), group_acl=(), private: bool = False) -> AclStore:
        os.makedirs(self.staging_dir, exist_ok=True)
        return AclStore(self.staging_dir, user_acl, group_acl, private)

    def install(self, meta: ImageMeta) -> None:
        staging = ImageStore(self.staging_dir)
        if staging.read(meta.id) != meta:
            staging.write_metadata(meta)
        names = [f"{meta.id}.{meta.format}", f"{meta.id}.meta", f"{meta.id}.json"]
        if self._remote_has(names[0], meta.size):
            names = names[1:]
        for name in names:
            self._put(os.path.join(self.staging_dir, name), name)

    def exists(self, image_id: str) -> bool:
        check_id(image_id)
        result = self._ssh(f"test -f {self._remote(image_id + '.json')}"
                           f" && test -f {self._remote(image_id + '.squashfs')}", check=False)
        return result.returncode == 0

    def remove(self, image_id: str) -> None:
        check_id(image_id)
        names = " ".join(self._remote(f"{image_id}.{ext}") for ext in ("json", "meta", "squashfs"))
        self._ssh(f"rm -f {names}")
        ImageStore(self.staging_dir).remove(image_id)

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


def destination(config: GatewayConfig, platform: Platform) -> LocalDestination | RemoteDestination:
    if platform.access_type == "local":
        return LocalDestination(platform.image_dir)
    return RemoteDestination(platform.ssh, os.path.join(config.expand_directory, "staging", platform.name))
