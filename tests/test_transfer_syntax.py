"""Every transfer syntax and file style a scanner or PACS writes converts to the same image.

One session of the sample is re-encoded (``tests/transfer_syntaxes.py``: real encoders, real
bytes) and built; each run's voxels and affine must equal the build of the original files
(lossless styles) or the 8-bit image the lossy JPEG was made from, within JPEG's error.
"""

from __future__ import annotations

import gzip
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
import transfer_syntaxes
from conftest import REPO

from packager import api
from packager.config import load_config, merge_flags

SESSION = REPO / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312"
RELEASE = REPO / "sample_data" / "release.toml"


def _build(source, out, key_file):
    config = merge_flags(load_config(RELEASE), sources=(str(source),), output=out, key_file=str(key_file))
    result = api.build(config)
    images = {}
    with zipfile.ZipFile(result.bundle) as archive:
        for name in archive.namelist():
            if name.endswith(".nii.gz"):
                raw = gzip.decompress(archive.read(name))
                image = nib.Nifti1Image.from_bytes(raw)
                images[name] = (np.asanyarray(image.dataobj), image.affine)
    return result, images


@pytest.fixture(scope="module")
def reference(tmp_path_factory, key_file):
    return _build(SESSION, tmp_path_factory.mktemp("reference"), key_file)


@pytest.mark.parametrize("style", transfer_syntaxes.LOSSLESS)
def test_lossless_styles_give_identical_images(style, reference, tmp_path, key_file):
    ref_result, ref_images = reference
    encoded = tmp_path / "in"
    transfer_syntaxes.encode(SESSION, encoded, style)
    result, images = _build(encoded, tmp_path / "out", key_file)
    assert result.exit_code == ref_result.exit_code
    assert sorted(images) == sorted(ref_images) and len(images) >= 5
    for name, (data, affine) in images.items():
        ref_data, ref_affine = ref_images[name]
        np.testing.assert_array_equal(data, ref_data, err_msg=f"{style}: {name}")
        np.testing.assert_allclose(affine, ref_affine, atol=1e-5, err_msg=f"{style}: {name}")


def test_jpeg_baseline_decodes_to_the_image_it_was_made_from(tmp_path, key_file):
    series = SESSION / "02_anat-T1w"
    encoded = tmp_path / "in" / series.name
    transfer_syntaxes.encode(series, encoded, "jpeg-baseline")
    result, images = _build(tmp_path / "in", tmp_path / "out", key_file)
    assert result.exit_code == 0
    ((name, (data, _)),) = images.items()
    assert name.endswith("_T1w.nii.gz")
    # what went into the JPEG: each file's 8-bit image, at its slice position
    originals = [pydicom.dcmread(p) for p in sorted(series.iterdir())]
    originals.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    expected = np.stack([transfer_syntaxes.eight_bit(ds) for ds in originals], axis=-1).astype(np.float64)
    got = np.asarray(data, dtype=np.float64)
    # NIfTI stores rows/columns transposed and possibly flipped: compare as sets of slices
    assert got.shape[2] == expected.shape[2]
    # the T1w is a head and is defaced: its face is 0 in the NIfTI, and left out of the comparison
    best = min(
        np.abs(candidate - expected)[(candidate != 0) | (expected == 0)].mean()
        for candidate in (
            np.flip(got.transpose(1, 0, 2), axis=axes)
            for axes in ((), (0,), (1,), (0, 1), (2,), (0, 2), (1, 2), (0, 1, 2))
        )
    )
    assert best < 2.0  # JPEG at quality 95 on 0-255 images: a mean error of about one grey level


def test_preamble_less_file_is_read(tmp_path):
    """A single preamble-less file is found as DICOM (not skipped as 'other file')."""
    series = SESSION / "02_anat-T1w"
    transfer_syntaxes.encode(series, tmp_path / "in", "no-preamble")
    first = sorted((tmp_path / "in").iterdir())[0]
    assert first.read_bytes()[128:132] != b"DICM"
    plan = api.plan(
        merge_flags(
            load_config(RELEASE), sources=(str(tmp_path / "in"),), key_file=str(REPO / "sample_data" / "sample.key")
        )
    )
    assert len(plan.planned) == 1 and plan.skipped_files == 0
