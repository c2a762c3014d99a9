"""A private PostgreSQL cluster for tests and benchmarks.

initdb in a temp directory as the `postgres` account, a unix socket in that
directory plus 127.0.0.1 on a free port, trust authentication (nothing else
can reach it), stopped by the postmaster's PID.  `restart()` keeps the data,
for tests of a database that goes away under a running gateway.

    with PostgresCluster() as pg:
        engine = create_engine(pg.url("gateway"))
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

RUN_AS = "postgres"


def _bindir() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    return os.path.dirname(candidates[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    def __init__(self, port: int | None = None, max_connections: int = 200):
        self.port = port or _free_port()
        self.max_connections = max_connections
        self.bindir = _bindir()
        self.account = pwd.getpwnam(RUN_AS)
        self.directory: str | None = None
        self.process: subprocess.Popen | None = None

    @property
    def data(self) -> str:
        return os.path.join(self.directory, "data")

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL over TCP loopback."""
        return f"postgresql+psycopg://{RUN_AS}@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PostgresCluster":
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="shifter-postgres-")
            os.chown(self.directory, self.account.pw_uid, self.account.pw_gid)
            self._as_postgres([os.path.join(self.bindir, "initdb"), "-D", self.data, "-A", "trust",
                               "-U", RUN_AS, "--no-sync", "-E", "UTF8"])
        log = open(os.path.join(self.directory, "postgres.log"), "ab")
        with log:
            self.process = subprocess.Popen(
                [os.path.join(self.bindir, "postgres"), "-D", self.data, "-p", str(self.port),
                 "-k", self.directory, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", f"max_connections={self.max_connections}"],
                user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                start_new_session=True)
        self._wait_ready()
        return self

    def create_database(self, name: str) -> str:
        self._as_postgres([os.path.join(self.bindir, "createdb"), "-h", self.directory, "-p", str(self.port),
                           "-U", RUN_AS, name])
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster); the data stays until cleanup()."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self._log_tail()}")
            ready = subprocess.run([os.path.join(self.bindir, "pg_isready"), "-h", "127.0.0.1",
                                    "-p", str(self.port), "-q"], env=self._env())
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not become ready: {self._log_tail()}")

    def _as_postgres(self, argv: list[str]) -> None:
        result = subprocess.run(argv, user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[],
                                capture_output=True, text=True, env=self._env(), cwd=self.directory)
        if result.returncode != 0:
            raise RuntimeError(f"{os.path.basename(argv[0])} failed: {result.stderr.strip()}")

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.directory, "postgres.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""
