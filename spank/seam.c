/*
 * The C side of the seam with Python: what the fast path (fastpath.c) and
 * the plugin (plugin.c) read that Python wrote, and write that Python reads.
 * Each function names its Python twin; tests/unit/test_seam.py runs both on
 * the same inputs through shifter_core._seam.  The names, keys and formats
 * come from shifter_core/seam.py through the generated seam_table.h.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "seam.h"

static const struct { const char *name; enum seam_kind kind; } record_keys[] = SEAM_RECORD_KEYS;
static const char *const env_operations[] = SEAM_ENV_OPERATIONS;

/* ---- values ------------------------------------------------------------ */

/* What Python's strict UTF-8 decoder accepts. */
static int valid_utf8(const unsigned char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        unsigned int c = s[i], cp, min;
        size_t more;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            more = 1, cp = c & 0x1F, min = 0x80;
        else if (c >= 0xE0 && c <= 0xEF)
            more = 2, cp = c & 0x0F, min = 0x800;
        else if (c >= 0xF0 && c <= 0xF4)
            more = 3, cp = c & 0x07, min = 0x10000;
        else
            return 0;
        if (len - i <= more)
            return 0;
        for (size_t k = 1; k <= more; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += more + 1;
    }
    return 1;
}

/* Text a parser may read: no NUL inside, valid UTF-8. */
static int plain_text(const char *text, size_t len)
{
    return memchr(text, '\0', len) == NULL && valid_utf8((const unsigned char *) text, len);
}

/* 1 to SEAM_UINT_DIGITS decimal digits, at most 2^64 - 1 (record.py: _uint). */
static int parse_uint(const char *s, size_t n, unsigned long long *out)
{
    unsigned long long v = 0;

    if (n == 0 || n > SEAM_UINT_DIGITS)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned int digit = (unsigned char) s[i] - '0';
        if (digit > 9 || v > (ULLONG_MAX - digit) / 10)
            return 0;
        v = v * 10 + digit;
    }
    *out = v;
    return 1;
}

/* `count` of them separated by single spaces, and nothing else. */
static int parse_uints(const char *s, unsigned long long *out, int count)
{
    for (int i = 0; i < count; i++) {
        size_t n = strcspn(s, " ");
        if (!parse_uint(s, n, &out[i]))
            return 0;
        s += n;
        if (i < count - 1 && *s++ != ' ')
            return 0;
    }
    return *s == '\0';
}

static int only(const char *s, const char *chars)
{
    return s[strspn(s, chars)] == '\0';
}

static int lower_hex(const char *s, size_t n)
{
    return strlen(s) == n && only(s, "0123456789abcdef");
}

/* name(,name)* or nothing */
static int names(const char *s)
{
    for (;;) {
        size_t n = strspn(s, SEAM_NAME_CHARS);
        if (n == 0)
            return 0;
        s += n;
        if (*s == '\0')
            return 1;
        if (*s++ != ',')
            return 0;
    }
}

/* digits, optionally a dot and digits */
static int decimal(const char *s)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0)
        return 0;
    if (s[n] == '\0')
        return 1;
    return s[n] == '.' && strspn(s + n + 1, "0123456789") > 0 && only(s + n + 1, "0123456789");
}

/* Backslash escapes (record.py: _unescape): copy `n` bytes of `src` to `dst`
 * unescaped (dst <= src is allowed) and NUL-terminate; the end of `dst`, or
 * NULL for an escape other than the seam's. */
static char *unescape(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '\\') {
            const char *letter = i + 1 < n ? strchr(SEAM_ESCAPE_LETTERS, src[i + 1]) : NULL;
            if (letter == NULL || *letter == '\0')
                return NULL;
            *dst++ = SEAM_ESCAPED_CHARS[letter - SEAM_ESCAPE_LETTERS];
            i++;
        } else {
            *dst++ = src[i];
        }
    }
    *dst = '\0';
    return dst + 1;
}

int seam_unescape(char *text)
{
    return unescape(text, text, strlen(text)) ? 0 : -1;
}

static int escaped(const char *s)
{
    for (; *s; s++)
        if (*s == '\\' && (*++s == '\0' || !strchr(SEAM_ESCAPE_LETTERS, *s)))
            return 0;
    return 1;
}

static int copy(char *dst, size_t size, const char *src)
{
    return snprintf(dst, size, "%s", src) < (int) size;
}

