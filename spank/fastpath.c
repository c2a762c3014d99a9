/*
 * The plugin's fast path: what most steps of a shifter job need, in C, so
 * that neither srun nor slurmstepd starts Python for them.
 *
 * - srun inside a job whose image is already pinned, with the same options:
 *   the pin is in the environment already (shifter_core.spank.submit exports
 *   SHIFTER_PINNED_OPTIONS to recognise it).
 * - srun, sbatch or salloc of a new job with options pinned in Python before:
 *   the user's submit plan (shifter_core/spank/submitplan.py) says what to
 *   export; the digest comes from a lookup at the gateway done here.
 * - the prolog and the epilog, when the node server (a warm Python,
 *   shifter_core/spank/nodeserver.py) runs: it gets the callback over a unix
 *   socket and answers with the log lines and the result.
 * - a task of an ordinary step entering the container the prolog built: the
 *   prolog left a record (shifter_core/container/record.py) with the holder
 *   of the container's namespace, its root, the pinned digest and the
 *   environment operations for the task (shifter_core/environ.py); this file
 *   follows it exactly as shifter_core/enter.py would.
 *
 * Reading and writing what Python writes and reads is seam.c's, tested
 * against the Python side; this file does the system calls.  Anything else
 * (the batch step, CCM, module user hooks, a record that does not parse)
 * takes the Python path, which is complete and reports errors in full.  This
 * file decides nothing the prolog did not write down.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "fastpath.h"

extern char **environ;

static struct seam_record rec;
static char *rec_text;      /* what `rec` points into, kept for the task */

/* What `fd` reads, NUL-terminated, and its length in `len`: at most max + 1
 * bytes, so that the parsers can refuse a longer text; NULL on an error. */
static char *read_all(int fd, size_t max, size_t *len)
{
    char *buf = malloc(max + 2);
    size_t used = 0;
    ssize_t n = 0;

    if (buf == NULL)
        return NULL;
    while (used <= max && (n = read(fd, buf + used, max + 1 - used)) > 0)
        used += n;
    if (n < 0) {
        free(buf);
        return NULL;
    }
    buf[used] = '\0';
    *len = used;
    return buf;
}

/* A file, as read_all (proc files, which report a size of 0, included); NULL if
 * it cannot be read, or root must own it and does not. */
static char *read_small_file(int dir, const char *path, const struct open_how *how, size_t max,
                             int require_root_only, size_t *len)
{
    int fd = how ? syscall(SYS_openat2, dir, path, how, sizeof *how)
                 : openat(dir, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    char *text = NULL;

    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) == 0 && (!require_root_only || seam_root_only(st.st_uid, st.st_mode)))
        text = read_all(fd, max, len);
    close(fd);
    return text;
}

static int run_dir(const char *config, char *out, size_t size)
{
    size_t len;
    char *text = read_small_file(AT_FDCWD, config, NULL, SEAM_RECORD_MAX, 1, &len);
    int rc = text && len <= SEAM_RECORD_MAX ? seam_run_dir(text, len, out, size) : -1;

    free(text);
    return rc;
}

static int node_name(char *out, size_t size)
{
    struct utsname u;
    if (uname(&u) != 0)
        return -1;
    u.nodename[strcspn(u.nodename, ".")] = '\0';
    return snprintf(out, size, "%s", u.nodename) < (int) size ? 0 : -1;
}

enum seam_status fastpath_load(spank_t sp, const char *config, long long step)
{
    char dir[PATH_MAX], node[256], path[PATH_MAX], infix[32] = "";
    enum seam_status status;
    uint32_t job;
    size_t len;

