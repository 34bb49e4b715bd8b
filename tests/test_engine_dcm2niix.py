"""``--engine dcm2niix``: the dcm2niix wheel per series, through our hygiene, allowlist and audit.

The sample is built through the CLI with the engine; its voxels must equal the dicom2nifti
build's (conftest ``sample_build``) in canonical orientation, its sidecars hold only allowlisted
keys and no canary, and directions (PhaseEncodingDirection, b-vectors), stated by each engine
in its own voxel frame, agree in world space. Failures are value-free and summarised by exit
code; a missing wheel is a ConfigError (exit 2) with the install hint.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, assert_hygienic_nifti_headers, leftovers, run_cli, spawn_cli

from packager.convert import dcm2niix as engines
from packager.convert.volume import ConversionFailed
from packager.errors import ConfigError
from packager.sidecar.allowlist import ALLOWLIST

TOP = "dcmpack-sample"
BUNDLE = "dcmpack-sample-1.0.0.zip"
HEURISTIC = REPO / "tests" / "heuristics" / "name_everything.py"
#: Keys dcm2niix writes even with ``-ba y`` that must never reach a bundle (FIELD-NOTES.md).
IDENTIFYING = (
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InstitutionAddress",
    "StationName",
    "DeviceSerialNumber",
    "ImageComments",
    "AcquisitionTime",
    "StudyDescription",
    "ProcedureStepDescription",
    "SoftwareVersions",
    "BidsGuess",
)


@pytest.fixture(scope="module")
def engine_build(tmp_path_factory):
    """The sample built through the CLI with ``--engine dcm2niix`` (as a user would)."""
    out = tmp_path_factory.mktemp("sample-dcm2niix")
    proc = run_cli("build", "-o", str(out), "--engine", "dcm2niix", "--json")
    assert proc.returncode == 0, proc.stderr
    bundle = out / BUNDLE
    extracted = out / "extracted"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(extracted)
    return {
        "bundle": bundle,
        "root": extracted / TOP,
        "summary": json.loads(proc.stdout),
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def _runs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.nii.gz"))


def _sidecars(root: Path):
    for path in sorted(root.rglob("sub-*/**/*.json")):
        if not path.name.endswith(("_scans.json", "_sessions.json")):
            yield path, json.loads(path.read_text())


# ---------------------------------------------------------------- the sample, end to end


def test_sample_builds_valid_and_audited(engine_build, validator):
    summary = engine_build["summary"]
    assert summary["exit_code"] == 0 and not summary["failed"]
    assert summary["validator"]["errors"] == 0
    errors, _, codes, _ = validator(engine_build["root"])
    assert errors == 0, codes
    # the build audits before publishing; the published bundle audits clean again from outside
    audit = run_cli("audit", str(engine_build["bundle"]), "--source", str(REPO / "sample_data" / "dicom"))
    assert audit.returncode == 0, audit.stderr
    assert run_cli("verify", str(engine_build["bundle"])).returncode == 0


def test_same_runs_as_dicom2nifti_engine(engine_build, sample_build):
    assert _runs(engine_build["root"]) == _runs(sample_build["extracted"] / TOP)
    assert len(_runs(engine_build["root"])) == 15


def test_manifest_records_engine(engine_build):
    with zipfile.ZipFile(engine_build["bundle"]) as archive:
        manifest = json.loads(archive.read("MANIFEST.json"))
    assert manifest["tool"]["engine"] == f"dcm2niix {version('dcm2niix')}"
    assert len(manifest["runs"]) == 15
    assert {run["engine"] for run in manifest["runs"]} == {"dcm2niix"}


def test_no_key_outside_allowlist(engine_build):
    seen = 0
    for path, meta in _sidecars(engine_build["root"]):
        seen += 1
        assert set(meta) <= set(ALLOWLIST), path.name
        assert not set(meta) & set(IDENTIFYING), path.name
        assert meta["ConversionSoftware"] == "dcmpack"
        assert f"dcm2niix {version('dcm2niix')}" in meta["ConversionSoftwareVersion"]
    assert seen == 15


def test_pipeline_fields_still_apply(engine_build):
    """TaskName from the run name; IntendedFor / B0Field* from field-map pairing; dir- -> polarity."""
    metas = {path.name: meta for path, meta in _sidecars(engine_build["root"])}
    bold = [m for n, m in metas.items() if n.endswith("_bold.json")]
    epi = [m for n, m in metas.items() if n.endswith("_epi.json")]
    assert len(bold) == 3 and all(m["TaskName"] == "rest" for m in bold)
    assert all(m.get("B0FieldSource") for m in bold)
    assert len(epi) == 6 and all(m["IntendedFor"] and m["B0FieldIdentifier"] for m in epi)
    assert all(m["PhaseEncodingDirection"] in ("j", "j-") for m in epi)


def test_no_canary_in_any_byte(engine_build, sample_module):
    canaries = {c.lower() for c in sample_module.canaries() if len(c) >= 6}
    assert len(canaries) > 50
    with zipfile.ZipFile(engine_build["bundle"]) as archive:
        for info in archive.infolist():
            streams = [info.filename.encode(), archive.read(info)]
            if info.filename.endswith(".gz"):
                assert streams[1][3] & 0x1C == 0 and streams[1][4:8] == b"\0\0\0\0", info.filename
                streams.append(gzip.decompress(streams[1]))
            for data in streams:
                lowered = data.lower()
                for canary in canaries:
                    assert canary.encode() not in lowered, f"{info.filename} holds a canary of the sample"
                    assert canary.encode("utf-16-le") not in lowered, f"{info.filename} holds a UTF-16 canary"


def test_engine_output_never_printed(engine_build):
    """dcm2niix's stdout names files and header values: none of it reaches the user."""
    text = engine_build["stdout"] + engine_build["stderr"]
    for marker in ("dcm2niiX", "Chris Rorden", "Found ", "Convert ", "autoBids", "ZZPHI"):
        assert marker not in text


