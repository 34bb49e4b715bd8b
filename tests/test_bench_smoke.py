"""The benchmark runs end to end in its smoke mode (small synthetic input, one round).

Nothing is asserted about time (CI machines are shared); only that every tool ran, the table and
the ratios are printed, and the last line has the documented form.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO


def test_benchmark_quick_mode_prints_the_ratio(tmp_path):
    env = dict(os.environ, DCMPACK_BENCH_CACHE=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = out.strip().splitlines()
    assert re.fullmatch(r"ratio dcmpack/dcm2niix: \d+\.\d\d", lines[-1]), lines[-1]
    assert re.fullmatch(r"ratio dcmpack/dcm2niix-best: \d+\.\d\d", lines[-2]), lines[-2]
    rows = {line.split("  ")[0].strip(): line for line in lines if line.startswith(("dcmpack ", "dcm2niix", "floor"))}
    jobs = len(os.sched_getaffinity(0))
    peers = {"dcm2niix -z i", "dcmpack version", "floor: read input (cat)"}
    peers |= {f"dcm2niix -z y -P{jobs} (4 folders)", f"dcm2niix -z i -P{jobs} (4 folders)"}
    assert (
        set(rows) == {"dcmpack build --jobs 1", f"dcmpack build --jobs {jobs}"} | peers
        or set(rows) == {"dcmpack build --jobs 1"} | peers
    )
    for name, row in rows.items():
        assert row.rstrip().endswith(" 0"), f"{name} did not exit 0: {row}"
    assert "peak RSS MiB" in out and "files/s" in out
    assert "dcmpack/dcm2niix" in out and "dcmpack/floor" in out and "cpu dcmpack/dcm2niix-best" in out
    assert "per-file core: compiled (Cython)" in out  # the core the timed builds ran
    assert "# pigz: /" in out  # the best dcm2niix configuration had pigz (scripts/test.sh installs it)
    stages = [line for line in lines if "stages (s):" in line]
    assert stages and all(word in stages[0] for word in ("scan", "convert", "audit", "verify"))
    assert "heudiconv: skipped" in out  # --quick never installs the peers
