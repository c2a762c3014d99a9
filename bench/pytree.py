"""A Pynamic-like Python package tree, and an image that holds it.

Pynamic (LLNL) stands for the Python applications whose start-up on a shared
file system made sites choose Shifter: thousands of modules and shared
libraries, opened and read by every rank at once.  This tree has `packages`
packages of `modules` pure-Python modules each (byte-compiled ahead, with
hash-based .pyc files that are never checked against their source, so no
importer compiles anything) and `extensions` C extension modules, each a
distinct shared library.  One import of `storm` followed by `storm.load_all()`
imports all of them.

    root = pytree.build()                    # cached under .cache/bench/
    layout = oci.Layout(dir); pytree.image(layout, root, "v1")

The image is Debian bookworm + python3 (ci/harness/debian.py, as bench/pull.py's) with
the tree in one more layer at IMAGE_TREE, so `python3` in the image and
Debian's /usr/bin/python3 on the nodes (the same 3.11) load the same files.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import random
import shutil
import subprocess
import sys
import sysconfig

from ci.harness import debian
from ci.harness.oci import Dir, ImageConfig, Layout, entries_from_directory

CACHE = os.path.join(os.path.dirname(debian.CACHE), "bench")     # the checkout's .cache/bench
IMAGE_TREE = "/opt/storm-tree"       # where the image holds the tree (the directory put on sys.path)
PYTHON = "/usr/bin/python3"          # the nodes' interpreter, the image's too
FUNCTIONS_PER_EXTENSION = 60
# What every importer runs, with the tree's directory as argv[1].  It prints the modules
# imported; the seconds from the task's fork (slurmstepd's; for ours the container is entered
# after it) to the import's start: the interpreter's start; the import's seconds, and of them
# those on a CPU and those waiting for one, as the kernel counts them (the rest it slept: I/O),
# and the CPU seconds in user space (Python's work) and in the kernel (file systems, page faults);
# the CPU seconds of the whole process; and the wall clock at the end (when the last rank finished).
IMPORTER = """\
import os, sys, time
def sched():
    return [int(x) / 1e9 for x in open('/proc/self/schedstat').read().split()[:2]]
stat = open('/proc/self/stat').read()
forked = int(stat[stat.rindex(')') + 2:].split()[19]) / os.sysconf('SC_CLK_TCK')
cpu0, wait0 = sched()
times0 = os.times()
t0 = time.perf_counter()
interpreter_start = time.clock_gettime(time.CLOCK_BOOTTIME) - forked
sys.path.insert(0, sys.argv[1])
import storm
n = storm.load_all()
took = time.perf_counter() - t0
cpu1, wait1 = sched()
times1 = os.times()
print('storm', n, interpreter_start, took, cpu1 - cpu0, wait1 - wait0, times1.user - times0.user,
      times1.system - times0.system, time.process_time(), time.time(), flush=True)
"""


@dataclasses.dataclass(frozen=True)
class Shape:
    packages: int = 30
    modules: int = 100          # per package
    extensions: int = 200

    @property
    def name(self) -> str:
        return f"pytree-{self.packages}x{self.modules}-{self.extensions}ext"

    @property
    def total(self) -> int:
        return self.packages * self.modules + self.extensions


def build(shape: Shape = Shape()) -> str:
    """The tree's directory (holds `storm/`), generated once per shape."""
    root = os.path.join(CACHE, shape.name)
    marker = root + ".complete"
    if os.path.exists(marker):
        return root
    shutil.rmtree(root, ignore_errors=True)
    package = os.path.join(root, "storm")
    names = []
    for p in range(shape.packages):
        directory = os.path.join(package, f"p{p:02d}")
        os.makedirs(directory)
        _write(os.path.join(directory, "__init__.py"), f'"""Package {p} of the import-storm tree."""\n')
        for m in range(shape.modules):
            _write(os.path.join(directory, f"m{m:03d}.py"), _module_source(p, m))
            names.append(f"storm.p{p:02d}.m{m:03d}")
    extensions = os.path.join(package, "ext")
    os.makedirs(extensions)
    _write(os.path.join(extensions, "__init__.py"), "")
    _compile_extensions(extensions, shape.extensions)
    names += [f"storm.ext.e{e:03d}" for e in range(shape.extensions)]
    _write(os.path.join(package, "__init__.py"), _index_source(names))
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", "--invalidation-mode",
                    "unchecked-hash", package], check=True)
    for directory, subdirs, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644 if not name.endswith(".so") else 0o755)
    open(marker, "w").close()
    return root


