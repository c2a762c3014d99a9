/*
 * shifter SPANK plugin (shifter_spank.so): the only C the nodes load for
 * every job.
 *
 * It exports the slurm_spank_* symbols, registers the shifter options and
 * hands callbacks to Python (shifter_core.spank.bridge), but only when a
 * shifter option is in play for this job and the fast path (fastpath.c)
 * cannot serve it.  Until then nothing of Python is even loaded: the plugin
 * does not link libpython, it dlopen()s it together with the embedded module
 * shifter_core._spank (embed.c, build_embed.py) on first need, so a job
 * without shifter options costs srun, sbatch, slurmstepd and the prolog no
 * more than loading this small file.  Its options, arguments and the names
 * it shares with Python come from shifter_core/seam.py (seam_table.h).
 *
 * Any failure to start Python or to load its code fails the callback instead
 * of letting the job run outside its container.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "embed.h"
#include "fastpath.h"

SPANK_PLUGIN(shifter, 1);

#if !defined(SHIFTER_LIBPYTHON) || !defined(SHIFTER_PYTHON_DIR) || !defined(SHIFTER_MODULE_FILE)
#error "SHIFTER_LIBPYTHON, SHIFTER_PYTHON_DIR and SHIFTER_MODULE_FILE must name the Python part"
#endif

/* ---- options ---------------------------------------------------------- */

static int opt_set[SEAM_OPTION_COUNT];
static char *opt_value[SEAM_OPTION_COUNT];

/* Slurm fires an option callback once per occurrence and, in slurmstepd,
 * twice per option (job-options block, then environment): the last value wins.
 * A flag's optarg may be NULL, "" or "(null)"; only its presence counts.
 *
 * --volume is the exception on the submit side (sbatch, salloc, srun): its
 * occurrences add up, ';'-joined in the order Slurm gives them (#SBATCH
 * lines, its SLURM_SPANK_ environment form, the command line), and an empty
 * one is refused.  forward_volumes hands the sum on. */
static int store_option(int which, const char *optarg, int remote)
{
    char *value = NULL;

    if (which == SEAM_OPT_VOLUME && !remote) {
        if (!optarg || !*optarg) {
            slurm_error("shifter: --volume is empty: give SOURCE:TARGET[:FLAGS], e.g. --volume=$HOME/in:/input:ro");
            return -1;
        }
        if (opt_value[which] && asprintf(&value, "%s;%s", opt_value[which], optarg) < 0)
            return -1;
    }
    opt_set[which] = 1;
    if (value == NULL && optarg && *optarg && strcmp(optarg, "(null)") != 0)
        value = strdup(optarg);
    free(opt_value[which]);
    opt_value[which] = value;
    return 0;
}

static int option_cb(int val, const char *optarg, int remote)
{
    if (val < 0 || val >= SEAM_OPTION_COUNT)
        return -1;
    return store_option(val, optarg, remote);
}

static struct spank_option options[] = {
#define OPTION(e, name, arginfo, usage, has_arg) { name, arginfo, usage, has_arg, SEAM_OPT_##e, option_cb },
    SEAM_OPTIONS(OPTION)
#undef OPTION
    SPANK_OPTIONS_TABLE_END
};

static int any_option_set(void)
{
    for (int i = 0; i < SEAM_OPTION_COUNT; i++)
        if (opt_set[i])
            return 1;
    return 0;
}

/* prolog and epilog run in a fresh process: ask Slurm for the job's options. */
static void load_job_options(spank_t sp)
{
    for (int i = 0; i < SEAM_OPTION_COUNT; i++) {
        char *optarg = NULL;
        if (spank_option_getopt(sp, &options[i], &optarg) == ESPANK_SUCCESS)
            store_option(i, optarg, 1);
    }
}

/* A step started by an srun that has no shifter plugin (srun inside an
 * autoshifted batch script) carries the job's choice in its environment.  With
 * --export=NONE (of sbatch, which its sruns inherit, or of srun) neither the
 * options nor that variable reach the step, only Slurm's copy of the
 * job-control environment (SLURM_SPANK_<name>), which the prolog built the
 * container from: it decides when the variable is absent. */
