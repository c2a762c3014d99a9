"""Attacks on the node side, on the mini-cluster (docs/security.md).

Hostile images, user mistakes and rename races against the prolog, task
starts and --ccm.  Every attack watches the node's files it aims at (content,
owner, mode and mtime of everything below them) and requires them unchanged;
every job it makes fail must fail with its reason where its user looks (srun's
stderr, the batch output, AdminComment), and no node may end up drained.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from ci.harness import oci
from shifter_core.imagestore import ImageStore
from tests.integration.runtime_fixtures import FAILING_NODE, assert_in_service, failed_job

pytestmark = [pytest.mark.cluster, pytest.mark.root]

ROOT_FILES = ("passwd", "group", "shadow", "hosts", "resolv.conf", "mtab", "nsswitch.conf", "hostsfile",
              "shifterConfig.json", "shifterMarker", "ssh_config", "ssh", "scp", "sshd_config")


# --- watching the node's files ----------------------------------------------------------

class Watch:
    """Everything below some node paths: type, owner, mode, mtime and content (or link target)."""

    def __init__(self, *paths: Path):
        self.paths = paths
        self.before = self.state()

    def state(self) -> dict:
        seen = {}
        for top in self.paths:
            for path in [top, *sorted(top.rglob("*"))] if top.is_dir() and not top.is_symlink() else [top]:
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    seen[str(path)] = None
                    continue
                content = (os.readlink(path) if path.is_symlink() else
                           hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "")
                seen[str(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content)
        return seen

    def assert_unchanged(self) -> None:
        after = self.state()
        changed = {p: (self.before.get(p), after.get(p)) for p in self.before.keys() | after.keys()
                   if self.before.get(p) != after.get(p)}
        assert not changed, f"node files changed: {changed}"


def root_files_under(directory: Path) -> list[str]:
    """Files named like root's container files, owned by root, anywhere below `directory`."""
    return [str(p) for p in directory.rglob("*") if p.name in ROOT_FILES and p.lstat().st_uid == 0]


@dataclasses.dataclass
class Baits:
    """Node directories an attacker aims root's writes at."""

    victim: Path        # another user's directory in /tmp, 0755, with a file of theirs
    home: Path          # a directory in the test user's home (every container sees it)
    root_only: Path     # a root-only directory, 0700

    @classmethod
    def make(cls, cluster) -> "Baits":
        tag = uuid.uuid4().hex[:8]
        victim = Path(f"/tmp/shifter-victim-{tag}")
        victim.mkdir()
        (victim / "shifterConfig.json").write_text("the victim's own file\n")
        for path in (victim, victim / "shifterConfig.json"):
            os.chown(path, 65534, 65534)
        victim.chmod(0o755)
        home = cluster.home / f"bait-{tag}"
        home.mkdir()
        os.chown(home, cluster.uid, cluster.uid)
        root_only = cluster.layout.root / f"root-only-{tag}"
        root_only.mkdir(mode=0o700)
        return cls(victim, home, root_only)

    def watch(self) -> Watch:
        return Watch(self.victim, self.home, self.root_only)

    def remove(self) -> None:
        for path in (self.victim, self.home, self.root_only):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def baits(cluster):
    made = Baits.make(cluster)
    yield made
    made.remove()


def push(cluster, name: str, replace: dict[str, oci.Entry | None], extra: list | None = None) -> str:
    """A busybox image with the entries named in `replace` (and all below them) swapped for the
    given ones (None: dropped), plus `extra`; pushed and pulled through the gateway."""
    import tempfile

    def replaced(entry):
        return any(entry.name == name or entry.name.startswith(name + "/") for name in replace)

    entries = [e for e in oci.busybox_entries() if not replaced(e)]
    entries += [e for e in replace.values() if e is not None] + list(extra or [])
    with tempfile.TemporaryDirectory(prefix="oci-") as tmp:
        layout = oci.Layout(tmp)
        layout.add_image([layout.add_layer(entries)], oci.busybox_config(), tag="build")
        layout.push("build", f"{cluster.registry}/hardening/{name}:latest")
    descriptor = f"docker:hardening/{name}:latest"
    cluster.run(["shifterimg", "pull", descriptor], timeout=300)
    return descriptor


