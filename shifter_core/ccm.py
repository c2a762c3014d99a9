"""--ccm (cluster compatibility mode): ssh between the nodes of a job, into its containers.

For tools that start their remote processes with ssh (mpirun, pdsh, Spark,
...), the prolog starts an sshd inside the job's container on every node, and
`ssh <othernode> <cmd>` run inside the container lands inside the other
node's container, as the job's user.

Keys.  Every node must agree on the job's keys without talking to the others,
so the submitting client draws one random secret per job and hands it to the
prolog as a job-control variable, SHIFTER_CCM_SECRET, sealed in a munge
credential that only root can open: Slurm also copies the variable into the
job's environment (SLURM_SPANK_SHIFTER_CCM_SECRET), where anyone who reads a
printed environment must find nothing usable.  Each prolog opens it, checks
that the job's user made it, and derives with HMAC-SHA256 the job's ed25519
host key and user key: the same on every node, different for every job.
The sshd admits only that user key, only for the job's user (AllowUsers);
the client knows only that host key (per-job known_hosts,
StrictHostKeyChecking).  The keys give the user nothing they do not own
anyway: the sshd runs as the user.

The sshd.  The site's optUdiImage bundle (udiimage.py) supplies it; it runs
as the user, with an empty bounding set and no_new_privs, on udiRoot.conf's
sshdPort, inside the job's mount namespace (not privilege-separated: that
needs root).  The epilog's container.destroy kills it with every other
process of the namespace.

Inside the container:

    /var/shifter-ccm/          a tmpfs of its own (writable when the root is not)
        sshd_config            root 0644
        ssh_host_ed25519_key   user 0600    the job's host key
        authorized_keys        root 0644    the job's user public key
        id_ed25519             user 0600    the job's user key, for ssh
        known_hosts            root 0644    the job's host key, under HostKeyAlias
        sshd.log               user 0600
    /etc/ssh/ssh_config        root 0644    for the job's nodes: port, key, known_hosts
    /usr/bin/ssh, /usr/bin/scp -> the bundle's

Nothing is written outside the container (the user's real ~/.ssh is left
alone) and all of it vanishes with the namespace.

One CCM job per node: the port is the node's.  A second CCM job on a node,
any failure to start the sshd, or an image without a shell is the job's
fault (CcmError): the job fails on that node with the reason, and the node
stays in service.  Submit CCM jobs with --exclusive.
"""
from __future__ import annotations

import glob
import hmac
import json
import os
import secrets
import signal
import stat
import time

from . import container, environ, munge, syscalls, udiimage
from .errors import CcmError, ShifterError

SECRET_VARIABLE = "SHIFTER_CCM_SECRET"
SECRET_BYTES = 32
CCM_DIR = "/var/shifter-ccm"
SSHD_CONFIG = f"{CCM_DIR}/sshd_config"
HOST_KEY = f"{CCM_DIR}/ssh_host_ed25519_key"
AUTHORIZED_KEYS = f"{CCM_DIR}/authorized_keys"
USER_KEY = f"{CCM_DIR}/id_ed25519"
KNOWN_HOSTS = f"{CCM_DIR}/known_hosts"
SSHD_LOG = f"{CCM_DIR}/sshd.log"
SSH_CONFIG = "/etc/ssh/ssh_config"
LINKED_COMMANDS = {"ssh": udiimage.SSH, "scp": f"{udiimage.PREFIX}/bin/scp"}
DIR_OPTIONS = {"mode": "0755", "size": "8m", "nr_inodes": "64"}
DIR_ATTRIBUTES = syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV | syscalls.MOUNT_ATTR_NOEXEC
READY_TIMEOUT = 15.0
LISTENING = "Server listening on"


# ---- submit -------------------------------------------------------------------

def require_enabled(plugin_args) -> None:
    """Refuse --ccm where the site switched it off (plugstack.conf enable_ccm=0)."""
    if not plugin_args.enable_ccm:
        raise CcmError("--ccm is disabled on this cluster (the shifter plugin has enable_ccm=0);"
                       " submit without --ccm")