static int env_op(const char *s, size_t n)
{
    for (int op = 0; op < SEAM_ENV_OP_COUNT; op++)
        if (strlen(env_operations[op]) == n && strncmp(s, env_operations[op], n) == 0)
            return op;
    return -1;
}

/* op name=value, both escaped, the name not empty */
static int env_entry(const char *s)
{
    size_t n = strcspn(s, " ");
    const char *eq;

    if (s[n] != ' ' || env_op(s, n) < 0 || (eq = strchr(s + n + 1, '=')) == NULL || eq == s + n + 1)
        return 0;
    for (const char *p = s + n + 1; p < eq; p++)
        if (*p == '\\' && (++p == eq || !strchr(SEAM_ESCAPE_LETTERS, *p)))
            return 0;
    return escaped(eq + 1);
}

/* ---- the container record (container/record.py: parse) ------------------ */

static int value_valid(enum seam_kind kind, const char *value, struct seam_record *rec, int key)
{
    unsigned long long numbers[3];

    switch (kind) {
    case SEAM_KIND_UINT:
        if (key == SEAM_KEY_STEP)
            return (rec->has_step = parse_uints(value, &rec->step, 1));
        return parse_uints(value, key == SEAM_KEY_JOB ? &rec->job : numbers, 1);
    case SEAM_KIND_UINT2:
        return parse_uints(value, numbers, 2);
    case SEAM_KIND_UINT3:
        if (!parse_uints(value, numbers, 3))
            return 0;
        rec->holder_pid = numbers[0], rec->holder_start = numbers[1], rec->mntns = numbers[2];
        return 1;
    case SEAM_KIND_BOOL:
        rec->python = value[0] == '1';
        return (value[0] == '0' || value[0] == '1') && value[1] == '\0';
    case SEAM_KIND_NODE:
        return value[0] && only(value, SEAM_NODE_CHARS) && copy(rec->node, sizeof rec->node, value);
    case SEAM_KIND_PATH:
        return value[0] == '/'
            && copy(key == SEAM_KEY_ROOT ? rec->root : rec->provenance, sizeof rec->root, value);
    case SEAM_KIND_IMAGE_ID:
        return lower_hex(value, SEAM_IMAGE_ID_LENGTH);
    case SEAM_KIND_DIGEST:
        return strncmp(value, SEAM_DIGEST_PREFIX, sizeof SEAM_DIGEST_PREFIX - 1) == 0
            && lower_hex(value + sizeof SEAM_DIGEST_PREFIX - 1, SEAM_IMAGE_ID_LENGTH)
            && copy(rec->digest, sizeof rec->digest, value);
    case SEAM_KIND_NAMES:
        return value[0] == '\0' || names(value);
    case SEAM_KIND_ESCAPED:
        if (key == SEAM_KEY_FAILED)
            rec->failed = value;
        if (key == SEAM_KEY_WORKDIR && strlen(value) < sizeof rec->workdir)
            unescape(rec->workdir, value, strlen(value));   /* NULL (bad escape) is refused below */
        return escaped(value);
    case SEAM_KIND_TIMING: {
        size_t n = strspn(value, SEAM_NAME_CHARS);
        return n > 0 && value[n] == ' ' && decimal(value + n + 1);
    }
    case SEAM_KIND_ENV:
        rec->env_count++;
        return env_entry(value);
    default:
        return 0;
    }
}

/* One `key value` line; the key's index, or -1. */
static int record_line(char *line, struct seam_record *rec)
{
    char *value = strchr(line, ' ');

    if (value == NULL)
        return -1;
    for (int key = 0; key < SEAM_KEY_COUNT; key++) {
        size_t n = strlen(record_keys[key].name);
        if ((size_t) (value - line) == n && strncmp(line, record_keys[key].name, n) == 0)
            return value_valid(record_keys[key].kind, value + 1, rec, key) ? key : -1;
    }
    return -1;
}

/* Move the env operations, unescaped, to the front of the text: op byte,
 * name NUL, value NUL.  Lines are NUL-separated by now; each entry is
 * shorter than its line, so nothing unread is overwritten. */
static void compact_env(char *text, size_t len, struct seam_record *rec)
{
    char *out = text, *end = text + len;

    size_t key = strlen(record_keys[SEAM_KEY_ENV].name);

    rec->env = text;
    for (char *line = text, *next; line < end; line = next) {
        next = line + strlen(line) + 1;         /* before the entry overwrites the line */
        if (strncmp(line, record_keys[SEAM_KEY_ENV].name, key) != 0 || line[key] != ' ')
            continue;
        char *op = line + key + 1, *name = op + strcspn(op, " ") + 1, *eq = strchr(name, '=');
        *out++ = (char) env_op(op, name - 1 - op);
        out = unescape(out, name, eq - name);
        out = unescape(out, eq + 1, strlen(eq + 1));
    }
}

