"""The C fast path and Python read and write the same things the same way.

Each test hands one input to the C function of spank/seam.c (through the
cffi module shifter_core._seam) and to its Python twin, and requires the same
answer: container records (valid, failed and malformed ones, escapes, all five
environment operations, the image's WORKDIR), the environment a task ends up with
(with and without --env), udiRoot.conf's
runDir, the container's marker, /proc/<pid>/stat, the pinned options, the
provenance line of a task, root's trust rule, the node server's requests and
replies, submit plans, and the task options' checks.
"""
import json
import os
import types

import pytest
from hypothesis import example, given, settings, strategies as st

from shifter_core import config, environ, gwclient, seam, taskopts, trust
from shifter_core._seam import ffi, lib
from shifter_core.container import procfs, record
from shifter_core.container.marker import matches
from shifter_core.errors import TaskOptionError
from shifter_core.spank import bridge, nodeserver, submit, submitplan
from tests.unit.test_config import MINIMAL

HEX = "0123456789abcdef"
ID = "ab" * 32


def _s(cdata) -> str:
    return ffi.string(cdata).decode()


# -- container records -------------------------------------------------------

def c_parse(data: bytes):
    """What the fast path reads from a record: a comparable summary."""
    buf = ffi.new("char[]", data)
    rec = ffi.new("struct seam_record *")
    status = lib.seam_parse_record(buf, len(data), rec)
    if status == lib.SEAM_INVALID:
        return "invalid"
    if status == lib.SEAM_FAILED:
        return "failed", _s(rec.failed)
    ops, cursor = [], rec.env
    for _ in range(rec.env_count):
        op, name, value = ffi.new("int *"), ffi.new("const char **"), ffi.new("const char **")
        cursor = lib.seam_env_next(cursor, op, name, value)
        ops.append((seam.ENV_OPERATIONS[op[0]], _s(name[0]), _s(value[0])))
    return ("container", rec.job, rec.step if rec.has_step else None, _s(rec.node), (rec.holder_pid, rec.holder_start, rec.mntns), _s(rec.root),
            _s(rec.digest), _s(rec.provenance) or None, _s(rec.workdir) or None, bool(rec.python), ops,
            "python" if status == lib.SEAM_PYTHON else "ready")


def py_parse(data: bytes):
    """The same summary from container/record.py."""
    try:
        job = record.parse(data)
    except record.SetupFailed as failed:
        return "failed", str(failed)
    except ValueError:
        return "invalid"
    return ("container", job.job_id, job.step_id, job.node, (job.holder_pid, job.holder_start, job.mntns), job.root,
            job.digest, job.provenance_log, job.workdir or None, job.python, job.env_ops, "python" if job.python else "ready")


no_nul = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
texts = st.text(no_nul, max_size=12)
tricky = st.text(st.sampled_from("ab=\\n \t:/$é"), max_size=8)   # escapes, '=', spaces, non-ASCII
env_names = st.one_of(tricky, texts).filter(lambda s: s and "=" not in s)
env_ops = st.lists(st.tuples(st.sampled_from(seam.ENV_OPERATIONS), env_names, st.one_of(tricky, texts)), max_size=6)
names = st.text(st.sampled_from(seam.NAME_CHARS), min_size=1, max_size=6)
uints = st.integers(0, seam.UINT_MAX)


@st.composite
def containers(draw) -> record.JobContainer:
    return record.JobContainer(
        job_id=draw(uints), node=draw(st.text(st.sampled_from(seam.NODE_CHARS), min_size=1, max_size=seam.NODE_MAX)),
        holder_pid=draw(uints), holder_start=draw(uints), mntns=draw(uints),
        root="/" + draw(texts.filter(lambda s: "\n" not in s)), image_id=draw(st.text(st.sampled_from(HEX),
                                                                                     min_size=64, max_size=64)),
        digest="sha256:" + draw(st.text(st.sampled_from(HEX), min_size=64, max_size=64)),
        uid=draw(uints), gid=draw(uints), workdir=draw(st.one_of(st.none(), texts.filter(bool))),
        modules=draw(st.lists(names, max_size=3)),
        timings=draw(st.dictionaries(names, st.floats(0, 1e6, allow_nan=False), max_size=3)),
        env_ops=draw(env_ops), python=draw(st.booleans()),
        provenance_log=draw(st.one_of(st.none(), st.just("/var/log/shifter/n1.jsonl"))),
        step_id=draw(st.one_of(st.none(), uints)), volumes=draw(st.one_of(tricky, texts)))


