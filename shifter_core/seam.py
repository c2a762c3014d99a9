"""What the C plugin (spank/*.c) and the Python side agree on, written once.

The plugin's options, the container record, the environment operations, the
marker, the pinned-options text, the batch step's id, runDir's default, the
provenance line of a task, the node server's requests and replies: each is
defined here, with the few text rules both sides follow (`escape`, `unescape`,
`uint`, `read_lines`).  Python reads these names;
at build time `write_header` turns them into seam_table.h, which spank/*.c
includes (setup.py and the cffi builders write it under build/seam/; it is
never committed).
tests/unit/test_seam.py feeds the C functions (through the cffi module
shifter_core._seam) and the Python ones the same inputs.

Plain tuples and strings: the plugin's Python imports this at every start.
"""
from __future__ import annotations

import json
import os

# -- the plugin's options ------------------------------------------------------
# (name, arginfo or None for a flag, usage).  The order is the C enum's, the
# order of the pinned-options text and of the arrays handed to Python.
OPTIONS = (
    ("image", "image",
     "Run in a container of this image, e.g. docker:ubuntu:22.04 (pinned to its digest at submit)"),
    ("volume", "/host:/container[:flags]",
     "Bind host paths into the container; separate several with ';' (flags: ro, perNodeCache=size=...)"),
    ("module", "name[,name...]", "Site modules to enable in the container ('none' for none)"),
    ("ccm", None, "Cluster compatibility mode: an sshd in the container on every node, ssh between them"),
    ("autoshift", None, "Run the batch script and the tasks of every step inside the image"),
    # what the tasks do inside the container: not part of the pin (PINNED_OPTIONS)
    ("workdir", "/path",
     "Start in this directory of the container (default: the submit directory if the container has it,"
     " else the image's WORKDIR, else /)"),
    ("entrypoint", None, "Run the image's ENTRYPOINT in front of the command"),
    ("env", "NAME[,NAME...]", "Keep the host's value of these variables over the image's ENV"),
)
OPTION_NAMES = tuple(name for name, _, _ in OPTIONS)
PINNED_OPTIONS = OPTION_NAMES[:5]                # what the pin and the job's container depend on
TASK_OPTIONS = OPTION_NAMES[len(PINNED_OPTIONS):]
# A task option's default from the job's environment (a user's profile), when the
# step runs in a container and the option was not given (docs/task-options.md).
TASK_OPTION_DEFAULTS = tuple((name, f"SHIFTER_{name.upper()}") for name in TASK_OPTIONS)
WORKDIR_RELATIVE = "give an absolute path inside the container"    # why a --workdir is refused
SLURM_CHDIR_FALLBACK = "/tmp"                   # where slurmstepd puts a task whose directory is missing
FLAGS = tuple(name for name, arginfo, _ in OPTIONS if arginfo is None)

# The plugin's own arguments (plugstack.conf): name -> whether the value is an absolute path.
PLUGIN_ARGUMENTS = (("venv", True), ("config", True), ("enable_ccm", False))

# One callback as the plugin hands it to its embedded Python (spank/embed.h, build_embed.py).
PY_CALL = f"""struct py_call {{
    const char *callback;
    spank_t spank;
    int context;
    int argc;
    char **argv;
    int set[{len(OPTIONS)}];                 /* in the order of OPTIONS */
    const char *value[{len(OPTIONS)}];
    long long started_ns;       /* CLOCK_MONOTONIC when the plugin took the call */
}};"""