static int step_inherits_container(spank_t sp)
{
    char buf[8];

    if (spank_getenv(sp, SEAM_AUTOSHIFT_VAR, buf, sizeof buf) == ESPANK_SUCCESS)
        return strcmp(buf, "1") == 0;
    return spank_getenv(sp, "SLURM_SPANK_" SEAM_AUTOSHIFT_VAR, buf, sizeof buf) == ESPANK_SUCCESS
        && strcmp(buf, "1") == 0;
}

/* A task option not given takes its default from the environment
 * (SHIFTER_WORKDIR, SHIFTER_ENTRYPOINT, SHIFTER_ENV: a user's profile;
 * taskopts.with_defaults): the job's in slurmstepd, the submitting command's
 * own elsewhere.  task_defaults[i]'s default into buf, or NULL for none (a
 * flag's "0" or "" leaves it off). */
static const struct { int option; const char *var; } task_defaults[] = SEAM_TASK_OPTION_DEFAULTS;
#define TASK_DEFAULT_COUNT (sizeof task_defaults / sizeof *task_defaults)

static const char *task_option_default(spank_t sp, size_t i, char *buf, size_t size)
{
    const char *value = buf;

    if (spank_context() == S_CTX_REMOTE ? spank_getenv(sp, task_defaults[i].var, buf, size) != ESPANK_SUCCESS
                                         : (value = getenv(task_defaults[i].var)) == NULL)
        return NULL;
    return value[0] && (options[task_defaults[i].option].has_arg || strcmp(value, "0") != 0) ? value : NULL;
}

/* slurmstepd: the task options a step in a container was not given, from the job's environment. */
static void task_option_defaults(spank_t sp)
{
    char buf[4096];
    const char *value;

    for (size_t i = 0; i < TASK_DEFAULT_COUNT; i++)
        if (!opt_set[task_defaults[i].option] && (value = task_option_default(sp, i, buf, sizeof buf)))
            store_option(task_defaults[i].option, value, 1);
}

/* ---- Python ----------------------------------------------------------- */

static enum { PY_NOT_STARTED, PY_STARTED, PY_FAILED } py_state = PY_NOT_STARTED;
static py_dispatch_fn py_dispatch;
static py_ready_fn py_ready;

static const char *plugin_arg(int ac, char **av, const char *key)
{
    size_t n = strlen(key);
    for (int i = 0; i < ac; i++)
        if (strncmp(av[i], key, n) == 0 && av[i][n] == '=')
            return av[i] + n + 1;
    return NULL;
}

static int root_only(const char *venv, const char *path, struct stat *st, int sticky_ok)
{
    if (stat(path, st) != 0) {
        slurm_error("shifter: cannot start Python from %s: %s: %s", venv, path, strerror(errno));
        return 0;
    }
    /* a root-owned sticky directory (/tmp) lets nobody else rename root's entries */
    if (!seam_root_only(st->st_uid, st->st_mode) && !(sticky_ok && st->st_uid == 0 && (st->st_mode & S_ISVTX))) {
        slurm_error("shifter: refusing to run Python from %s: %s is not root-owned "
                    "or is writable by group/others", venv, path);
        return 0;
    }
    return 1;
}

/* The venv runs as root in slurmstepd: it, every directory above it, its
 * pyvenv.cfg and its site-packages must be root-owned and writable by nobody
 * else (directories above it may be root's sticky ones), as
 * shifter_core.trust.require_root_owned checks for the Python side.  A
 * directory that is not a venv is refused, so Python never falls back to
 * whatever the system's own path holds. */
static int venv_is_trusted(const char *venv)
{
    char path[PATH_MAX];
    struct stat st;
    const char *inside[] = { "pyvenv.cfg", "lib/" SHIFTER_PYTHON_DIR "/site-packages", NULL };

    for (const char **name = inside; *name; name++) {
        if (snprintf(path, sizeof path, "%s/%s", venv, *name) >= (int) sizeof path
            || !root_only(venv, path, &st, 0))
            return 0;
    }
    snprintf(path, sizeof path, "%s", venv);
    for (int above = 0;; above = 1) {
        if (!root_only(venv, path, &st, above))
            return 0;
        char *slash = strrchr(path, '/');
        if (slash == NULL || slash == path) {
            if (strcmp(path, "/") == 0)
                return 1;
            strcpy(path, "/");
        } else {
            *slash = '\0';
        }
    }
}