def _saved(job: record.JobContainer, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("rec") / "r"
    job.save(str(path))
    return path.read_bytes()


@given(containers())
def test_records_the_prolog_writes_read_the_same(tmp_path_factory, job):
    data = _saved(job, tmp_path_factory)
    assert c_parse(data) == py_parse(data) != "invalid"


@given(st.integers(0, 2 ** 32), st.sampled_from(["n1", "node-7_b"]), texts)
def test_failure_records_read_the_same(tmp_path_factory, job, node, reason):
    path = tmp_path_factory.mktemp("rec") / "r"
    record.save_failure(str(path), job, node, reason)
    data = path.read_bytes()
    assert c_parse(data) == py_parse(data) == ("failed", reason)


# Values of every shape a key can take, well-formed or not: the two parsers
# must accept and refuse the same lines.
VALID = {
    "job": ["42", "0", "18446744073709551615", "0042"],
    "node": ["n1", "a-b_c", "x" * 64],
    "holder": ["1 2 3", "0 18446744073709551615 7"],
    "root": ["/var/udi", "/", "/a\\nb", "/" + "p" * 4094],
    "image": [ID],
    "digest": ["sha256:" + ID],
    "user": ["0 0", "1001 1002"],
    "modules": ["", "a", "a,b", "mpich-3.1.x"],
    "python": ["0", "1"],
    "workdir": ["/w", "", "a\\nb", "a\\\\b", "\\\\\\n"],
    "provenance": ["/var/log/x.jsonl"],
    "timing": ["mount 1.5", "mount 1", "total 0.000"],
    "env": ["set PATH=/bin", "image PATH=/usr/bin", "append PATH=/x", "prepend P=a:b", "unset X=", "set A\\n=b\\\\c", "prepend A==",
            "set A=\\n", "append B=", "set é=ü"],
    "failed": ["it broke", "", "line\\nbreak"],
    "step": ["0", "7", "18446744073709551615"],
}
INVALID = {
    "job": ["18446744073709551616", "-1", "+4", " 4", "4 ", "", "٤", "123456789012345678901"],
    "node": ["", "n.1", "n/1", "x" * 65, "é"],
    "holder": ["1 2", "1 2 3 4", "1  2 3", "1 2 x", " 1 2 3"],
    "root": ["relative", "", "/" + "p" * 4095],
    "image": [ID.upper(), ID[:-1], ID + "0", ""],
    "digest": ["sha256:" + ID[:-1], "sha512:" + ID, "sha256:" + ID.upper()],
    "user": ["1001", "1 2 3"],
    "modules": ["a,,b", ",a", "a,", "a b"],
    "python": ["2", "", "01", "true"],
    "workdir": ["a\\tb", "a\\", "\\"],
    "provenance": ["log", ""],
    "timing": ["mount 1.", "mount .5", "mount", "mount 1e3", "m 1 2", " 1"],
    "env": ["unset X", "frob X=1", "set =v", "set A=b\\q", "set A\\=b", "set  A=b", "set"],
    "failed": ["bad\\escape", "ends\\"],
    "step": ["-1", "", "1 2", "18446744073709551616"],
    "bogus": ["x"],
}
BASE = {"job": "42", "node": "n1", "holder": "1 2 3", "root": "/var/udi", "image": ID, "digest": "sha256:" + ID,
        "user": "1001 1002", "modules": "", "python": "0"}


@st.composite
def record_texts(draw) -> bytes:
    """Mostly records the prolog could write, each with a few twists."""
    base = {**BASE, "python": draw(st.sampled_from("01"))}
    lines = [f"{k} {v}" for k, v in base.items() if draw(st.integers(0, 30))]        # rarely one missing
    for _ in range(draw(st.integers(0, 5))):
        table = INVALID if draw(st.integers(0, 9)) == 0 else VALID
        key = draw(st.sampled_from(sorted(table)))
        lines.append(f"{key} {draw(st.sampled_from(table[key]))}")
    lines = draw(st.permutations(lines))
    if draw(st.integers(0, 9)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["job", "env", " env set A=b"])))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), "")
    head = seam.RECORD_FORMAT if draw(st.integers(0, 19)) else draw(st.sampled_from(["shifter-container 2", ""]))
    data = ("\n".join([head, *lines]) + draw(st.sampled_from(["\n", "", "\n\n"]))).encode()
    if draw(st.integers(0, 19)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\0", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])) \
            + data[at:]
    return data


@given(record_texts())
@settings(max_examples=600)
@example(b"shifter-container 1")
@example(b"shifter-container 1\njob 1\nnode n\nfailed x\nenv set A=\\q\n")
@example(b"shifter-container 1\njob 1\nnode n\nfailed first\nfailed second\\\\\n")
def test_any_record_text_reads_the_same(data):
    assert c_parse(data) == py_parse(data)


def test_records_longer_than_the_limit_are_refused():
    data = ("\n".join([seam.RECORD_FORMAT, *(f"{k} {v}" for k, v in BASE.items())]) + "\n").encode()
    assert c_parse(data) == py_parse(data) != "invalid"
    data += b"timing x 1\n" * (seam.RECORD_MAX // 10)
    assert c_parse(data) == py_parse(data) == "invalid"


# -- the task's environment ------------------------------------------------------

@ffi.def_extern()
def seam_test_get(ctx, name, buf, size):
    env = ffi.from_handle(ctx)
    value = env.get(_s(name))
    if value is None:
        return 1
    data = value.encode()
    if len(data) >= size:
        return -1
    ffi.memmove(buf, data + b"\0", len(data) + 1)
    return 0


@ffi.def_extern()
def seam_test_set(ctx, name, value):
    ffi.from_handle(ctx)[_s(name)] = _s(value)
    return 0


@ffi.def_extern()
def seam_test_unset(ctx, name):
    ffi.from_handle(ctx).pop(_s(name), None)
    return 0


def c_apply(task_env: dict, data: bytes, keep: tuple[str, ...] = ()) -> dict:
    env = dict(task_env)
    handle = ffi.new_handle(env)
    buf = ffi.new("char[]", data)
    rec = ffi.new("struct seam_record *")
    assert lib.seam_parse_record(buf, len(data), rec) in (lib.SEAM_READY, lib.SEAM_PYTHON)
    callbacks = ffi.new("struct seam_env *", [handle, lib.seam_test_get, lib.seam_test_set, lib.seam_test_unset])
    keep_text = ffi.new("char[]", seam.ENV_NAMES_SEPARATOR.join(keep).encode()) if keep else ffi.NULL
    assert lib.seam_apply_env(rec, callbacks, keep_text) == 0
    return env


@given(containers(), st.dictionaries(env_names, st.one_of(st.just(""), tricky, texts), max_size=5),
       st.lists(st.integers(0, 5), max_size=3))
def test_a_task_gets_the_same_environment(tmp_path_factory, job, task_env, kept):
    """All five operations, on variables the task has (empty or not) and has not, some
    of them named by --env (the task's value of those wins over the image's)."""
    for i, (_, name, _) in enumerate(job.env_ops[:4]):
        task_env.setdefault(name, "" if i % 2 else "old")
    keep = tuple(dict.fromkeys(job.env_ops[i][1] for i in kept if i < len(job.env_ops)
                               and seam.ENV_NAMES_SEPARATOR not in job.env_ops[i][1]))
    data = _saved(job, tmp_path_factory)
    assert c_apply(task_env, data, keep) == environ.apply(task_env, job.env_ops, keep)


@given(st.lists(st.one_of(tricky, texts), max_size=4))
def test_values_unescape_the_same(words):
    for word in words:
        buf = ffi.new("char[]", seam.escape(word).encode())
        assert lib.seam_unescape(buf) == 0
        assert _s(buf) == seam.unescape(seam.escape(word)) == word


# -- udiRoot.conf's runDir -------------------------------------------------------

path_parts = st.lists(st.sampled_from(["", ".", "..", "run", "shifter", "a b", "é", "x."]), max_size=5)
blanks = st.text(st.sampled_from(seam.CONFIG_BLANKS), max_size=2)


@st.composite
def config_lines(draw) -> str:
    kind = draw(st.sampled_from(["rundir", "rundir", "other", "comment", "blank", "split"]))
    if kind == "comment":
        return draw(blanks) + "#" + draw(st.sampled_from(["", " runDir=/nope", "x\\"]))
    if kind == "blank":
        return draw(blanks)
    if kind == "other":
        return draw(st.sampled_from(["system=other", "rootfsType=tmpfs", "gatewayTimeout=5", "bogus"]))
    # runDir, possibly empty, not normalised or relative, around blanks, split by continuations
    value = draw(st.sampled_from(["/", "//", "///"])) + "/".join(draw(path_parts))
    value = draw(st.sampled_from([value, value, "", "relative/x"]))
    line = f"{draw(blanks)}runDir{draw(blanks)}={draw(blanks)}{value}{draw(blanks)}"
    if kind == "split" and len(line) > 1:
        at = draw(st.integers(1, len(line) - 1))
        line = line[:at] + draw(blanks) + "\\" + draw(blanks) + "\n" + draw(blanks) + line[at:]
    return line


def c_run_dir(text: str) -> str | None:
    data = text.encode()
    out = ffi.new("char[]", 4096)
    return _s(out) if lib.seam_run_dir(ffi.new("char[]", data), len(data), out, 4096) == 0 else None


@given(st.lists(config_lines(), max_size=6), st.sampled_from(["\n", "\r\n"]), st.sampled_from(["", "\n", "\\"]))
@settings(max_examples=400)
def test_run_dir_reads_the_same(lines, newline, end):
    """Where config.py accepts the file, C finds the same runDir (where it refuses the
    file, the prolog fails and no task looks for a record)."""
    text = MINIMAL + newline.join(lines) + end
    try:
        expected = config.parse(text).run_dir
    except config.ConfigError:
        return
    assert c_run_dir(text) == expected


# -- the container's marker -------------------------------------------------------

def c_marker(data: bytes, job: int, digest: str):
    found = ffi.new("char[]", 512)
    ok = lib.seam_marker_matches(ffi.new("char[]", data), len(data), job, digest.encode(), found, 512)
    return bool(ok), _s(found)


@st.composite
def marker_texts(draw) -> bytes:
    right = ["job 42", "digest sha256:" + ID]
    lines = draw(st.lists(st.sampled_from(right * 4 + ["job 43", "job", "job ", "job 42 ", "digest",
                                                       "digest sha256:" + ID[:-1], "jobs 42", "", "x y z"]),
                          max_size=5))
    head = seam.MARKER_FORMAT if draw(st.integers(0, 9)) else draw(st.sampled_from(["", "shifter-marker 2"]))
    data = ("\n".join([head, *lines]) + draw(st.sampled_from(["\n", ""]))).encode()
    return data + draw(st.sampled_from([b""] * 8 + [b"\0", b"\xff", b"x" * seam.MARKER_MAX]))


@given(marker_texts())
@example(b"shifter-marker 1\njob 42\ndigest sha256:" + ID.encode() + b"\n")
def test_marker_checks_agree(data):
    assert c_marker(data, 42, "sha256:" + ID) == matches(data, 42, "sha256:" + ID)


def test_the_marker_matches_what_the_prolog_writes():
    data = f"{seam.MARKER_FORMAT}\njob 42\ndigest sha256:{ID}\n".encode()
    assert c_marker(data, 42, "sha256:" + ID) == matches(data, 42, "sha256:" + ID) == (
        True, f"this one belongs to job 42 (sha256:{ID})")


# -- /proc/<pid>/stat ----------------------------------------------------------------

def c_start_time(text: str) -> int | None:
    start = ffi.new("unsigned long long *")
    return start[0] if lib.seam_start_time(ffi.new("char[]", text.encode()), start) == 0 else None


@given(st.text(st.sampled_from("ab )( \n"), max_size=8),
       st.lists(st.sampled_from(["1", "0", "S", "", "18446744073709551616", "x", "12\n"]), min_size=15, max_size=25))
def test_start_times_agree(comm, fields):
    text = f"123 ({comm}) " + " ".join(fields) + "\n"
    assert c_start_time(text) == procfs.parse_start_time(text)


def test_start_time_of_this_process():
    with open("/proc/self/stat") as f:
        text = f.read()
    assert c_start_time(text) == procfs.parse_start_time(text) == procfs.start_time(os.getpid())


# -- what C writes for Python ---------------------------------------------------------

@given(st.tuples(*(st.one_of(st.none(), texts) if arginfo else st.booleans() for _, arginfo, _ in seam.OPTIONS)))
def test_pinned_options_render_the_same(values):
    opts = bridge.Options(**dict(zip(seam.OPTION_NAMES, values)))
    keep = [ffi.new("char[]", v.encode()) if isinstance(v, str) else ffi.NULL for v in values]
    out = ffi.new("char[]", 4096)
    assert lib.seam_options_text([v is True for v in values], keep, out, 4096) == 0
    assert _s(out) == submit.pinned_options(opts, opts.volume or "")


@given(containers(), st.floats(0, 1e5), st.integers(0, 2 ** 32 - 1), st.integers(0, 1000),
       st.floats(1e9, 2e9))
def test_the_enter_line_is_provenances(tmp_path_factory, job, ms, step, task, now):
    data = _saved(job, tmp_path_factory)
    rec = ffi.new("struct seam_record *")
    lib.seam_parse_record(ffi.new("char[]", data), len(data), rec)
    out = ffi.new("char[]", 512)
    assert lib.seam_enter_line(out, 512, rec, ms, step, task, now) > 0
    python = seam.provenance_line(event=seam.ENTER_EVENT, time=round(now, 3), job=job.job_id, node=job.node,
                                  digest=job.digest, step=step, task=task, ms={"enter": round(ms, 3)})
    assert json.loads(_s(out)) == json.loads(python)
    assert list(json.loads(_s(out))) == list(json.loads(python))


# -- the node server's requests and replies ---------------------------------------------

arg_texts = st.text(st.sampled_from("ab=\\\n /é"), max_size=8)


@given(st.sampled_from(seam.SERVER_CALLBACKS), uints, uints, uints, st.one_of(st.none(), st.integers(0, 2**63 - 1)),
       st.lists(arg_texts, max_size=3),
       st.tuples(*(st.one_of(st.none(), texts) if arginfo else st.booleans() for _, arginfo, _ in seam.OPTIONS)),
       st.dictionaries(env_names, texts, max_size=6))
def test_requests_the_plugin_writes_read_the_same(callback, job, uid, started, step, args, values, env):
    step = (step or 0) if callback.startswith("step_") else None       # only a step's callbacks name one
    keep = [ffi.new("char[]", text.encode()) for text in [callback, *args, *(f"{k}={v}" for k, v in env.items())]]
    argv = ffi.new("char *[]", keep[1:1 + len(args)])
    envp = ffi.new("char *[]", keep[1 + len(args):] + [ffi.NULL])
    value_keep = [ffi.new("char[]", v.encode()) if isinstance(v, str) and v else ffi.NULL for v in values]
    value = ffi.new("char *[]", value_keep)
    option_set = ffi.new("int[]", [v is not None and v is not False for v in values])
    req = ffi.new("struct seam_request *",
                  [keep[0], job, uid, started, -1 if step is None else step, len(args), argv, option_set, value, envp])
    size = lib.seam_request_text(req, ffi.NULL, 0)
    out = ffi.new("char[]", size + 1)
    assert lib.seam_request_text(req, out, size + 1) == size
    request = nodeserver.parse_request(ffi.unpack(out, size))
    assert (request.callback, request.job_id, request.uid, request.started_ns, request.step_id) == \
        (callback, job, uid, started, step)
    assert request.args == {key: value for key, _, value in (a.partition("=") for a in args)}
    assert request.env == env
    assert request.options == bridge.Options(**{name: v for name, v in zip(seam.OPTION_NAMES, values) if v})


@given(st.sampled_from(seam.REPLY_LEVELS), texts)
def test_replies_the_server_writes_read_the_same(level, message):
    line = nodeserver.reply_line(level, message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    buf = ffi.new("char[]", line[:-1])
    text, rc = ffi.new("const char **"), ffi.new("unsigned long long *")
    assert seam.REPLY_LEVELS[lib.seam_reply_line(buf, text, rc)] == level
    assert _s(text[0]) == message


@pytest.mark.parametrize("rc", [seam.SERVED_OK, seam.SERVED_FAILED, seam.NOT_SERVED])
def test_the_servers_result_reads_the_same(rc):
    buf = ffi.new("char[]", nodeserver.reply_line(seam.REPLY_END, str(rc))[:-1])
    text, found = ffi.new("const char **"), ffi.new("unsigned long long *")
    assert lib.seam_reply_line(buf, text, found) == len(seam.REPLY_LEVELS) and found[0] == rc


# -- the submit plan, the gateway's answer ------------------------------------------------

def c_find_plan(data: bytes, options: str):
    plan, text = ffi.new("struct seam_plan *"), ffi.new("char[]", data)      # the plan points into text
    if lib.seam_find_plan(text, len(data), options.encode(), plan) != 0:
        return None
    return {"config": tuple(plan.config), "lookup": _s(plan.lookup),
            "gateway": [_s(plan.gateway[i]) for i in range(plan.gateways)], "timeout": plan.timeout_ms,
            "munge": _s(plan.munge), "request": _s(plan.request),
            "export": [_s(plan.export[i]) for i in range(plan.exports)]}


def py_find_plan(data: bytes, options: str):
    found = submitplan.find(data, options)
    return found and {key: found[key] for key in ("config", "lookup", "gateway", "timeout", "munge", "request",
                                                   "export")}


OPTIONS = ["docker:a:1\x1f\x1f\x1f0\x1f1", "docker:b\\n\x1f/x:/y\x1f\x1f0\x1f0", "é"]


@st.composite
def plans(draw) -> list:
    plan = [("plan", draw(st.sampled_from(OPTIONS))),
            ("config", tuple(draw(st.lists(uints, min_size=5, max_size=5)))),
            ("lookup", draw(st.sampled_from(["/api/lookup/ci/docker/a%3A1/", "/x\n"]))),
            *(("gateway", g) for g in draw(st.lists(st.sampled_from(["gw 5000 /", "10.0.0.1 80 /gw"]),
                                                    min_size=1, max_size=seam.PLAN_GATEWAYS + 1))),
            ("timeout", draw(uints)), ("munge", "/run/munge/munge.socket.2"), ("request", draw(texts)),
            *(("export", e) for e in draw(st.lists(st.sampled_from(["A=1", "B=", "C=x=y", "D\n=é"]),
                                                   max_size=seam.PLAN_EXPORTS + 1)))]
    if draw(st.integers(0, 9)) == 0:        # an incomplete one
        del plan[draw(st.integers(1, len(plan) - 1))]
    return draw(st.permutations(plan[1:])) and [plan[0], *draw(st.permutations(plan[1:]))]


@given(st.lists(plans(), max_size=4), st.sampled_from(OPTIONS))
@settings(max_examples=300)
def test_submit_plans_read_the_same(blocks, options):
    data = submitplan.render(blocks).encode()
    assert c_find_plan(data, options) == py_find_plan(data, options)


@given(st.binary(max_size=40), st.sampled_from(OPTIONS))
def test_plans_files_that_are_not_read_the_same(junk, options):
    good = submitplan.render([[("plan", options), ("config", (1, 2, 3, 4, 5)), ("lookup", "/l"),
                               ("gateway", "gw 80 /"), ("timeout", 5), ("munge", "/m"), ("request", "r")]])
    for data in (junk, good.encode() + junk, good.encode()[:len(junk)]):
        assert c_find_plan(data, options) == py_find_plan(data, options)


def c_answer(data: bytes):
    status, body, length = ffi.new("int *"), ffi.new("const char **"), ffi.new("size_t *")
    text = ffi.new("char[]", data)                                          # the body points into it
    if lib.seam_http_answer(text, len(data), status, body, length) != 0:
        return None
    return status[0], ffi.unpack(body[0], length[0])


def py_answer(data: bytes):
    try:
        status, _, body = gwclient.parse_answer(data)
    except ValueError:
        return None
    return status, body


@st.composite
def answers(draw) -> bytes:
    status = draw(st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.0 404 NOT FOUND", "HTTP/1.1 200", "HTTP/2 200 OK",
                                   "HTTP/1.1 20 OK", "HTTP/1.1 2000 OK", "HTTP/1.1  200 OK", "junk"]))
    headers = draw(st.lists(st.sampled_from(["Content-Type: application/json", "Content-Length: 5",
                                             "content-length:3", " Content-Length : 12 ", "Content-Length: x",
                                             "Content-Length: 99", "X: y:z", "bare"]), max_size=3))
    body = draw(st.binary(max_size=20))
    return ("\r\n".join([status, *headers]) + draw(st.sampled_from(["\r\n\r\n", "\r\n", "\n\n"]))).encode() + body


@given(answers())
@settings(max_examples=300)
def test_gateway_answers_read_the_same(data):
    assert c_answer(data) == py_answer(data)


def c_json_string(data: bytes, key: str):
    out = ffi.new("char[]", 256)
    return _s(out) if lib.seam_json_string(ffi.new("char[]", data), len(data), key.encode(), out, 256) == 0 else None


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(no_nul, max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                        max_size=3), max_leaves=8)