# -- the job's environment ---------------------------------------------------------
PINNED_OPTIONS_VAR = "SHIFTER_PINNED_OPTIONS"   # what srun pinned, so that an srun inside reuses it
PINNED_SEPARATOR = "\x1f"
REQUEST_VAR = "SHIFTER_IMAGEREQUEST"            # the pin: the image as asked for, normalised,
IMAGE_VAR = "SHIFTER_IMAGE"                     # its id,
IMAGE_TYPE_VAR = "SHIFTER_IMAGETYPE"            # "id",
DIGEST_VAR = "SHIFTER_IMAGE_DIGEST"             # and sha256:<id>
LOOKUP_VAR = "SHIFTER_LOOKUP_MS"                # how long the pin's lookup took, for the prolog's records
ENTRYPOINT_VAR = "SHIFTER_RUN_ENTRYPOINT"        # for spank/entrypoint.c: the image's ENTRYPOINT,
ARGV0_VAR = "SHIFTER_RUN_ARGV0"                 # its words escaped, one a line, and the command's argv[0]
AUTOSHIFT_VAR = "SHIFTER_AUTOSHIFT"             # "1": steps of an srun without the plugin enter too
MODULE_VAR = "SHIFTER_MODULE"                   # the job's (or step's) modules, comma-separated
OWN_VIEW_VAR = "SHIFTER_OWN_VIEW"               # "1": this step may need a container of its own
JOB_ID_VAR = "SLURM_JOB_ID"
VOLUME_VAR = "SHIFTER_VOLUME"                   # the job's volumes, rendered (volumes.render)
VOLUME_OPTION_VAR = "_SLURM_SPANK_OPTION_shifter_volume"   # Slurm's name for --volume in a job's environment

BATCH_STEP = 0xFFFFFFFB                         # slurm.h: SLURM_BATCH_SCRIPT

# -- the submit plan (spank/submit.py writes it, spank/fastpath.c pins new jobs with it) -------
# What a pinning srun, sbatch or salloc decided from its options and udiRoot.conf, kept
# in the user's home: the next one with the same options and configuration only asks
# the gateway for the tag's digest, in C.  One block per plan, newest last.
PLANS_FILE = ".udiRoot/submit-plans"            # below the user's home directory
PLANS_FORMAT = "shifter-plans 1"
PLANS_MAX = 1 << 16
PLANS_KEPT = 8
PLAN_KEYS = (
    ("plan", "escaped"),        # starts a plan: the options, as pinned_options renders them
    ("config", "uint5"),        # udiRoot.conf's device, inode, size, mtime and ctime (ns)
    ("lookup", "escaped"),      # the lookup's path on the gateway
    ("gateway", "escaped"),     # repeated: host port path-prefix, plain HTTP only
    ("timeout", "uint"),        # milliseconds
    ("munge", "escaped"),       # munged's socket
    ("request", "escaped"),     # the normalised request (REQUEST_VAR)
    ("export", "escaped"),      # repeated: NAME=VALUE that do not depend on the lookup
)
PLAN_REQUIRED = ("plan", "config", "lookup", "gateway", "timeout", "munge", "request")
PLAN_GATEWAYS, PLAN_EXPORTS = 8, 16             # at most, in one plan
PLAN_LOOKUP_MAX = 1 << 16                       # bytes of a gateway's answer read
GATEWAY_AUTH_HEADER = "authentication"          # Shifter's: a munge credential
MUNGE_OPT_SOCKET = 8                            # munge.h: MUNGE_OPT_SOCKET

# -- udiRoot.conf, as far as the fast path reads it --------------------------------------
DEFAULT_CONFIG = "/etc/shifter/udiRoot.conf"
RUN_DIR_KEY = "runDir"
DEFAULT_RUN_DIR = "/run/shifter"
CONFIG_BLANKS = " \t\r\v\f"                   # what a line's ends and a key's sides may hold

# -- the container record (container/record.py writes it, both languages read it) --------
STATE_PREFIX, STATE_SUFFIX = "job", ".state"    # <runDir>/job<id>.<node>.state
STEP_INFIX = "step"                             # a step's own: <runDir>/job<id>.step<step>.<node>.state
RECORD_FORMAT = "shifter-container 1"
RECORD_MAX = 1 << 20
# (key, kind): the kinds' grammar is in record.py and spank/seam.c, tested to agree.
RECORD_KEYS = (
    ("job", "uint"),
    ("node", "node"),
    ("holder", "uint3"),        # pid, start time, mount namespace inode
    ("root", "path"),
    ("image", "image_id"),
    ("digest", "digest"),
    ("user", "uint2"),          # uid, gid
    ("modules", "names"),
    ("python", "bool"),         # its tasks need the Python path (CCM, module user hooks)
    ("workdir", "escaped"),
    ("provenance", "path"),
    ("step", "uint"),           # a step's own container (absent: the job's)
    ("volumes", "escaped"),     # the user's volumes, as volumes.render writes them
    ("timing", "timing"),       # repeated: name, milliseconds
    ("env", "env"),             # repeated: operation name=value
    ("failed", "escaped"),      # the prolog failed because of the job, and why
)
RECORD_KINDS = ("uint", "uint2", "uint3", "bool", "node", "path", "image_id", "digest", "names", "escaped",
                "timing", "env")