/* The plugin lies in the shifter_core package: the Python module is next to
 * it, and the package's parent directory is what Python imports it from. */
static int locate(char *module, char *package_root, size_t size)
{
    Dl_info info;
    char *slash;

    if (!dladdr((void *) &slurm_spank_init, &info) || !info.dli_fname || info.dli_fname[0] != '/'
        || snprintf(package_root, size, "%s", info.dli_fname) >= (int) size)
        return -1;
    *strrchr(package_root, '/') = '\0';                   /* .../shifter_core */
    if (snprintf(module, size, "%s/%s", package_root, SHIFTER_MODULE_FILE) >= (int) size)
        return -1;
    slash = strrchr(package_root, '/');
    if (slash == NULL || slash == package_root)
        return -1;
    *slash = '\0';                                        /* its parent */
    return 0;
}

static void *symbol(void *handle, const char *name, const char *file)
{
    void *sym = dlsym(handle, name);
    if (!sym)
        slurm_error("shifter: %s lacks %s: %s", file, name, dlerror());
    return sym;
}

/* Load libpython and the module (global scope: Slurm loads plugins
 * RTLD_LOCAL, and C extensions need libpython's symbols), then start Python. */
static int start_python(int ac, char **av)
{
    char module[PATH_MAX], package_root[PATH_MAX];
    void *handle;
    py_start_fn start;

    if (py_state == PY_STARTED)
        return 0;
    if (py_state == PY_FAILED)
        return -1;
    py_state = PY_FAILED;

    const char *venv = plugin_arg(ac, av, "venv");
    if (venv == NULL || venv[0] != '/') {
        slurm_error("shifter: plugstack.conf must give venv=<absolute path of the plugin's virtualenv>");
        return -1;
    }
    if (!venv_is_trusted(venv))
        return -1;
    if (locate(module, package_root, sizeof module) < 0) {
        slurm_error("shifter: cannot locate the plugin's own file");
        return -1;
    }
    if (!dlopen(SHIFTER_LIBPYTHON, RTLD_NOW | RTLD_GLOBAL)) {
        slurm_error("shifter: cannot start Python from %s: %s", venv, dlerror());
        return -1;
    }
    if (!(handle = dlopen(module, RTLD_NOW | RTLD_GLOBAL))) {
        slurm_error("shifter: cannot load %s: %s", module, dlerror());
        return -1;
    }
    start = (py_start_fn) symbol(handle, PY_START, module);
    py_dispatch = (py_dispatch_fn) symbol(handle, PY_DISPATCH, module);
    py_ready = (py_ready_fn) symbol(handle, PY_READY, module);
    if (!start || !py_dispatch || !py_ready || start(venv, package_root) != 0)
        return -1;
    py_state = PY_STARTED;
    return 0;
}

static long long now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long) now.tv_sec * 1000000000LL + now.tv_nsec;
}

static int dispatch(const char *callback, spank_t sp, int ac, char **av)
{
    struct py_call call = { callback, sp, spank_context(), ac, av, { 0 }, { 0 }, now_ns() };
    int rc;

    if (start_python(ac, av) < 0)
        return -1;
    for (int i = 0; i < SEAM_OPTION_COUNT; i++) {
        call.set[i] = opt_set[i];
        call.value[i] = opt_value[i];
    }
    rc = py_dispatch(&call);
    if (!py_ready()) {
        slurm_error("shifter: the plugin's Python code did not load (see the error above); "
                    "failing %s rather than running outside the container", callback);
        return -1;
    }
    return rc;
}

/* ---- SPANK entry points ----------------------------------------------- */

/* The plugin's arguments are checked when it loads, for every job: a typo in
 * plugstack.conf must stop jobs at once, not turn a feature off unnoticed.
 * (shifter_core.spank.settings checks the values it uses.) */