enum seam_status seam_parse_record(char *text, size_t len, struct seam_record *rec)
{
    size_t format = sizeof SEAM_RECORD_FORMAT - 1;
    unsigned int seen = 0;

    memset(rec, 0, sizeof *rec);
    if (len > SEAM_RECORD_MAX || !plain_text(text, len) || strncmp(text, SEAM_RECORD_FORMAT, format) != 0
        || (text[format] != '\n' && text[format] != '\0'))
        return SEAM_INVALID;
    for (char *p = text; p < text + len; p++)
        if (*p == '\n')
            *p = '\0';
    for (char *line = text + format + 1; line < text + len; line += strlen(line) + 1) {
        int key;
        if (*line == '\0')
            continue;
        if ((key = record_line(line, rec)) < 0)
            return SEAM_INVALID;
        seen |= 1u << key;
    }
    if (rec->failed) {
        char *reason = (char *) rec->failed;
        unescape(reason, reason, strlen(reason));
        rec->env_count = 0;
        return (seen & SEAM_FAILURE_REQUIRED) == SEAM_FAILURE_REQUIRED ? SEAM_FAILED : SEAM_INVALID;
    }
    if ((seen & SEAM_RECORD_REQUIRED) != SEAM_RECORD_REQUIRED)
        return SEAM_INVALID;
    compact_env(text + format + 1, len > format ? len - format - 1 : 0, rec);
    return rec->python ? SEAM_PYTHON : SEAM_READY;
}

const char *seam_env_next(const char *cursor, int *op, const char **name, const char **value)
{
    *op = (unsigned char) cursor[0];
    *name = cursor + 1;
    *value = *name + strlen(*name) + 1;
    return *value + strlen(*value) + 1;
}

/* ---- the task's environment (environ.apply) ------------------------------ */

/* Is `name` one of the comma-separated `names` (--env)?  NULL lists none. */
static int listed(const char *names, const char *name)
{
    size_t n = strlen(name);

    for (const char *s = names; s && *s; s += strcspn(s, SEAM_ENV_NAMES_SEPARATOR), s += *s != '\0')
        if (strncmp(s, name, n) == 0 && (s[n] == '\0' || strchr(SEAM_ENV_NAMES_SEPARATOR, s[n])))
            return 1;
    return 0;
}

int seam_apply_env(const struct seam_record *rec, const struct seam_env *env, const char *keep)
{
    char *current = malloc(SEAM_ENV_VALUE_MAX);
    const char *cursor = rec->env;
    int rc = 0;

    if (current == NULL)
        return -1;
    for (int i = 0; i < rec->env_count && rc == 0; i++) {
        const char *name, *value;
        int op, got;

        cursor = seam_env_next(cursor, &op, &name, &value);
        if (op == SEAM_ENV_IMAGE && listed(keep, name)
            && (got = env->get(env->ctx, name, current, SEAM_ENV_VALUE_MAX)) != 1) {
            rc = got < 0 ? -1 : 0;              /* the task's own value stays */
        } else if (op == SEAM_ENV_SET || op == SEAM_ENV_IMAGE) {
            rc = env->set(env->ctx, name, value);
        } else if (op == SEAM_ENV_UNSET) {
            rc = env->unset(env->ctx, name);
        } else if ((got = env->get(env->ctx, name, current, SEAM_ENV_VALUE_MAX)) < 0) {
            rc = -1;
        } else if (got == 1 || current[0] == '\0') {
            rc = env->set(env->ctx, name, value);
        } else {
            size_t n = strlen(current) + strlen(value) + 2;
            char *joined = malloc(n);
            if (joined == NULL) {
                rc = -1;
                break;
            }
            snprintf(joined, n, "%s" SEAM_ENV_JOIN "%s", op == SEAM_ENV_APPEND ? current : value,
                     op == SEAM_ENV_APPEND ? value : current);
            rc = env->set(env->ctx, name, joined);
            free(joined);
        }
    }
    free(current);
    return rc;
}

/* ---- udiRoot.conf's runDir (config.py: _logical_lines, _split_key, _absolute_path) ---- */