RECORD_REQUIRED = ("job", "node", "holder", "root", "image", "digest", "user", "modules", "python")
FAILURE_REQUIRED = ("job", "node")
UINT_MAX = (1 << 64) - 1
NODE_MAX = 64
NODE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
NAME_CHARS = NODE_CHARS + "."                  # modules and timing names
PATH_MAX = 4095
ESCAPES = (("\\", "\\\\"), ("\n", "\\n"))      # the only escapes a value may hold
DIGEST_PREFIX = "sha256:"
IMAGE_ID_LENGTH = 64

_ESCAPE = {raw: escaped for raw, escaped in ESCAPES}
_UNESCAPE = {escaped[1]: raw for raw, escaped in ESCAPES}

# "image" sets a variable of the image's ENV: the task's own value wins for the names of --env
ENV_OPERATIONS = ("set", "append", "prepend", "unset", "image")
ENV_NAMES_SEPARATOR = ","                       # --env=NAME[,NAME...]
ENV_JOIN = ":"                                  # append and prepend join with it
ENV_VALUE_MAX = 1 << 17

# -- the container's marker (container/marker.py) -------------------------------------------
MARKER = "/var/shifterMarker"
MARKER_FORMAT = "shifter-marker 1"
MARKER_MAX = 4096
MARKER_FIELDS = ("job", "digest")

# -- the node server (spank/fastpath.c asks, shifter_core/spank/nodeserver.py answers) -------
SERVER_PREFIX, SERVER_SUFFIX = "nodeserver.", ".sock"   # <runDir>/nodeserver.<node>.sock
REQUEST_FORMAT = "shifter-request 1"
REQUEST_MAX = 1 << 23
# (key, kind): arg, option and env lines repeat; option is `name` or `name=value`
# The callbacks it runs: the job's prolog and epilog, and for a step whose view is not
# its job container's (spank/step.py), the building and the removal of its own.
SERVER_CALLBACKS = ("job_prolog", "job_epilog", "step_prolog", "step_epilog")
# The variables of a step's environment its slurmstepd sends with step_prolog and step_epilog.
STEP_SERVER_VARS = (REQUEST_VAR, DIGEST_VAR, VOLUME_VAR, MODULE_VAR, "SLURM_NODELIST", "SLURM_JOB_CPUS_PER_NODE")
# step: only in a step's callbacks
REQUEST_KEYS = (("callback", "escaped"), ("job", "uint"), ("uid", "uint"), ("started", "uint"),
                ("step", "uint"), ("arg", "escaped"), ("option", "escaped"), ("env", "escaped"))
REPLY_LEVELS = ("error", "info", "debug")      # log lines, as slurm_error, slurm_info, slurm_debug
REPLY_END = "rc"                                # the last line: rc SERVED_OK|SERVED_FAILED|NOT_SERVED
SERVED_OK, SERVED_FAILED, NOT_SERVED = 0, 1, 2  # NOT_SERVED: the plugin runs the callback itself

# -- /proc/<pid>/stat ----------------------------------------------------------------------------
START_TIME_FIELD = 22                           # starttime, counted from 1 (pid)

# -- what root trusts ----------------------------------------------------------------------------
FOREIGN_WRITE_BITS = 0o022                      # a root-only file has none of them

# -- the provenance line of a task entering (provenance.Log.write's layout) ----------------------
ENTER_EVENT = "enter"