@given(st.dictionaries(st.sampled_from(["id", "status", "i", "idx", "é"]), json_values, max_size=4),
       st.booleans(), st.sampled_from([None, 0, 2]))
@settings(max_examples=300)
def test_the_id_of_an_answer_reads_the_same(obj, ascii_only, indent):
    data = json.dumps(obj, ensure_ascii=ascii_only, indent=indent).encode()
    expected = obj.get("id") if isinstance(obj.get("id"), str) and len(obj["id"].encode()) < 256 else None
    assert c_json_string(data, "id") == expected


@pytest.mark.parametrize("data", [b"", b"[]", b'"id"', b'{"id": "a"', b'{"id": "a"} x', b'{"id" "a"}',
                                  b'{"id": "a",}', b'{"id": 1}', b'{"id": "\\ud800"}', b'{"id": "a\x00"}'])
def test_what_is_no_answer_has_no_id(data):
    assert c_json_string(data, "id") is None


@pytest.mark.parametrize("uid", [0, 1, 1000])
def test_root_only_is_one_rule(uid):
    for mode in range(0o10000):
        st_ = types.SimpleNamespace(st_uid=uid, st_mode=mode)
        assert bool(lib.seam_root_only(uid, mode)) == trust.root_only(st_), (uid, oct(mode))


def test_the_generated_header_is_the_tables():
    header = seam.c_header()
    for name, _, _ in seam.OPTIONS:
        assert f'"{name}"' in header
    assert f"#define SEAM_BATCH_STEP {seam.BATCH_STEP:#x}U" in header
    with open(os.path.join(seam.write_header(), "seam_table.h")) as f:
        assert f.read() == header


# -- the task options srun, sbatch and salloc check before pinning in C ----------------------

task_option_texts = st.one_of(st.none(), st.text(st.sampled_from("/a=,b é"), max_size=6))


@given(task_option_texts, task_option_texts)
def test_task_options_are_refused_alike(workdir, env):
    try:
        taskopts.check(bridge.Options(workdir=workdir, env=env))
        valid = 1
    except TaskOptionError:
        valid = 0
    c_text = [ffi.NULL if text is None else ffi.new("char[]", text.encode()) for text in (workdir, env)]
    assert lib.seam_task_options_valid(*c_text) == valid