def assert_no_node_drained(cluster) -> None:
    cluster.wait_until_settled()
    drained = {n: s for n, s in cluster.node_states().items() if "drain" in s or s.startswith("down")}
    assert not drained, f"drained: {drained}; reasons: {cluster.run(['sinfo', '-R'], as_user=False).stdout}"


def spool_top() -> str:
    """The first component of the slurmd spool directories (where batch scripts live)."""
    from ci.harness import cluster as harness
    return harness.Layout(harness.REPO / ".cluster").spool.parts[1]


# --- hostile images -----------------------------------------------------------------

def test_images_pointing_root_at_node_files_run_in_a_container_of_their_own(cluster, baits):
    """Shifter's layout wins: an image's /var, /etc, /tmp or home mount point that is a
    symlink into the node gets replaced inside the container, and the job runs."""
    watch = baits.watch()
    user_home = f"home/{cluster.user}"
    images = {
        "var-to-victim": {"var": oci.Symlink("var", str(baits.victim))},
        "var-to-home": {"var": oci.Symlink("var", str(baits.home))},
        "etc-to-victim": {"etc": oci.Symlink("etc", str(baits.victim))},
        "home-to-etc": {user_home: oci.Symlink(user_home, "/etc")},
        "tmp-to-root": {"tmp": oci.Symlink("tmp", "/")},
    }
    for name, replace in images.items():
        image = push(cluster, name, replace)
        result = cluster.srun("-N1", "-w", FAILING_NODE, f"--image={image}", "--autoshift", "sh", "-c",
                              f"cat /var/hostsfile && test -d /var && ! test -L /var && test -f /etc/passwd"
                              f" && test -d {cluster.home} && test -w /tmp && echo ran-{name}", check=False)
        assert f"ran-{name}" in result.stdout, (name, result.stdout, result.stderr)
    watch.assert_unchanged()
    assert not root_files_under(cluster.home), "root wrote into the user's home"
    assert_no_node_drained(cluster)


def test_images_that_would_hide_site_files_fail_the_job_with_the_reason(cluster, baits):
    """What root writes must stay visible and on the container's layer: an image leading it
    under a later mount, or nowhere, fails the job; nothing of the node is touched."""
    watch = baits.watch()
    cases = [
        ("ssh-to-victim", {"etc/ssh": oci.Symlink("etc/ssh", str(baits.victim))}, ("--ccm",),
         "/etc/ssh is a symlink of the image that leads nowhere"),
        ("usrbin-to-home", {"usr/bin": oci.Symlink("usr/bin", str(cluster.home))},
         ("--ccm",), "/usr/bin/ssh, which the site provides, would be hidden"),
        ("spool-to-tmp", {spool_top(): oci.Symlink(spool_top(), "/tmp")}, ("--autoshift",),
         "leads into a node file system"),
    ]
    for name, replace, options, message in cases:
        extra = [oci.Dir(f"home/{cluster.user}")] if name == "usrbin-to-home" else []
        image = push(cluster, name, replace, extra)
        job = cluster.sbatch("#!/bin/sh\necho the job ran\n", "-w", FAILING_NODE, "--exclusive",
                             f"--image={image}", *options)
        assert cluster.wait(job) == "FAILED", (name, cluster.job_fields(job))
        output = cluster.output(job)
        assert message in output and "the job ran" not in output, (name, output)
    watch.assert_unchanged()
    assert not root_files_under(cluster.home)
    assert_no_node_drained(cluster)