static char *strip(char *begin, char **end)
{
    while (begin < *end && *begin && strchr(SEAM_CONFIG_BLANKS, *begin))
        begin++;
    while (*end > begin && (*end)[-1] && strchr(SEAM_CONFIG_BLANKS, (*end)[-1]))
        (*end)--;
    return begin;
}

/* posixpath.normpath of an absolute path: one or two leading slashes kept,
 * no empty or '.' component, '..' taking the previous one away. */
static int normpath(const char *path, char *out, size_t size)
{
    size_t used = strspn(path, "/") == 2 ? 2 : 1, root = used;

    if (size < 3)
        return -1;
    memcpy(out, "//", used);
    for (const char *p = path; *p;) {
        size_t n;
        p += strspn(p, "/");
        n = strcspn(p, "/");
        if (n == 0 || (n == 1 && p[0] == '.')) {
            p += n;
            continue;
        }
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            while (used > root && out[used - 1] != '/')
                used--;
            if (used > root)
                used--;
        } else {
            if (used + 1 + n >= size)
                return -1;
            if (used > root)
                out[used++] = '/';
            memcpy(out + used, p, n);
            used += n;
        }
        p += n;
    }
    out[used] = '\0';
    return 0;
}

/* One logical line: `key=value`; -1 if config.py would refuse it. */
static int config_line(char *line, char *out, size_t size)
{
    char *eq = strchr(line, '='), *key_end, *value, *value_end;

    if (eq == NULL)
        return -1;
    key_end = eq;
    line = strip(line, &key_end);
    if (key_end == line)
        return -1;
    value_end = eq + 1 + strlen(eq + 1);
    value = strip(eq + 1, &value_end);
    *value_end = '\0';
    if ((size_t) (key_end - line) != strlen(SEAM_RUN_DIR_KEY) || strncmp(line, SEAM_RUN_DIR_KEY, key_end - line))
        return 0;
    if (*value == '\0')
        return copy(out, size, SEAM_DEFAULT_RUN_DIR) ? 0 : -1;
    return value[0] == '/' ? normpath(value, out, size) : -1;
}

int seam_run_dir(char *text, size_t len, char *out, size_t size)
{
    char *end = text + len, *start = NULL, *w = NULL;

    if (!copy(out, size, SEAM_DEFAULT_RUN_DIR) || !plain_text(text, len))
        return -1;
    if (len && end[-1] == '\n')
        end--;                          /* no empty line after the last newline */
    for (char *raw = text; raw <= end && len; ) {
        char *raw_end = memchr(raw, '\n', end - raw), *b, *e;
        int more;
        raw_end = raw_end ? raw_end : end;
        e = raw_end;
        b = strip(raw, &e);
        if (start == NULL) {
            if (b == e || *b == '#')
                goto next;
            start = w = raw;
        }
        more = e > b && e[-1] == '\\';
        if (more) {
            e--;
            b = strip(b, &e);
        }
        if (e > b) {
            if (w != start)
                *w++ = ' ';
            memmove(w, b, e - b);
            w += e - b;
        }
        if (!more) {
            *w = '\0';
            if (config_line(start, out, size) < 0)
                return -1;
            start = NULL;
        }
    next:
        raw = raw_end + 1;
    }
    return start == NULL ? 0 : -1;      /* a value continued past the end */
}

/* ---- the container's marker (container/marker.py: matches) -------------- */

int seam_marker_matches(const char *text, size_t len, unsigned long long job, const char *digest,
                        char *found, size_t size)
{
    const char *their_job = "?", *their_digest = "?", *end = text + len, *line, *next;
    size_t job_n = 1, digest_n = 1, format = sizeof SEAM_MARKER_FORMAT - 1;
    int format_ok;
    char wanted_job[SEAM_UINT_DIGITS + 1];

    snprintf(found, size, "no readable %s", SEAM_MARKER);
    if (len > SEAM_MARKER_MAX || !plain_text(text, len))
        return 0;
    next = memchr(text, '\n', len);
    format_ok = (size_t) ((next ? next : end) - text) == format && strncmp(text, SEAM_MARKER_FORMAT, format) == 0;
    for (line = next ? next + 1 : end; line < end; line = next + 1) {
        const char *space;
        size_t n;
        next = memchr(line, '\n', end - line);
        next = next ? next : end;
        if (next == line)
            continue;
        space = memchr(line, ' ', next - line);
        n = (space ? space : next) - line;
        const char *value = space ? space + 1 : next;
        if (n == strlen(SEAM_MARKER_JOB) && strncmp(line, SEAM_MARKER_JOB, n) == 0)
            their_job = value, job_n = next - value;
        else if (n == strlen(SEAM_MARKER_DIGEST) && strncmp(line, SEAM_MARKER_DIGEST, n) == 0)
            their_digest = value, digest_n = next - value;
    }
    snprintf(found, size, "this one belongs to job %.*s (%.*s)", (int) job_n, their_job,
             (int) digest_n, their_digest);
    snprintf(wanted_job, sizeof wanted_job, "%llu", job);
    return format_ok && job_n == strlen(wanted_job) && strncmp(their_job, wanted_job, job_n) == 0
        && digest_n == strlen(digest) && strncmp(their_digest, digest, digest_n) == 0;
}

