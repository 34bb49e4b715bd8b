"""Distinct instances are distinct images, copies of one instance are not (issue 20).

GE's multiband QA series repeat bit-identical pixels at one position in every volume; dcm2niix
stacks them as time points, and so must we. Copies of one file are left out by the index
(tests/test_bad_input.py), files that share a SOPInstanceUID but differ are refused there.
"""

from __future__ import annotations

import gzip
import zipfile

import nibabel as nib
import numpy as np
import pydicom
from conftest import REPO

from packager import api
from packager.config import load_config, merge_flags

BOLD = REPO / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312" / "05_func-bold_task-rest"


def test_identical_pixels_of_distinct_instances_are_time_points(tmp_path, key_file):
    folder = tmp_path / "in" / BOLD.name
    folder.mkdir(parents=True)
    datasets = [pydicom.dcmread(p) for p in sorted(BOLD.iterdir())]
    first_volume = {}
    for ds in datasets:  # every volume gets the first volume's pixels at each position
        key = tuple(round(float(v), 3) for v in ds.ImagePositionPatient)
        first_volume.setdefault(key, ds.PixelData)
        ds.PixelData = first_volume[key]
    for number, ds in enumerate(datasets):
        ds.save_as(folder / f"IM{number:04d}.dcm")
    config = merge_flags(
        load_config(REPO / "sample_data" / "release.toml"),
        sources=(str(tmp_path / "in"),),
        output=tmp_path / "out",
        key_file=str(key_file),
        jobs=1,
    )
    result = api.build(config)
    assert result.exit_code == 0
    with zipfile.ZipFile(result.bundle) as archive:
        name = next(n for n in archive.namelist() if n.endswith("_bold.nii.gz"))
        data = np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(name))).dataobj)
    volumes = len(datasets) // len(first_volume)
    assert data.ndim == 4 and data.shape[3] == volumes > 1
    assert all(np.array_equal(data[..., 0], data[..., t]) for t in range(volumes))
