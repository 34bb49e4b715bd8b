"""End-to-end: the sample build is complete, checksummed, valid BIDS, reproducible and faithful."""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import assert_hygienic_nifti_headers, run_cli

from packager.sidecar.allowlist import ALLOWLIST

TOP = "dcmpack-sample"


def test_build_prints_bundle_and_checksums_match(sample_build):
    bundle = sample_build["bundle"]
    assert str(bundle) in sample_build["stdout"]
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        sums = dict(line.split("  ")[::-1] for line in archive.read("SHA256SUMS").decode().splitlines())
        assert set(sums) == set(names) - {"SHA256SUMS"}
        for name, digest in sums.items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == digest, name
        manifest = json.loads(archive.read("MANIFEST.json"))
    listed = {f"{TOP}/{f['path']}" for f in manifest["files"]}
    assert listed == set(names) - {"SHA256SUMS", "MANIFEST.json"}
    assert manifest["excluded"] == {"localizer": 9, "not_image": 3, "secondary_capture": 3}


def test_sample_dataset_is_valid_bids(sample_build, validator):
    errors, warnings, codes, _ = validator(sample_build["extracted"] / TOP)
    assert errors == 0, codes
    # Only "recommended key missing" style warnings are expected: we drop identifying keys on purpose.
    assert {code for severity, code, _ in codes if severity == "warning"} <= {
        "SIDECAR_KEY_RECOMMENDED",
        "JSON_KEY_RECOMMENDED",
        "TOO_FEW_AUTHORS",
    }


def test_expected_runs(sample_build):
    runs = sorted(
        str(p.relative_to(sample_build["extracted"] / TOP)) for p in (sample_build["extracted"] / TOP).rglob("*.nii.gz")
    )
    assert len(runs) == 15
    assert sum("/anat/" in r for r in runs) == 3
    assert sum(r.endswith("_task-rest_bold.nii.gz") for r in runs) == 3
    assert sum(r.endswith("_epi.nii.gz") for r in runs) == 6
    assert sum(r.endswith("_dwi.nii.gz") for r in runs) == 3
    subjects = {r.split("/")[0] for r in runs}
    assert len(subjects) == 2


def test_build_is_byte_identical(tmp_path, sample_build):
    proc = run_cli("build", "-o", str(tmp_path), "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / sample_build["bundle"].name).read_bytes() == sample_build["bundle"].read_bytes()


def test_no_key_outside_allowlist(sample_build):
    for path in (sample_build["extracted"] / TOP).rglob("sub-*/**/*.json"):
        if path.name.endswith(("_scans.json", "_sessions.json")):
            continue
        assert set(json.loads(path.read_text())) <= set(ALLOWLIST), path.name


def _streams(bundle: Path):
    """Every byte stream a leak could hide in: names, member bytes, gzip header, decompressed NIfTI."""
    with zipfile.ZipFile(bundle) as archive:
        for info in archive.infolist():
            yield f"name:{info.filename}", info.filename.encode()
            data = archive.read(info)
            yield f"raw:{info.filename}", data
            if info.filename.endswith(".gz"):
                assert data[3] & 0x1C == 0, f"gzip FNAME/FCOMMENT/FEXTRA in {info.filename}"
                assert data[4:8] == b"\0\0\0\0", f"gzip mtime in {info.filename}"
                yield f"nii:{info.filename}", gzip.decompress(data)


def test_no_fake_phi_anywhere(sample_build, sample_module):
    canaries = {c.lower() for c in sample_module.canaries() if len(c) >= 6}
    assert len(canaries) > 50
    for where, data in _streams(sample_build["bundle"]):
        lowered = data.lower()
        for canary in canaries:
            assert canary.encode() not in lowered, f"{where} holds a canary of the sample"
            assert canary.encode("utf-16-le") not in lowered, f"{where} holds a UTF-16 canary"


def test_nifti_header_is_hygienic(sample_build):
    assert_hygienic_nifti_headers(sample_build["extracted"] / TOP)


def _source_runs(sample_build):
    """(nifti path, sorted source files) for each run, matched through the plan."""
    from packager import api

    result = api.plan(api.sample_config())
    root = sample_build["extracted"] / TOP
    return [(root / (p.relpath + ".nii.gz"), p.series.files) for p in result.planned]


def test_voxels_and_affine_match_dicom(sample_build):
    """Every DICOM pixel lands at the NIfTI voxel its world position says, with its value."""
    runs = _source_runs(sample_build)
    assert len(runs) == 15
    manifest = json.loads((sample_build["extracted"] / "MANIFEST.json").read_text())
    defaced = {run["path"].rsplit("/", 1)[-1] for run in manifest["runs"] if run.get("deface") == "defaced"}
    assert len(defaced) == 3  # the T1w: their face voxels are 0, every other voxel is the DICOM's
    for nifti_path, files in runs:
        image = nib.load(nifti_path)
        data = np.asanyarray(image.dataobj)
        inverse = np.linalg.inv(image.affine)
        datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))
        positions = {tuple(np.round(d.ImagePositionPatient, 3)) for d in datasets}
        n_slices = len(positions)
        assert data.shape[2] == n_slices, nifti_path.name
        for number, ds in enumerate(datasets):
            volume = number // n_slices
            pixels = ds.pixel_array.astype(float) * float(getattr(ds, "RescaleSlope", 1)) + float(
                getattr(ds, "RescaleIntercept", 0)
            )
            iop = np.array(ds.ImageOrientationPatient, dtype=float)
            row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
            rows, cols = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
            lps = (
                np.array(ds.ImagePositionPatient, dtype=float)[:, None, None]
                + iop[:3, None, None] * cols * col_spacing
                + iop[3:, None, None] * rows * row_spacing
            )
            ras = lps * np.array([-1, -1, 1])[:, None, None]
            ijk = np.tensordot(inverse[:3, :3], ras, axes=1) + inverse[:3, 3][:, None, None]
            index = np.rint(ijk).astype(int)
            assert np.allclose(ijk, index, atol=1e-3), f"{nifti_path.name}: voxel grid off"
            got = data[index[0], index[1], index[2]] if data.ndim == 3 else data[index[0], index[1], index[2], volume]
            if nifti_path.name in defaced:
                cut = (got == 0) & (pixels != 0)
                assert cut.mean() < 0.2, nifti_path.name
                got, pixels = got[~cut], pixels[~cut]
            np.testing.assert_allclose(got, pixels, rtol=1e-5, err_msg=nifti_path.name)


def test_bold_timing_in_header_and_sidecar(sample_build):
    for path in (sample_build["extracted"] / TOP).rglob("*_bold.nii.gz"):
        header = nib.load(path).header
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert header.get_zooms()[3] == pytest.approx(sidecar["RepetitionTime"]) == pytest.approx(2.0)
        assert sidecar["TaskName"] == "rest"
        timing = sidecar["SliceTiming"]
        assert len(timing) == 12 and max(timing) < 2.0 and min(timing) == 0


def test_dwi_tables(sample_build):
    for path in (sample_build["extracted"] / TOP).rglob("*_dwi.bval"):
        bvals = [float(v) for v in path.read_text().split()]
        bvecs = np.loadtxt(path.with_suffix(".bvec"))
        assert bvals == [0, 1000, 1000, 1000, 1000, 1000, 1000]
        assert bvecs.shape == (3, 7)
        assert np.allclose(np.linalg.norm(bvecs[:, 1:], axis=0), 1, atol=1e-4)