/* ---- /proc/<pid>/stat (container/procfs.py: parse_start_time) ------------ */

int seam_start_time(const char *text, unsigned long long *start)
{
    const char *p = strrchr(text, ')');

    if (p == NULL || p[1] != ' ')
        return -1;
    p += 2;                                         /* field 3, the state */
    for (int field = 3; field < SEAM_START_TIME_FIELD; field++) {
        if ((p = strchr(p, ' ')) == NULL)
            return -1;
        p++;
    }
    return parse_uint(p, strcspn(p, " "), start) ? 0 : -1;
}

/* Text that grows as long as it fits in `out`, and counts what it would need. */
struct builder {
    char *out;
    size_t size, used;
    int full;
};

static void add(struct builder *b, const char *s, size_t n)
{
    if (!b->full && b->used + n < b->size)
        memcpy(b->out + b->used, s, n);
    else
        b->full = 1;
    b->used += n;
}

/* ---- the submit plan (spank/submit.py: save_plan, read_plans) ----------- */

/* One `key value` line of a plan; the key, or -1 if the line is bad. */
static int plan_line(char *line, struct seam_plan *plan)
{
    static const char *const keys[] = SEAM_PLAN_KEYS;
    char *value = strchr(line, ' ');
    int key;

    if (value == NULL)
        return -1;
    *value++ = '\0';
    for (key = 0; key < SEAM_PLAN_KEY_COUNT && strcmp(line, keys[key]) != 0; key++)
        ;
    if (key == SEAM_PLAN_CONFIG)
        return parse_uints(value, plan->config, 5) ? key : -1;
    if (key == SEAM_PLAN_TIMEOUT)
        return parse_uints(value, &plan->timeout_ms, 1) ? key : -1;
    if (key == SEAM_PLAN_KEY_COUNT || unescape(value, value, strlen(value)) == NULL)
        return -1;
    if (key == SEAM_PLAN_LOOKUP)
        plan->lookup = value;
    else if (key == SEAM_PLAN_GATEWAY && plan->gateways < SEAM_PLAN_GATEWAYS)
        plan->gateway[plan->gateways++] = value;
    else if (key == SEAM_PLAN_MUNGE)
        plan->munge = value;
    else if (key == SEAM_PLAN_REQUEST)
        plan->request = value;
    else if (key == SEAM_PLAN_EXPORT && plan->exports < SEAM_PLAN_EXPORTS && strchr(value, '='))
        plan->export[plan->exports++] = value;
    else if (key != SEAM_PLAN_PLAN)
        return -1;
    return key;
}

int seam_find_plan(char *text, size_t len, const char *options, struct seam_plan *plan)
{
    static const char *const keys[] = SEAM_PLAN_KEYS;
    size_t format = sizeof SEAM_PLANS_FORMAT - 1, start = strlen(keys[SEAM_PLAN_PLAN]);
    struct seam_plan current;
    const char *given = NULL;               /* the options of the plan being read */
    unsigned int seen = 0;
    int found = -1;

    if (len > SEAM_PLANS_MAX || !plain_text(text, len) || strncmp(text, SEAM_PLANS_FORMAT, format) != 0
        || (text[format] != '\n' && text[format] != '\0'))
        return -1;
    for (char *p = text; p < text + len; p++)
        if (*p == '\n')
            *p = '\0';
    for (char *line = text + format + 1, *next; ; line = next) {
        int end = line >= text + len, key;
        if (!end && *line == '\0') {
            next = line + 1;
            continue;
        }
        next = end ? line : line + strlen(line) + 1;
        if (end || (strncmp(line, keys[SEAM_PLAN_PLAN], start) == 0 && line[start] == ' ')) {
            /* the plan read so far is complete */
            if (given && strcmp(given, options) == 0 && (seen & SEAM_PLAN_REQUIRED) == SEAM_PLAN_REQUIRED) {
                *plan = current;
                found = 0;
            } else if (given && (seen & SEAM_PLAN_REQUIRED) != SEAM_PLAN_REQUIRED) {
                return -1;
            }
            if (end)
                return found;
            memset(&current, 0, sizeof current);
            seen = 0;
        } else if (given == NULL) {
            return -1;                      /* a field before any plan */
        }
        if ((key = plan_line(line, &current)) < 0)
            return -1;
        if (key == SEAM_PLAN_PLAN)
            given = line + start + 1;
        seen |= 1u << key;
    }
}

