"""The site's /etc files of a container: passwd, group, nsswitch.conf, shadow.

The image never supplies these: a user who controls an image must not choose
the identities the container knows.  passwd holds the job's user (and the
site's usersToImport); group holds the groups those users are in, the job
user listed as a member of at most maxGroupCount of them; gid 0 never
appears; shadow is empty.
"""
from __future__ import annotations

import dataclasses
import grp
import os
import pwd

from .errors import AccessDenied, ContainerError

NSSWITCH = """\
passwd:    files
group:     files
shadow:    files
hosts:     files dns
networks:  files
protocols: files
services:  files
ethers:    files
rpc:       files
"""
HOST_CONF = "multi on\n"


@dataclasses.dataclass(frozen=True)
class User:
    """The job's user as the node's name service knows them."""

    name: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str
    groups: tuple[int, ...]         # every gid of the user, primary first, no 0

    @classmethod
    def lookup(cls, uid: int) -> "User":
        """Resolve `uid` on this node; refuse root and unknown users."""
        if uid == 0:
            raise AccessDenied("shifter runs no container for root (uid 0)")
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            raise ContainerError(f"uid {uid} is unknown on this node") from None
        if entry.pw_gid == 0:
            raise AccessDenied(f"shifter runs no container for {entry.pw_name}, whose primary group is 0")
        gids = [entry.pw_gid] + [g for g in os.getgrouplist(entry.pw_name, entry.pw_gid)
                                  if g not in (0, entry.pw_gid)]
        return cls(entry.pw_name, uid, entry.pw_gid, entry.pw_gecos, entry.pw_dir,
                   entry.pw_shell, tuple(dict.fromkeys(gids)))


def _passwd_line(entry: pwd.struct_passwd) -> str:
    return f"{entry.pw_name}:x:{entry.pw_uid}:{entry.pw_gid}:{entry.pw_gecos}:{entry.pw_dir}:{entry.pw_shell}"


def passwd_text(user: User, import_names=()) -> str:
    lines = [f"{user.name}:x:{user.uid}:{user.gid}:{user.gecos}:{user.home}:{user.shell}"]
    for name in import_names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != user.uid:
            lines.append(_passwd_line(entry))
    return "\n".join(lines) + "\n"


def group_text(user: User, max_group_count: int | None, import_names=()) -> str:
    """Groups of the user and imported users; the user is a member of at most
    `max_group_count` of their supplementary groups (None: no limit)."""
    gids = list(user.groups)
    for name in import_names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        gids.extend(g for g in os.getgrouplist(name, entry.pw_gid) if g not in gids)
    lines, listed = [], 0
    for gid in gids:
        if gid == 0:
            continue
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = f"group{gid}"
        member = ""
        if gid in user.groups and gid != user.gid and (max_group_count is None or listed < max_group_count):
            member, listed = user.name, listed + 1
        lines.append(f"{name}:x:{gid}:{member}")
    return "\n".join(lines) + "\n"


def filter_group_file(text: str, user: User, max_group_count: int | None) -> str:
    """A site-supplied group file reduced to stubs, the user kept as a member
    of their groups up to `max_group_count`; gid 0 groups dropped."""
    lines, listed = [], 0
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[2].isdigit() or int(fields[2]) == 0:
            continue
        gid = int(fields[2])
        members = fields[3].split(",") if fields[3] else []
        member = ""
        if (user.name in members or gid in user.groups) and gid != user.gid \
                and (max_group_count is None or listed < max_group_count):
            member, listed = user.name, listed + 1
        lines.append(f"{fields[0]}:x:{gid}:{member}")
    return "\n".join(lines) + "\n"
