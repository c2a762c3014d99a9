"""Who is calling, and what may they do: munge authentication, admins, image ACLs.

Every request carries a munge credential in the `authentication` header,
made by the caller on a node of the system named in the URL and decoded with
that system's munged.  Its payload may hold registry logins for private
images, as Shifter's client sends them:
`{"authorized_locations": {"<location>|default": "user:password"}}`.

Group membership for ACLs is resolved on the gateway host (like Shifter's
`id -G`), so the gateway must see the cluster's users and groups.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pwd
import time

from shifter_core.errors import AccessDenied, AuthenticationError
from shifter_core.munge import Munge

from .config import GatewayConfig, Platform

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

    def login_for(self, location: str | None) -> tuple[str, str] | None:
        """The caller's login for a registry location, else their default one."""
        return self.registry_logins.get(location or "default") or self.registry_logins.get("default")


class Authenticator:
    def __init__(self, config: GatewayConfig):
        self._munge = {name: Munge(p.munge_socket) for name, p in config.platforms.items()}

    def authenticate(self, system: str, credential: str | None) -> Caller:
        """Decode the caller's credential with `system`'s munged."""
        if not credential:
            raise AuthenticationError(f"missing '{HEADER}' header: send a munge credential (run through shifterimg)")
        decoded = self._munge[system].decode(credential.strip())
        user, groups = _identity(decoded.uid, decoded.gid, int(time.monotonic() // _IDENTITY_CACHE_SECONDS))
        return Caller(user=user, uid=decoded.uid, gid=decoded.gid, groups=groups, system=system,
                      registry_logins=_registry_logins(decoded.payload))


def require_admin(caller: Caller, platform: Platform) -> None:
    if caller.user not in platform.admins:
        raise AccessDenied(f"{caller.user} is not an image administrator of system {platform.name}")


def may_read(caller: Caller, private: bool, user_acl: list[int], group_acl: list[int]) -> bool:
    """Shifter's read rule: public, no ACL at all, or the caller is listed."""
    if not private or (not user_acl and not group_acl):
        return True
    return caller.uid in user_acl or bool(caller.groups.intersection(group_acl))


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