/* ---- what the gateway answers (gwclient._parse_response) ---------------- */

static int blank(char c)
{
    return c == ' ' || c == '\t';
}

int seam_http_answer(const char *text, size_t len, int *status, const char **body, size_t *body_len)
{
    const char *head_end = memmem(text, len, "\r\n\r\n", 4), *line = text, *next;
    unsigned long long number;

    if (head_end == NULL || strncmp(text, "HTTP/1.", 7) != 0)
        return -1;
    *body = head_end + 4;
    *body_len = len - (*body - text);
    for (int first = 1; line <= head_end; line = next + 2, first = 0) {
        const char *end = memmem(line, head_end + 2 - line, "\r\n", 2), *colon, *value;
        next = end ? end : head_end;
        if (first) {                        /* HTTP/1.x NNN reason */
            const char *code = memchr(line, ' ', next - line);
            if (code == NULL || next - code < 4 || !parse_uint(code + 1, 3, &number)
                || (next - code > 4 && code[4] != ' '))
                return -1;
            *status = (int) number;
            continue;
        }
        if ((colon = memchr(line, ':', next - line)) == NULL)
            continue;
        const char *name = line, *name_end = colon, *value_end = next;
        while (name < name_end && blank(*name))
            name++;
        while (name_end > name && blank(name_end[-1]))
            name_end--;
        for (value = colon + 1; value < value_end && blank(*value); value++)
            ;
        while (value_end > value && blank(value_end[-1]))
            value_end--;
        if (name_end - name == 14 && strncasecmp(name, "content-length", 14) == 0
            && parse_uint(value, value_end - value, &number) && number < *body_len)
            *body_len = number;
    }
    return 0;
}

/* ---- JSON (a string of the gateway's answer, as json.loads reads it) ----- */

