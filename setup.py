"""Build and install shifter-py.

`pip install .` compiles the SPANK plugin in two parts: shifter_core/
shifter_spank.so (spank/plugin.c, fastpath.c, seam.c: the file plugstack.conf
names, no Python in it) and shifter_core/_spank*.so (spank/build_embed.py,
cffi embedding mode: the Python it loads only for jobs that need it).  Both
are built for the interpreter that runs pip, so install into a venv made with
the distribution's python3 (whose libpython the nodes' loader finds).

The names and formats the C and Python sides share are written once, in
shifter_core/seam.py; the header the C side includes is generated from it
here, into build/seam/.
"""
import os
import sys
import sysconfig

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shifter_core import seam  # noqa: E402

PLUGIN = "shifter_core.shifter_spank"


LAUNCHER = "shifter_core/libexec/shifter-entrypoint"


class BuildExt(build_ext):
    """The SPANK plugin is a plain shared object, named without Python's ABI tag;
    the --entrypoint launcher (spank/entrypoint.c) a static program next to it."""

    def run(self):
        super().run()
        target = LAUNCHER if self.inplace else os.path.join(self.build_lib, LAUNCHER)
        objects = self.compiler.compile(["spank/entrypoint.c", "spank/seam.c"], output_dir=self.build_temp,
                                        include_dirs=["spank", seam.write_header()], extra_postargs=["-Wall"])
        self.compiler.link_executable(objects, os.path.basename(target), output_dir=os.path.dirname(target),
                                      extra_postargs=["-static"])

    def get_ext_filename(self, fullname):
        # distutils asks with the full dotted name or with its last part only
        if fullname in (PLUGIN, PLUGIN.rsplit(".", 1)[1]):
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)


def _c_string(value: str) -> str:
    return '"%s"' % value


plugin = Extension(
    PLUGIN,
    sources=["spank/plugin.c", "spank/fastpath.c", "spank/seam.c"],
    include_dirs=["spank", seam.write_header()],
    libraries=["dl"],
    extra_compile_args=["-Wall", "-Werror=implicit-function-declaration"],
    define_macros=[
        ("SHIFTER_LIBPYTHON", _c_string(sysconfig.get_config_var("INSTSONAME"))),
        ("SHIFTER_PYTHON_DIR", _c_string("python" + sysconfig.get_config_var("VERSION"))),
        ("SHIFTER_MODULE_FILE", _c_string("_spank" + sysconfig.get_config_var("EXT_SUFFIX"))),
    ],
)

setup(
    name="shifter-py",
    version="0.1.0",
    description="Docker/OCI images on Slurm clusters, after NERSC's Shifter",
    python_requires=">=3.11",
    # migrations/ installs next to gateway/, where gateway.db looks for it
    packages=find_packages(include=["shifter_core", "shifter_core.*", "gateway", "gateway.*"])
    + ["migrations", "migrations.versions"],
    package_data={"gateway": ["*.ini", "templates/status/*.html", "static/*"], "migrations": ["script.py.mako"]},
    setup_requires=["cffi>=1.16"],
    ext_modules=[plugin],
    cffi_modules=["spank/build_embed.py:ffi", "spank/build_libc.py:ffi", "spank/build_munge.py:ffi",
                  "spank/build_seam.py:ffi"],
    cmdclass={"build_ext": BuildExt},
    install_requires=[
        "cffi>=1.16",
        "requests>=2.31",
        "click>=8.1",
        "cryptography>=41",
    ],
    extras_require={
        "gateway": [
            "flask>=3.0",
            "sqlalchemy>=2.0",
            "alembic>=1.13",
            "psycopg[binary]>=3.1",
            "gunicorn>=22",
            "zstandard>=0.22",
            "prometheus_client>=0.20",
        ],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "selenium>=4.20",
        ],
    },
    entry_points={
        "console_scripts": [
            "shifterimg=shifter_core.cli.shifterimg:main",
            "shifter-gateway=gateway.server:main",
            "shifter-admin=shifter_core.cli.admin:main",
        ],
    },
)