static int arguments_valid(int ac, char **av)
{
    static const struct { const char *name; int absolute; } known[] = SEAM_PLUGIN_ARGUMENTS;

    for (int i = 0; i < ac; i++) {
        int k = 0;
        for (; known[k].name; k++) {
            size_t n = strlen(known[k].name);
            if (strncmp(av[i], known[k].name, n) == 0 && av[i][n] == '='
                && (!known[k].absolute || av[i][n + 1] == '/'))
                break;
        }
        if (known[k].name == NULL) {
            slurm_error("shifter: plugstack.conf: bad plugin argument '%s' (known: %s)", av[i],
                        SEAM_PLUGIN_ARGUMENTS_KNOWN);
            return 0;
        }
    }
    if (plugin_arg(ac, av, "venv") == NULL) {
        slurm_error("shifter: plugstack.conf: venv= is required");
        return 0;
    }
    return 1;
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
    if (!arguments_valid(ac, av))
        return -1;
    switch (spank_context()) {
    case S_CTX_LOCAL:
    case S_CTX_REMOTE:
    case S_CTX_ALLOCATOR:
        for (struct spank_option *o = options; o->name; o++)
            if (spank_option_register(sp, o) != ESPANK_SUCCESS) {
                slurm_error("shifter: cannot register option --%s", o->name);
                return -1;
            }
        break;
    default:
        break;
    }
    return 0;
}

/* How this process serves the job, decided in init_post_opt. */
static enum { MODE_NONE, MODE_PYTHON, MODE_FAST, MODE_FAST_ENTER, MODE_FAILED } mode;

/* A step of Slurm's PMIx plugin: its tasks bring the step's PMIx directory
 * into the container (shifter_core/pmix.py).  srun sets SLURM_MPI_TYPE; a
 * user who sets it by hand only sends the step down the Python path. */
static int step_uses_pmix(spank_t sp)
{
    char type[32];

    return spank_getenv(sp, "SLURM_MPI_TYPE", type, sizeof type) == ESPANK_SUCCESS
        && strncmp(type, "pmix", 4) == 0;
}

/* A step whose srun pinned a view (image, volumes, modules) other than the
 * job's may need a container of its own (shifter_core/spank/step.py decides):
 * srun says so, or the digest it pinned is not the job container's. */
static int step_may_need_own_view(spank_t sp)
{
    char value[128];
    spank_err_t got;

    if (spank_getenv(sp, SEAM_OWN_VIEW_VAR, value, sizeof value) == ESPANK_SUCCESS && strcmp(value, "1") == 0)
        return 1;
    got = spank_getenv(sp, SEAM_DIGEST_VAR, value, sizeof value);
    return got == ESPANK_NOSPACE || (got == ESPANK_SUCCESS && value[0] && !fastpath_holds(value));
}

static const char *config_path(int ac, char **av)
{
    const char *config = plugin_arg(ac, av, "config");
    return config ? config : SEAM_DEFAULT_CONFIG;
}

/* A request to the node server for this callback, with the plugin's arguments and options. */
static struct seam_request server_request(const char *callback, int ac, char **av, long long started)
{
    extern char **environ;
    struct seam_request req = { callback, 0, 0, (unsigned long long) started, -1, ac, av, opt_set, opt_value,
                                environ };
    return req;
}

/* The node server built this step's own container (step.step_prolog): exit has it removed. */
static int built_own;

/* A step whose view is not its job container's: the node server builds the
 * step's own container, and its tasks enter it as they would the job's.  Without
 * a server, Python does it here (step.init_post_opt). */
static int own_container(spank_t sp, int ac, char **av, uint32_t step)
{
    struct seam_request req = server_request(SEAM_CALLBACK_STEP_PROLOG, ac, av, now_ns());
    const char *config = config_path(ac, av);
    enum seam_status record;

    switch (fastpath_serve_step(sp, config, &req)) {
    case FASTPATH_NOT_SERVED:
        return MODE_PYTHON;
    case 0:
        break;
    default:
        return MODE_FAILED;
    }
    record = fastpath_load(sp, config, step);
    if (record == SEAM_READY) {
        built_own = 1;
        return MODE_FAST_ENTER;
    }
    if (record != SEAM_INVALID)
        return MODE_PYTHON;     /* its tasks need Python: step.py finds the container, and removes it */
    /* the server found that the job's container serves the step after all */
    return fastpath_load(sp, config, -1) == SEAM_READY ? MODE_FAST_ENTER : MODE_PYTHON;
}

