"""Host programs packed to run inside any image of the host's architecture.

An image brings its own C library, or none at all (busybox-static), so a host
program copied into a container finds neither its shared libraries nor the
dynamic loader its ELF header names.  A bundle is a directory that containers
see at a fixed prefix (/opt/udiImage, /opt/slurm) and that holds the programs
unchanged, every library they load, the loader itself, and one small sh
wrapper per program that starts it through the bundled loader:

    exec <prefix>/lib/ld-linux-x86-64.so.2 --library-path <prefix>/lib \\
         --argv0 "$0" <prefix>/libexec/<program> "$@"

Nothing of the image's /lib or /usr is then used; the image only needs
/bin/sh.  `--argv0 "$0"` keeps argv[0] the path the program was started by,
so a program that re-executes itself (sshd) comes back through its wrapper.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

LDD = "/usr/bin/ldd"
_LDD_LINE = re.compile(r"^\s*(?:(\S+) => )?(/\S+) \(0x[0-9a-f]+\)$")
_CLEAN_ENV = {"PATH": "/usr/bin:/bin"}


def libraries(elf: Path) -> dict[str, Path]:
    """soname -> resolved host path of everything `elf` loads (the loader included)."""
    listing = subprocess.run([LDD, str(elf)], capture_output=True, text=True, check=True,
                             env=_CLEAN_ENV).stdout
    found = {}
    for line in listing.splitlines():
        match = _LDD_LINE.match(line)
        if match:
            path = Path(match.group(2))
            found[match.group(1) or path.name] = path
    return found


def all_libraries(elves: Iterable[Path]) -> dict[str, Path]:
    """The union of `libraries` over several programs or plugins."""
    found: dict[str, Path] = {}
    for elf in elves:
        found.update(libraries(elf))
    return found


def loads(elf: Path) -> bool:
    """False when the host lacks a library of `elf` (the host cannot load it either)."""
    listing = subprocess.run([LDD, str(elf)], capture_output=True, text=True, env=_CLEAN_ENV)
    return listing.returncode == 0 and "not found" not in listing.stdout


def loader(found: Mapping[str, Path]) -> Path:
    """The dynamic loader among `found` (the result of `libraries`)."""
    for name, path in found.items():
        if name.startswith("ld-linux"):
            return path
    raise ValueError("no dynamic loader among the libraries: are these static programs?")


def write_wrapper(path: Path, program: str, *, loader_path: str, library_path: str,
                  exports: Mapping[str, str] | None = None) -> None:
    """An executable sh script at `path` that runs `program` (a path as the
    container sees it) through `loader_path`, after exporting `exports`."""
    lines = ["#!/bin/sh"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in (exports or {}).items()]
    lines.append(f"exec {shlex.quote(loader_path)} --library-path {shlex.quote(library_path)} "
                 f'--argv0 "$0" {shlex.quote(program)} "$@"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o755)
