/*
 * C part of the Python module shifter_core._spank (cffi embedding mode).
 *
 * The plugin (plugin.c) loads this module only for jobs that use shifter.
 * shifter_python_start() starts the interpreter before cffi would start it on
 * its own terms: isolated from the caller's environment (PYTHONHOME,
 * PYTHONPATH...), without the site module, with an import path of exactly
 * the standard library, the venv's site-packages and the directory holding
 * shifter_core.  No .pth file runs code as root, and start-up is shorter.
 * shifter_py_dispatch() is the extern "Python" entry point (build_embed.py)
 * into shifter_core.spank.bridge.
 */
#include <stdio.h>
#include <limits.h>

#include "embed.h"

static int code_ready;

/* Called by the last line of the cffi init code. */
static void py_code_ready(void)
{
    code_ready = 1;
}

int shifter_python_code_ready(void)
{
    return code_ready;
}

static PyStatus append_path(PyConfig *config, const char *path)
{
    wchar_t *wide = Py_DecodeLocale(path, NULL);
    PyStatus status;

    if (wide == NULL)
        return PyStatus_Error("cannot decode an import path");
    status = PyWideStringList_Append(&config->module_search_paths, wide);
    PyMem_RawFree(wide);
    return status;
}

int shifter_python_start(const char *venv, const char *package_root)
{
    char exe[PATH_MAX], site_packages[PATH_MAX];
    const char *paths[] = { SHIFTER_STDLIB, SHIFTER_DYNLOAD, site_packages, package_root, NULL };
    PyConfig config;
    PyStatus status;

    if (Py_IsInitialized())
        return 0;
    if (snprintf(exe, sizeof exe, "%s/bin/python3", venv) >= (int) sizeof exe
        || snprintf(site_packages, sizeof site_packages, "%s/lib/%s/site-packages", venv,
                    SHIFTER_PYTHON_DIR) >= (int) sizeof site_packages) {
        slurm_error("shifter: venv path too long: %s", venv);
        return -1;
    }
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0;
    config.write_bytecode = 0;
    config.site_import = 0;
    config.module_search_paths_set = 1;
    status = PyConfig_SetBytesString(&config, &config.program_name, exe);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.executable, exe);
    for (const char **path = paths; *path && !PyStatus_Exception(status); path++)
        status = append_path(&config, *path);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        slurm_error("shifter: cannot start Python from %s: %s", venv,
                    status.err_msg ? status.err_msg : "unknown error");
        return -1;
    }
    PyEval_SaveThread();
    return 0;
}
