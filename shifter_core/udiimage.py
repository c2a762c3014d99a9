"""The site's optUdiImage directory: OpenSSH for --ccm, runnable in any image.

Every container gets a copy of optUdiImage at /opt/udiImage.  Shifter ships
a static sshd there; distributions ship no static OpenSSH, so this bundles
the host's own (see hostbundle) in a directory a site builds once per node
image and names in udiRoot.conf:

    shifter-admin udiimage /opt/shifter/udiImage     # optUdiImage=/opt/shifter/udiImage

    sbin/sshd                                   the CCM sshd (run as the job's user)
    bin/ssh, bin/scp, bin/sftp-server, bin/ssh-keygen
    libexec/                                    the host's programs, unchanged
    lib/                                        their libraries and the loader
    etc/moduli                                  the host's DH groups, if it has them

The entries are sh wrappers, so the image needs /bin/sh (an ssh session
needs a shell anyway).  Rebuild after upgrading OpenSSH on the host.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from . import hostbundle
from .errors import ConfigError

PREFIX = "/opt/udiImage"
SSHD = f"{PREFIX}/sbin/sshd"
SSH = f"{PREFIX}/bin/ssh"
SFTP_SERVER = f"{PREFIX}/bin/sftp-server"
MODULI = f"{PREFIX}/etc/moduli"
# where Debian, Red Hat and SUSE put OpenSSH's programs
SEARCH_PATH = "/usr/sbin:/usr/bin:/usr/lib/openssh:/usr/libexec/openssh:/usr/lib/ssh"
WRAPPERS = {
    "sbin/sshd": "sshd",
    "bin/ssh": "ssh",
    "bin/scp": "scp",
    "bin/sftp-server": "sftp-server",
    "bin/ssh-keygen": "ssh-keygen",
}
HOST_MODULI = Path("/etc/ssh/moduli")


def host_programs() -> dict[str, Path]:
    """name -> host path of the OpenSSH programs the bundle holds."""
    found = {}
    for name in WRAPPERS.values():
        path = shutil.which(name, path=SEARCH_PATH)
        if path is None:
            raise ConfigError(f"{name} is not installed on this host: install OpenSSH's server "
                              "and client (Debian: openssh-server) to build the CCM bundle")
        found[name] = Path(path)
    return found


def build(target: Path) -> None:
    """(Re)build the bundle in `target`, replacing it only once complete."""
    programs = host_programs()
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o755)      # containers get a copy: root-only writes, all may read
    for sub in ("bin", "sbin", "libexec", "lib", "etc"):
        (staging / sub).mkdir(mode=0o755)
    libraries = hostbundle.all_libraries(programs.values())
    loader = hostbundle.loader(libraries)
    for name, path in libraries.items():
        shutil.copy2(path, staging / "lib" / name)
    for name, path in programs.items():
        shutil.copy2(path, staging / "libexec" / name)
    for wrapper, name in WRAPPERS.items():
        hostbundle.write_wrapper(staging / wrapper, f"{PREFIX}/libexec/{name}",
                                 loader_path=f"{PREFIX}/lib/{loader.name}", library_path=f"{PREFIX}/lib")
    if HOST_MODULI.is_file():
        shutil.copy2(HOST_MODULI, staging / "etc" / "moduli")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def up_to_date(target: Path) -> bool:
    """True when `target` holds a bundle of the host's current sshd and ssh."""
    try:
        programs = host_programs()
    except ConfigError:
        return False
    for name in ("sshd", "ssh"):
        try:
            bundled = (target / "libexec" / name).stat()
        except OSError:
            return False
        host = programs[name].stat()
        if (bundled.st_size, int(bundled.st_mtime)) != (host.st_size, int(host.st_mtime)):
            return False
    return all((target / wrapper).is_file() for wrapper in WRAPPERS)
