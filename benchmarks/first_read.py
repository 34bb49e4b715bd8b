#!/usr/bin/env python3
"""Start-up of a build: the time from ``exec`` to the first read of a source file, and what is
imported by then.

Usage::

    python benchmarks/first_read.py [--repeat 5] [--jobs 2] [SOURCE ...] [-- BUILD-FLAGS ...]

Each round runs ``python -m packager build SOURCE ... --no-cache`` (a throwaway key, defacing
off, ``--heuristic reproin`` unless other build flags are given) with an audit hook installed
before ``packager`` is imported (``sys.addaudithook``: Python's own ``open`` event, raised in the
build process and in its forked workers alike). The hook notes, once, the clock
(``CLOCK_MONOTONIC``, shared by all processes) when a file under a SOURCE is first opened by the
header pass (once its reader, ``packager.index.header``, is loaded: the source listing's look at
each file's first bytes for archives comes earlier and does not count), and the modules loaded at
that moment. The figure printed is that instant minus the
instant just before ``exec`` (measured here, so the interpreter's own start-up counts), median
and min-max over the rounds, then the top-level packages loaded by then. Default SOURCE: the
``synthetic-small`` session of ``bench.py`` (4 series of 60 64x64 files) and the built-in sample.

Nothing is printed about the files themselves (no path, no header value).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402  (benchmarks/bench.py: inputs and the throwaway key)

# Runs in the measured process: the hook must not itself import anything heavy.
_HOOK = r"""
import os, sys, time
_roots = tuple(os.path.realpath(p) + os.sep for p in os.environ["FIRST_READ_SOURCES"].split(os.pathsep))
_out = os.environ["FIRST_READ_OUT"]
_done = []
def _hook(event, args):
    if _done or event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    if "packager.index.header" not in sys.modules:  # the listing's check for archives: not a header read
        return
    path = os.fsdecode(args[0])
    if not path.startswith(_roots) and not os.path.realpath(path).startswith(_roots):
        return
    if os.path.isdir(path):
        return
    _done.append(time.monotonic())
    loaded = sorted(sys.modules)
    with open(_out, "a") as handle:
        handle.write(repr((_done[0], loaded)) + "\n")
sys.addaudithook(_hook)
import runpy
sys.argv = ["dcmpack", *sys.argv[1:]]
runpy.run_module("packager", run_name="__main__", alter_sys=True)
"""


def one_round(sources: list[Path], flags: list[str], out: Path, repo: Path = REPO) -> tuple[float, list[str]]:
    """Seconds from exec to the first source file opened, and the modules loaded then (the build's
    exit code must be 0 or 1; ``tests/test_startup.py`` uses this too)."""
    record = out / "first.txt"
    record.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "PYTHONWARNINGS": "ignore",
        "FIRST_READ_SOURCES": os.pathsep.join(str(s) for s in sources),
        "FIRST_READ_OUT": str(record),
    }
    command = [sys.executable, "-c", _HOOK, "build", *map(str, sources), "-o", str(out / "out"), *flags]
    start = time.monotonic()
    done = subprocess.run(command, env=env, cwd=repo, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"build failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    # several processes may have noted their first read: the earliest is the build's
    firsts = sorted(eval(line) for line in record.read_text().splitlines())  # noqa: S307  (our own repr)
    return firsts[0][0] - start, firsts[0][1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repo", type=Path, default=REPO, help="the dcmpack tree to run (A/B against another)")
    parser.add_argument("sources", nargs="*", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dcmpack-first-read-") as tmp:
        work = Path(tmp)
        key = work / "key"
        key.write_text(bench.KEY + "\n")
        key.chmod(0o600)
        config = work / "bench.toml"
        config.write_text('[deface]\nenabled = false\nreason = "benchmark"\n')
        inputs = [[s] for s in args.sources] or [
            bench.resolve_input("synthetic-small").sources,
            [REPO / "sample_data" / "dicom"],
        ]
        common = ["--key-file", str(key), "-c", str(config), "--force", "--no-cache", "--jobs", str(args.jobs)]
        for sources in inputs:
            flags = [*common, *(extra or ["--heuristic", "reproin"])]
            if sources[0].name == "dicom":  # the sample names its series with its own release.toml
                flags = [*common[:2], "-c", str(REPO / "sample_data" / "release.toml"), *common[4:]]
            one_round(sources, flags, work, args.repo)  # warm-up: page cache, .pyc files
            seconds = []
            for _ in range(args.repeat):
                elapsed, loaded = one_round(sources, flags, work, args.repo)
                seconds.append(elapsed)
            label = sources[0].name if len(sources) == 1 else f"{len(sources)} sources"
            print(
                f"{label}: first source file read {statistics.median(seconds):.3f} s after exec "
                f"(min {min(seconds):.3f}, max {max(seconds):.3f}, {len(seconds)} rounds, "
                f"load {os.getloadavg()[0]:.2f})"
            )
            top = sorted({m.split(".")[0] for m in loaded})
            packages = (m for m in top if not m.startswith("_") and m not in sys.stdlib_module_names)
            print("  loaded then:", " ".join(packages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
