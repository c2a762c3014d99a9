/*
 * The C side of the seam with Python (shifter_core/seam.py): reading what
 * Python wrote and writing what Python reads, as pure functions without
 * SPANK, so that shifter_core._seam (build_seam.py) can hand them the same
 * inputs as their Python twins in tests/unit/test_seam.py.
 */
#ifndef SHIFTER_SEAM_H
#define SHIFTER_SEAM_H

#include <stddef.h>

#include "seam_table.h"         /* generated from shifter_core/seam.py */

#define SEAM_DIGEST_SIZE (sizeof SEAM_DIGEST_PREFIX + SEAM_IMAGE_ID_LENGTH)

/* The fields of a container record (container/record.py) that the fast path uses. */
struct seam_record {
    unsigned long long job;
    int has_step;                           /* a step's own container: its step; else the job's */
    unsigned long long step;
    char node[SEAM_NODE_MAX + 1];
    unsigned long long holder_pid, holder_start, mntns;
    char root[SEAM_PATH_MAX + 1];
    char digest[SEAM_DIGEST_SIZE];
    char provenance[SEAM_PATH_MAX + 1];     /* "" when the record names none */
    char workdir[SEAM_PATH_MAX + 1];        /* the image's WORKDIR; "" when none (or longer) */
    int python;
    const char *failed;     /* why the prolog failed, or NULL; points into the parsed text */
    const char *env;        /* env_count operations: op byte, name NUL, value NUL; in the text */
    int env_count;
};

enum seam_status {
    SEAM_INVALID = -1,      /* not a record Python would read either */
    SEAM_READY = 0,         /* a container the fast path can enter */
    SEAM_PYTHON = 1,        /* a container whose tasks need Python (CCM, module user hooks) */
    SEAM_FAILED = 2,        /* the prolog failed because of the job: rec->failed says why */
};

/* Parse `len` bytes of a record (modified in place; `rec` points into it). */
enum seam_status seam_parse_record(char *text, size_t len, struct seam_record *rec);

/* The operation at `cursor` (rec->env first); returns the next one. */
const char *seam_env_next(const char *cursor, int *op, const char **name, const char **value);

/* A task's environment, as the operations see it. */
struct seam_env {
    void *ctx;
    int (*get)(void *ctx, const char *name, char *buf, int size);  /* 0, 1 if unset, -1 */
    int (*set)(void *ctx, const char *name, const char *value);     /* 0 or -1 */
    int (*unset)(void *ctx, const char *name);                      /* 0 or -1 */
};

/* Apply the record's environment operations, as environ.apply does, the task's own
 * value of the comma-separated names in `keep` (--env, or NULL) winning over the
 * image's; 0 or -1. */
int seam_apply_env(const struct seam_record *rec, const struct seam_env *env, const char *keep);

/* A value seam.escape wrote, unescaped in place (seam.unescape); 0, or -1 for a bad escape. */
int seam_unescape(char *text);

/* udiRoot.conf's runDir as config.parse reads it (text modified in place); 0 or -1. */
int seam_run_dir(char *text, size_t len, char *out, size_t size);

/* Does the marker text name this job and digest (container/marker.py: matches)?
 * `found` gets what it names instead, for the message. */
int seam_marker_matches(const char *text, size_t len, unsigned long long job, const char *digest,
                        char *found, size_t size);

/* The start time in /proc/<pid>/stat's text (procfs.parse_start_time); 0 or -1. */
int seam_start_time(const char *text, unsigned long long *start);

/* The options the pin depends on (seam.PINNED_OPTIONS) as submit.pinned_options
 * renders them; 0, or -1 if they do not fit. */
int seam_options_text(const int set[SEAM_OPTION_COUNT], char *const value[SEAM_OPTION_COUNT],
                      char *out, size_t size);

/* The provenance line of a task that entered (seam.provenance_line); its length or -1. */
int seam_enter_line(char *out, size_t size, const struct seam_record *rec, double ms,
                    unsigned int step, int task, double now);

/* A callback for the node server (nodeserver.parse_request): written into `out`
 * if it fits; the length it needs (more than size: try again), or -1. */
struct seam_request {
    const char *callback;                   /* one of seam.SERVER_CALLBACKS */
    unsigned long long job, uid, started_ns;
    long long step;                         /* a step's callbacks only; else -1 */
    int argc;
    char **argv;                            /* the plugin's arguments */
    const int *set;                         /* SEAM_OPTION_COUNT of each */
    char *const *value;
    char **envp;                            /* NULL-terminated NAME=VALUE */
};
long seam_request_text(const struct seam_request *req, char *out, size_t size);

/* One line of the server's reply (nodeserver.reply_line), unescaped in place:
 * its enum seam_reply (SEAM_REPLY_COUNT if it is not one), the text, and for
 * SEAM_REPLY_RC the number. */
int seam_reply_line(char *line, const char **text, unsigned long long *rc);

/* A submit plan (shifter_core/spank/submit.py: save_plan): what a pinning srun,
 * sbatch or salloc decided from the options and udiRoot.conf. */
struct seam_plan {
    unsigned long long config[5];           /* udiRoot.conf: dev, ino, size, mtime ns, ctime ns */
    const char *lookup;                     /* the lookup's path on the gateway */
    const char *gateway[SEAM_PLAN_GATEWAYS];    /* "host port prefix" */
    int gateways;
    unsigned long long timeout_ms;
    const char *munge;                      /* munged's socket */
    const char *request;                    /* SEAM_REQUEST_VAR's value */
    const char *export[SEAM_PLAN_EXPORTS];  /* NAME=VALUE */
    int exports;
};

/* The newest complete plan for `options` in a plans file (submit.read_plans),
 * unescaped in place; 0, or -1 if there is none. */
int seam_find_plan(char *text, size_t len, const char *options, struct seam_plan *plan);

/* An HTTP/1.x answer read to its end (gwclient._parse_response): its status
 * and body (Content-Length respected); 0, or -1 if it is not HTTP. */
int seam_http_answer(const char *text, size_t len, int *status, const char **body, size_t *body_len);

/* The string value of `key` in a JSON object (as json.loads reads it), in UTF-8;
 * 0, or -1 if the text is no object holding such a string or it does not fit. */
int seam_json_string(const char *text, size_t len, const char *key, char *out, size_t size);

/* Root-owned and writable by nobody else (trust.root_only). */
int seam_root_only(unsigned int uid, unsigned int mode);

/* Could tasks honour --workdir and --env (NULL: not given), as taskopts.check asks? 1 or 0. */
int seam_task_options_valid(const char *workdir, const char *env);

#endif