/* srun, sbatch, salloc: could the tasks honour the task options, given or taken from
 * the environment's defaults (taskopts.with_defaults)?  If not, Python refuses them
 * with the reason (taskopts.check), before a job or step exists. */
static int task_options_valid(spank_t sp)
{
    const char *value[SEAM_OPTION_COUNT] = { NULL };

    for (size_t i = 0; i < TASK_DEFAULT_COUNT; i++) {
        int o = task_defaults[i].option;
        value[o] = opt_set[o] ? opt_value[o] : task_option_default(sp, i, NULL, 0);
    }
    return seam_task_options_valid(value[SEAM_OPT_WORKDIR], value[SEAM_OPT_ENV]);
}

/* Can this step do without Python?  srun: when the job pinned these very
 * options already; srun, sbatch, salloc of a new job: when a submit plan for
 * these options lets the C pin it.  slurmstepd: when the tasks run on the host
 * (no --autoshift), or enter a container whose record asks for nothing more,
 * the job's or one the node server built for the step.  A job whose prolog
 * failed here because of the job fails every task. */
static int fast_path(spank_t sp, int ac, char **av)
{
    char text[3 * 4096];
    enum seam_status record = SEAM_INVALID;
    uint32_t step;
    int in_job;

    switch (spank_context()) {
    case S_CTX_LOCAL:
    case S_CTX_ALLOCATOR:
        /* the options as submit.pinned_options records them */
        if (!task_options_valid(sp) || seam_options_text(opt_set, opt_value, text, sizeof text) < 0)
            return MODE_PYTHON;
        in_job = spank_context() == S_CTX_LOCAL && getenv(SEAM_JOB_ID_VAR);
        if (in_job && fastpath_pin_reusable(text))
            return MODE_FAST;
        return fastpath_pin(sp, config_path(ac, av), text, in_job) == 0 ? MODE_FAST : MODE_PYTHON;
    case S_CTX_REMOTE:
        if (opt_set[SEAM_OPT_IMAGE] || opt_set[SEAM_OPT_AUTOSHIFT] || opt_set[SEAM_OPT_CCM])
            record = fastpath_load(sp, config_path(ac, av), -1);
        if (record == SEAM_FAILED)
            return MODE_FAILED;
        if (opt_set[SEAM_OPT_CCM])
            return MODE_PYTHON;
        if (!opt_set[SEAM_OPT_AUTOSHIFT])
            return MODE_FAST;
        if (spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS || step == SEAM_BATCH_STEP)
            return MODE_PYTHON;     /* the batch step binds its spool directory: enter.py */
        /* --entrypoint binds its launcher into the container, a PMIx step its directory: enter.py */
        if (opt_set[SEAM_OPT_ENTRYPOINT] || step_uses_pmix(sp))
            return MODE_PYTHON;
        /* srun --export=NONE left the step's pin behind: step.py sees whether it asks for the job's image */
        if (opt_set[SEAM_OPT_IMAGE] && spank_getenv(sp, SEAM_REQUEST_VAR, text, sizeof text) == ESPANK_ENV_NOEXIST)
            return MODE_PYTHON;
        if (step_may_need_own_view(sp))
            return own_container(sp, ac, av, step);
        return record == SEAM_READY ? MODE_FAST_ENTER : MODE_PYTHON;
    default:
        return MODE_PYTHON;
    }
}

/* Slurm forwards an option's last occurrence only: to slurmstepd in the
 * job-options block and in the environment (read in that order, so the
 * environment's value wins there), to the prolog and epilog in the
 * job-control environment.  Both environments get all of --volume instead.
 * (The Python side, when it runs, replaces this with the normalised form.) */
