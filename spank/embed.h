/*
 * What the SPANK plugin (plugin.c) and the embedded Python module
 * shifter_core._spank (embed.c, built by build_embed.py) share.  The plugin
 * loads the module, and with it libpython, only when a shifter option is in
 * play and the fast path cannot serve.
 */
#ifndef SHIFTER_EMBED_H
#define SHIFTER_EMBED_H

#include <slurm/spank.h>

/* struct py_call: one callback, as handed to Python (shifter_core.spank.bridge) */
#define SEAM_PY_CALL
#include "seam_table.h"

/* Exported by the module. */
typedef int (*py_start_fn)(const char *venv, const char *package_root); /* 0, or -1 logged */
typedef int (*py_dispatch_fn)(struct py_call *call);    /* the callback's rc */
typedef int (*py_ready_fn)(void);                       /* 1 once the Python code loaded */

#define PY_START "shifter_python_start"
#define PY_DISPATCH "shifter_py_dispatch"
#define PY_READY "shifter_python_code_ready"

#endif
