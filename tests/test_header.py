"""The one header accessor (``packager.dicom.header``): typed values, None when absent or malformed."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from packager.dicom import header

# the non-finite RepetitionTime below is invalid on purpose; pydicom says so when it is set
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR DS")


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SeriesDescription = "  t1_mprage  "
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.EchoTime = "2.5"
    ds.EchoNumbers = ["2", "3"]
    ds.ImagePositionPatient = ["1", "2.5", "-3"]
    ds.RepetitionTime = "NaN"
    return ds


def test_absent_is_none():
    ds = _dataset()
    assert header.value(ds, "PatientName") is None
    assert header.text(ds, "PatientName") is None and header.number(ds, "FlipAngle") is None
    assert header.integer(ds, "SeriesNumber") is None and header.numbers(ds, "PixelSpacing", 2) is None


def test_typed_values():
    ds = _dataset()
    assert header.text(ds, "SeriesDescription") == "t1_mprage"
    assert header.text(ds, "ImageType") == "ORIGINAL\\PRIMARY\\M"
    assert header.number(ds, "EchoTime") == 2.5 and header.integer(ds, "EchoNumbers") == 2  # first of several
    assert header.numbers(ds, "ImagePositionPatient", 3) == (1.0, 2.5, -3.0)
    assert header.numbers(ds, "ImagePositionPatient", 6) is None  # not the count asked for
    assert header.number(ds, "RepetitionTime") is None  # not finite


def test_coercing_values_from_elsewhere():
    assert header.as_number(b"12") is None and header.as_numbers(b"1\\2") is None  # raw bytes: VR unknown
    assert header.as_numbers("1\\2") == (1.0, 2.0) and header.as_numbers(3) == (3.0,)
    assert header.as_integer("7.9") == 7 and header.as_integer("x") is None
    assert header.as_numbers([1.0, float("inf")]) is None
