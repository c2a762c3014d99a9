"""The node server without Slurm: the plugin's request (written by the C side),
the handler's answer, its exit with the process it watches, and its stepping
aside once its code changed on disk."""
from __future__ import annotations

import fcntl
import os
import pwd
import re
import socket
import subprocess
import sys

import pytest

from shifter_core import seam
from shifter_core._seam import ffi, lib
from shifter_core.spank import nodeserver
from tests.integration import waiting
from tests.integration.runtime_fixtures import Site

pytestmark = pytest.mark.root


@pytest.fixture
def server():
    """A node server for a scratch site, watching a `sleep` that stands in for slurmd."""
    site = Site()
    cfg = site.config()
    os.makedirs(cfg.run_dir, mode=0o700)
    path = nodeserver.socket_path(cfg.run_dir, "nodeA")
    slurmd = subprocess.Popen(["sleep", "600"])
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    watch = os.pidfd_open(slurmd.pid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(8)
        pid = os.fork()
        if pid == 0:
            nodeserver._exec_server(listener.fileno(), lock, watch, str(site.path / "udiRoot.conf"))
    os.close(watch)
    os.close(lock)
    try:
        yield path, slurmd, pid, site
    finally:
        slurmd.kill()
        slurmd.wait()
        waiting.until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, 30, "the node server did not exit")
        site.cleanup(cfg)


def ask(path: str, callback: str, job: int, config: str, *, step: int = -1, uid: int = 0,
        env: dict[str, str] | None = None, options: tuple[str, ...] = ("image",)) -> list[tuple[str, str]]:
    """Send what the plugin sends (spank/seam.c builds it) and read the reply's lines;
    `options` are set (flags, or with the value "x"), `env` the request's environment."""
    env = {"SLURM_JOB_ID": str(job)} if env is None else env
    keep = [ffi.new("char[]", text.encode())
            for text in (callback, f"venv={sys.prefix}", f"config={config}", "x",
                         *(f"{name}={value}" for name, value in env.items()))]
    values = [ffi.NULL if name in seam.FLAGS or name not in options else keep[3] for name in seam.OPTION_NAMES]
    request = ffi.new("struct seam_request *", [keep[0], job, uid, 0, step, 2, ffi.new("char *[]", keep[1:3]),
                                                ffi.new("int[]", [name in options for name in seam.OPTION_NAMES]),
                                                ffi.new("char *[]", values),
                                                ffi.new("char *[]", [*keep[4:], ffi.NULL])])
    size = lib.seam_request_text(request, ffi.NULL, 0)
    text = ffi.new("char[]", size + 1)
    lib.seam_request_text(request, text, size + 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(ffi.unpack(text, size))
        conn.shutdown(socket.SHUT_WR)
        reply = b"".join(iter(lambda: conn.recv(65536), b"")).decode()
    return [tuple(line.split(" ", 1)) for line in reply.splitlines()]


def test_it_runs_the_epilog_and_ends_with_its_slurmd(server):
    path, slurmd, pid, site = server
    assert ask(path, "job_epilog", 7, str(site.path / "udiRoot.conf"))[-1] == ("rc", str(seam.SERVED_OK))
    assert ask(path, "job_epilog", 8, str(site.path / "udiRoot.conf"))[-1] == ("rc", str(seam.SERVED_OK))
    slurmd.kill()
    waiting.until(lambda: not os.path.exists(path), 30, "the node server outlived its slurmd")


def test_a_handlers_failure_comes_back_as_its_lines(server):
    path, _, _, site = server
    (site.path / "bad.conf").write_text("udiMount=relative\n")
    reply = ask(path, "job_epilog", 7, str(site.path / "bad.conf"))
    assert reply[-1] == ("rc", str(seam.SERVED_FAILED))
    assert any(level == "error" and "bad.conf" in text for level, text in reply[:-1]), reply


def test_a_steps_container_that_cannot_be_built_fails_with_the_line_its_tasks_show(server):
    """step_prolog (a step's slurmstepd asks): an image that is not in the site's image
    directory fails it with `step J.S cannot run on N: reason`, which the plugin shows
    for the step's tasks; step_epilog of a step without a container succeeds."""
    path, _, _, site = server
    config, image_id = str(site.path / "udiRoot.conf"), "ab" * 32
    env = {seam.REQUEST_VAR: f"id:{image_id}", seam.DIGEST_VAR: f"{seam.DIGEST_PREFIX}{image_id}",
           seam.VOLUME_VAR: "", seam.MODULE_VAR: ""}
    nobody = pwd.getpwnam("nobody").pw_uid
    reply = ask(path, "step_prolog", 7, config, step=3, uid=nobody, env=env, options=("image", "autoshift"))
    assert reply[-1] == ("rc", str(seam.SERVED_FAILED)), reply
    assert reply[-2][0] == "error" and reply[-2][1].startswith("shifter: step 7.3 cannot run on "), reply
    assert image_id in reply[-2][1], reply
    assert ask(path, "step_epilog", 7, config, step=3, uid=nobody, env=env, options=("image", "autoshift"))[-1] \
        == ("rc", str(seam.SERVED_OK))
    assert not [name for name in os.listdir(os.path.dirname(path)) if name.startswith("job")]


def test_it_steps_aside_once_its_code_changed(server):
    path, _, _, site = server
    assert ask(path, "job_epilog", 7, str(site.path / "udiRoot.conf"))[-1] == ("rc", str(seam.SERVED_OK))
    module = nodeserver.__file__
    st = os.stat(module)
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        assert ask(path, "job_epilog", 7, str(site.path / "udiRoot.conf")) == [("rc", str(seam.NOT_SERVED))]
        waiting.until(lambda: not os.path.exists(path), 30, "the stale node server did not exit")
    finally:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.cluster
def test_prologs_after_a_nodes_first_are_the_servers(cluster, image):
    for _ in range(2):
        cluster.srun("-N1", "-w", "n2", f"--image={image}", "--autoshift", "true")
    served = re.findall(r"shifter: job \d+ on n2 runs .* \(prolog [\d.]+ms, ([^;]*);", cluster.log("slurmd-n2"))
    assert served[-1] == "in the node server", served
