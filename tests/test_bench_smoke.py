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
    rows = {line.split("  ")[0].strip(): line for line in lines if line.startswith(("dcmpack build", "dcm2niix"))}
    assert set(rows) == {
        "dcmpack build --jobs 1",
        f"dcmpack build --jobs {len(os.sched_getaffinity(0))}",
        "dcm2niix -z y",
    } or set(rows) == {"dcmpack build --jobs 1", "dcm2niix -z y"}
    for name, row in rows.items():
        assert row.rstrip().endswith(" 0"), f"{name} did not exit 0: {row}"
    assert "peak RSS MiB" in out and "files/s" in out
    assert "dcmpack/dcm2niix" in out
    stages = [line for line in lines if "stages (s):" in line]
    assert stages and all(word in stages[0] for word in ("scan", "convert", "audit", "verify"))
    assert "heudiconv: skipped" in out  # --quick never installs the peers
