"""Build and install shifter-py.

`pip install .` compiles the SPANK shim (spank/build_shim.py, cffi embedding
mode) into shifter_core/_spank*.so and installs the Python packages and the
console scripts.  The shim links against the libpython of the interpreter that
runs pip, so install into a venv made with the distribution's python3 (the one
whose libpython the loader finds on the compute nodes).
"""
from setuptools import find_packages, setup

setup(
    name="shifter-py",
    version="0.1.0",
    description="Docker/OCI images on Slurm clusters, after NERSC's Shifter",
    python_requires=">=3.11",
    packages=find_packages(include=["shifter_core", "shifter_core.*", "gateway", "gateway.*"]),
    package_data={"gateway": ["*.ini"]},
    setup_requires=["cffi>=1.16"],
    cffi_modules=["spank/build_shim.py:ffi"],
    install_requires=[
        "cffi>=1.16",
        "requests>=2.31",
        "click>=8.1",
    ],
    extras_require={
        "gateway": [
            "flask>=3.0",
            "sqlalchemy>=2.0",
            "alembic>=1.13",
            "psycopg[binary]>=3.1",
            "gunicorn>=22",
            "zstandard>=0.22",
        ],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "cryptography>=41",
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
