"""Real DICOM: corpus datasets build end to end; what cannot be converted is listed, not dropped."""

from __future__ import annotations

import json
import zipfile

import pytest
from conftest import REPO, run_cli

HEURISTIC = REPO / "tests" / "heuristics" / "name_everything.py"


@pytest.mark.parametrize("dataset", ["dcm_qa", "dcm_qa_nih"])
def test_corpus_builds_and_validates(tmp_path, corpus, key_file, dataset, validator):
    out = tmp_path / "out"
    proc = run_cli(
        "build",
        str(corpus / dataset / "In"),
        "-o",
        str(out),
        "--key-file",
        str(key_file),
        "--heuristic",
        str(HEURISTIC),
        "--json",
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    bundle = out / "dataset-1.0.0.zip"
    assert bundle.is_file()
    assert summary["validator"]["errors"] == 0
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("MANIFEST.json"))
        runs = [n for n in archive.namelist() if n.endswith(".nii.gz")]
    planned = json.loads(
        run_cli(
            "plan", str(corpus / dataset / "In"), "--key-file", str(key_file), "--heuristic", str(HEURISTIC), "--json"
        ).stdout
    )
    # every series is either a run in the bundle or excluded with a reason: none vanish
    converted = [r for r in planned if r["decision"] == "convert"]
    failed = summary["failed"]
    assert len(runs) + len(failed) == len(converted)
    assert all(f["detail"] for f in failed)
    assert sum(manifest["excluded"].values()) == len(planned) - len(runs)
    verify = run_cli("verify", str(bundle))
    assert verify.returncode == 0, verify.stderr
