"""Pull-to-squashfs benchmark: our pipeline against skopeo+umoci+mksquashfs and Charliecloud.

Run as root (debootstrap, chroot, overlay mounts build the image once):

    .venv/bin/python bench/pull.py [--runs 3] [--compressor zstd --level 3]

The image has three layers, ~150 MB unpacked: a Debian bookworm minbase
(debootstrap), python3 installed on top of it (the upper directory of an
overlay mount, so whiteouts and opaque directories are real), and a small
top layer that the "top layer changed" case rebuilds with new content.  The
debootstrap and python3 trees are cached under .cache/debian/ (ci/harness/debian.py).

Every case runs in the same invocation on fresh directories, and the report
gives medians and ratios (see bench/README.md).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import results  # noqa: E402
from ci.harness import debian  # noqa: E402
from ci.harness.oci import Dir, File, ImageConfig, Layout, entries_from_directory  # noqa: E402
from ci.harness.registry import Registry  # noqa: E402
from gateway.pipeline import PipelineSettings, pull_image  # noqa: E402
from gateway.registry import Location  # noqa: E402
from shifter_core.imageref import parse  # noqa: E402
from shifter_core.imagestore import ImageStore  # noqa: E402

REPOSITORY = "bench/python"


# --- the image -----------------------------------------------------------------

def top_layer_entries(version: int) -> list:
    """A small application layer; `version` changes its content."""
    payload = "".join(f"line {i} of release {version}\n" for i in range(20000))
    return [Dir("opt"), Dir("opt/app"),
            File("opt/app/VERSION", f"{version}\n"),
            File("opt/app/data.txt", payload),
            File("opt/app/run.py", f"print('bench app release {version}')\n", mode=0o755)]


def build_images(layout: Layout) -> dict[str, str]:
    """Tags "v1" and "v2" (v2 differs only in its top layer)."""
    base = debian.base_tree()
    upper = debian.apt_layer(base, ("python3",))
    lower = [layout.add_layer(entries_from_directory(base)),
             layout.add_layer(entries_from_directory(upper, overlay_upper=True))]
    config = ImageConfig(cmd=["/usr/bin/python3"], env=[
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"])
    tags = {}
    for version in (1, 2):
        top = layout.add_layer(top_layer_entries(version))
        layout.add_image(lower + [top], config, tag=f"v{version}")
        tags[f"v{version}"] = f"v{version}"
    return tags


# --- the contenders --------------------------------------------------------------

class Bench:
    """Fresh directories per run under `scratch`; one TLS registry for everyone."""

    def __init__(self, registry: Registry, scratch: str, compressor: str, level: int | None,
                 processors: int):
        self.registry, self.scratch = registry, scratch
        self.compressor, self.level, self.processors = compressor, level, processors
        self._count = 0

    def fresh(self, name: str) -> str:
        self._count += 1
        path = os.path.join(self.scratch, f"{self._count:03d}-{name}")
        os.makedirs(path)
        return path

    def image(self, tag: str) -> str:
        return f"{self.registry.host}/{REPOSITORY}:{tag}"

    # ours
    def ours_settings(self, work: str) -> PipelineSettings:
        location = Location(url=self.registry.url, ca_file=self.registry.ca_file)
        return PipelineSettings(cache_dir=os.path.join(work, "cache"),
                                scratch_dir=os.path.join(work, "scratch"),
                                compressor=self.compressor, compression_level=self.level,
                                processors=self.processors,
                                locations={self.registry.host: location})

    def ours(self, work: str, tag: str) -> None:
        store = os.path.join(work, "images")
        os.makedirs(store, exist_ok=True)
        pull_image(parse(f"docker:{self.image(tag)}"), store=ImageStore(store),
                   settings=self.ours_settings(work))

    # skopeo copy + umoci unpack + mksquashfs
    def mksquashfs_args(self) -> list[str]:
        args = ["-comp", self.compressor]
        if self.level is not None and self.compressor in ("zstd", "gzip", "xz"):
            args += ["-Xcompression-level", str(self.level)] if self.compressor != "xz" else []
        return args + ["-noappend", "-all-root", "-no-xattrs", "-quiet",
                       "-processors", str(self.processors)]

    def reference(self, work: str, tag: str) -> None:
        oci = os.path.join(work, "oci")
        bundle = os.path.join(work, f"bundle-{tag}")
        _run(["skopeo", "--insecure-policy", "copy", "--quiet",
              f"--src-cert-dir={self.registry.ca_dir}", f"docker://{self.image(tag)}",
              f"oci:{oci}:{tag}"])
        _run(["umoci", "unpack", "--image", f"{oci}:{tag}", bundle])
        _run(["mksquashfs", os.path.join(bundle, "rootfs"), os.path.join(work, f"{tag}.sqfs")]
             + self.mksquashfs_args())
        shutil.rmtree(bundle)

    # Charliecloud: ch-image pull + ch-convert (its own mksquashfs options, gzip)
    def charliecloud(self, work: str, tag: str) -> None:
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "USER": "root", "HOME": work,
               "REQUESTS_CA_BUNDLE": self.registry.ca_file,
               "CH_IMAGE_STORAGE": os.path.join(work, "ch")}
        _run(["ch-image", "--no-cache", "pull", self.image(tag)], env=env)
        _run(["ch-convert", "-i", "ch-image", "-o", "squash", self.image(tag),
              os.path.join(work, f"{tag}.sqfs")], env=env)


def measure(bench: Bench, runs: int, with_charliecloud: bool) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)
        print(f"  {name:<22} {seconds:7.3f} s", flush=True)

    for run in range(runs):
        print(f"run {run + 1}/{runs}", flush=True)
        work = bench.fresh("ours")
        record("ours cold", timed(lambda: bench.ours(work, "v1")))
        record("ours warm (same tag)", timed(lambda: bench.ours(work, "v1")))
        record("ours top layer changed", timed(lambda: bench.ours(work, "v2")))
        work = bench.fresh("reference")
        record("skopeo+umoci+mksquashfs cold", timed(lambda: bench.reference(work, "v1")))
        record("skopeo+umoci+mksquashfs top changed", timed(lambda: bench.reference(work, "v2")))
        if with_charliecloud:
            work = bench.fresh("charliecloud")
            record("ch-image+ch-convert cold", timed(lambda: bench.charliecloud(work, "v1")))
        shutil.rmtree(bench.scratch)
        os.makedirs(bench.scratch)
    return times


SWEEP = (("zstd", 1), ("zstd", 3), ("zstd", 9), ("zstd", 15), ("gzip", 6), ("gzip", 9), ("xz", 6))


def sweep(bench: Bench, runs: int) -> dict[str, dict]:
    """Our cold pull and image size for each compressor setting (the default's evidence)."""
    results = {}
    for compressor, level in SWEEP:
        bench.compressor, bench.level = compressor, level
        seconds, size = [], 0
        for _ in range(runs):
            work = bench.fresh(f"sweep-{compressor}{level}")
            seconds.append(timed(lambda: bench.ours(work, "v1")))
            images = os.path.join(work, "images")
            size = sum(os.path.getsize(os.path.join(images, n)) for n in os.listdir(images)
                       if n.endswith(".squashfs"))
            shutil.rmtree(work)
        results[f"{compressor} {level}"] = {"seconds": statistics.median(seconds), "bytes": size}
        print(f"  {compressor} {level:<3} {statistics.median(seconds):7.3f} s"
              f" {size / 1e6:7.1f} MB", flush=True)
    return results


def report(times: dict[str, list[float]], args) -> dict:
    median = {name: statistics.median(values) for name, values in times.items()}
    ratios = {
        "cold: ours / skopeo+umoci+mksquashfs (target <= 0.5)":
            median["ours cold"] / median["skopeo+umoci+mksquashfs cold"],
        "warm re-pull of an unchanged tag, seconds (target <= 0.1)":
            median["ours warm (same tag)"],
        "top layer changed / cold, ours (target <= 0.3)":
            median["ours top layer changed"] / median["ours cold"],
    }
    if "ch-image+ch-convert cold" in median:
        ratios["cold: ours / ch-image+ch-convert"] = (
            median["ours cold"] / median["ch-image+ch-convert cold"])
    print(f"\nmedians of {args.runs} runs, {args.compressor}"
          f"{'' if args.level is None else f' level {args.level}'},"
          f" {args.processors} processors:")
    for name, value in median.items():
        print(f"  {name:<38} {value:7.3f} s")
    for name, value in ratios.items():
        print(f"  {name:<62} {value:6.3f}")
    return {"medians": median, "ratios": ratios, "runs": times,
            "compressor": args.compressor, "level": args.level, "processors": args.processors}


# --- helpers ---------------------------------------------------------------------

def _run(argv: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                            capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compressor", default="zstd")
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--processors", type=int, default=os.cpu_count())
    parser.add_argument("--no-charliecloud", action="store_true")
    parser.add_argument("--sweep", action="store_true",
                        help="also time our cold pull with each compressor setting")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: building the image uses debootstrap, chroot and overlayfs")

    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        layout = Layout(os.path.join(tmp, "layout"))
        print(f"building the image: {timed(lambda: build_images(layout)):.1f} s", flush=True)
        with Registry(os.path.join(tmp, "registry"), tls=True) as registry:
            for tag in ("v1", "v2"):
                layout.push(tag, f"{registry.host}/{REPOSITORY}:{tag}", ca_dir=registry.ca_dir)
            bench = Bench(registry, os.path.join(tmp, "scratch"), args.compressor, args.level,
                          args.processors)
            os.makedirs(bench.scratch)
            result = report(measure(bench, args.runs, not args.no_charliecloud), args)
            if args.sweep:
                print("\ncompressor sweep (ours, cold):")
                result["sweep"] = sweep(bench, args.runs)
    out = results.save("pull", result)
    print(f"\nwritten to {os.path.relpath(out, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
