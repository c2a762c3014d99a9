"""cffi builder of shifter_core._seam: spank/seam.c, callable from Python.

The plugin's fast path parses what the prolog wrote and sets up the task the
way Python would; tests/unit/test_seam.py holds the two implementations to
the same answers through this module.  Nothing on the nodes imports it.
`setup.py` builds it through `cffi_modules`.
"""
import os
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from shifter_core import seam  # noqa: E402  (the table the C side is generated from)

ffi = cffi.FFI()
ffi.cdef("""
enum seam_status { SEAM_INVALID, SEAM_READY, SEAM_PYTHON, SEAM_FAILED, ... };

struct seam_record {
    unsigned long long job;
    int has_step;
    unsigned long long step;
    char node[];
    unsigned long long holder_pid, holder_start, mntns;
    char root[];
    char digest[];
    char provenance[];
    char workdir[];
    int python;
    const char *failed;
    const char *env;
    int env_count;
    ...;
};

struct seam_env {
    void *ctx;
    int (*get)(void *ctx, const char *name, char *buf, int size);
    int (*set)(void *ctx, const char *name, const char *value);
    int (*unset)(void *ctx, const char *name);
};

enum seam_status seam_parse_record(char *text, size_t len, struct seam_record *rec);
const char *seam_env_next(const char *cursor, int *op, const char **name, const char **value);
int seam_apply_env(const struct seam_record *rec, const struct seam_env *env, const char *keep);
int seam_unescape(char *text);
int seam_run_dir(char *text, size_t len, char *out, size_t size);
int seam_marker_matches(const char *text, size_t len, unsigned long long job, const char *digest,
                        char *found, size_t size);
int seam_start_time(const char *text, unsigned long long *start);
int seam_options_text(const int set[], char *const value[], char *out, size_t size);
int seam_enter_line(char *out, size_t size, const struct seam_record *rec, double ms,
                    unsigned int step, int task, double now);
int seam_root_only(unsigned int uid, unsigned int mode);
int seam_task_options_valid(const char *workdir, const char *env);

struct seam_request {
    const char *callback;
    unsigned long long job, uid, started_ns;
    long long step;
    int argc;
    char **argv;
    const int *set;
    char *const *value;
    char **envp;
};
long seam_request_text(const struct seam_request *req, char *out, size_t size);
int seam_reply_line(char *line, const char **text, unsigned long long *rc);

struct seam_plan {
    unsigned long long config[5];
    const char *lookup;
    const char *gateway[];
    int gateways;
    unsigned long long timeout_ms;
    const char *munge;
    const char *request;
    const char *export[];
    int exports;
    ...;
};
int seam_find_plan(char *text, size_t len, const char *options, struct seam_plan *plan);
int seam_http_answer(const char *text, size_t len, int *status, const char **body, size_t *body_len);
int seam_json_string(const char *text, size_t len, const char *key, char *out, size_t size);

extern "Python" int seam_test_get(void *, const char *, char *, int);
extern "Python" int seam_test_set(void *, const char *, const char *);
extern "Python" int seam_test_unset(void *, const char *);
""")
ffi.set_source(
    "shifter_core._seam",
    '#include "seam.h"',
    sources=[os.path.relpath(os.path.join(HERE, "seam.c"))],
    include_dirs=[HERE, seam.write_header()],
    extra_compile_args=["-Wall", "-Werror=implicit-function-declaration"],
)

if __name__ == "__main__":
    ffi.compile(tmpdir=os.path.dirname(HERE), verbose=True)
