"""Who is calling, and what may they do: munge authentication, admins, image ACLs.

Every request carries a munge credential in the `authentication` header,
made by the caller on a node of the system named in the URL and decoded with
that system's munged.  Its payload may hold registry logins for private
images, as Shifter's client sends them:
`{"authorized_locations": {"<location>|default": "user:password"}}`.

Group membership for ACLs is resolved on the gateway host (like Shifter's
`id -G`), so the gateway must see the cluster's users and groups.

Image ACLs (`access_after_pull`): a pull never widens or narrows what others
were granted unless its caller may change the image's ACL (the image is new
to the system, the caller is on its ACL, or is an admin); the puller can
always use what they pulled; a private image always has an ACL.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pwd
import time

from shifter_core.errors import AccessDenied, AuthenticationError
from shifter_core.imagestore import readable_by
from shifter_core.munge import Munge

from .config import GatewayConfig, System

HEADER = "authentication"
_IDENTITY_CACHE_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class Caller:
    user: str
    uid: int
    gid: int
    groups: frozenset[int]
    system: str
    registry_logins: dict[str, tuple[str, str]]


class Authenticator:
    def __init__(self, config: GatewayConfig):
        self._munge = {name: Munge(s.munge_socket) for name, s in config.systems.items()}

    def authenticate(self, system: str, credential: str | None) -> Caller:
        """Decode the caller's credential with `system`'s munged."""
        if not credential:
            raise AuthenticationError(f"missing '{HEADER}' header: send a munge credential (run through shifterimg)")
        decoded = self._munge[system].decode(credential.strip())
        user, groups = identity(decoded.uid, decoded.gid)
        return Caller(user=user, uid=decoded.uid, gid=decoded.gid, groups=groups, system=system,
                      registry_logins=_registry_logins(decoded.payload))


def require_admin(caller: Caller, system: System) -> None:
    if caller.user not in system.admins:
        raise AccessDenied(f"{caller.user} is not an image administrator of system {system.name}")


def may_read(caller: Caller, private: bool, user_acl: list[int], group_acl: list[int]) -> bool:
    """Public without an ACL, or the caller is listed (the rule the prolog applies too)."""
    return readable_by(private, user_acl, group_acl, caller.uid, caller.groups)


@dataclasses.dataclass(frozen=True)
class Access:
    """Who may use an image: whether its registry refused anonymous access, and its ACL."""

    private: bool
    users: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()

    @property
    def restricted(self) -> bool:
        return bool(self.users or self.groups)


def access_after_pull(before: Access | None, requested: Access, *, uid: int, groups: frozenset[int],
                      admin: bool) -> tuple[Access, str]:
    """The access a pull leaves an image with, and a note when the request's ACL was not applied.

    `before` is the image's access on the system (None: new there); `requested`
    has the pull's `private` (the registry refused anonymous access) and the
    ACL asked for (requester included, see Catalog.request_pull); `uid`,
    `groups`, `admin` describe the caller.

    * Content once fetched anonymously stays public (anyone can get it), and a
      public image is private again only through a new digest.
    * The requested ACL replaces the image's only when the caller may change
      it: the image is new here, the caller is on its ACL, or an admin.
    * Otherwise nothing of the ACL changes, except that a puller not on a
      restricted (or private) image's ACL is added: they proved they can get it.
    """
    private = requested.private and (before is None or before.private)
    if requested.restricted and (before is None or admin or (
            before.restricted and readable_by(True, before.users, before.groups, uid, groups))):
        return Access(private, requested.users, requested.groups), ""
    kept = before or Access(private)
    users, note = kept.users, ""
    if requested.restricted:
        note = "the image's ACL was kept: only users on it and image administrators may change it"
    if (private or kept.restricted) and not readable_by(True, kept.users, kept.groups, uid, groups):
        users = tuple(sorted({*users, uid}))
    return Access(private, users, kept.groups), note


def identity(uid: int, gid: int) -> tuple[str, frozenset[int]]:
    """User name and all group ids of uid, as the gateway host sees them (cached a minute)."""
    return _identity(uid, gid, int(time.monotonic() // _IDENTITY_CACHE_SECONDS))


@functools.lru_cache(maxsize=4096)
def _identity(uid: int, gid: int, _epoch: int) -> tuple[str, frozenset[int]]:
    """User name and all group ids of uid; cached, re-read every minute (epoch)."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid), frozenset({gid})
    try:
        return name, frozenset(os.getgrouplist(name, gid))
    except OSError:
        return name, frozenset({gid})


def _registry_logins(payload: bytes) -> dict[str, tuple[str, str]]:
    if not payload.strip():
        return {}
    try:
        data = json.loads(payload)
        locations = data.get("authorized_locations", {}) if isinstance(data, dict) else None
        if not isinstance(locations, dict):
            raise ValueError
        logins = {}
        for location, text in locations.items():
            user, sep, password = str(text).partition(":")
            if not sep or not user:
                raise ValueError
            logins[str(location)] = (user, password)
        return logins
    except ValueError:
        raise AuthenticationError(
            "the credential's payload must be {\"authorized_locations\": {\"<location>\": \"user:password\"}}"
        ) from None