def new_secret() -> str:
    """A fresh per-job secret, sealed for root: the text of the job-control variable."""
    return munge.Munge().encode(secrets.token_bytes(SECRET_BYTES), decoder_uid=0)


def open_secret(sealed: str, job_uid: int) -> bytes:
    """Prolog: the job's secret, if the job's user sealed it; CcmError otherwise."""
    if not sealed:
        raise CcmError(f"the job has no {SECRET_VARIABLE}: was it submitted with --ccm through the"
                       " shifter plugin?")
    try:
        # expired or already opened (by another node) is fine: it only carries the secret
        credential = munge.Munge().decode(sealed, allow_stale=True)
    except ShifterError as error:
        raise CcmError(f"the job's {SECRET_VARIABLE} cannot be opened: {error}") from None
    if credential.uid != job_uid or len(credential.payload) != SECRET_BYTES:
        raise CcmError(f"the job's {SECRET_VARIABLE} was not made for it by its user (uid {job_uid})")
    return credential.payload


# ---- keys ---------------------------------------------------------------------

class JobKeys:
    """The job's host and user ed25519 keys, derived from its secret."""

    def __init__(self, secret: bytes, job_id: int):
        self.alias = f"shifter-ccm-job{int(job_id)}"
        self.host_private, self.host_public = _derive(secret, job_id, "host", self.alias)
        self.user_private, self.user_public = _derive(secret, job_id, "user", self.alias)


def _derive(secret: bytes, job_id: int, role: str, comment: str) -> tuple[str, str]:
    """(OpenSSH private key file, public key line) of the job's `role` key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = hmac.new(secret, f"shifter-ccm job {int(job_id)} {role} key".encode(), "sha256").digest()
    key = Ed25519PrivateKey.from_private_bytes(seed)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


# ---- prolog, inside the holder of the container ----------------------------------

class Sshd:
    """The container build's CCM extension (see shifter_core.container): the job's ssh
    files among root's own files, the sshd once the container is complete."""

    name = "sshd"

    def __init__(self, secret: bytes):
        self.secret = secret

    def prepare(self, tree, cfg, spec) -> None:
        """Write the job's ssh files into the container (a RootTree, before anything of
        the node is mounted into it)."""
        if not cfg.opt_udi_image:
            raise CcmError("--ccm needs the site's sshd bundle, but udiRoot.conf sets no optUdiImage"
                           " (build one with `shifter-admin udiimage <dir>`)")
        if not os.access(_in_bundle(cfg, udiimage.SSHD), os.X_OK):
            raise CcmError(f"--ccm needs {udiimage.SSHD}, which the site's optUdiImage"
                           f" {cfg.opt_udi_image} lacks (rebuild it with `shifter-admin udiimage`)")
        _ensure_login_shell(tree, spec.user)
        keys = JobKeys(self.secret, spec.job_id)
        owner = (spec.user.uid, spec.user.gid)
        directory = syscalls.new_mount("tmpfs", DIR_OPTIONS, DIR_ATTRIBUTES, shown=CCM_DIR)
        try:
            tree.attach(directory, CCM_DIR)
        except BaseException:
            os.close(directory)
            raise
        tree.add_submount(CCM_DIR, directory)
        tree.write(SSHD_CONFIG, sshd_config(cfg, spec, keys))
        tree.write(AUTHORIZED_KEYS, keys.user_public + "\n")
        tree.write(KNOWN_HOSTS, f"{keys.alias} {keys.host_public}\n")
        tree.write(f"{USER_KEY}.pub", keys.user_public + "\n")
        for inside, text in ((HOST_KEY, keys.host_private), (USER_KEY, keys.user_private), (SSHD_LOG, "")):
            tree.write(inside, text, mode=0o600, owner=owner)
        tree.write(SSH_CONFIG, ssh_config(cfg, spec, keys))
        for name, target in LINKED_COMMANDS.items():
            tree.symlink(f"/usr/bin/{name}", target)
            if tree.exists(f"/bin/{name}"):
                tree.symlink(f"/bin/{name}", target)

    def start(self, tree, cfg, spec) -> None:
        """Start the job's sshd as the user and wait until it listens."""
        other = _other_ccm_job(cfg, spec.job_id, spec.node)
        if other is not None:
            raise CcmError(_taken_message(cfg, spec.node, other))
        pid = _spawn_sshd(tree.path, spec.user)
        error = _wait_listening(pid, tree)
        if error is not None:
            other = _other_ccm_job(cfg, spec.job_id, spec.node)
            raise CcmError(_taken_message(cfg, spec.node, other) if other is not None
                           else f"the CCM sshd of job {spec.job_id} did not start on {spec.node}: {error}")
        _record(cfg, spec, sshd_pid=pid)