def test_nifti_header_is_ours(engine_build):
    """dcm2niix's descrip carries TE and the time of day: ours replaces it."""
    assert_hygienic_nifti_headers(engine_build["root"])


def test_voxels_equal_dicom2nifti_engine(engine_build, sample_build):
    theirs_root, ours_root = engine_build["root"], sample_build["extracted"] / TOP
    for run in _runs(ours_root):
        ours = nib.as_closest_canonical(nib.load(ours_root / run))
        theirs = nib.as_closest_canonical(nib.load(theirs_root / run))
        assert theirs.shape == ours.shape, run
        assert np.array_equal(np.asanyarray(theirs.dataobj), np.asanyarray(ours.dataobj)), run
        assert np.allclose(theirs.affine, ours.affine, atol=1e-3), run
        assert theirs.header.get_zooms() == pytest.approx(ours.header.get_zooms(), abs=1e-4), run


def _world(affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)


def test_directions_agree_in_world_space(engine_build, sample_build):
    """Each engine states PE direction and b-vectors in its own voxel frame (dcm2niix flips rows)."""
    theirs_root, ours_root = engine_build["root"], sample_build["extracted"] / TOP
    checked = 0
    for run in _runs(ours_root):
        stem = run[: -len(".nii.gz")]
        pair = [
            (nib.load(root / run).affine, json.loads((root / (stem + ".json")).read_text()), root)
            for root in (ours_root, theirs_root)
        ]
        if run.endswith("_epi.nii.gz"):
            vectors = []
            for affine, meta, _ in pair:
                code = meta["PhaseEncodingDirection"]
                vectors.append(_world(affine)[:, "ijk".index(code[0])] * (-1 if code.endswith("-") else 1))
            assert np.allclose(vectors[0], vectors[1], atol=1e-3), run
            checked += 1
        if run.endswith("_dwi.nii.gz"):
            worlds = []
            for affine, _, root in pair:
                bvec = np.loadtxt(root / (stem + ".bvec"))
                rotation = _world(affine)
                if np.linalg.det(rotation) > 0:  # FSL convention: x flipped for a positive determinant
                    bvec[0] = -bvec[0]
                worlds.append(rotation @ bvec)
            assert np.allclose(worlds[0], worlds[1], atol=1e-4), run
            bvals = [(root / (stem + ".bval")).read_text() for root in (ours_root, theirs_root)]
            assert bvals[0] == bvals[1], run
            checked += 1
    assert checked == 9


