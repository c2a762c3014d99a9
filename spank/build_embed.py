"""cffi builder of shifter_core._spank, the embedded Python module of the SPANK plugin.

Embedding mode: the SPANK plugin (spank/plugin.c) dlopen()s this module when
a job uses shifter, calls shifter_python_start() (spank/embed.c) and then the
exported shifter_py_dispatch(), implemented in Python by
shifter_core.spank.bridge.  `setup.py` builds it through `cffi_modules`.

Not linked against libslurm: the spank_* and slurm_* symbols resolve from the
Slurm process (srun, sbatch, salloc, slurmd, slurmstepd) that loads the plugin.
"""
import os
import sys
import sysconfig

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from shifter_core import seam  # noqa: E402  (the table the C side is generated from)

CDEF = """
typedef struct spank_handle *spank_t;
typedef int... uid_t;
typedef int... gid_t;
typedef int... spank_err_t;

enum spank_context { S_CTX_ERROR, S_CTX_LOCAL, S_CTX_REMOTE, S_CTX_ALLOCATOR,
                     S_CTX_SLURMD, S_CTX_JOB_SCRIPT, ... };
enum spank_item { S_JOB_UID, S_JOB_GID, S_JOB_ID, S_JOB_STEPID, S_JOB_NNODES,
                  S_JOB_NODEID, S_JOB_LOCAL_TASK_COUNT, S_JOB_TOTAL_TASK_COUNT,
                  S_JOB_ARGV, S_JOB_ENV, S_TASK_ID, S_TASK_GLOBAL_ID,
                  S_TASK_PID, S_JOB_SUPPLEMENTARY_GIDS, ... };
static const int ESPANK_SUCCESS;
static const int ESPANK_ENV_NOEXIST;
static const int ESPANK_NOSPACE;

spank_err_t spank_get_item(spank_t spank, enum spank_item item, ...);
spank_err_t spank_getenv(spank_t spank, const char *var, char *buf, int len);
spank_err_t spank_setenv(spank_t spank, const char *var, const char *val, int overwrite);
spank_err_t spank_unsetenv(spank_t spank, const char *var);
spank_err_t spank_job_control_setenv(spank_t sp, const char *name, const char *value, int overwrite);
const char *spank_strerror(spank_err_t err);
void slurm_error(const char *format, ...);
void slurm_info(const char *format, ...);
void slurm_verbose(const char *format, ...);
void slurm_debug(const char *format, ...);

void py_code_ready(void);
""" + seam.PY_CALL

EXPORTED = "int shifter_py_dispatch(struct py_call *);"

# Runs once, inside Slurm, the first time the plugin calls into Python.  Its
# last line tells the C side that the Python code is ready; until then every
# callback fails.
INIT_CODE = """
from shifter_core._spank import ffi, lib
from shifter_core.spank import bridge
bridge.install(ffi, lib)
lib.py_code_ready()
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)
ffi.embedding_api(EXPORTED)
with open(os.path.join(HERE, "embed.c"), encoding="utf-8") as source:
    ffi.set_source(
        "shifter_core._spank",
        source.read(),
        include_dirs=[HERE, seam.write_header()],
        define_macros=[(name, '"%s"' % value) for name, value in (
            ("SHIFTER_STDLIB", sysconfig.get_paths()["stdlib"]),
            ("SHIFTER_DYNLOAD", sysconfig.get_config_var("DESTSHARED")),
            ("SHIFTER_PYTHON_DIR", "python" + sysconfig.get_config_var("VERSION")),
        )],
        extra_compile_args=["-Wall", "-Werror=implicit-function-declaration"],
        # cffi adds libpython for embedding only in ffi.compile(), not when
        # built through setuptools: name it here.
        libraries=["python" + sysconfig.get_config_var("LDVERSION")],
        library_dirs=[sysconfig.get_config_var("LIBDIR")],
        py_limited_api=False,
    )
ffi.embedding_init_code(INIT_CODE)

if __name__ == "__main__":
    ffi.compile(tmpdir=os.path.dirname(HERE), verbose=True)