def _in_bundle(cfg, inside: str) -> str:
    """The host path of a file of the site's optUdiImage, named as the container sees it."""
    return os.path.join(cfg.opt_udi_image, os.path.relpath(inside, udiimage.PREFIX))


def sshd_config(cfg, spec, keys: JobKeys) -> str:
    """The sshd's configuration: the job's port, keys and user, public keys only."""
    lines = [
        f"# The CCM sshd of job {spec.job_id}, written by shifter-py; it runs as {spec.user.name}.",
        f"Port {cfg.sshd_port}",
        f"HostKey {HOST_KEY}",
        "PidFile none",
        f'AllowUsers "{spec.user.name}"',
        f"AuthorizedKeysFile {AUTHORIZED_KEYS}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "GSSAPIAuthentication no",
        "UsePAM no",
        "PermitRootLogin no",
        "StrictModes yes",
        "PermitUserEnvironment no",
        "AllowAgentForwarding no",
        "AllowTcpForwarding no",
        "AllowStreamLocalForwarding no",
        "PermitTunnel no",
        "X11Forwarding no",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "LogLevel INFO",
        f"Subsystem sftp {udiimage.SFTP_SERVER}",
    ]
    if os.path.isfile(os.path.join(cfg.opt_udi_image, "etc", "moduli")):
        lines.append(f"ModuliFile {udiimage.MODULI}")
    settings = session_environment(cfg, spec)
    if settings:
        lines.append("SetEnv " + " ".join(f'"{k}={v}"' for k, v in sorted(settings.items())))
    return "\n".join(lines) + "\n"


def session_environment(cfg, spec) -> dict[str, str]:
    """What an ssh session gets besides sshd's own variables: the image's ENV and the
    site's settings, as tasks get them.  Values sshd_config cannot quote are left out."""
    env = environ.compose(
        {}, spec.image.env, levels=[environ.site_settings(m) for m in spec.modules],
        shifter={"SHIFTER_IMAGE": spec.image.id, "SHIFTER_IMAGE_DIGEST": spec.image.digest},
        **environ.site_settings(cfg))
    return {k: v for k, v in env.items()
            if k.replace("_", "a").isalnum() and k.isascii() and v.isprintable() and '"' not in v
            and "\\" not in v}


def ssh_config(cfg, spec, keys: JobKeys) -> str:
    """The client's configuration for the job's nodes: our port, key and known host key."""
    nodes = " ".join(dict.fromkeys(spec.hosts or (spec.node,)))
    return "\n".join([
        f"# Written by shifter-py for CCM job {spec.job_id}: ssh to its nodes lands in their containers.",
        f"Host {nodes}",
        f"    Port {cfg.sshd_port}",
        f"    IdentityFile {USER_KEY}",
        "    IdentitiesOnly yes",
        f"    HostKeyAlias {keys.alias}",
        f"    GlobalKnownHostsFile {KNOWN_HOSTS}",
        "    UserKnownHostsFile /dev/null",
        "    StrictHostKeyChecking yes",
        "    CheckHostIP no",
        "    UpdateHostKeys no",
        "    PasswordAuthentication no",
        "    KbdInteractiveAuthentication no",
        "    BatchMode yes",
        "    LogLevel ERROR",
    ]) + "\n"