# ---------------------------------------------------------------- a real corpus dataset


def test_corpus_dataset_builds(tmp_path, corpus, key_file, validator):
    source = corpus / "dcm_qa_nih" / "In"
    out = tmp_path / "out"
    proc = run_cli(
        "build",
        str(source),
        "-o",
        str(out),
        "--key-file",
        str(key_file),
        "--heuristic",
        str(HEURISTIC),
        "--engine",
        "dcm2niix",
        "--json",
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["validator"]["errors"] == 0
    bundle = out / "dataset-1.0.0.zip"
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("MANIFEST.json"))
        names = archive.namelist()
    runs = [n for n in names if n.endswith(".nii.gz")]
    assert len(runs) == 8
    assert {run["engine"] for run in manifest["runs"]} == {"dcm2niix"}
    planned = json.loads(
        run_cli("plan", str(source), "--key-file", str(key_file), "--heuristic", str(HEURISTIC), "--json").stdout
    )
    converted = [r for r in planned if r["decision"] == "convert"]
    assert len(runs) + len(summary["failed"]) == len(converted)  # none vanish
    assert summary["failed"] == []
    assert run_cli("verify", str(bundle)).returncode == 0


# ---------------------------------------------------------------- failure modes


def test_missing_wheel_is_config_error(tmp_path):
    """An import-blocking stand-in package shadows the wheel: exit 2, the pip hint, nothing left."""
    fake = tmp_path / "shadow" / "dcm2niix"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: dcm2niix wheel not installed')\n")
    out = tmp_path / "out"
    proc = spawn_cli(
        "build", "-o", str(out), "--engine", "dcm2niix", env={"PYTHONPATH": f"{REPO}{os.pathsep}{fake.parent}"}
    )
    assert proc.returncode == 2, proc.stderr
    assert "pip install dcm2niix" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert leftovers(out) == []