def test_hostile_images_as_a_steps_own_container_reach_nothing_and_drain_nothing(cluster, baits, battery_image):
    """Hostile images as the steps of an allocation without one (a step's own container,
    built by the node server): the symlinked layout is replaced and the step runs; a
    volume an image's symlink leads into a node file system fails that step, with the reason."""
    watch = baits.watch()
    runs = {"var-to-victim": {"var": oci.Symlink("var", str(baits.victim))},
            "tmp-to-root": {"tmp": oci.Symlink("tmp", "/")}}
    steps = [f"srun --image={push(cluster, name, replace)} --autoshift sh -c 'test -d /var && ! test -L /var"
             f" && test -f /etc/passwd && test -w /tmp && echo ran-{name}'" for name, replace in runs.items()]
    steps.append(f"srun --image={battery_image} --volume=/srv:/tmplink/x --autoshift echo ran-battery")
    job = cluster.sbatch("#!/bin/sh\n" + "\n".join(steps) + "\n", "-N1", "-w", FAILING_NODE)
    cluster.wait(job)
    output = cluster.output(job)
    for name in runs:
        assert f"ran-{name}" in output, (name, output)
    assert "ran-battery" not in output, output
    assert f"step {job}.2 cannot run on {FAILING_NODE}: " in output and "leads into a node file system" in output, \
        output
    watch.assert_unchanged()
    assert not root_files_under(cluster.home), "root wrote into the user's home"
    assert_no_node_drained(cluster)


# --- rename races ---------------------------------------------------------------------

RACER = textwrap.dedent("""\
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    pairs = [(os.path.join(d, "d").encode(), os.path.join(d, "l").encode()) for d in sys.argv[1:]]
    while True:
        for a, b in pairs:
            libc.renameat2(-100, a, -100, b, 2)     # RENAME_EXCHANGE
""")


@pytest.fixture
def racer(cluster, baits):
    """As the test user: in /tmp and in the home, a directory `d` and a symlink `l` to the
    root-only bait swap places as fast as they can."""
    tag = uuid.uuid4().hex[:8]
    places = [Path(f"/tmp/shifter-race-{tag}"), cluster.home / f"race-{tag}"]
    for place in places:
        place.mkdir()
        (place / "d").mkdir()
        (place / "l").symlink_to(baits.root_only)
        for path in (place, place / "d", place / "l"):
            os.lchown(path, cluster.uid, cluster.uid)
    process = subprocess.Popen(["/usr/bin/python3", "-c", RACER, *map(str, places)], stdin=subprocess.DEVNULL,
                               user=cluster.uid, group=cluster.uid, extra_groups=[], env={"PATH": "/usr/bin:/bin"})
    yield places
    process.send_signal(signal.SIGKILL)
    process.wait()
    for place in places:
        shutil.rmtree(place)