def image(layout: Layout, tree: str, tag: str) -> None:
    """Debian with python3 (bench/pull.py's image) plus the tree at IMAGE_TREE, tagged `tag` in `layout`."""
    base = debian.base_tree()
    layers = [layout.add_layer(entries_from_directory(base)),
              layout.add_layer(entries_from_directory(debian.apt_layer(base, ("python3",)), overlay_upper=True))]
    prefix = IMAGE_TREE.lstrip("/")
    top = [Dir("opt"), Dir(prefix)]
    top += [dataclasses.replace(entry, name=f"{prefix}/{entry.name}") for entry in entries_from_directory(tree)]
    layers.append(layout.add_layer(top, compresslevel=1))
    config = ImageConfig(cmd=[PYTHON], env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                            "LANG=C.UTF-8"])
    layout.add_image(layers, config, tag=tag)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _module_source(p: int, m: int) -> str:
    """About 4 KB of ordinary Python: constants, functions, a class, a table."""
    rnd = random.Random(p * 1000 + m)
    lines = [f'"""Module {m} of package {p}: generated, for the import storm."""', "import math", ""]
    lines += [f"CONSTANT_{i} = {rnd.randint(0, 10 ** 9)}" for i in range(10)]
    for i in range(12):
        a, b = rnd.randint(1, 99), rnd.randint(1, 99)
        lines += ["", "", f"def function_{i}(x, y={a}):",
                  f'    """Return a value derived from x (function {i})."""',
                  f"    return math.floor(x * {a} + y / {b}) % {rnd.randint(2, 997)}"]
    lines += ["", "", f"class Thing{m}:", '    """A class with a few methods."""', "",
              "    def __init__(self, value):", "        self.value = value"]
    for i in range(6):
        lines += ["", f"    def method_{i}(self, x):", f"        return self.value * {rnd.randint(1, 99)} + x"]
    table = ", ".join(str(rnd.randint(0, 65535)) for _ in range(120))
    lines += ["", "", f"TABLE = ({table})", ""]
    return "\n".join(lines)


def _index_source(names: list[str]) -> str:
    listed = "".join(f"    {name!r},\n" for name in names)
    return (f'"""The import-storm tree: load_all() imports its {len(names)} modules."""\n'
            "import importlib\n\nMODULES = (\n" + listed + ")\n\n\n"
            "def load_all():\n    for name in MODULES:\n        importlib.import_module(name)\n"
            "    return len(MODULES)\n")


def _extension_source(name: str, seed: int) -> str:
    """A C extension: FUNCTIONS_PER_EXTENSION functions over a table of its own."""
    rnd = random.Random(seed)
    table = ", ".join(str(rnd.randint(0, 1 << 30)) for _ in range(2048))
    out = ["#define PY_SSIZE_T_CLEAN", "#include <Python.h>", f"static const long table[] = {{{table}}};"]
    for i in range(FUNCTIONS_PER_EXTENSION):
        offset, mask = rnd.randint(0, 2047), rnd.randint(0, 1 << 20)
        out.append(f"static PyObject *f{i}(PyObject *self, PyObject *arg) {{ long x = PyLong_AsLong(arg); "
                   f"return PyLong_FromLong(table[(x + {offset}) & 2047] ^ {mask}); }}")
    methods = "".join(f'{{"f{i}", f{i}, METH_O, NULL}}, ' for i in range(FUNCTIONS_PER_EXTENSION))
    out += [f"static PyMethodDef methods[] = {{{methods}{{NULL, NULL, 0, NULL}}}};",
            f'static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, "{name}", NULL, -1, methods}};',
            f"PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModule_Create(&def); }}", ""]
    return "\n".join(out)


def _compile_extensions(directory: str, count: int) -> None:
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")

    def one(e: int) -> None:
        name = f"e{e:03d}"
        source = os.path.join(directory, f"{name}.c")
        _write(source, _extension_source(name, e))
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f"-I{include}", "-o",
                        os.path.join(directory, name + suffix), source], check=True)
        os.unlink(source)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(one, range(count)))