def escape(text: str) -> str:
    """One line per value: backslash and newline escaped."""
    return "".join(_ESCAPE.get(char, char) for char in text)


def unescape(text: str) -> str:
    """`escape` undone; ValueError for a backslash that starts none of its escapes."""
    out, chars = [], iter(text)
    for char in chars:
        if char == "\\":
            char = _UNESCAPE.get(next(chars, ""))
            if char is None:
                raise ValueError(f"bad escape in {text!r}")
        out.append(char)
    return "".join(out)


def read_lines(data: bytes, head: str, limit: int) -> list[tuple[str, str]]:
    """The `key value` lines after `head` (spank/seam.c reads them alike); ValueError if
    `data` is longer than `limit`, not UTF-8, holds a NUL or starts otherwise."""
    if len(data) > limit:
        raise ValueError(f"longer than {limit} bytes")
    text = data.decode()
    lines = text.split("\n")
    if "\0" in text or lines[0] != head:
        raise ValueError(f"not a {head.split()[0]} text")
    result = []
    for line in lines[1:]:
        if line:
            key, space, value = line.partition(" ")
            if not space:
                raise ValueError(f"no value in line {line!r}")
            result.append((key, value))
    return result


def uint(text: str) -> int | None:
    """A decimal as both sides read it (spank/seam.c: parse_uint): digits only, at most UINT_MAX."""
    if text.isascii() and text.isdigit() and len(text) <= len(str(UINT_MAX)) and int(text) <= UINT_MAX:
        return int(text)
    return None


def read_value(kind: str, raw: str):
    """A value of one of the kinds of RECORD_KEYS, REQUEST_KEYS or PLAN_KEYS as spank/seam.c
    accepts it (value_valid); ValueError if it is not one."""
    return _READERS[kind](raw)


# -- the kinds of values -------------------------------------------------------------------------


def _uint(text: str) -> int:
    value = uint(text)
    if value is None:
        raise ValueError(text)
    return value


def _uints(count: int):
    def read(text: str) -> tuple[int, ...]:
        parts = text.split(" ")
        if len(parts) != count:
            raise ValueError(text)
        return tuple(map(_uint, parts))
    return read


def _chars(allowed: str, limit: int = RECORD_MAX):
    def read(text: str) -> str:
        if not text or len(text) > limit or text.strip(allowed):
            raise ValueError(text)
        return text
    return read