def test_rename_races_under_prologs_task_starts_and_ccm_reach_nothing(cluster, baits, racer):
    """≥ 50 prologs and ≥ 50 task starts, CCM included, with images and volumes that point
    into the racing directories: the root-only bait stays empty, nothing of root's
    appears where the user can write, no node is drained."""
    tmp_race, home_race = racer
    watch = Watch(baits.victim, baits.root_only)
    image = push(cluster, "racing", {
        "var": oci.Symlink("var", f"{tmp_race}/d"),
        "etc/ssh": oci.Symlink("etc/ssh", f"{tmp_race}/l"),
        "opt": oci.Symlink("opt", f"{home_race}/d"),
        spool_top(): oci.Symlink(spool_top(), f"{tmp_race}/d"),
        "data": oci.Symlink("data", f"{tmp_race}/d"),
        "srv": oci.Dir("srv"),
    })
    prologs = starts = 0
    for _ in range(20):                                                 # prolog + task start
        cluster.srun("-N1", f"--image={image}", "--autoshift", "true", check=False)
        prologs, starts = prologs + 1, starts + 1
    for _ in range(10):                                                 # a volume into the race
        result = cluster.srun("-N1", f"--image={image}", "--autoshift", "--volume=/srv:/data", "true",
                              check=False)
        assert result.returncode != 0 and "leads into a node file system" in result.stderr, result.stderr
        prologs += 1
    ccm_image = push(cluster, "racing-ccm", {
        "var": oci.Symlink("var", f"{tmp_race}/d"),
        "opt": oci.Symlink("opt", f"{home_race}/d"),
    })
    for number in range(10):                                            # CCM: ssh files, links, sshd
        chosen = ccm_image if number % 2 else image                     # (image: its /etc/ssh races)
        result = cluster.run(["salloc", "-N1", "--exclusive", "--ccm", f"--image={chosen}", "srun", "true"],
                             check=False)
        assert (result.returncode == 0) == (chosen == ccm_image), result.stderr
        prologs, starts = prologs + 1, starts + 1
    batch = [cluster.sbatch("#!/bin/sh\ntrue\n", f"--image={image}", "--autoshift") for _ in range(10)]
    for job in batch:                                                   # the spool directory
        cluster.wait(job)
    prologs, starts = prologs + len(batch), starts + len(batch)
    steps = cluster.run(["salloc", "-N1", f"--image={image}", "--autoshift", "sh", "-c",
                         "for i in $(seq 50); do srun true || echo failed; done"], check=False, timeout=300)
    prologs, starts = prologs + 1, starts + 50
    assert "failed" not in steps.stdout, steps.stdout + steps.stderr
    assert prologs >= 50 and starts >= 50
    watch.assert_unchanged()
    assert list(baits.root_only.iterdir()) == []
    for place in racer:
        assert not [p for p in place.rglob("*") if p.lstat().st_uid == 0], "root created something in a race"
    assert not root_files_under(cluster.home)
    assert_no_node_drained(cluster)


# --- a battery of user mistakes and hostile images: jobs fail, nodes stay ----------------

@pytest.fixture(scope="module")
def battery_image(cluster):
    return push(cluster, "battery", {
        "root": oci.Dir("root", mode=0o700),
    }, [
        oci.Symlink("secretlink", "/root"),
        oci.Symlink("loop", "loop"),
        oci.Symlink("etclink", "/etc"),
        oci.Symlink("tmplink", "/tmp"),
        oci.Symlink("nulllink", "/dev/null"),
        oci.Dir("srv"),
    ])


def _copy_image(cluster, source: str, name: str, change) -> str:
    """Pull `source` under another tag, then let `change(squashfs path, json path)` spoil
    its files on the node; returns an id: descriptor pinned at submit like any other."""
    image = push(cluster, name, {}, [oci.File(f"etc/{name}", name)])
    image_id = cluster.run(["shifterimg", "lookup", image]).stdout.strip()
    store = ImageStore(str(cluster.layout.images))
    change(Path(store.image_path(image_id)), Path(cluster.layout.images / f"{image_id}.json"))
    return f"id:{image_id}"


PROLOG_FAILURES = [
    ("--volume=/nope:/data", "--volume source /nope does not exist in the container"),
    ("--volume=/etc/os-release:/srv", "--volume target /srv: /srv is not a regular file in the container"),
    ("--volume=/nulllink:/data", "--volume source /nulllink: /dev/null is a device or in /dev"),
    ("--volume=/secretlink/x:/data", "permission denied"),
    ("--volume=/loop:/data", "too many levels of symlinks"),
    ("--volume=/srv:/etclink/x", "leads to /etc/x in the container, where users cannot mount"),
    ("--volume=/srv:/tmplink/x", "leads into a node file system"),
    ("--volume=/srv:{home}/x", "leads into a node file system"),
]

SUBMIT_REFUSALS = [
    ("--volume=/srv:/etc", "/etc belongs to the container's setup"),
    ("--volume=/srv:/opt/udiImage/x", "belongs to the container's setup"),
    ("--volume=/x y:/data", "character ' ' is not allowed"),
    ("--volume=/dev/null:/data", "/dev/null is a device or in /dev, and this site lets --volume bind only"),
    ("--volume=/srv:/data:rec", "flag rec is reserved to the site"),
    ("--volume=/x:/cache:perNodeCache=size=64T", "exceeds the site's limit"),
    ("--module=nosuchmodule", "unknown module 'nosuchmodule'"),
    ("--image=id:" + "0" * 64, "is not available"),
    ("--image=docker:hardening/does-not-exist:1", "cannot be pulled"),
]


