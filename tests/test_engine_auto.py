"""``--engine auto`` (issue 20): our engine first, dcm2niix for each series ours refuses, the
series marked in MANIFEST.json and the QC report with our reason; still through the allowlist,
NIfTI hygiene, the PHI audit and the validator (the build publishes only when they pass).

The refusal is a real one: GE DTI with row phase encoding, whose gradient frame we do not take
(docs/engines.md), made from the corpus's GE DTI series by setting InPlanePhaseEncodingDirection
to ROW in every file (a copy in tmp_path); dcm2niix converts it with its own row rule.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import pydicom
import pytest
from conftest import REPO, run_cli

NAME_EVERYTHING = str(REPO / "tests" / "heuristics" / "name_everything.py")


@pytest.fixture
def row_dti(corpus, tmp_path):
    folder = tmp_path / "in" / "dti"
    shutil.copytree(corpus / "dcm_qa_ge" / "In" / "01_Ax_DWI_TENSOR_R2", folder)
    for path in folder.iterdir():
        path.chmod(0o644)
        ds = pydicom.dcmread(path)
        ds.InPlanePhaseEncodingDirection = "ROW"
        ds.save_as(path)
    return tmp_path / "in"


def _plan(source, key_file, *extra):
    proc = run_cli("plan", str(source), "--key-file", str(key_file), "--heuristic", NAME_EVERYTHING, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    return row


def test_auto_engine_converts_what_ours_refuses_and_says_so(row_dti, key_file, tmp_path):
    refused = _plan(row_dti, key_file)
    assert refused["decision"] == "exclude" and refused["reason"] == "conversion_failed"
    assert "no diffusion b-values/vectors in the headers" in refused["why"]
    assert "what to do: convert it with --engine auto" in refused["why"]  # the refusal says what to do
    planned = _plan(row_dti, key_file, "--engine", "auto")
    assert planned["decision"] == "convert"
    assert planned["why"].endswith("by dcm2niix (--engine auto): no diffusion b-values/vectors in the headers")

    out = tmp_path / "out"
    proc = run_cli(
        "build",
        str(row_dti),
        "-o",
        str(out),
        "--key-file",
        str(key_file),
        "--heuristic",
        NAME_EVERYTHING,
        "--engine",
        "auto",
    )
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(out / "dataset-1.0.0.zip") as bundle:
        names = bundle.namelist()
        manifest = json.loads(bundle.read("MANIFEST.json"))
    (run,) = manifest["runs"]
    assert run["engine"] == "dcm2niix" and run["fallback"] == "no diffusion b-values/vectors in the headers"
    assert "dcm2niix" in manifest["tool"]["engine"] and "dicom2nifti" in manifest["tool"]["engine"]
    stem = run["path"][: -len(".nii.gz")]
    assert {f"dataset/{stem}.bval", f"dataset/{stem}.bvec", f"dataset/{stem}.json"} <= set(names)
    report = (out / "report.html").read_text()
    assert "converted by dcm2niix (--engine auto): dcmpack&#x27;s engine refused it: no diffusion" in report
