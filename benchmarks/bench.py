#!/usr/bin/env python3
"""Benchmark: ``dcmpack build`` against dcm2niix, heudiconv and dcm2bids on the same input.

Usage::

    python benchmarks/bench.py [--quick] [--huge] [--repeat N] [--jobs N] [--no-peers] [INPUT ...]

Every tool runs as a whole command (what a user would type), on the same input, on the same
machine, in the same run, interleaved round by round (A B C, A B C, ...), after one warm-up
round that fills the page cache. Reported per tool: the median wall time over the rounds (and
min-max), CPU seconds, peak RSS of the largest single process as the OS accounts it
(``wait4`` rusage, the figure ``/usr/bin/time -v`` prints) and of all its processes together
(sampled every 50 ms with psutil: dcmpack's workers are separate processes), and files/s.
Ratios are taken round by round and their median reported, so they hold when the machine's
speed drifts; quote ratios, not absolute times, on a shared machine.

INPUT is a DICOM folder, or one of these names:

``corpus``
    The five QA datasets of ``../shared/corpus`` (``$DCMPACK_CORPUS``), as one multi-source
    build (dcmpack names every series with ``tests/heuristics/name_everything.py``; heudiconv
    with ``benchmarks/heudiconv_name_everything.py``).
``corpus:NAME``
    One of them, e.g. ``corpus:dcm_qa_nih``.
``synthetic``
    A generated ReproIn-named session (``benchmarks/synthetic.py``): 20 series x 300 images of
    256x256 (0.8 GB); dcmpack uses its default ``reproin`` heuristic, heudiconv ``-f reproin``.
``synthetic-huge``
    40 series x 500 images of 512x512 (10.5 GB, 20,000 files; ``--huge`` adds it).
``synthetic-headers``
    40 series x 500 images of 64x64 (20,000 files of ~10 KB: the header-heavy case of classic
    GE and Philips exports, one small file per slice).
``synthetic-small``
    4 series x 60 images of 64x64 (the smoke test's input; ``--quick`` default).

Tools: ``dcmpack build`` (``--jobs N``, default all cores; on synthetic inputs also ``--jobs 1``,
for the scaling figure), dcm2niix (the PyPI wheel's binary) in three configurations: ``dcm2niix
-z i`` (one call per source folder in sequence, its own single-threaded gzip: what ``-z y``
does without pigz, the ``ratio dcmpack/dcm2niix`` of earlier runs), and one call per series
folder, ``--jobs`` of them at a time (``xargs -P``), with ``-z y`` and ``pigz`` (Debian package;
dcm2niix uses it when installed, not with ``-d 0``) and with ``-z i``; ``dcm2niix-best`` is the
fastest of the three in each round (pigz pays a process per output file, which loses on small
series);
``heudiconv --minmeta -c dcm2niix -b`` and ``dcm2bids`` (installed from PyPI
into a private venv under the cache folder on first use; when that fails the reason is printed
and the benchmark goes on without them). dcmpack's time includes everything it does: scan,
convert, sidecars, bundle, PHI audit and BIDS validation; the peers write loose files.

``--incremental`` runs ``benchmarks/incremental.py`` instead (the build cache: cold, warm and
one-session-added builds of a synthetic study, as ratios; its own options follow).
Also measured in the same rounds, as fixed costs and floors: ``dcmpack version`` (interpreter
and CLI start-up: it imports no conversion stack; a build's own imports are in its "start-up,
exit and untimed steps") and, except with ``--quick``, ``dcmpack build`` of the built-in sample
session (everything a build does, on 0.2 MB, every series reused from a private cache the
warm-up round fills, into an emptied folder: not up to date, so the build's fixed costs);
reading every input byte (``cat > /dev/null``, page cache warm after the warm-up); and, after
the rounds, isal's gzip of dcmpack's NIfTI bytes at the level dcmpack uses, on one core.
dcmpack's wall time is printed as a multiple of ``read + compress / jobs``, the machine's floor
for this input.

``--quick`` (the CI smoke mode): ``synthetic-small`` unless INPUTs are given, one round, no
warm-up, no peer install. Nothing is asserted about time. Generated inputs and the peers' venv
are cached in ``$DCMPACK_BENCH_CACHE`` (default ``/tmp/dcmpack-bench``). The last two lines
printed are ``ratio dcmpack/dcm2niix-best: X.XX`` and ``ratio dcmpack/dcm2niix: X.XX`` for the
first input (``nan`` when it could not be measured). The load average is printed before and
after: numbers from a loaded machine are not the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import synthetic  # noqa: E402  (benchmarks/synthetic.py)

CORPUS_SETS = ("dcm_qa", "dcm_qa_nih", "dcm_qa_fmap", "dcm_qa_mosaic", "dcm_qa_xa30")
SYNTHETIC = {  # name: (series, images, matrix)
    "synthetic-small": (4, 60, 64),
    "synthetic": (20, 300, 256),
    "synthetic-huge": (40, 500, 512),
    "synthetic-headers": (40, 500, 64),  # GE-like: one small file per slice, mostly header
}
NAME_EVERYTHING = REPO / "tests" / "heuristics" / "name_everything.py"
HEUDICONV_NAME_EVERYTHING = REPO / "benchmarks" / "heudiconv_name_everything.py"
PEERS = ("heudiconv", "dcm2bids")
# a throwaway pseudonym key for synthetic/public data
KEY = "3e04abb2e673d0764319bc0dbfd1d2ca335a10acdd33fd127efa92029176c78a"
SAMPLE_SECONDS = 0.05
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # GNU time, for rusage


# ---------------------------------------------------------------- inputs


@dataclass
class Input:
    name: str
    sources: list[Path]
    reproin: bool
    files: int = 0
    size: int = 0


def cache_dir() -> Path:
    path = Path(os.environ.get("DCMPACK_BENCH_CACHE", "/tmp/dcmpack-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def corpus_root() -> Path:
    return Path(os.environ.get("DCMPACK_CORPUS", REPO.parent / "shared" / "corpus"))


def resolve_input(spec: str) -> Input:
    if spec == "corpus":
        sources = [corpus_root() / name / "In" for name in CORPUS_SETS]
        item = Input("corpus (5 QA sets)", sources, reproin=False)
    elif spec.startswith("corpus:"):
        item = Input(spec, [corpus_root() / spec.split(":", 1)[1] / "In"], reproin=False)
    elif spec in SYNTHETIC:
        series, images, matrix = SYNTHETIC[spec]
        folder = cache_dir() / f"{spec}-{series}x{images}x{matrix}"
        print(
            f"# generating {spec} ({series} series x {images} images of {matrix}x{matrix}) in {folder} (cached)",
            flush=True,
        )
        synthetic.make_session(folder, series=series, images=images, matrix=matrix)
        item = Input(f"{spec} ({series}x{images}x{matrix}^2)", [folder], reproin=True)
    else:
        path = Path(spec).resolve()
        item = Input(path.name, [path], reproin=False)
    for source in item.sources:
        if not source.is_dir():
            sys.exit(f"bench: input {source} is not a folder")
        for folder, _, names in os.walk(source):
            for name in names:
                item.files += 1
                item.size += os.path.getsize(os.path.join(folder, name))
    return item


# ---------------------------------------------------------------- peers


def dcm2niix_binary() -> Path | None:
    """The ELF binary inside the dcm2niix wheel (its console script is a Python wrapper)."""
    try:
        import dcm2niix
    except ImportError:
        return None
    binary = Path(dcm2niix.__file__).parent / "dcm2niix"
    return binary if binary.is_file() else None


def ensure_peers(install: bool) -> tuple[dict[str, Path], dict[str, str]]:
    """heudiconv/dcm2bids executables from a private venv (installed from PyPI on first use)."""
    venv = cache_dir() / "peers"
    found: dict[str, Path] = {}
    why: dict[str, str] = {}
    if install and not all((venv / "bin" / p).is_file() for p in PEERS):
        print(f"# installing {' '.join(PEERS)} from PyPI into {venv} (first run only)", flush=True)
        try:
            if not (venv / "bin" / "pip").is_file():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
            proc = subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", *PEERS, "dcm2niix"],
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if proc.returncode != 0:
                for peer in PEERS:
                    why[peer] = "pip install failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
        except (OSError, subprocess.SubprocessError) as exc:
            for peer in PEERS:
                why[peer] = f"cannot create the venv ({type(exc).__name__})"
    for peer in PEERS:
        exe = venv / "bin" / peer
        if exe.is_file():
            found[peer] = exe
            why.pop(peer, None)
        else:
            why.setdefault(peer, "not installed (run without --quick/--no-peers to install it)")
    return found, why


# ---------------------------------------------------------------- measuring


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_process: int  # bytes, the largest single process (OS rusage)
    rss_tree: int  # bytes, all processes of the command together (sampled)
    codes: tuple[int, ...]
    stages: dict[str, float] = field(default_factory=dict)  # dcmpack's own seconds per stage (--json)


@dataclass
class Tool:
    key: str  # dcmpack, dcmpack-j1, dcm2niix, heudiconv, dcm2bids
    name: str
    commands: list[list[str]]
    outputs: list[Path]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    samples: list[Sample] = field(default_factory=list)
    note: str = ""


def _tree_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.is_set():
        total = 0
        try:
            for proc in [root] + root.children(recursive=True):
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            break
        peak[0] = max(peak[0], total)
        stop.wait(SAMPLE_SECONDS)


def run_tool(tool: Tool) -> Sample:
    for out in tool.outputs:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    env = dict(os.environ)
    env.update(tool.env)
    wall = cpu = 0.0
    rss_process = rss_tree = 0
    codes = []
    stages: dict[str, float] = {}
    for command in tool.commands:
        with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
            # GNU time forks the command from a small process: its rusage then holds the
            # command's own peak, not the forking Python's (exec keeps the old peak as a floor).
            launcher = [TIME, "-q", "-f", "%x %M %U %S", "-o", stats.name] if TIME else []
            started = time.perf_counter()
            summary = tempfile.TemporaryFile("w+") if tool.key.startswith("dcmpack") else None
            proc = subprocess.Popen(
                launcher + command,
                cwd=tool.cwd,
                env=env,
                stdout=summary if summary is not None else subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            peak, stop = [0], threading.Event()
            sampler = threading.Thread(target=_tree_rss, args=(proc.pid, peak, stop), daemon=True)
            sampler.start()
            _, status, usage = os.wait4(proc.pid, 0)
            wall += time.perf_counter() - started
            stop.set()
            sampler.join()
            code, maxrss, seconds = os.waitstatus_to_exitcode(status), usage.ru_maxrss, usage.ru_utime + usage.ru_stime
            fields = stats.read().split()
            if TIME and len(fields) >= 4:
                code, maxrss, seconds = int(fields[-4]), int(fields[-3]), float(fields[-2]) + float(fields[-1])
        codes.append(code)
        if summary is not None:
            summary.seek(0)
            try:
                stages = json.loads(summary.read()).get("timings", {})
            except ValueError:
                stages = {}
            summary.close()
        cpu += seconds
        rss_process = max(rss_process, maxrss * 1024)
        rss_tree = max(rss_tree, peak[0], maxrss * 1024)
    return Sample(wall, cpu, rss_process, rss_tree, tuple(codes), stages)


def _holds_dicom(folder: str, names: list[str]) -> bool:
    """A file with the DICM prefix among ``names`` (dcm2niix exits 2 on a folder without DICOM)."""
    for name in names:
        try:
            with open(os.path.join(folder, name), "rb") as handle:
                if handle.read(132)[128:] == b"DICM":
                    return True
        except OSError:
            pass
    return False


def series_folders(sources: list[Path]) -> list[tuple[Path, str]]:
    """(folder, dcm2niix ``-d``) for every folder that holds DICOM files: ``-d 1`` for a leaf (a
    series folder: with ``-d 0`` dcm2niix would not use pigz), ``-d 0`` for a folder that also
    holds such folders (so that no file is converted twice)."""
    holding = sorted(
        {Path(folder) for source in sources for folder, _, names in os.walk(source) if _holds_dicom(folder, names)}
    )
    nested = {parent for folder in holding for parent in folder.parents}
    return [(folder, "0" if folder in nested else "1") for folder in holding]


def tools_for(
    item: Input, work: Path, jobs: int, peers: dict[str, Path], scaling: bool, quick: bool = False
) -> list[Tool]:
    key = work / "bench.key"
    key.write_text(KEY)
    key.chmod(0o600)
    # The peers do not deface, and the synthetic "T1w" are not heads (defacing would refuse them):
    # conversion is compared with defacing off; benchmarks/deface_table.py measures defacing.
    config = work / "bench.toml"
    config.write_text('[deface]\nenabled = false\nreason = "benchmark: conversion against tools that do not deface"\n')
    heuristic = "reproin" if item.reproin else str(NAME_EVERYTHING)
    python_env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONWARNINGS": "ignore"}
    sources = [str(s) for s in item.sources]

    def dcmpack(n: int) -> Tool:
        out = work / f"dcmpack-j{n}"
        return Tool(
            "dcmpack" if n == jobs else "dcmpack-j1",
            f"dcmpack build --jobs {n}",
            [
                [
                    sys.executable,
                    "-m",
                    "packager",
                    "build",
                    *sources,
                    "-c",
                    str(config),
                    "-o",
                    str(out),
                    "--key-file",
                    str(key),
                    "--heuristic",
                    heuristic,
                    "--force",
                    "--json",
                    "--jobs",
                    str(n),
                    "--no-cache",  # every round converts (benchmarks/incremental.py measures the cache)
                ]
            ],
            [out],
            env=python_env,
            cwd=REPO,
        )

    tools = [dcmpack(jobs)]
    if scaling and jobs != 1:
        tools.append(dcmpack(1))
    binary = dcm2niix_binary()
    if binary is not None:
        outs = [work / "dcm2niix" / f"{n}" for n in range(len(sources))]
        commands = [[str(binary), "-z", "i", "-o", str(o), s] for o, s in zip(outs, sources, strict=True)]
        tools.append(Tool("dcm2niix", "dcm2niix -z i", commands, outs))
        units = series_folders(item.sources)
        for gzip in ("y", "i"):
            outs = [work / f"dcm2niix-z{gzip}-parallel" / f"{n}" for n in range(len(units))]
            arguments = work / f"dcm2niix-z{gzip}.args"
            # xargs appends one call's arguments together: "-d DEPTH -o OUT FOLDER", 4 at a time
            calls = [[depth, "-o", str(o), str(u)] for o, (u, depth) in zip(outs, units, strict=True)]
            arguments.write_bytes(b"".join(f"{a}\0".encode() for call in calls for a in call))
            command = ["xargs", "-0", "-n", "4", "-P", str(jobs), "-a", str(arguments), str(binary), "-z", gzip, "-d"]
            name = f"dcm2niix -z {gzip} -P{jobs} ({len(units)} folders)"
            tools.append(Tool(f"dcm2niix-z{gzip}-parallel", name, [command], outs))
    tools.append(Tool("startup", "dcmpack version", [[sys.executable, "-m", "packager", "version"]], [], python_env))
    if not quick:
        sample = work / "sample"
        # a private cache the warm-up round fills: every later round reuses every series (defacing
        # included) into an emptied folder, so it is not up to date: a build's fixed costs
        command = [sys.executable, "-m", "packager", "build", "-o", str(sample), "--force", "--jobs", str(jobs)]
        command += ["--cache", str(work / "sample-cache")]
        tools.append(Tool("sample", "dcmpack build (sample)", [command], [sample], python_env, cwd=REPO))
    find = ["find", *sources, "-type", "f", "-print0"]
    read = f"{' '.join(map(_quote, find))} | xargs -0 cat > /dev/null"
    tools.append(Tool("read", "floor: read input (cat)", [["sh", "-c", read]], []))
    path = os.pathsep.join([str(binary.parent)] if binary else []) + os.pathsep + os.environ.get("PATH", "")
    if "heudiconv" in peers:
        out = work / "heudiconv"
        command = [
            str(peers["heudiconv"]),
            "--files",
            *sources,
            "-o",
            str(out),
            "--minmeta",
            "-b",
            "-c",
            "dcm2niix",
            "--overwrite",
        ]
        command += (
            ["-f", "reproin"] if item.reproin else ["-f", str(HEUDICONV_NAME_EVERYTHING), "-s", "bench", "-g", "all"]
        )
        tools.append(Tool("heudiconv", "heudiconv --minmeta", [command], [out], env={"PATH": path}, cwd=work))
    if "dcm2bids" in peers:
        out = work / "dcm2bids"
        config = work / "dcm2bids.json"
        config.write_text(
            '{"descriptions": [{"datatype": "anat", "suffix": "T1w", "criteria": {"SeriesDescription": "*"}}]}'
        )
        command = [
            str(peers["dcm2bids"]),
            "-d",
            *sources,
            "-p",
            "bench",
            "-c",
            str(config),
            "-o",
            str(out),
            "--clobber",
            "--force_dcm2bids",
        ]
        tools.append(Tool("dcm2bids", "dcm2bids", [command], [out], env={"PATH": path}, cwd=work))
    return tools


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def compress_floor(tool: Tool | None) -> tuple[float, int]:
    """(seconds, bytes): isal gzip, level 1 (dcmpack's), one core, of the NIfTI bytes in
    dcmpack's last bundle."""
    if tool is None:
        return float("nan"), 0
    from isal import isal_zlib

    bundles = sorted(p for out in tool.outputs for p in out.rglob("*.zip"))
    if not bundles:
        return float("nan"), 0
    seconds, size = 0.0, 0
    with zipfile.ZipFile(bundles[0]) as archive:
        for name in archive.namelist():
            if name.endswith(".nii.gz"):
                import gzip

                data = gzip.decompress(archive.read(name))
                started = time.perf_counter()
                isal_zlib.compress(data, 1, wbits=31)
                seconds += time.perf_counter() - started
                size += len(data)
    return seconds, size


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def fastest(tools: list[Tool]) -> Tool | None:
    """A tool whose sample in each round is the fastest (by wall time) of ``tools`` in that round."""
    tools = [t for t in tools if t.samples]
    if not tools:
        return None
    rounds = zip(*(t.samples for t in tools), strict=False)
    return Tool("best", "fastest", [], [], samples=[min(samples, key=lambda s: s.wall) for samples in rounds])


def ratio(a: Tool | None, b: Tool | None, what: str = "wall") -> float:
    """Median over rounds of a.wall / b.wall (same round); ``what="cpu"``: of CPU seconds."""
    if a is None or b is None:
        return float("nan")
    pairs = [
        getattr(x, what) / getattr(y, what) for x, y in zip(a.samples, b.samples, strict=False) if getattr(y, what) > 0
    ]
    return _median(pairs)


def report(item: Input, tools: list[Tool], jobs: int, floor: tuple[float, int]) -> dict[str, float]:
    print(
        f"\n## {item.name}: {item.files:,} files, {item.size / 1e9:.2f} GB, "
        f"{len(item.sources)} source folder(s), jobs={jobs}"
    )
    header = (
        f"{'tool':<26} {'runs':>4} {'wall s (median)':>16} {'min-max':>15} {'cpu s':>7} "
        f"{'peak RSS MiB':>13} {'all procs MiB':>13} {'files/s':>9}  exit"
    )
    print(header)
    print("-" * len(header))
    for tool in tools:
        if not tool.samples:
            continue
        walls = [s.wall for s in tool.samples]
        wall = _median(walls)
        codes = sorted({c for s in tool.samples for c in s.codes})
        print(
            f"{tool.name:<26} {len(walls):>4} {wall:>16.2f} {min(walls):>7.2f}-{max(walls):<7.2f} "
            f"{_median([s.cpu for s in tool.samples]):>7.2f} "
            f"{_mib(max(s.rss_process for s in tool.samples)):>13} "
            f"{_mib(max(s.rss_tree for s in tool.samples)):>13} "
            f"{item.files / wall if wall else float('nan'):>9.0f}  {','.join(map(str, codes))}"
            + (f"  ({tool.note})" if tool.note else "")
        )
    named = {t.key: t for t in tools if t.samples}
    main = named.get("dcmpack")
    for tool in (t for t in tools if t.key.startswith("dcmpack") and t.samples):
        stages = sorted({name for sample in tool.samples for name in sample.stages})
        if stages:  # dcmpack's own wall seconds per stage (its --json "timings"), medians
            parts = [
                f"{name} {_median([s.stages[name] for s in tool.samples if name in s.stages]):.2f}" for name in stages
            ]
            total = _median([s.wall for s in tool.samples])
            inside = sum(_median([s.stages[n] for s in tool.samples if n in s.stages]) for n in stages)
            print(
                f"  {tool.name} stages (s): {', '.join(parts)}; start-up, exit and untimed steps {total - inside:.2f}"
            )
    read = named.get("read")
    floor_wall = _median([s.wall for s in read.samples]) + floor[0] / jobs if read else float("nan")
    print(
        f"  floor: read {(_median([s.wall for s in read.samples]) if read else float('nan')):.2f} s + isal level 1 "
        f"of {floor[1] / 1e6:,.0f} MB of NIfTI {floor[0]:.2f} s on one core / {jobs} = {floor_wall:.2f} s"
    )
    best = fastest([t for t in tools if t.key.startswith("dcm2niix")])
    ratios = {
        "dcmpack/dcm2niix": ratio(main, named.get("dcm2niix")),
        "dcmpack/dcm2niix-best": ratio(main, best),
        "cpu dcmpack/dcm2niix": ratio(main, named.get("dcm2niix"), "cpu"),
        "cpu dcmpack/dcm2niix-best": ratio(main, best, "cpu"),
        "dcmpack/floor": _median([s.wall for s in main.samples]) / floor_wall if main else float("nan"),
        "heudiconv/dcmpack": ratio(named.get("heudiconv"), main),
        "dcm2bids/dcmpack": ratio(named.get("dcm2bids"), main),
        f"speedup jobs 1->{jobs}": ratio(named.get("dcmpack-j1"), main),
    }
    for name, value in ratios.items():
        if value == value:  # not nan
            print(f"  {name:<26} {value:6.2f}")
    return ratios


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if "--incremental" in given:  # the build cache's benchmark (benchmarks/incremental.py), its own options
        import incremental  # noqa: PLC0415  (benchmarks/incremental.py)

        return incremental.main([a for a in given if a != "--incremental"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", metavar="INPUT")
    parser.add_argument("--quick", action="store_true", help="smoke mode: small input, one round, no peers")
    parser.add_argument("--huge", action="store_true", help="add the 10.5 GB synthetic session")
    parser.add_argument("--repeat", type=int, default=None, help="counted rounds (default 5, --quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="uncounted rounds first (default 1, --quick 0)")
    parser.add_argument("--jobs", type=int, default=0, help="dcmpack --jobs (default: all cores)")
    parser.add_argument("--no-peers", action="store_true", help="skip heudiconv and dcm2bids")
    parser.add_argument("--no-scaling", action="store_true", help="skip dcmpack --jobs 1 on synthetic inputs")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    specs = args.inputs or (
        ["synthetic-small"] if args.quick else ["corpus", "corpus:dcm_qa_nih", "synthetic-headers", "synthetic"]
    )
    if args.huge:
        specs.append("synthetic-huge")
    jobs = args.jobs or len(os.sched_getaffinity(0))
    peers, why = (
        ({}, {p: "skipped (--no-peers/--quick)" for p in PEERS})
        if (args.no_peers or args.quick)
        else ensure_peers(install=True)
    )
    # As installed (pip byte-compiles a package): without this, a run from the source tree with
    # PYTHONDONTWRITEBYTECODE set compiles dcmpack's modules again every time (~0.3 s here).
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "packager"), str(REPO / "heuristics")],
        check=False,
        capture_output=True,
    )
    print(
        f"# dcmpack benchmark: {len(os.sched_getaffinity(0))} CPU(s) available, dcmpack --jobs {jobs}, "
        f"{repeat} round(s) after {warmup} warm-up; python {sys.version.split()[0]}; load average {load_average()}"
    )
    core = subprocess.run(
        [sys.executable, "-m", "packager", "version", "--verbose"], capture_output=True, text=True, cwd=REPO
    )
    print(f"# dcmpack {' '.join(core.stdout.split(chr(10)))}".rstrip())
    print(f"# pigz: {shutil.which('pigz') or 'not installed (apt-get install pigz)'} (dcm2niix -z y uses it)")
    for peer, reason in sorted(why.items()):
        print(f"# {peer}: {reason}")
    if dcm2niix_binary() is None:
        print("# dcm2niix: not installed (pip install dcm2niix); no dcmpack/dcm2niix ratio")
    first: dict[str, float] | None = None
    for spec in specs:
        item = resolve_input(spec)
        huge = spec == "synthetic-huge"
        with tempfile.TemporaryDirectory(prefix="dcmpack-bench-", dir=cache_dir()) as tmp:
            use_peers = {} if huge else peers  # heudiconv on 10 GB takes hours: not a useful figure
            tools = tools_for(
                item,
                Path(tmp),
                jobs,
                use_peers,
                scaling=spec.startswith("synthetic") and not huge and not args.no_scaling,
                quick=args.quick,
            )
            rounds = 1 if huge else repeat
            for number in range((0 if huge else warmup) + rounds):
                counted = number >= (0 if huge else warmup)
                order = tools[number % len(tools) :] + tools[: number % len(tools)]  # rotate who goes first
                for tool in order:
                    sample = run_tool(tool)
                    if counted:
                        tool.samples.append(sample)
                print(
                    f"# {item.name}: round {number + 1}/{(0 if huge else warmup) + rounds}"
                    f"{'' if counted else ' (warm-up)'} done",
                    flush=True,
                )
            floor = compress_floor(next((t for t in tools if t.key == "dcmpack"), None))
            ratios = report(item, tools, jobs, floor)
        if first is None:
            first = ratios
    print(f"\n# load average at the end: {load_average()}")
    best = first["dcmpack/dcm2niix-best"] if first else float("nan")
    print(f"ratio dcmpack/dcm2niix-best: {best:.2f}")
    value = first["dcmpack/dcm2niix"] if first else float("nan")
    print(f"ratio dcmpack/dcm2niix: {value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
