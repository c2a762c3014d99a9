/*
 * The plugin's fast path: what most steps of a shifter job need, in C, so
 * that neither srun nor slurmstepd starts Python for them.
 *
 * - srun inside a job whose image is already pinned, with the same options:
 *   the pin is in the environment already (shifter_core.spank.submit exports
 *   SHIFTER_PINNED_OPTIONS to recognise it).
 * - a task of an ordinary step entering the container the prolog built: the
 *   prolog left a record (shifter_core/container.py: JobContainer.save) with
 *   the holder of the container's namespace, its root, the pinned digest and
 *   the environment operations for the task (shifter_core/environ.py); this
 *   file follows it exactly as shifter_core/enter.py would.
 *
 * Anything else (the batch step, CCM, module user hooks, a record that does
 * not parse) takes the Python path, which is complete and reports errors in
 * full.  This file decides nothing the prolog did not write down.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "fastpath.h"

#define STATE_FORMAT "shifter-container 1"
#define MARKER_FORMAT "shifter-marker 1"
#define MARKER "var/shifterMarker"           /* shifter_core/container/marker.py */
#define MAX_RECORD (1 << 20)
#define MAX_ENV_VALUE (1 << 17)

static struct {
    unsigned long job;
    char node[256];
    long holder_pid;
    unsigned long long holder_start, mntns;
    char root[PATH_MAX];
    char digest[96];
    char provenance[PATH_MAX];
    int python;
    char *failed;         /* the reason the prolog failed, or NULL */
    char *env;            /* the "env" lines' values, each NUL-terminated, in order */
    int env_count;
} rec;

/* A whole file of at most `max` bytes, NUL-terminated (proc files included,
 * which report a size of 0); NULL if it cannot be read or is not root's. */
static char *read_small_file(const char *path, size_t max, int require_root_only)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    size_t used = 0;
    ssize_t n = 0;
    char *buf;

    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0 || (require_root_only && !fastpath_root_only(&st))
        || (buf = malloc(max)) == NULL) {
        close(fd);
        return NULL;
    }
    while (used < max - 1 && (n = read(fd, buf + used, max - 1 - used)) > 0)
        used += n;
    close(fd);
    if (n < 0 || used == max - 1) {
        free(buf);
        return NULL;
    }
    buf[used] = '\0';
    return buf;
}

/* udiRoot.conf's runDir (shifter_core/config.py: DEFAULT_RUN_DIR if unset); as there,
   the last line giving it wins and an empty value means the default. */
static int run_dir(const char *config, char *out, size_t size)
{
    char *text = read_small_file(config, MAX_RECORD, 1), *line, *save = NULL;
    int fits = 1;

    if (text == NULL)
        return -1;
    snprintf(out, size, "%s", "/run/shifter");
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '='), *key = line, *end;
        if (line[0] == '#' || eq == NULL)
            continue;
        *eq = '\0';
        while (*key == ' ' || *key == '\t')
            key++;
        for (end = eq; end > key && (end[-1] == ' ' || end[-1] == '\t'); end--)
            end[-1] = '\0';
        if (strcmp(key, "runDir") == 0) {
            char *value = eq + 1;
            while (*value == ' ' || *value == '\t')
                value++;
            for (end = value + strlen(value); end > value && (end[-1] == ' ' || end[-1] == '\t'); end--)
                end[-1] = '\0';
            fits = snprintf(out, size, "%s", value[0] ? value : "/run/shifter") < (int) size;
        }
    }
    free(text);
    return fits && out[0] == '/' ? 0 : -1;
}

/* Backslash escapes of the record: \\ and \n (container.py: _escape). */
static void unescape(char *s)
{
    char *out = s;
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            *out++ = *s == 'n' ? '\n' : *s;
        } else {
            *out++ = *s;
        }
    }
    *out = '\0';
}