def test_require_without_wheel(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "dcm2niix", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install dcm2niix") as info:
        engines.require("dcm2niix")
    assert info.value.exit_code == 2
    engines.require("dicom2nifti")  # the default engine needs nothing more
    with pytest.raises(ConversionFailed, match="not installed where this series ran"):
        engines.run_dcm2niix([REPO / "sample_data" / "release.toml"])


def _sample_series(kind: str):
    from packager import api

    plan = api.plan(api.sample_config())
    return next(p.series for p in plan.planned if p.relpath.endswith(kind))


def test_failure_is_summarised_by_exit_code(tmp_path):
    """Not DICOM: dcm2niix finds nothing; the detail names its exit code, no path, no output."""
    junk = tmp_path / "ZZPHIDOE_JANE" / "IM0001"
    junk.parent.mkdir()
    junk.write_bytes(b"not a DICOM file at all " * 40)
    with pytest.raises(ConversionFailed) as info:
        engines.run_dcm2niix([junk])
    assert info.value.detail == "dcm2niix failed (exit code 2: no DICOM found)"


def test_timeout(tmp_path):
    series = _sample_series("_dwi")
    with pytest.raises(ConversionFailed, match=r"^dcm2niix timed out after 0 s$"):
        engines.run_dcm2niix(series.files, timeout=0.001)


@pytest.fixture(scope="module")
def fmap_plan(corpus, key_file):
    """dcm_qa_fmap planned with its rules (Siemens echo pairs, a Philips enhanced field map)."""
    from packager import api
    from packager.config import load_config, merge_flags

    config = merge_flags(
        load_config(REPO / "tests" / "rules" / "dcm_qa_fmap.toml"),
        sources=(str(corpus / "dcm_qa_fmap" / "In"),),
        key_file=str(key_file),
    )
    return api.plan(config)


def test_two_images_for_one_series_refused(fmap_plan):
    """Both echoes of a Siemens magnitude series given as one: dcm2niix writes two images."""
    echoes = sorted(
        (
            s
            for s in fmap_plan.series
            if s.manufacturer.upper().startswith("SIEMENS") and s.part == "mag" and s.series_number == 2
        ),
        key=lambda s: s.echo_number,
    )
    assert [s.echo_number for s in echoes] == [1, 2]
    with pytest.raises(ConversionFailed, match=r"^dcm2niix wrote 2 different images for one series"):
        engines.run_dcm2niix(echoes[0].files + echoes[1].files)
    one = engines.run_dcm2niix(echoes[1].files)  # one echo alone: one image (dcm2niix names it ..._e2)
    assert one.data.ndim == 3 and one.data.shape[2] == echoes[1].n_slices


def test_frame_subset_of_enhanced_files_refused(fmap_plan):
    """Philips enhanced field map: one file, split by image part into two series."""
    split = [s for s in fmap_plan.series if s.is_multiframe and s.frames]
    assert split
    with pytest.raises(ConversionFailed, match="enhanced files split by echo or image part"):
        engines.run_dcm2niix(split[0].files, frames=split[0].frames)


def test_gzip_compressed_dicom_and_no_leftovers(tmp_path, monkeypatch):
    """Compressed DICOM is unpacked in the private folder; that folder never outlives the call."""
    series = _sample_series("_T1w")
    packed = []
    for number, path in enumerate(series.files):
        target = tmp_path / "packed" / f"{number}.dcm.gz"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(gzip.compress(Path(path).read_bytes(), mtime=0))
        packed.append(target)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    plain = engines.run_dcm2niix(series.files)
    unpacked = engines.run_dcm2niix(packed)
    assert np.array_equal(plain.data, unpacked.data) and np.array_equal(plain.affine, unpacked.affine)
    assert list(scratch.iterdir()) == []
    # the raw JSON holds identifying keys: it is what the allowlist is for
    assert "InstitutionName" in plain.metadata
    fields = engines.sidecar_fields(plain, {}, "anat", "T1w")
    assert "ConversionSoftware" not in fields


def test_sidecar_fields_mapping():
    output = engines.EngineOutput(
        data=np.zeros((2, 2, 2), np.int16),
        affine=np.diag([-2.0, 2.0, 2.0, 1.0]),
        metadata={
            "ScanningSequence": "EP\\SE",
            "SequenceVariant": "SK\\SS",
            "PhaseEncodingAxis": "j",
            "EchoTime": 0.00738,
            "EchoTime1": 0.00492,
            "EchoTime2": 0.00738,
            "ConversionSoftware": "dcm2niix",
            "ConversionSoftwareVersion": "v1",
        },
    )
    fields = engines.sidecar_fields(output, {"dir": "AP"}, "fmap", "phasediff")
    assert fields["ScanningSequence"] == "EP_SE" and fields["SequenceVariant"] == "SK_SS"
    assert fields["PhaseEncodingDirection"] == "j-"  # +j points anterior here; AP runs to posterior
    assert "EchoTime" not in fields and fields["EchoTime1"] == 0.00492
    assert "ConversionSoftware" not in fields
    assert engines.sidecar_fields(output, {"dir": "PA"}, "fmap", "epi")["PhaseEncodingDirection"] == "j"
    assert "PhaseEncodingDirection" not in engines.sidecar_fields(output, {"dir": "LR"}, "fmap", "epi")
    assert engines.sidecar_fields(output, {"task": "rest"}, "func", "bold")["TaskName"] == "rest"