def _bool(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(text)
    return text == "1"


def _path(text: str) -> str:
    if not text.startswith("/") or len(text.encode()) > PATH_MAX:
        raise ValueError(text)
    return text


def _image_id(text: str) -> str:
    if len(text) != IMAGE_ID_LENGTH or text.strip("0123456789abcdef"):
        raise ValueError(text)
    return text


def _digest(text: str) -> str:
    if not text.startswith(DIGEST_PREFIX):
        raise ValueError(text)
    _image_id(text[len(DIGEST_PREFIX):])
    return text


def _names(text: str) -> list[str]:
    return [_chars(NAME_CHARS)(name) for name in text.split(",")] if text else []


def _timing(text: str) -> tuple[str, float]:
    name, _, number = text.partition(" ")
    whole, dot, fraction = number.partition(".")
    _chars(NAME_CHARS)(name)
    _chars("0123456789")(whole)
    if dot:
        _chars("0123456789")(fraction)
    return name, float(number)


def _env(text: str) -> tuple[str, str, str]:
    op, space, assignment = text.partition(" ")
    name, equals, value = assignment.partition("=")
    if not space or op not in ENV_OPERATIONS or not equals or not name:
        raise ValueError(text)
    return op, unescape(name), unescape(value)


_READERS = {
    "uint": _uint, "uint2": _uints(2), "uint3": _uints(3), "bool": _bool,
    "node": _chars(NODE_CHARS, NODE_MAX), "path": _path, "image_id": _image_id, "digest": _digest,
    "names": _names, "escaped": unescape, "uint5": _uints(5), "timing": _timing, "env": _env,
}


def provenance_line(**fields) -> str:
    """One provenance record as provenance.Log writes it (and the C fast path, via `c_header`)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n"


# -- the C header --------------------------------------------------------------------------------

def _c_string(text: str) -> str:
    """A C string literal of `text` (UTF-8; bytes outside printable ASCII in octal)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _enum(prefix: str, names, count: str) -> str:
    items = ", ".join(f"{prefix}{name.upper()}" for name in names)
    return f"{{ {items}, {count} }}"


def _bits(names, table=RECORD_KEYS) -> str:
    keys = [key for key, _ in table]
    return " | ".join(f"(1u << {keys.index(name)})" for name in names)


def _enter_format() -> str:
    """provenance_line of an enter event as a printf format: the fast path fills in the values."""
    placeholders = {"digest": "@S1", "job": "@U1", "ms": {"enter": "@F1"}, "node": "@S2", "step": "@U2",
                    "task": "@D1", "time": "@F2"}
    line = provenance_line(event=ENTER_EVENT, **placeholders)
    for mark, c in (('"@S1"', '"%s"'), ('"@S2"', '"%s"'), ('"@U1"', "%llu"), ('"@U2"', "%u"), ('"@D1"', "%d"),
                    ('"@F1"', "%.3f"), ('"@F2"', "%.3f")):
        line = line.replace(mark, c)
    return line


def c_header() -> str:
    """seam_table.h: this module's table for spank/*.c."""
    options = " \\\n".join(
        f"    X({name.upper()}, {_c_string(name)}, {_c_string(arginfo) if arginfo else 'NULL'}, "
        f"{_c_string(usage)}, {0 if arginfo is None else 1})" for name, arginfo, usage in OPTIONS)
    arguments = ", ".join(f"{{ {_c_string(name)}, {int(path)} }}" for name, path in PLUGIN_ARGUMENTS)
    known = ", ".join(f"{name}=<absolute path>" if path else f"{name}=0|1" for name, path in PLUGIN_ARGUMENTS)
    keys = ", ".join(f"{{ {_c_string(key)}, SEAM_KIND_{kind.upper()} }}" for key, kind in RECORD_KEYS)
    lines = [
        "/* Generated from shifter_core/seam.py at build time: do not edit, do not commit. */",
        "#ifndef SHIFTER_SEAM_TABLE_H",
        "#define SHIFTER_SEAM_TABLE_H",
        "",
        "/* X(ENUM, name, arginfo, usage, has_arg) */",
        f"#define SEAM_OPTIONS(X) \\\n{options}",
        f"enum seam_option {_enum('SEAM_OPT_', OPTION_NAMES, 'SEAM_OPTION_COUNT')};",
        f"#define SEAM_PINNED_OPTION_COUNT {len(PINNED_OPTIONS)}",
        f"#define SEAM_WORKDIR_RELATIVE {_c_string(WORKDIR_RELATIVE)}",
        f"#define SEAM_SLURM_CHDIR_FALLBACK {_c_string(SLURM_CHDIR_FALLBACK)}",
        "#define SEAM_TASK_OPTION_DEFAULTS { "
        + ", ".join(f"{{ SEAM_OPT_{name.upper()}, {_c_string(var)} }}" for name, var in TASK_OPTION_DEFAULTS)
        + " }",
        f"#define SEAM_PLUGIN_ARGUMENTS {{ {arguments}, {{ NULL, 0 }} }}",
        f"#define SEAM_PLUGIN_ARGUMENTS_KNOWN {_c_string(known)}",
        f"#define SEAM_PINNED_OPTIONS_VAR {_c_string(PINNED_OPTIONS_VAR)}",
        f"#define SEAM_PINNED_SEPARATOR {_c_string(PINNED_SEPARATOR)}",
        f"#define SEAM_DIGEST_VAR {_c_string(DIGEST_VAR)}",
        f"#define SEAM_REQUEST_VAR {_c_string(REQUEST_VAR)}",
        f"#define SEAM_IMAGE_VAR {_c_string(IMAGE_VAR)}",
        f"#define SEAM_IMAGE_TYPE_VAR {_c_string(IMAGE_TYPE_VAR)}",
        f"#define SEAM_LOOKUP_VAR {_c_string(LOOKUP_VAR)}",
        f"#define SEAM_PLANS_FILE {_c_string(PLANS_FILE)}",
        f"#define SEAM_PLANS_FORMAT {_c_string(PLANS_FORMAT)}",
        f"#define SEAM_PLANS_MAX {PLANS_MAX}",
        f"enum seam_plan_key {_enum('SEAM_PLAN_', [key for key, _ in PLAN_KEYS], 'SEAM_PLAN_KEY_COUNT')};",
        f"#define SEAM_PLAN_KEYS {{ {', '.join(_c_string(key) for key, _ in PLAN_KEYS)} }}",
        f"#define SEAM_PLAN_REQUIRED ({_bits(PLAN_REQUIRED, PLAN_KEYS)})",
        f"#define SEAM_PLAN_GATEWAYS {PLAN_GATEWAYS}",
        f"#define SEAM_PLAN_EXPORTS {PLAN_EXPORTS}",
        f"#define SEAM_PLAN_LOOKUP_MAX {PLAN_LOOKUP_MAX}",
        f"#define SEAM_MUNGE_OPT_SOCKET {MUNGE_OPT_SOCKET}",
        f"#define SEAM_GATEWAY_AUTH_HEADER {_c_string(GATEWAY_AUTH_HEADER)}",
        f"#define SEAM_AUTOSHIFT_VAR {_c_string(AUTOSHIFT_VAR)}",
        f"#define SEAM_OWN_VIEW_VAR {_c_string(OWN_VIEW_VAR)}",
        f"#define SEAM_VOLUME_VAR {_c_string(VOLUME_VAR)}",
        f"#define SEAM_MODULE_VAR {_c_string(MODULE_VAR)}",
        f"#define SEAM_ENTRYPOINT_VAR {_c_string(ENTRYPOINT_VAR)}",
        f"#define SEAM_ARGV0_VAR {_c_string(ARGV0_VAR)}",
        f"#define SEAM_JOB_ID_VAR {_c_string(JOB_ID_VAR)}",
        f"#define SEAM_VOLUME_OPTION_VAR {_c_string(VOLUME_OPTION_VAR)}",
        f"#define SEAM_BATCH_STEP {BATCH_STEP:#x}U",
        f"#define SEAM_DEFAULT_CONFIG {_c_string(DEFAULT_CONFIG)}",
        f"#define SEAM_RUN_DIR_KEY {_c_string(RUN_DIR_KEY)}",
        f"#define SEAM_DEFAULT_RUN_DIR {_c_string(DEFAULT_RUN_DIR)}",
        f"#define SEAM_CONFIG_BLANKS {_c_string(CONFIG_BLANKS)}",
        f"#define SEAM_STATE_PREFIX {_c_string(STATE_PREFIX)}",
        f"#define SEAM_STATE_SUFFIX {_c_string(STATE_SUFFIX)}",
        f"#define SEAM_STEP_INFIX {_c_string(STEP_INFIX)}",
        f"#define SEAM_RECORD_FORMAT {_c_string(RECORD_FORMAT)}",
        f"#define SEAM_RECORD_MAX {RECORD_MAX}",
        f"enum seam_kind {_enum('SEAM_KIND_', RECORD_KINDS, 'SEAM_KIND_COUNT')};",
        f"enum seam_key {_enum('SEAM_KEY_', [key for key, _ in RECORD_KEYS], 'SEAM_KEY_COUNT')};",
        f"#define SEAM_RECORD_KEYS {{ {keys} }}",
        f"#define SEAM_RECORD_REQUIRED ({_bits(RECORD_REQUIRED)})",
        f"#define SEAM_FAILURE_REQUIRED ({_bits(FAILURE_REQUIRED)})",
        f"#define SEAM_UINT_DIGITS {len(str(UINT_MAX))}",
        f"#define SEAM_NODE_MAX {NODE_MAX}",
        f"#define SEAM_NODE_CHARS {_c_string(NODE_CHARS)}",
        f"#define SEAM_NAME_CHARS {_c_string(NAME_CHARS)}",
        f"#define SEAM_PATH_MAX {PATH_MAX}",
        f"#define SEAM_DIGEST_PREFIX {_c_string(DIGEST_PREFIX)}",
        f"#define SEAM_IMAGE_ID_LENGTH {IMAGE_ID_LENGTH}",
        f"#define SEAM_ESCAPED_CHARS {_c_string(''.join(raw for raw, _ in ESCAPES))}",
        f"#define SEAM_ESCAPE_LETTERS {_c_string(''.join(escaped[1] for _, escaped in ESCAPES))}",
        f"enum seam_env_op {_enum('SEAM_ENV_', ENV_OPERATIONS, 'SEAM_ENV_OP_COUNT')};",
        f"#define SEAM_ENV_OPERATIONS {{ {', '.join(map(_c_string, ENV_OPERATIONS))} }}",
        f"#define SEAM_ENV_JOIN {_c_string(ENV_JOIN)}",
        f"#define SEAM_ENV_NAMES_SEPARATOR {_c_string(ENV_NAMES_SEPARATOR)}",
        f"#define SEAM_ENV_VALUE_MAX {ENV_VALUE_MAX}",
        f"#define SEAM_MARKER {_c_string(MARKER.lstrip('/'))}",
        f"#define SEAM_MARKER_FORMAT {_c_string(MARKER_FORMAT)}",
        f"#define SEAM_MARKER_MAX {MARKER_MAX}",
        f"#define SEAM_MARKER_JOB {_c_string(MARKER_FIELDS[0])}",
        f"#define SEAM_MARKER_DIGEST {_c_string(MARKER_FIELDS[1])}",
        f"#define SEAM_SERVER_PREFIX {_c_string(SERVER_PREFIX)}",
        f"#define SEAM_SERVER_SUFFIX {_c_string(SERVER_SUFFIX)}",
        f"#define SEAM_REQUEST_FORMAT {_c_string(REQUEST_FORMAT)}",
        f"#define SEAM_REQUEST_MAX {REQUEST_MAX}",
        *(f"#define SEAM_CALLBACK_{name.upper()} {_c_string(name)}" for name in SERVER_CALLBACKS),
        f"#define SEAM_STEP_SERVER_VARS {{ {', '.join(map(_c_string, STEP_SERVER_VARS))} }}",
        *(f"#define SEAM_REQUEST_{key.upper()} {_c_string(key)}" for key, _ in REQUEST_KEYS),
        f"enum seam_reply {_enum('SEAM_REPLY_', REPLY_LEVELS + (REPLY_END,), 'SEAM_REPLY_COUNT')};",
        f"#define SEAM_REPLY_KEYS {{ {', '.join(map(_c_string, REPLY_LEVELS + (REPLY_END,)))} }}",
        f"enum seam_served {{ SEAM_SERVED_OK = {SERVED_OK}, SEAM_SERVED_FAILED = {SERVED_FAILED},"
        f" SEAM_NOT_SERVED = {NOT_SERVED} }};",
        f"#define SEAM_START_TIME_FIELD {START_TIME_FIELD}",
        f"#define SEAM_FOREIGN_WRITE_BITS 0{FOREIGN_WRITE_BITS:o}",
        "/* digest, job, ms.enter, node, step, task, time */",
        f"#define SEAM_ENTER_FORMAT {_c_string(_enter_format())}",
        "",
        "#endif",
        "",
        "/* for spank/embed.h, which has spank.h */",
        "#if defined(SEAM_PY_CALL) && !defined(SEAM_PY_CALL_DEFINED)",
        "#define SEAM_PY_CALL_DEFINED",
        PY_CALL,
        "#endif",
        "",
    ]
    return "\n".join(lines)


def write_header(directory: str | None = None) -> str:
    """Write seam_table.h into `directory` (default: build/seam of the source tree) unless
    it is there already; return the directory, for the compiler's include path."""
    directory = directory or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          "build", "seam")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "seam_table.h")
    text = c_header()
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return directory
    except FileNotFoundError:
        pass
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return directory
