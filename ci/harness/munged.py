"""A private munged for tests: own key, socket, pid and log files in a temp dir.

It never touches a munged the machine already runs; it is stopped by the pid
it was started with.

    with MungeDaemon() as munged:
        Munge(munged.socket).encode()
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

MUNGED = "/usr/sbin/munged"
RUN_AS = "munge"


class MungeDaemon:
    """munged in the foreground under the `munge` account, in its own directory."""

    def __init__(self, key: bytes | None = None, max_ttl: int = 3600):
        self.key = key if key is not None else os.urandom(1024)
        self.max_ttl = max_ttl
        self.directory: str | None = None
        self.process: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return os.path.join(self.directory, "munge.socket")

    def start(self) -> "MungeDaemon":
        account = pwd.getpwnam(RUN_AS)
        self.directory = tempfile.mkdtemp(prefix="shifter-munged-")
        os.chmod(self.directory, 0o755)
        os.chown(self.directory, account.pw_uid, account.pw_gid)
        key_file = os.path.join(self.directory, "munge.key")
        with open(key_file, "wb") as f:
            f.write(self.key)
        os.chmod(key_file, 0o600)
        os.chown(key_file, account.pw_uid, account.pw_gid)
        log = os.path.join(self.directory, "munged.log")
        self.process = subprocess.Popen(
            [MUNGED, "--foreground", f"--socket={self.socket}", f"--key-file={key_file}",
             f"--pid-file={self.directory}/munged.pid", f"--log-file={log}",
             f"--seed-file={self.directory}/munged.seed", f"--max-ttl={self.max_ttl}"],
            user=account.pw_uid, group=account.pw_gid, extra_groups=[],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = open(log).read() if os.path.exists(log) else ""
                self.stop()
                raise RuntimeError(f"munged did not start: {text.strip()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> "MungeDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