    free(rec_text);
    rec_text = NULL;
    if (step >= 0)
        snprintf(infix, sizeof infix, SEAM_STEP_INFIX "%lld.", step);
    if (run_dir(config, dir, sizeof dir) < 0 || node_name(node, sizeof node) < 0
        || spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS
        || snprintf(path, sizeof path, "%s/" SEAM_STATE_PREFIX "%u.%s%s" SEAM_STATE_SUFFIX, dir, job, infix, node)
           >= (int) sizeof path
        || (rec_text = read_small_file(AT_FDCWD, path, NULL, SEAM_RECORD_MAX, 1, &len)) == NULL)
        return SEAM_INVALID;
    status = seam_parse_record(rec_text, len, &rec);
    if (status == SEAM_INVALID || rec.job != (unsigned long long) job || strcmp(rec.node, node) != 0
        || rec.has_step != (step >= 0) || (step >= 0 && rec.step != (unsigned long long) step)) {
        free(rec_text);
        rec_text = NULL;
        return SEAM_INVALID;
    }
    return status;
}

int fastpath_has_step_containers(spank_t sp, const char *config)
{
    char dir[PATH_MAX], node[256], prefix[64], suffix[300];
    uint32_t job;
    struct dirent *entry;
    int found = 0;
    DIR *d;

    if (run_dir(config, dir, sizeof dir) < 0 || node_name(node, sizeof node) < 0
        || spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS || (d = opendir(dir)) == NULL)
        return 0;
    snprintf(prefix, sizeof prefix, SEAM_STATE_PREFIX "%u." SEAM_STEP_INFIX, job);
    snprintf(suffix, sizeof suffix, ".%s" SEAM_STATE_SUFFIX, node);
    while (!found && (entry = readdir(d)) != NULL) {
        size_t len = strlen(entry->d_name), n = strlen(suffix);
        found = strncmp(entry->d_name, prefix, strlen(prefix)) == 0 && len > n
            && strcmp(entry->d_name + len - n, suffix) == 0;
    }
    closedir(d);
    return found;
}

int fastpath_holds(const char *digest)
{
    return strcmp(digest, rec.digest) == 0;
}

/* Why the node server could not build the step's own container: the line its tasks show. */
static char step_failure[1024];

int fastpath_fail(spank_t sp)
{
    int task = 0;

    spank_get_item(sp, S_TASK_ID, &task);
    if (task != 0)
        return -1;
    if (step_failure[0])
        slurm_error("%s", step_failure);
    else
        slurm_error("shifter: job %llu cannot run on %s: %s", rec.job, rec.node, rec.failed);
    return -1;
}

static int start_time(unsigned long long pid, unsigned long long *start)
{
    char path[64], *text;
    size_t len;
    int rc;

    snprintf(path, sizeof path, "/proc/%llu/stat", pid);
    if ((text = read_small_file(AT_FDCWD, path, NULL, 4096, 0, &len)) == NULL)
        return -1;
    rc = seam_start_time(text, start);
    free(text);
    return rc;
}

static int holder_is_ours(void)
{
    unsigned long long start;
    return start_time(rec.holder_pid, &start) == 0 && start == rec.holder_start;
}