static const char *json_space(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

static int hex4(const char *p, const char *end, unsigned int *value)
{
    *value = 0;
    if (end - p < 4)
        return 0;
    for (int i = 0; i < 4; i++) {
        int c = (unsigned char) p[i];
        int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (digit < 0)
            return 0;
        *value = *value << 4 | digit;
    }
    return 1;
}

/* A string at `p` (its opening quote): the text after it, its UTF-8 in `b`. */
static const char *json_string(const char *p, const char *end, struct builder *b)
{
    for (p++; p < end && *p != '"'; p++) {
        unsigned int cp;
        char utf8[4];
        int n;
        if ((unsigned char) *p < 0x20)
            return NULL;
        if (*p != '\\') {
            add(b, p, 1);
            continue;
        }
        if (++p == end)
            return NULL;
        switch (*p) {
        case '"': case '\\': case '/': add(b, p, 1); continue;
        case 'b': add(b, "\b", 1); continue;
        case 'f': add(b, "\f", 1); continue;
        case 'n': add(b, "\n", 1); continue;
        case 'r': add(b, "\r", 1); continue;
        case 't': add(b, "\t", 1); continue;
        case 'u': break;
        default: return NULL;
        }
        if (!hex4(p + 1, end, &cp))
            return NULL;
        p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {             /* a pair's first half */
            unsigned int low;
            if (end - p < 7 || p[1] != '\\' || p[2] != 'u' || !hex4(p + 3, end, &low)
                || low < 0xDC00 || low > 0xDFFF)
                return NULL;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            p += 6;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return NULL;
        }
        if (cp < 0x80)
            utf8[0] = cp, n = 1;
        else if (cp < 0x800)
            utf8[0] = 0xC0 | cp >> 6, utf8[1] = 0x80 | (cp & 0x3F), n = 2;
        else if (cp < 0x10000)
            utf8[0] = 0xE0 | cp >> 12, utf8[1] = 0x80 | (cp >> 6 & 0x3F), utf8[2] = 0x80 | (cp & 0x3F), n = 3;
        else
            utf8[0] = 0xF0 | cp >> 18, utf8[1] = 0x80 | (cp >> 12 & 0x3F), utf8[2] = 0x80 | (cp >> 6 & 0x3F),
            utf8[3] = 0x80 | (cp & 0x3F), n = 4;
        add(b, utf8, n);
    }
    return p < end ? p + 1 : NULL;
}

/* Any value at `p`: the text after it, or NULL. */
static const char *json_value(const char *p, const char *end, int depth)
{
    static const char *const words[] = { "true", "false", "null", "NaN", "Infinity", "-Infinity" };
    struct builder none = { NULL, 0, 0, 1 };

    p = json_space(p, end);
    if (p == end || depth > 64)
        return NULL;
    if (*p == '"')
        return json_string(p, end, &none);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = json_space(p + 1, end);
        if (p < end && *p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                if (p == end || *p != '"' || (p = json_string(p, end, &none)) == NULL)
                    return NULL;
                p = json_space(p, end);
                if (p == end || *p++ != ':')
                    return NULL;
            }
            if ((p = json_value(p, end, depth + 1)) == NULL)
                return NULL;
            p = json_space(p, end);
            if (p < end && *p == close)
                return p + 1;
            if (p == end || *p++ != ',')
                return NULL;
            p = json_space(p, end);
        }
    }
    for (size_t i = 0; i < sizeof words / sizeof *words; i++)
        if ((size_t) (end - p) >= strlen(words[i]) && strncmp(p, words[i], strlen(words[i])) == 0)
            return p + strlen(words[i]);
    {
        const char *start = p;
        if (p < end && *p == '-')
            p++;
        if (p == end || !(*p >= '0' && *p <= '9'))
            return NULL;
        if (*p == '0')
            p++;
        else
            while (p < end && *p >= '0' && *p <= '9')
                p++;
        if (p < end && *p == '.') {
            const char *digits = ++p;
            while (p < end && *p >= '0' && *p <= '9')
                p++;
            if (p == digits)
                return NULL;
        }
        if (p < end && (*p == 'e' || *p == 'E')) {
            p++;
            if (p < end && (*p == '+' || *p == '-'))
                p++;
            const char *digits = p;
            while (p < end && *p >= '0' && *p <= '9')
                p++;
            if (p == digits)
                return NULL;
        }
        return p > start ? p : NULL;
    }
}

int seam_json_string(const char *text, size_t len, const char *key, char *out, size_t size)
{
    const char *end = text + len, *p = json_space(text, end), *after;
    int found = -1;

    if (!plain_text(text, len) || p == end || *p != '{' || (after = json_value(p, end, 0)) == NULL
        || json_space(after, end) != end)
        return -1;                          /* not one JSON object */
    p = json_space(p + 1, end);
    while (p < end && *p == '"') {
        char name[256];
        struct builder k = { name, sizeof name, 0, 0 };
        const char *value;
        p = json_string(p, end, &k);
        p = json_space(p, end) + 1;         /* the ':' */
        value = json_space(p, end);
        p = json_value(value, end, 1);
        if (!k.full && k.used == strlen(key) && memcmp(name, key, k.used) == 0) {
            struct builder v = { out, size, 0, 0 };
            found = -1;
            if (*value == '"' && json_string(value, end, &v) && !v.full) {
                out[v.used] = '\0';
                found = 0;
            }
        }
        p = json_space(p, end);
        if (*p == ',')
            p = json_space(p + 1, end);
    }
    return found;
}

/* ---- what C writes for Python ------------------------------------------ */

/* seam.escape */
static void add_escaped(struct builder *b, const char *text)
{
    for (; *text; text++) {
        const char *special = strchr(SEAM_ESCAPED_CHARS, *text);
        char pair[2] = { '\\', special ? SEAM_ESCAPE_LETTERS[special - SEAM_ESCAPED_CHARS] : 0 };
        if (special)
            add(b, pair, 2);
        else
            add(b, text, 1);
    }
}

/* key text[=value]: both escaped */
static void add_line(struct builder *b, const char *key, const char *text, const char *value)
{
    add(b, key, strlen(key));
    add(b, " ", 1);
    add_escaped(b, text);
    if (value) {
        add(b, "=", 1);
        add_escaped(b, value);
    }
    add(b, "\n", 1);
}

