/*
 * C part of the Python module shifter_core._spank (cffi embedding mode).
 *
 * The plugin (plugin.c) loads this module only for jobs that use shifter.
 * shifter_python_start() starts the interpreter from the plugin's venv,
 * isolated from the caller's environment (PYTHONHOME, PYTHONPATH...), before
 * cffi would start it on its own terms; shifter_py_dispatch() is the
 * extern "Python" entry point (build_shim.py) into shifter_core.spank.bridge.
 */
#include <stdio.h>
#include <limits.h>

#include "shim.h"

static int code_ready;

/* Called by the last line of the cffi init code. */
static void shim_python_ready(void)
{
    code_ready = 1;
}

int shifter_python_code_ready(void)
{
    return code_ready;
}

int shifter_python_start(const char *venv)
{
    char exe[PATH_MAX];
    PyConfig config;
    PyStatus status;

    if (Py_IsInitialized())
        return 0;
    if (snprintf(exe, sizeof exe, "%s/bin/python3", venv) >= (int) sizeof exe) {
        slurm_error("shifter: venv path too long: %s", venv);
        return -1;
    }
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0;
    config.write_bytecode = 0;
    config.site_import = 1;
    status = PyConfig_SetBytesString(&config, &config.program_name, exe);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.executable, exe);
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
