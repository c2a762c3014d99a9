/*
 * What the SPANK plugin (plugin.c) and the Python module (embed.c, built by
 * build_shim.py) share.  The plugin loads the module, and with it libpython,
 * only when a shifter option is in play.
 */
#ifndef SHIFTER_SHIM_H
#define SHIFTER_SHIM_H

#include <slurm/spank.h>

enum shim_option { OPT_IMAGE, OPT_VOLUME, OPT_MODULE, OPT_CCM, OPT_AUTOSHIFT, OPT_COUNT };

/* One callback, as handed to Python. */
struct shim_call {
    const char *callback;
    spank_t spank;
    int context;
    int argc;
    char **argv;
    int set[OPT_COUNT];
    const char *value[OPT_COUNT];
    long long started_ns;       /* CLOCK_MONOTONIC when the plugin took the call */
};

/* Exported by the module. */
typedef int (*shim_start_fn)(const char *venv, const char *package_root); /* 0, or -1 logged */
typedef int (*shim_dispatch_fn)(struct shim_call *call);    /* the callback's rc */
typedef int (*shim_ready_fn)(void);                         /* 1 once the Python code loaded */

#define SHIM_START "shifter_python_start"
#define SHIM_DISPATCH "shifter_py_dispatch"
#define SHIM_READY "shifter_python_code_ready"

#endif