static int forward_volumes(spank_t sp)
{
    static const char name[] = SEAM_VOLUME_OPTION_VAR;

    if (spank_context() == S_CTX_REMOTE || opt_value[SEAM_OPT_VOLUME] == NULL)
        return 0;
    if (setenv(name, opt_value[SEAM_OPT_VOLUME], 1) != 0
        || spank_job_control_setenv(sp, name, opt_value[SEAM_OPT_VOLUME], 1) != ESPANK_SUCCESS) {
        slurm_error("shifter: cannot pass every --volume on to the job");
        return -1;
    }
    return 0;
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    if (forward_volumes(sp) < 0)
        return -1;
    if (!any_option_set()) {
        if (spank_context() != S_CTX_REMOTE || !step_inherits_container(sp))
            return 0;
        opt_set[SEAM_OPT_AUTOSHIFT] = 1;
    }
    if (spank_context() == S_CTX_REMOTE)
        task_option_defaults(sp);
    mode = fast_path(sp, ac, av);
    return mode == MODE_PYTHON ? dispatch("init_post_opt", sp, ac, av) : 0;
}

int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
    if (mode == MODE_FAILED)
        return fastpath_fail(sp);
    if (mode == MODE_FAST_ENTER)
        return fastpath_enter(sp, opt_value[SEAM_OPT_ENV]);
    return mode == MODE_PYTHON ? dispatch("task_init_privileged", sp, ac, av) : 0;
}

#define FORWARD_IN_PYTHON_MODE(name)                                 \
    int slurm_spank_##name(spank_t sp, int ac, char **av)            \
    {                                                                \
        return mode == MODE_PYTHON ? dispatch(#name, sp, ac, av) : 0; \
    }

FORWARD_IN_PYTHON_MODE(local_user_init)
FORWARD_IN_PYTHON_MODE(user_init)
FORWARD_IN_PYTHON_MODE(task_exit)

/* slurmstepd, once the step's tasks are gone: its own container goes. */
int slurm_spank_exit(spank_t sp, int ac, char **av)
{
    if (built_own) {
        struct seam_request req = server_request(SEAM_CALLBACK_STEP_EPILOG, ac, av, now_ns());
        int rc = fastpath_serve_step(sp, config_path(ac, av), &req);
        return rc == FASTPATH_NOT_SERVED ? dispatch(SEAM_CALLBACK_STEP_EPILOG, sp, ac, av) : rc;
    }
    return mode == MODE_PYTHON ? dispatch("exit", sp, ac, av) : 0;
}

/* The last callback before exec, as the user: the working directory (--workdir). */
int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
    if (mode == MODE_FAST_ENTER)
        return fastpath_task_init(opt_value[SEAM_OPT_WORKDIR]);
    return mode == MODE_PYTHON ? dispatch("task_init", sp, ac, av) : 0;
}

/* Built with -DSHIFTER_NO_JOB_SCRIPT only by bench/srun_overhead.py: without
 * these two symbols slurmd starts no prolog/epilog process for any job, which
 * separates that cost (Slurm's) from the plugin's own. */
#ifndef SHIFTER_NO_JOB_SCRIPT
/* The node server (fastpath_serve) runs them if there is one; else Python here,
 * which starts one for the next jobs. */
static int job_script(const char *callback, spank_t sp, int ac, char **av)
{
    struct seam_request req = server_request(callback, ac, av, now_ns());
    int rc;

    load_job_options(sp);
    if (!any_option_set() && !(strcmp(callback, SEAM_CALLBACK_JOB_EPILOG) == 0
                               && fastpath_has_step_containers(sp, config_path(ac, av))))
        return 0;
    rc = fastpath_serve(sp, config_path(ac, av), &req, NULL, 0);
    return rc == FASTPATH_NOT_SERVED ? dispatch(callback, sp, ac, av) : rc;
}

int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
    return job_script(SEAM_CALLBACK_JOB_PROLOG, sp, ac, av);
}

int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    return job_script(SEAM_CALLBACK_JOB_EPILOG, sp, ac, av);
}
#endif