long seam_request_text(const struct seam_request *req, char *out, size_t size)
{
    static const char *const names[] = {
#define NAME(e, name, arginfo, usage, has_arg) name,
        SEAM_OPTIONS(NAME)
#undef NAME
    };
    const unsigned long long numbers[] = { req->job, req->uid, req->started_ns };
    const char *keys[] = { SEAM_REQUEST_JOB, SEAM_REQUEST_UID, SEAM_REQUEST_STARTED };
    struct builder b = { out, size, 0, 0 };

    add(&b, SEAM_REQUEST_FORMAT "\n", sizeof SEAM_REQUEST_FORMAT);
    add_line(&b, SEAM_REQUEST_CALLBACK, req->callback, NULL);
    char number[SEAM_UINT_DIGITS + 1];

    for (int i = 0; i < 3; i++) {
        snprintf(number, sizeof number, "%llu", numbers[i]);
        add_line(&b, keys[i], number, NULL);
    }
    if (req->step >= 0) {
        snprintf(number, sizeof number, "%lld", req->step);
        add_line(&b, SEAM_REQUEST_STEP, number, NULL);
    }
    for (int i = 0; i < req->argc; i++)
        add_line(&b, SEAM_REQUEST_ARG, req->argv[i], NULL);
    for (int i = 0; i < SEAM_OPTION_COUNT; i++)
        if (req->set[i])
            add_line(&b, SEAM_REQUEST_OPTION, names[i], req->value[i]);
    for (char **env = req->envp; env && *env; env++)
        add_line(&b, SEAM_REQUEST_ENV, *env, NULL);
    if (b.used < size)
        out[b.used] = '\0';
    return b.used > SEAM_REQUEST_MAX ? -1 : (long) b.used;
}

int seam_reply_line(char *line, const char **text, unsigned long long *rc)
{
    static const char *const keys[] = SEAM_REPLY_KEYS;
    char *space = strchr(line, ' ');

    if (space == NULL)
        return SEAM_REPLY_COUNT;
    for (int key = 0; key < SEAM_REPLY_COUNT; key++) {
        if ((size_t) (space - line) != strlen(keys[key]) || strncmp(line, keys[key], space - line) != 0)
            continue;
        *text = space + 1;
        if (key == SEAM_REPLY_RC)
            return parse_uint(space + 1, strlen(space + 1), rc) ? key : SEAM_REPLY_COUNT;
        return plain_text(space + 1, strlen(space + 1)) && unescape(space + 1, space + 1, strlen(space + 1))
            ? key : SEAM_REPLY_COUNT;
    }
    return SEAM_REPLY_COUNT;
}

/* submit.pinned_options */
int seam_options_text(const int set[SEAM_OPTION_COUNT], char *const value[SEAM_OPTION_COUNT],
                      char *out, size_t size)
{
    static const int has_arg[] = {
#define HAS_ARG(e, name, arginfo, usage, arg) arg,
        SEAM_OPTIONS(HAS_ARG)
#undef HAS_ARG
    };
    size_t used = 0;

    for (int i = 0; i < SEAM_PINNED_OPTION_COUNT; i++) {
        const char *text = has_arg[i] ? (value[i] ? value[i] : "") : set[i] ? "1" : "0";
        int n = snprintf(out + used, size - used, "%s%s", i ? SEAM_PINNED_SEPARATOR : "", text);
        if (n < 0 || (size_t) n >= size - used)
            return -1;
        used += n;
    }
    return 0;
}

/* provenance.Log.write of an "enter" event (seam.provenance_line) */
int seam_enter_line(char *out, size_t size, const struct seam_record *rec, double ms,
                    unsigned int step, int task, double now)
{
    int n = snprintf(out, size, SEAM_ENTER_FORMAT, rec->digest, rec->job, ms, rec->node, step, task, now);
    return n >= 0 && (size_t) n < size ? n : -1;
}

/* trust.root_only */
int seam_root_only(unsigned int uid, unsigned int mode)
{
    return uid == 0 && !(mode & SEAM_FOREIGN_WRITE_BITS);
}

int seam_task_options_valid(const char *workdir, const char *env)
{
    if (workdir && workdir[0] != '/')
        return 0;
    for (const char *name = env; name; ) {
        size_t n = strcspn(name, SEAM_ENV_NAMES_SEPARATOR);
        if (n == 0 || memchr(name, '=', n))
            return 0;
        name = name[n] ? name + n + 1 : NULL;
    }
    return 1;
}