/* Open the container's namespace, making sure it is still the job's. */
static int open_namespace(void)
{
    char path[64];
    struct stat st;
    int fd;

    snprintf(path, sizeof path, "/proc/%llu/ns/mnt", rec.holder_pid);
    if (!holder_is_ours() || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    if (fstat(fd, &st) != 0 || st.st_ino != rec.mntns || !holder_is_ours()) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The container's own marker, read after the chroot without following any
 * symlink or leaving the root's own mount: its job and digest fields must be
 * exactly the record's (seam_marker_matches).  What it says instead goes
 * into `found`, for the message. */
static int marker_matches(char *found, size_t size)
{
    struct open_how how = { .flags = O_RDONLY | O_CLOEXEC,
                            .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS
                                       | RESOLVE_NO_MAGICLINKS };
    int root, matches;
    size_t len;
    char *text;

    snprintf(found, size, "no readable %s", SEAM_MARKER);
    if ((root = open("/", O_PATH | O_CLOEXEC)) < 0)
        return 0;
    text = read_small_file(root, SEAM_MARKER, &how, SEAM_MARKER_MAX, 0, &len);
    close(root);
    if (text == NULL)
        return 0;
    matches = seam_marker_matches(text, len, rec.job, rec.digest, found, size);
    free(text);
    return matches;
}

/* The task's environment through SPANK, for seam_apply_env. */
static int env_get(void *sp, const char *name, char *buf, int size)
{
    spank_err_t got = spank_getenv(sp, name, buf, size);
    return got == ESPANK_SUCCESS ? 0 : got == ESPANK_ENV_NOEXIST ? 1 : -1;
}

static int env_set(void *sp, const char *name, const char *value)
{
    return spank_setenv(sp, name, value, 1) == ESPANK_SUCCESS ? 0 : -1;
}

static int env_unset(void *sp, const char *name)
{
    return spank_unsetenv(sp, name) == ESPANK_SUCCESS ? 0 : -1;
}

static void provenance_enter(spank_t sp, int log, double ms)
{
    uint32_t step = 0;
    int task = 0, n;
    char line[512];
    struct timespec now;

    spank_get_item(sp, S_JOB_STEPID, &step);
    spank_get_item(sp, S_TASK_ID, &task);
    clock_gettime(CLOCK_REALTIME, &now);
    n = seam_enter_line(line, sizeof line, &rec, ms, step, task, now.tv_sec + now.tv_nsec / 1e9);
    if (n > 0 && write(log, line, n) != n)
        slurm_error("shifter: cannot write the provenance log %s: %s", rec.provenance, strerror(errno));
}

static int fail(const char *what)
{
    slurm_error("shifter: job %llu on %s: %s: %s", rec.job, rec.node, what, errno ? strerror(errno) : "refused");
    return -1;
}

/* Where slurmstepd started the task on the host: the job's directory (fastpath_task_init). */
static char submit_dir[PATH_MAX];

int fastpath_enter(spank_t sp, const char *keep_env)
{
    struct seam_env env = { sp, env_get, env_set, env_unset };
    char wanted[128], last_cap[16], found[256];
    struct timespec t0, t1;
    int ns, log = -1, caps;
    FILE *f;

    if (spank_getenv(sp, SEAM_DIGEST_VAR, wanted, sizeof wanted) == ESPANK_SUCCESS
        && wanted[0] && strcmp(wanted, rec.digest) != 0) {
        slurm_error("shifter: this step asks for image %s, but the container it would enter (job %llu's)"
                    " holds %s", wanted, rec.job, rec.digest);
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
        if (log < 0 || fstat(log, &st) != 0 || !seam_root_only(st.st_uid, st.st_mode))
            return fail("cannot open the provenance log");
    }
    if (getcwd(submit_dir, sizeof submit_dir) == NULL)
        submit_dir[0] = '\0';
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
        slurm_error("shifter: not inside the container of job %llu (%s): %s", rec.job, rec.digest, found);
        return -1;
    }
    for (int cap = 0; cap <= caps; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
            return fail("cannot drop the capability bounding set");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail("cannot set no_new_privs");
    errno = 0;
    if (seam_apply_env(&rec, &env, keep_env) != 0)
        return fail("cannot set the task's environment");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (log >= 0) {
        provenance_enter(sp, log, (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
        close(log);
    }
    return 0;
}

/* The working directory, as taskopts.change_directory: as the user, after
 * Slurm's own chdir to the job's directory (slurmstepd does it after
 * task_init_privileged, going to /tmp when the container lacks it). */
int fastpath_task_init(const char *workdir)
{
    const char *fallback[] = { rec.workdir, "/" };
    char here[PATH_MAX];

    if (workdir) {
        if (!seam_task_options_valid(workdir, NULL))
            slurm_error("shifter: --workdir=%s: " SEAM_WORKDIR_RELATIVE, workdir);
        else if (chdir(workdir) == 0)
            return 0;
        else
            slurm_error("shifter: --workdir=%s: %s in the container", workdir, strerror(errno));
        return -1;
    }
    if (!getcwd(here, sizeof here) || strcmp(here, SEAM_SLURM_CHDIR_FALLBACK) != 0
        || !submit_dir[0] || strcmp(submit_dir, SEAM_SLURM_CHDIR_FALLBACK) == 0)
        return 0;       /* Slurm entered the job's directory in the container */
    for (size_t i = 0; i < sizeof fallback / sizeof *fallback; i++)
        if (fallback[i][0] && chdir(fallback[i]) == 0)
            return 0;
    return 0;
}

/* ---- the node server ---------------------------------------------------- */

static int connect_server(const char *config)
{
    char dir[PATH_MAX], node[256];
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    struct ucred peer;
    socklen_t len = sizeof peer;
    int fd;

    if (run_dir(config, dir, sizeof dir) < 0 || node_name(node, sizeof node) < 0
        || snprintf(addr.sun_path, sizeof addr.sun_path, "%s/" SEAM_SERVER_PREFIX "%s" SEAM_SERVER_SUFFIX, dir, node)
           >= (int) sizeof addr.sun_path
        || (fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return -1;
    if (connect(fd, (struct sockaddr *) &addr, sizeof addr) != 0
        || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || peer.uid != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        data += n;
        len -= n;
    }
    return shutdown(fd, SHUT_WR);
}

/* Log the reply's lines as the server's child would have in-process; its rc.
 * The last error line is also kept in `last_error` (when not NULL). */
static int relay_reply(int fd, const char *callback, char *last_error, size_t last_size)
{
    size_t size = 1 << 16, used = 0;
    char *buf = malloc(size), *line, *save = NULL;
    unsigned long long rc = SEAM_SERVED_FAILED;
    int ended = 0;
    ssize_t n;

    if (buf == NULL)
        return -1;
    while ((n = read(fd, buf + used, size - used - 1)) > 0) {
        used += n;
        if (used == size - 1 && size < SEAM_REQUEST_MAX) {
            char *bigger = realloc(buf, size *= 2);
            if (bigger == NULL)
                break;
            buf = bigger;
        }
    }
    buf[used] = '\0';
    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        const char *text;
        switch (seam_reply_line(line, &text, &rc)) {
        case SEAM_REPLY_ERROR:
            slurm_error("%s", text);
            if (last_error)
                snprintf(last_error, last_size, "%s", text);
            break;
        case SEAM_REPLY_INFO:
            slurm_info("%s", text);
            break;
        case SEAM_REPLY_DEBUG:
            slurm_debug("%s", text);
            break;
        case SEAM_REPLY_RC:
            ended = 1;
            break;
        default:
            break;
        }
    }
    free(buf);
    if (!ended) {
        slurm_error("shifter: the node server gave no answer to %s", callback);
        return -1;
    }
    return rc == SEAM_SERVED_OK ? 0 : rc == SEAM_NOT_SERVED ? FASTPATH_NOT_SERVED : -1;
}

int fastpath_serve(spank_t sp, const char *config, struct seam_request *req, char *last_error, size_t size)
{
    uint32_t job;
    uid_t uid;
    char *text;
    long len;
    int fd, rc = FASTPATH_NOT_SERVED;

    if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS || spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS)
        return FASTPATH_NOT_SERVED;
    req->job = job;
    req->uid = uid;
    if ((len = seam_request_text(req, NULL, 0)) < 0 || (text = malloc(len + 1)) == NULL)
        return FASTPATH_NOT_SERVED;
    seam_request_text(req, text, len + 1);
    if ((fd = connect_server(config)) >= 0) {
        if (send_all(fd, text, len) == 0)
            rc = relay_reply(fd, req->callback, last_error, size);
        close(fd);
    }
    free(text);
    return rc;
}

int fastpath_serve_step(spank_t sp, const char *config, struct seam_request *req)
{
    static const char *const names[] = SEAM_STEP_SERVER_VARS;
    char *envp[sizeof names / sizeof *names + 1] = { NULL };
    const int size = 1 << 16;
    char *value = malloc(size);
    uint32_t step;
    int n = 0, rc = FASTPATH_NOT_SERVED;

    if (value == NULL || spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS)
        goto done;
    req->step = step;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        spank_err_t got = spank_getenv(sp, names[i], value, size);
        if (got == ESPANK_ENV_NOEXIST)
            continue;
        if (got != ESPANK_SUCCESS || asprintf(&envp[n], "%s=%s", names[i], value) < 0)
            goto done;                      /* too long for here: Python's path */
        n++;
    }
    req->envp = envp;
    rc = fastpath_serve(sp, config, req, step_failure, sizeof step_failure);
    if (rc != 0 && rc != FASTPATH_NOT_SERVED && !step_failure[0] && strcmp(req->callback, SEAM_CALLBACK_STEP_PROLOG) == 0)
        snprintf(step_failure, sizeof step_failure, "shifter: step %u.%u cannot be set up on this node"
                 " (see slurmd's log)", (unsigned) req->job, step);
done:
    for (int i = 0; i < n; i++)
        free(envp[i]);
    free(value);
    return rc;
}

/* ---- pinning a new job from the user's submit plan ------------------------- */

/* libmunge, loaded only here (no header on the build host: munge.h's prototypes) */
struct munge_api {
    void *(*ctx_create)(void);
    void (*ctx_destroy)(void *ctx);
    int (*ctx_set)(void *ctx, int opt, ...);
    int (*encode)(char **cred, void *ctx, const void *buf, int len);
};

static int load_munge(struct munge_api *m)
{
    void *lib = dlopen("libmunge.so.2", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL)
        return -1;
    m->ctx_create = (void *(*)(void)) dlsym(lib, "munge_ctx_create");
    m->ctx_destroy = (void (*)(void *)) dlsym(lib, "munge_ctx_destroy");
    m->ctx_set = (int (*)(void *, int, ...)) dlsym(lib, "munge_ctx_set");
    m->encode = (int (*)(char **, void *, const void *, int)) dlsym(lib, "munge_encode");
    return m->ctx_create && m->ctx_destroy && m->ctx_set && m->encode ? 0 : -1;
}

/* A fresh credential for one request (munged decodes each once); free() it. */
static char *credential(const struct munge_api *m, const char *socket_path)
{
    void *ctx = m->ctx_create();
    char *cred = NULL;

    if (ctx == NULL)
        return NULL;
    if (m->ctx_set(ctx, SEAM_MUNGE_OPT_SOCKET, socket_path) != 0 || m->encode(&cred, ctx, NULL, 0) != 0)
        cred = NULL;
    m->ctx_destroy(ctx);
    return cred;
}

static double ms_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1e3 + (now.tv_nsec - start->tv_nsec) / 1e6;
}

/* Wait for `events` on fd until `deadline`; 0 when ready. */
static int wait_for(int fd, short events, const struct timespec *start, double timeout_ms)
{
    struct pollfd p = { fd, events, 0 };
    double left = timeout_ms - ms_since(start);
    return left > 0 && poll(&p, 1, (int) left + 1) == 1 && (p.revents & (events | POLLHUP)) ? 0 : -1;
}

/* GET `path` at "host port prefix" with the credential (gwclient.GatewayClient._send);
 * the answer read to its end into `buf`, its length, or -1. */
static long http_get(const char *gateway, const char *path, const char *cred, double timeout_ms,
                     char *buf, size_t size)
{
    char host[256], port[16], prefix[1024], request[8192];
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *found = NULL;
    struct timespec start;
    size_t used = 0;
    long result = -1;
    int fd = -1, n;

    if (sscanf(gateway, "%255s %15s %1023s", host, port, prefix) != 3)
        return -1;
    n = snprintf(request, sizeof request, "GET %s%s HTTP/1.0\r\nHost: %s:%s\r\n%s: %s\r\n\r\n",
                 strcmp(prefix, "/") == 0 ? "" : prefix, path, host, port, SEAM_GATEWAY_AUTH_HEADER, cred);
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (n < 0 || n >= (int) sizeof request || getaddrinfo(host, port, &hints, &found) != 0)
        return -1;
    for (struct addrinfo *a = found; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(found);
    if (fd < 0)
        return -1;
    if (wait_for(fd, POLLOUT, &start, timeout_ms) == 0 && send(fd, request, n, MSG_NOSIGNAL) == n) {
        ssize_t got = 1;
        while (used < size && wait_for(fd, POLLIN, &start, timeout_ms) == 0
               && (got = recv(fd, buf + used, size - used, 0)) > 0)
            used += got;
        if (got == 0)
            result = (long) used;
    }
    close(fd);
    return result;
}

/* The image id of the plan's request at one of its gateways, tried from a random one on
 * (as gwclient does); 0, or -1 for anything but a plain answer (Python then says why). */
static int look_up(const struct seam_plan *plan, char id[SEAM_IMAGE_ID_LENGTH + 1])
{
    struct munge_api munge;
    char *answer = malloc(SEAM_PLAN_LOOKUP_MAX);
    int first, rc = -1;

    if (answer == NULL || load_munge(&munge) < 0) {
        free(answer);
        return -1;
    }
    first = (int) ((unsigned) getpid() % (unsigned) plan->gateways);
    for (int i = 0; i < plan->gateways && rc < 0; i++) {
        char *cred = credential(&munge, plan->munge);
        const char *body;
        size_t body_len;
        int status = 0;
        long len;

        if (cred == NULL)
            break;
        len = http_get(plan->gateway[(first + i) % plan->gateways], plan->lookup, cred,
                       (double) plan->timeout_ms, answer, SEAM_PLAN_LOOKUP_MAX);
        free(cred);
        if (len < 0 || seam_http_answer(answer, len, &status, &body, &body_len) < 0 || status >= 500)
            continue;                       /* the next gateway, as gwclient does */
        if (status == 200 && seam_json_string(body, body_len, "id", id, SEAM_IMAGE_ID_LENGTH + 1) == 0
            && strlen(id) == SEAM_IMAGE_ID_LENGTH && id[strspn(id, "0123456789abcdef")] == '\0')
            rc = 0;
        else
            break;                          /* a definite answer this path does not handle */
    }
    free(answer);
    return rc;
}

/* The user's plans file: in their own home, theirs, written by nobody else. */
static char *read_plans(size_t *len)
{
    struct open_how how = { .flags = O_RDONLY | O_CLOEXEC, .resolve = RESOLVE_NO_SYMLINKS };
    struct passwd pw, *found = NULL;
    char strings[4096], *text;
    struct stat st;
    int home, fd;

    if (getpwuid_r(getuid(), &pw, strings, sizeof strings, &found) != 0 || found == NULL
        || (home = open(pw.pw_dir, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        return NULL;
    fd = syscall(SYS_openat2, home, SEAM_PLANS_FILE, &how, sizeof how);
    close(home);
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != getuid() || (st.st_mode & SEAM_FOREIGN_WRITE_BITS)) {
        close(fd);
        return NULL;
    }
    text = read_all(fd, SEAM_PLANS_MAX, len);
    close(fd);
    return text;
}

static int same_config(const char *config, const unsigned long long expected[5])
{
    struct stat st;
    return stat(config, &st) == 0 && st.st_dev == expected[0] && st.st_ino == expected[1]
        && (unsigned long long) st.st_size == expected[2]
        && (unsigned long long) st.st_mtim.tv_sec * 1000000000ULL + st.st_mtim.tv_nsec == expected[3]
        && (unsigned long long) st.st_ctim.tv_sec * 1000000000ULL + st.st_ctim.tv_nsec == expected[4];
}

/* Export as submit.init_post_opt does: the job's environment and job-control variables. */
static int export(spank_t sp, const char *name, const char *value)
{
    return setenv(name, value, 1) == 0 && spank_job_control_setenv(sp, name, value, 1) == ESPANK_SUCCESS ? 0 : -1;
}

/* What the job's container shows, as the job's environment pins it (submit._view);
 * `has` is 0 when the job pinned no image. */
struct view {
    int has;
    char request[4096], digest[SEAM_DIGEST_SIZE], volume[4096], module[1024];
};

static int copy_env(const char *name, char *out, size_t size)
{
    const char *value = getenv(name);
    return snprintf(out, size, "%s", value ? value : "") < (int) size ? 0 : -1;
}

static int job_view(struct view *v)
{
    v->has = getenv(SEAM_REQUEST_VAR) && *getenv(SEAM_REQUEST_VAR);
    return copy_env(SEAM_REQUEST_VAR, v->request, sizeof v->request) | copy_env(SEAM_DIGEST_VAR, v->digest, sizeof v->digest)
        | copy_env(SEAM_VOLUME_VAR, v->volume, sizeof v->volume) | copy_env(SEAM_MODULE_VAR, v->module, sizeof v->module);
}

static int same_env(const char *name, const char *value)
{
    const char *now = getenv(name);
    return strcmp(now ? now : "", value) == 0;
}

/* The job's pin of this same request (submit._inherited_pin), in id[]; 1 if there is
 * one, 0 if there is none, -1 if the job waits for its pull (Python handles that). */
static int inherited_pin(const struct seam_plan *plan, const struct view *job, char id[SEAM_IMAGE_ID_LENGTH + 1])
{
    const char *pinned[] = { SEAM_IMAGE_VAR, SEAM_IMAGE_TYPE_VAR, SEAM_DIGEST_VAR };

    if (!job->has || strcmp(job->request, plan->request) != 0)
        return 0;
    for (size_t i = 0; i < sizeof pinned / sizeof *pinned; i++)
        if (!getenv(pinned[i]) || !*getenv(pinned[i]))
            return -1;
    if (strcmp(getenv(SEAM_IMAGE_TYPE_VAR), "id") != 0 || strlen(getenv(SEAM_IMAGE_VAR)) != SEAM_IMAGE_ID_LENGTH)
        return -1;
    snprintf(id, SEAM_IMAGE_ID_LENGTH + 1, "%s", getenv(SEAM_IMAGE_VAR));
    return 1;
}

int fastpath_pin(spank_t sp, const char *config, const char *options, int step)
{
    char id[SEAM_IMAGE_ID_LENGTH + 1], digest[SEAM_DIGEST_SIZE], ms[32];
    struct view job = { 0 };
    struct seam_plan plan;
    struct timespec start;
    size_t len;
    char *text;
    int rc = -1, inherited = 0;

    clock_gettime(CLOCK_MONOTONIC, &start);
    if ((step && job_view(&job) != 0) || (text = read_plans(&len)) == NULL)
        return -1;
    if (seam_find_plan(text, len, options, &plan) == 0 && same_config(config, plan.config)
        && (inherited = step ? inherited_pin(&plan, &job, id) : 0) >= 0 && (inherited || look_up(&plan, id) == 0)) {
        snprintf(digest, sizeof digest, "%s%s", SEAM_DIGEST_PREFIX, id);
        snprintf(ms, sizeof ms, "%.1f", ms_since(&start));
        rc = export(sp, SEAM_REQUEST_VAR, plan.request) | export(sp, SEAM_IMAGE_VAR, id)
           | export(sp, SEAM_IMAGE_TYPE_VAR, "id") | export(sp, SEAM_DIGEST_VAR, digest)
           | (inherited ? 0 : export(sp, SEAM_LOOKUP_VAR, ms));
        for (int i = 0; i < plan.exports && rc == 0; i++) {
            char *eq = strchr(plan.export[i], '=');
            *eq = '\0';
            rc = export(sp, plan.export[i], eq + 1);
        }
        if (rc == 0 && !step)
            rc = export(sp, SEAM_OWN_VIEW_VAR, "0");
        else if (rc == 0 && (!job.has || strcmp(job.digest, digest) != 0 || !same_env(SEAM_VOLUME_VAR, job.volume)
                             || !same_env(SEAM_MODULE_VAR, job.module)))
            rc = export(sp, SEAM_OWN_VIEW_VAR, "1");    /* the step may need a container of its own */
        if (rc == 0)
            rc = setenv(SEAM_PINNED_OPTIONS_VAR, options, 1);
    }
    free(text);
    return rc;
}

int fastpath_pin_reusable(const char *options)
{
    const char *job = getenv(SEAM_JOB_ID_VAR), *pinned = getenv(SEAM_PINNED_OPTIONS_VAR);
    const char *digest = getenv(SEAM_DIGEST_VAR);

    return job && job[0] && pinned && digest && strncmp(digest, SEAM_DIGEST_PREFIX, sizeof SEAM_DIGEST_PREFIX - 1) == 0
        && strcmp(pinned, options) == 0;
}