static int parse_record(char *text)
{
    char *line, *save = NULL, *env_end;
    int seen = 0;

    if (strncmp(text, STATE_FORMAT "\n", sizeof STATE_FORMAT) != 0)
        return -1;
    rec.env = env_end = text;       /* env values are compacted to the front */
    rec.env_count = 0;
    rec.failed = NULL;
    for (line = strtok_r(text + sizeof STATE_FORMAT, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *value = strchr(line, ' ');
        if (value == NULL)
            continue;
        *value++ = '\0';
        if (strcmp(line, "job") == 0)
            seen |= (sscanf(value, "%lu", &rec.job) == 1) << 0;
        else if (strcmp(line, "node") == 0)
            seen |= (snprintf(rec.node, sizeof rec.node, "%s", value) < (int) sizeof rec.node) << 1;
        else if (strcmp(line, "failed") == 0) {
            unescape(value);
            rec.failed = value;     /* failure records hold no env lines that could move it */
        } else if (strcmp(line, "holder") == 0)
            seen |= (sscanf(value, "%ld %llu %llu", &rec.holder_pid, &rec.holder_start, &rec.mntns) == 3) << 2;
        else if (strcmp(line, "root") == 0)
            seen |= (value[0] == '/' && snprintf(rec.root, sizeof rec.root, "%s", value) < (int) sizeof rec.root) << 3;
        else if (strcmp(line, "digest") == 0)
            seen |= (strncmp(value, "sha256:", 7) == 0
                     && snprintf(rec.digest, sizeof rec.digest, "%s", value) < (int) sizeof rec.digest) << 4;
        else if (strcmp(line, "python") == 0)
            seen |= (sscanf(value, "%d", &rec.python) == 1) << 5;
        else if (strcmp(line, "provenance") == 0)
            snprintf(rec.provenance, sizeof rec.provenance, "%s", value);
        else if (strcmp(line, "env") == 0) {
            size_t n = strlen(value) + 1;
            memmove(env_end, value, n);
            env_end += n;
            rec.env_count++;
        }
    }
    if (rec.failed != NULL)
        return (seen & 0x3) == 0x3 ? 1 : -1;
    return seen == 0x3f ? 0 : -1;
}

static int node_name(char *out, size_t size)
{
    struct utsname u;
    if (uname(&u) != 0)
        return -1;
    u.nodename[strcspn(u.nodename, ".")] = '\0';
    return snprintf(out, size, "%s", u.nodename) < (int) size ? 0 : -1;
}

enum fastpath_record fastpath_load(spank_t sp, const char *config)
{
    char dir[PATH_MAX], node[256], path[PATH_MAX];
    uint32_t job;
    char *text;
    int parsed;

    if (run_dir(config, dir, sizeof dir) < 0 || node_name(node, sizeof node) < 0
        || spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS
        || snprintf(path, sizeof path, "%s/job%u.%s.state", dir, job, node) >= (int) sizeof path
        || (text = read_small_file(path, MAX_RECORD, 1)) == NULL)
        return RECORD_NONE;
    /* the record is kept for the task: parse_record points into `text` */
    parsed = parse_record(text);
    if (parsed < 0 || rec.job != job || strcmp(rec.node, node) != 0) {
        free(text);
        return RECORD_NONE;
    }
    if (parsed == 1)
        return RECORD_FAILED;
    return rec.python ? RECORD_PYTHON : RECORD_READY;
}

int fastpath_fail(spank_t sp)
{
    int task = 0;

    spank_get_item(sp, S_TASK_ID, &task);
    if (task == 0)
        slurm_error("shifter: job %lu cannot run on %s: %s", rec.job, rec.node, rec.failed);
    return -1;
}

static unsigned long long start_time(long pid)
{
    char path[64], *text, *p;
    unsigned long long start = 0;

    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    if ((text = read_small_file(path, 4096, 0)) == NULL)
        return 0;
    if ((p = strrchr(text, ')')) != NULL) {
        p++;                            /* the space before field 3 (state) */
        for (int field = 3; field < 22 && p; field++)
            p = strchr(p + 1, ' ');     /* the space before field + 1 */
        if (p)
            start = strtoull(p + 1, NULL, 10);
    }
    free(text);
    return start;
}

/* Open the container's namespace, making sure it is still the job's. */
static int open_namespace(void)
{
    char path[64];
    struct stat st;
    int fd;

    snprintf(path, sizeof path, "/proc/%ld/ns/mnt", rec.holder_pid);
    if (start_time(rec.holder_pid) != rec.holder_start || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    if (fstat(fd, &st) != 0 || st.st_ino != rec.mntns || start_time(rec.holder_pid) != rec.holder_start) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The container's own marker, read after the chroot without following any
 * symlink or leaving the root's own mount (shifter_core/container/marker.py):
 * its job and digest fields must be exactly the record's.  What it says
 * instead goes into `found`, for the message. */
static int marker_matches(char *found, size_t size)
{
    struct open_how how = { .flags = O_RDONLY | O_CLOEXEC,
                            .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS
                                       | RESOLVE_NO_MAGICLINKS };
    char text[4096], *line, *save = NULL, job[32];
    const char *their_job = "?", *their_digest = "?";
    int root, fd;
    ssize_t n;

    snprintf(found, size, "no readable %s", MARKER);
    if ((root = open("/", O_PATH | O_CLOEXEC)) < 0)
        return 0;
    fd = syscall(SYS_openat2, root, MARKER, &how, sizeof how);
    close(root);
    if (fd < 0)
        return 0;
    n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    line = strtok_r(text, "\n", &save);
    if (line == NULL || strcmp(line, MARKER_FORMAT) != 0)
        return 0;
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        if (strncmp(line, "job ", 4) == 0)
            their_job = line + 4;
        else if (strncmp(line, "digest ", 7) == 0)
            their_digest = line + 7;
    }
    snprintf(job, sizeof job, "%lu", rec.job);
    snprintf(found, size, "this one belongs to job %s (%s)", their_job, their_digest);
    return strcmp(their_job, job) == 0 && strcmp(their_digest, rec.digest) == 0;
}

static int apply_env(spank_t sp)
{
    char *item = rec.env, *current = malloc(MAX_ENV_VALUE);
    int rc = 0;

    if (current == NULL)
        return -1;
    for (int i = 0; i < rec.env_count && rc == 0; i++) {
        char *op = item, *name = strchr(item, ' '), *value;
        item += strlen(item) + 1;           /* the next one, before this one is cut up */
        if (name == NULL)
            return free(current), -1;
        *name++ = '\0';
        if ((value = strchr(name, '=')) == NULL)
            return free(current), -1;
        *value++ = '\0';
        unescape(name);
        unescape(value);
        if (strcmp(op, "set") == 0) {
            rc = spank_setenv(sp, name, value, 1) == ESPANK_SUCCESS ? 0 : -1;
        } else if (strcmp(op, "unset") == 0) {
            spank_unsetenv(sp, name);
        } else if (strcmp(op, "append") == 0 || strcmp(op, "prepend") == 0) {
            spank_err_t got = spank_getenv(sp, name, current, MAX_ENV_VALUE);
            if (got == ESPANK_SUCCESS && current[0]) {
                size_t n = strlen(current) + strlen(value) + 2;
                char *joined = malloc(n);
                if (joined == NULL)
                    return free(current), -1;
                if (op[0] == 'a')
                    snprintf(joined, n, "%s:%s", current, value);
                else
                    snprintf(joined, n, "%s:%s", value, current);
                rc = spank_setenv(sp, name, joined, 1) == ESPANK_SUCCESS ? 0 : -1;
                free(joined);
            } else if (got == ESPANK_SUCCESS || got == ESPANK_ENV_NOEXIST) {
                rc = spank_setenv(sp, name, value, 1) == ESPANK_SUCCESS ? 0 : -1;
            } else {
                rc = -1;
            }
        } else {
            rc = -1;
        }
    }
    free(current);
    return rc;
}

static void provenance_enter(spank_t sp, int log, double ms)
{
    uint32_t step = 0;
    int task = 0;
    char line[512];
    struct timespec now;

    spank_get_item(sp, S_JOB_STEPID, &step);
    spank_get_item(sp, S_TASK_ID, &task);
    clock_gettime(CLOCK_REALTIME, &now);
    /* the fields and order of shifter_core/provenance.py: Log.write */
    int n = snprintf(line, sizeof line,
                     "{\"digest\":\"%s\",\"event\":\"enter\",\"job\":%lu,\"ms\":{\"enter\":%.3f},"
                     "\"node\":\"%s\",\"step\":%u,\"task\":%d,\"time\":%.3f}\n",
                     rec.digest, rec.job, ms, rec.node, step, task, now.tv_sec + now.tv_nsec / 1e9);
    if (n > 0 && n < (int) sizeof line && write(log, line, n) != n)
        slurm_error("shifter: cannot write the provenance log %s: %s", rec.provenance, strerror(errno));
}

static int fail(const char *what)
{
    slurm_error("shifter: job %lu on %s: %s: %s", rec.job, rec.node, what, errno ? strerror(errno) : "refused");
    return -1;
}

int fastpath_enter(spank_t sp)
{
    char wanted[128], last_cap[16], found[256];
    struct timespec t0, t1;
    int ns, log = -1, caps;
    FILE *f;

    if (spank_getenv(sp, "SHIFTER_IMAGE_DIGEST", wanted, sizeof wanted) == ESPANK_SUCCESS
        && wanted[0] && strcmp(wanted, rec.digest) != 0) {
        slurm_error("shifter: this step asks for image %s, but job %lu's container holds %s;"
                    " one job runs one image", wanted, rec.job, rec.digest);
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if ((f = fopen("/proc/sys/kernel/cap_last_cap", "re")) == NULL || !fgets(last_cap, sizeof last_cap, f))
        return fail("cannot read cap_last_cap");
    fclose(f);
    caps = atoi(last_cap);
    if (rec.provenance[0]) {
        struct stat st;
        log = open(rec.provenance, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
        if (log < 0 || fstat(log, &st) != 0 || !fastpath_root_only(&st))
            return fail("cannot open the provenance log");
    }
    errno = 0;
    if ((ns = open_namespace()) < 0)
        return fail("the container is gone");
    if (setns(ns, CLONE_NEWNS) != 0)
        return fail("setns");
    close(ns);
    if (chroot(rec.root) != 0 || chdir("/") != 0)
        return fail("chroot");
    errno = 0;
    if (!marker_matches(found, sizeof found)) {
        slurm_error("shifter: not inside the container of job %lu (%s): %s", rec.job, rec.digest, found);
        return -1;
    }
    for (int cap = 0; cap <= caps; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
            return fail("cannot drop the capability bounding set");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail("cannot set no_new_privs");
    errno = 0;
    if (apply_env(sp) != 0)
        return fail("cannot set the task's environment");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (log >= 0) {
        provenance_enter(sp, log, (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
        close(log);
    }
    return 0;
}

int fastpath_pin_reusable(const char *options)
{
    const char *job = getenv("SLURM_JOB_ID"), *pinned = getenv("SHIFTER_PINNED_OPTIONS");
    const char *digest = getenv("SHIFTER_IMAGE_DIGEST");

    return job && job[0] && pinned && digest && strncmp(digest, "sha256:", 7) == 0
        && strcmp(pinned, options) == 0;
}
