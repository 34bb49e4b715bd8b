"""Header numbers that are finite but absurd (found by the header fuzzer) refuse the series with a
reason instead of reaching the affine, the QC pictures or MANIFEST.json as infinities."""

from __future__ import annotations

import gzip
import zipfile

import nibabel as nib
import pydicom
import pytest
from conftest import REPO

from packager import api
from packager.config import load_config, merge_flags
from packager.errors import InputError

SERIES = REPO / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312" / "02_anat-T1w"


def _copy(tmp_path, files=None, **values):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(SERIES.iterdir())[:files]:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / path.name)
    return folder


def _build(folder, tmp_path, key_file):
    config = merge_flags(
        load_config(REPO / "sample_data" / "release.toml"),
        sources=(str(folder),),
        output=tmp_path / "out",
        key_file=str(key_file),
        jobs=1,
    )
    return api.build(config)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"PixelSpacing": ["1e200", "1e200"]}, "no usable PixelSpacing"),
        ({"PixelSpacing": ["1e-3", "5000"]}, "no usable PixelSpacing"),
        ({"ImagePositionPatient": ["1e200", "0", "0"]}, "no usable ImagePositionPatient"),
    ],
)
def test_absurd_geometry_refuses_the_series(tmp_path, key_file, values, message):
    with pytest.raises(InputError, match=message):
        _build(_copy(tmp_path, **values), tmp_path, key_file)


def test_absurd_slice_thickness_is_not_a_voxel_size(tmp_path, key_file):
    # one slice: its thickness would be the third voxel edge; a corrupt one must not become it
    folder = _copy(tmp_path, files=1, SliceThickness="1e200", SpacingBetweenSlices="1e100")
    result = _build(folder, tmp_path, key_file)
    assert result.exit_code == 0
    with zipfile.ZipFile(result.bundle) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".nii.gz"))
        image = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(name)))
    assert all(0 < edge <= 1000 for edge in image.header.get_zooms()[:3])