def _is_executable(tree, inside: str) -> bool:
    """Is `inside` an executable file of the image (on the container's own layer)?"""
    try:
        fd = tree.open(inside)
    except ShifterError:
        return False
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def _ensure_login_shell(tree, user) -> None:
    """sshd runs commands with the user's login shell and refuses users whose shell
    is missing: in an image without it (bash in busybox), use the image's /bin/sh."""
    lines = tree.read("/etc/passwd").splitlines()
    for number, line in enumerate(lines):
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == user.name:
            shell = fields[6] or "/bin/sh"
            if _is_executable(tree, shell):
                return
            if not _is_executable(tree, "/bin/sh"):
                raise CcmError(f"the image has neither {shell}, the login shell of {user.name},"
                               " nor /bin/sh, and ssh sessions need a shell")
            lines[number] = ":".join(fields[:6] + ["/bin/sh"])
            tree.write("/etc/passwd", "\n".join(lines) + "\n")
            return
    raise CcmError(f"{user.name} is not in the container's /etc/passwd, so sshd cannot admit them")


def _spawn_sshd(root: str, user) -> int:
    """Fork the sshd: chrooted, as the user, without capabilities for good."""
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        os.chroot(root)
        os.chdir("/")
        syscalls.drop_bounding_set()
        os.setgroups(list(user.groups))
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        syscalls.set_no_new_privs()
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.umask(0o022)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.execve(udiimage.SSHD, [udiimage.SSHD, "-D", "-f", SSHD_CONFIG, "-E", SSHD_LOG],
                  {"PATH": "/usr/bin:/bin", "LANG": "C"})
    finally:
        os._exit(127)


def _wait_listening(pid: int, tree) -> str | None:
    """None once the sshd listens; otherwise why it does not (it is then gone)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        text = tree.read(SSHD_LOG)
        if LISTENING in text:
            return None
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            lines = [line for line in tree.read(SSHD_LOG).splitlines() if line.strip()]
            return "; ".join(lines[-2:]) or "sshd exited without a word"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return f"sshd was not listening after {READY_TIMEOUT:.0f} s"
        time.sleep(0.005)


def _taken_message(cfg, node: str, other: int) -> str:
    return (f"node {node} already runs the CCM sshd of job {other} on port {cfg.sshd_port}, and a"
            " node holds one CCM job at a time: submit CCM jobs with --exclusive")


def _other_ccm_job(cfg, job_id: int, node: str) -> int | None:
    """Another job whose CCM sshd runs on this node (it holds the port), if any."""
    for path in glob.glob(os.path.join(cfg.run_dir, f"job*.{node}.ccm.json")):
        other = os.path.basename(path)[3:].split(".", 1)[0]
        if not other.isdigit() or int(other) == job_id:
            continue
        state = _load(cfg, int(other), node)
        if state.get("sshd_pid") is None:
            continue
        try:
            container.find(cfg, int(other), node)
        except ShifterError:
            continue
        return int(other)
    return None


# ---- state: what the prolog did, for the tasks ------------------------------------

def _state_path(cfg, job_id: int, node: str) -> str:
    return container.state_path(cfg.run_dir, job_id, node).removesuffix(".state") + ".ccm.json"


def _record(cfg, spec, *, sshd_pid: int) -> None:
    """Write the record whole (a reader never sees half of it)."""
    path = _state_path(cfg, spec.job_id, spec.node)
    partial = f"{path}.{os.getpid()}.tmp"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"port": cfg.sshd_port, "sshd_pid": sshd_pid}, f)
    os.replace(partial, path)


def _load(cfg, job_id: int, node: str) -> dict:
    try:
        with open(_state_path(cfg, job_id, node), encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def forget(cfg, job_id: int, node: str) -> None:
    """Epilog: drop the record (the sshd itself died with the container)."""
    try:
        os.unlink(_state_path(cfg, job_id, node))
    except FileNotFoundError:
        pass
