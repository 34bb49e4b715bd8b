#!/usr/bin/env python3
"""Start-up of a build: the time from ``exec`` to the first read of a source file, and what is
imported by then.

Usage::

    python benchmarks/first_read.py [--repeat 5] [--jobs 2] [--repo TREE] [--vs TREE] [SOURCE ...] [-- BUILD-FLAGS ...]

Each round runs ``python -m packager build SOURCE ... --no-cache`` (a throwaway key, defacing
off, ``--heuristic reproin`` unless other build flags are given) with an audit hook installed
before ``packager`` is imported (``sys.addaudithook``: Python's own ``open`` event, raised in the
build process and in its forked workers alike). The hook notes, once, the clock
(``CLOCK_MONOTONIC``, shared by all processes) when a file under a SOURCE is first opened by the
header pass (once its reader, ``packager.index.header``, is loaded: the source listing's look at
each file's first bytes for archives comes earlier and does not count), and the modules loaded at
that moment. The figure printed is that instant minus the
instant just before ``exec`` (measured here, so the interpreter's own start-up counts), median
and min-max over the rounds, then the top-level packages loaded by then. Beside it, the CPU time
on the way there (``cpu``: the build's main thread until it forks its workers, plus the reading
worker's since; the reading thread's own when nothing forked), which a busy machine moves far
less than the wall time; other threads' CPU is not on that path (OpenBLAS's, started by numpy's
import, spins ~0.1 s on another core unless ``OPENBLAS_THREAD_TIMEOUT`` is small). Default
SOURCE: the ``synthetic-small`` session of ``bench.py`` (4 series of 60 64x64 files) and the
built-in sample.

The measured process may write byte-code (``PYTHONDONTWRITEBYTECODE`` is left out of its
environment): the warm-up round compiles the tree's modules as an installed package has them,
and the rounds time start-up, not compiling (~0.05 s more for this tree's ~80 modules).
``--vs TREE`` times a second tree in the same call, its rounds alternating with ``--repo``'s
(A B B A ...), and prints the ratio of their CPU medians.

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
_forked = []  # the forking thread's CPU time at the build's first fork (inherited by its workers)
def _hook(event, args):
    if event == "os.fork" and not _forked:
        _forked.append(time.thread_time())
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
    cpu = sum(_forked[:1]) + time.thread_time()  # a forked worker's clock starts at 0
    loaded = sorted(sys.modules)
    with open(_out, "a") as handle:
        handle.write(repr((_done[0], cpu, loaded)) + "\n")
sys.addaudithook(_hook)
import runpy
sys.argv = ["dcmpack", *sys.argv[1:]]
runpy.run_module("packager", run_name="__main__", alter_sys=True)
"""


def one_round(
    sources: list[Path], flags: list[str], out: Path, repo: Path = REPO, bytecode: bool = False
) -> tuple[float, float, list[str]]:
    """Seconds from exec to the first source file opened, the CPU seconds on the way there, and
    the modules loaded then (the build's exit code must be 0 or 1; ``tests/test_startup.py`` uses
    this too). ``bytecode``: the process may write ``.pyc`` files whatever the environment says."""
    record = out / "first.txt"
    record.unlink(missing_ok=True)
    env = {
        **{name: value for name, value in os.environ.items() if not (bytecode and name == "PYTHONDONTWRITEBYTECODE")},
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
    return firsts[0][0] - start, firsts[0][1], firsts[0][2]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repo", type=Path, default=REPO, help="the dcmpack tree to run")
    parser.add_argument("--vs", type=Path, help="a second tree, its rounds alternating with --repo's")
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
            trees = [args.repo] if args.vs is None else [args.repo, args.vs]
            rounds: dict[Path, list[tuple[float, float, list[str]]]] = {tree: [] for tree in trees}
            for tree in trees:
                one_round(sources, flags, work, tree, bytecode=True)  # warm-up: page cache, .pyc files
            for turn in range(args.repeat):
                for tree in trees if turn % 2 == 0 else trees[::-1]:
                    rounds[tree].append(one_round(sources, flags, work, tree, bytecode=True))
            label = sources[0].name if len(sources) == 1 else f"{len(sources)} sources"
            for tree in trees:
                seconds = [r[0] for r in rounds[tree]]
                cpu = [r[1] for r in rounds[tree]]
                print(
                    f"{label}{'' if args.vs is None else f' ({tree})'}: first source file read "
                    f"{statistics.median(seconds):.3f} s after exec (min {min(seconds):.3f}, max "
                    f"{max(seconds):.3f}, {len(seconds)} rounds, load {os.getloadavg()[0]:.2f}); "
                    f"cpu {statistics.median(cpu):.3f} s (min {min(cpu):.3f})"
                )
                top = sorted({m.split(".")[0] for m in rounds[tree][-1][2]})
                packages = (m for m in top if not m.startswith("_") and m not in sys.stdlib_module_names)
                print("  loaded then:", " ".join(packages))
            if args.vs is not None:
                a, b = ([r[1] for r in rounds[tree]] for tree in trees)
                print(f"  cpu ratio {args.repo.name}/{args.vs.name}: {statistics.median(a) / statistics.median(b):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