def test_a_battery_of_mistakes_and_hostile_images_drains_no_node(cluster, battery_image):
    reasons = []
    for option, message in PROLOG_FAILURES:
        option = option.format(home=cluster.home)
        job, reason = failed_job(cluster, f"--image={battery_image}", "--autoshift", option)
        assert message in reason, (option, reason)
        reasons.append(reason)
    for option, message in SUBMIT_REFUSALS:
        image = [] if option.startswith("--image") else [f"--image={battery_image}"]
        result = cluster.run(["sbatch", "-w", FAILING_NODE, *image, "--autoshift", option, "--wrap", "true"],
                             check=False, timeout=300)
        lines = [line for line in result.stderr.splitlines() if "shifter: " in line]
        assert result.returncode != 0 and lines and message in lines[0], (option, result.stderr)
        reasons.append(lines[0])

    spoiled = {
        "gone": (lambda squashfs, meta: squashfs.unlink(), "is gone from this node's image directory"),
        "truncated": (lambda squashfs, meta: os.truncate(squashfs, 4096), "changed after the pull"),
        "garbage": (lambda squashfs, meta: squashfs.write_bytes(os.urandom(squashfs.stat().st_size)),
                    "does not mount"),
        "dir-at-passwd": (None, "the image has a directory at /etc/passwd"),
        "private": (lambda squashfs, meta: meta.write_text(meta.read_text().replace(
            '"private": false', '"private": true').replace('"user_acl": []', '"user_acl": [4242]')),
            "may not use private image"),
    }
    for name, (change, message) in spoiled.items():
        if change is None:
            image = push(cluster, name, {"etc": oci.Dir("etc")}, [oci.Dir("etc/passwd")])
        else:
            image = _copy_image(cluster, battery_image, f"spoiled-{name}", change)
        job, reason = failed_job(cluster, f"--image={image}", "--autoshift")
        assert message in reason, (name, reason)
        reasons.append(reason)
    assert len(reasons) >= 20
    assert_no_node_drained(cluster)


def test_srun_shows_the_reason_on_its_stderr(cluster, battery_image):
    result = cluster.srun("-N2", f"--image={battery_image}", "--autoshift", "--volume=/nope:/data", "true",
                          check=False)
    assert result.returncode != 0
    assert "--volume source /nope does not exist in the container" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert_no_node_drained(cluster)


def test_a_fault_of_the_node_drains_it_with_the_reason(cluster, battery_image, readable_tmp):
    """A site hook that fails fails for every job: the node's fault, drained with shifter's reason."""
    hook = readable_tmp / "broken-hook.sh"
    hook.write_text("echo the site mount is missing >&2\nexit 3\n")
    hook.chmod(0o755)
    conf = cluster.layout.udiroot_conf
    original = conf.read_text()
    conf.write_text(original + f"sitePreMountHook={hook}\n")
    try:
        job = cluster.sbatch("#!/bin/sh\ntrue\n", "-w", FAILING_NODE, f"--image={battery_image}")
        deadline = time.monotonic() + 60
        while "drain" not in cluster.node_states()[FAILING_NODE]:
            assert time.monotonic() < deadline, "the node was not drained"
            time.sleep(0.2)
        reasons = cluster.run(["sinfo", "-R", "-h", "-o", "%N %E"], as_user=False).stdout
        assert f"{FAILING_NODE} shifter: sitePreMountHook {hook} failed with status 3" in reasons, reasons
    finally:
        conf.write_text(original)
        cluster.run(["scancel", str(job)], as_user=False)
        cluster.wait(job)
        cluster.resume_nodes()
    assert_in_service(cluster, FAILING_NODE)
