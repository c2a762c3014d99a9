"""Who is calling, and what may they do: munge authentication, admins, image ACLs.

Every request carries a munge credential in the `authentication` header,
made by the caller on a node of the system named in the URL and decoded with
that system's munged.  Its payload may hold registry logins for private
images, as Shifter's client sends them:
`{"authorized_locations": {"<location>|default": "user:password"}}`.

Group membership for ACLs is resolved on the gateway host (like Shifter's
`id -G`), so the gateway must see the cluster's users and groups.

Image ACLs (`access_after_pull`): only the users and groups on an image's ACL
and administrators may pull it again or change who may use it, so nobody's
pull widens or narrows what others were granted; a private image always has
an ACL, which includes its puller.
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
                      admin: bool, image: str) -> Access:
    """The access a pull leaves an image with; AccessDenied if its caller may not pull it.

    `before` is the image's access on the system (None: new there, or expired);
    `requested` has the pull's `private` (the registry refused anonymous
    access) and the ACL asked for (requester included, see Catalog.request_pull);
    `uid`, `groups`, `admin` describe the caller.

    * A new image gets the requested ACL; a private one without a request
      gets its puller as ACL (a private image is never open).
    * An image with an ACL is pulled again, and its ACL replaced, only by a
      user or group on it or an administrator; a pull without a request
      leaves the ACL as it is.  Anyone else is refused: neither their
      login nor their request may widen or narrow what others were granted.
    * An image everyone may use is restricted only by an administrator.
    * Content once fetched anonymously stays public: anyone can get it.
    """
    private = requested.private and (before is None or before.private)
    if before is None or (before.private and not before.restricted):     # new, or private and ACL-less
        if private and not requested.restricted:
            return Access(True, (uid,))
        return Access(private, requested.users, requested.groups)
    on_it = before.restricted and readable_by(True, before.users, before.groups, uid, groups)
    if before.restricted and not (on_it or admin):
        raise AccessDenied(f"image {image} may only be pulled again by the users and groups on its ACL"
                           " and by image administrators")
    if not before.restricted and requested.restricted and not admin:
        raise AccessDenied(f"image {image} is open to every user of the system; only an image"
                           " administrator may restrict it")
    if requested.restricted:
        return Access(private, requested.users, requested.groups)
    return Access(private, before.users, before.groups)


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
