"""Vendor private headers read for acquisition facts (packager.dicom.vendor), on real corpus files."""

from __future__ import annotations

import struct

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from packager.dicom import vendor


def first_file(folder):
    return pydicom.dcmread(
        next(p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith((".txt", ".nii"))),
        stop_before_pixels=True,
        force=True,
    )


@pytest.mark.parametrize(
    "folder, label",
    [
        ("dcm_qa_nih/In/20180918Si/mr_0003", "AP"),
        ("dcm_qa_nih/In/20180918Si/mr_0004", "PA"),
        ("dcm_qa_nih/In/20180918Si/mr_0005", "RL"),
        ("dcm_qa_nih/In/20180918Si/mr_0006", "LR"),  # classic CSA
        ("dcm_qa_xa30/In/11_DWI_dir80_PA", "PA"),
        ("dcm_qa_xa30/In/19_DWI_dir80_AP", "AP"),  # XA per-frame
        ("dcm_qa_nih/In/20180918GE/mr_0004", "AP"),  # GE user data
        ("dcm_qa_fmap/In/Philips/fmap", ""),  # no polarity
    ],
)
def test_phase_encoding_label_matches_the_protocol_name(corpus, folder, label):
    assert vendor.phase_encoding_label(first_file(corpus / folder)) == label


def test_fast_csa_read_agrees_with_nibabel(corpus):
    for folder in (
        "dcm_qa_mosaic/In/cmrr_Asc_6",
        "dcm_qa_mosaic/In/ep2d_Asc_2",
        "dcm_qa_fmap/In/Siemens/4_gre_field_ph",
    ):
        ds = first_file(corpus / folder)
        assert vendor.pe_polarity(ds) == vendor.csa_positive(vendor.csa_header(ds, "image"))


def test_siemens_protocol_classic_and_xa(corpus):
    classic = vendor.siemens_protocol(first_file(corpus / "dcm_qa_fmap/In/Siemens/3_gre_field_magph"))
    assert (vendor.protocol_number(classic, "alTE[0]"), vendor.protocol_number(classic, "alTE[1]")) == (5190, 7650)
    enhanced = vendor.siemens_protocol(first_file(corpus / "dcm_qa_xa30/In/9_gre_field_mapping"))
    assert (vendor.protocol_number(enhanced, "alTE[0]"), vendor.protocol_number(enhanced, "alTE[1]")) == (10000, 12460)
    assert vendor.protocol_number({"x": "0x1f"}, "x") == 31 and vendor.protocol_number({}, "x") is None


def test_ge_protocol_block(corpus):
    block = vendor.ge_protocol(first_file(corpus / "dcm_qa_nih/In/20180918GE/mr_0004"))
    assert block["SLICEORDER"] == "1" and block["NOSLC"] == "15" and block["TR"] == "5000.0"


def test_ge_protocol_block_is_parsed_once_per_block_and_handed_out_as_a_copy(corpus):
    folder = corpus / "dcm_qa_nih/In/20180918GE/mr_0004"
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith((".txt", ".nii"))][:3]
    vendor._ge_protocol_block.cache_clear()
    blocks = [vendor.ge_protocol(pydicom.dcmread(p, stop_before_pixels=True, force=True)) for p in files]
    assert blocks[0] and blocks[0] == blocks[1] == blocks[2]
    assert vendor._ge_protocol_block.cache_info().misses == 1  # the series' files carry one block
    blocks[0]["VIEWORDER"] = "changed"
    assert vendor.ge_protocol(pydicom.dcmread(files[0], stop_before_pixels=True, force=True)) == blocks[1]


def test_ge_polarity_bit():
    def with_user_data(control: int, version: float) -> Dataset:
        raw = bytearray(0x200)
        struct.pack_into("<H", raw, 24, 0x40)
        struct.pack_into("<f", raw, 0x40, version)
        offset = 0x40 + (0x4C if version >= 25.002 else 0)
        struct.pack_into("<H", raw, offset + 0x30, control)
        ds = Dataset()
        ds.add_new((0x0043, 0x102A), "OB", bytes(raw))
        return ds

    assert vendor.ge_polarity(with_user_data(0x0000, 27.0)) == 1
    assert vendor.ge_polarity(with_user_data(0x0004, 27.0)) == -1
    assert vendor.ge_polarity(with_user_data(0x0004, 24.0)) == -1
    assert vendor.ge_polarity(Dataset()) is None


@pytest.mark.parametrize(
    "world, label",
    [
        ((0, 1, 0), "AP"),
        ((0, -1, 0), "PA"),
        ((1, 0, 0), "RL"),
        ((-1, 0, 0), "LR"),
        ((0, 0, 1), "IS"),
        ((0.2, -0.9, 0.1), "PA"),
    ],
)
def test_direction_label_is_from_to_in_lps(world, label):
    assert vendor.direction_label(np.array(world, dtype=float)) == label


def test_malformed_blocks_are_missing_facts():
    ds = Dataset()
    ds.add_new((0x0025, 0x101B), "OB", b"\x00\x00\x00\x00\x1f\x8bnot gzip")
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    assert vendor.ge_protocol(ds) == {}
    ds.add_new((0x0029, 0x1010), "OB", b"PhaseEncodingDirectionPositive\x00garbage")
    assert vendor._csa_positive_fast(ds) is None
    assert vendor.siemens_protocol(ds) == {}


def test_one_dir_label_polarity_rule_in_both_frames():
    """``AP`` runs towards +y in LPS; the dcm2niix engine applies the same rule to a RAS affine column."""
    from packager.convert.dcm2niix import _axis_from_label

    label_polarity = vendor.label_polarity
    assert label_polarity("AP", np.array([0.0, 1.0, 0.0])) == 1
    assert label_polarity("pa", np.array([0.0, 1.0, 0.0])) == -1
    assert label_polarity("LR", np.array([0.0, 1.0, 0.0])) is None  # another axis
    assert label_polarity("AA", np.array([0.0, 1.0, 0.0])) is None and label_polarity("XY", np.ones(3)) is None
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # i towards L, j towards A (RAS), k towards S
    assert _axis_from_label("j", "PA", affine) == "j" and _axis_from_label("j", "AP", affine) == "j-"
    assert _axis_from_label("i", "RL", affine) == "i" and _axis_from_label("k", "AP", affine) is None


def test_ge_acquired_lines_round_up_as_ge_does():
    ds = Dataset()
    ds.add_new((0x0043, 0x1083), "DS", ["0.666667", "1"])  # ASSET R 1.5
    ds.ScanOptions = ["EPI_GEMS", "PFF"]
    assert vendor.ge_acquired_lines(ds, 128) == 88  # 85.3 lines, to a multiple of 4 (partial Fourier)
    ds.ScanOptions = "EPI_GEMS"
    assert vendor.ge_acquired_lines(ds, 128) == 86  # to a multiple of 2 (full Fourier)
    ds[0x0043, 0x1083].value = ["0.5", "1"]
    assert vendor.ge_acquired_lines(ds, 128) == 64  # already even: unchanged


def test_ge_hyperband_factor_and_option():
    ds = Dataset()
    ds.add_new((0x0043, 0x10B6), "LO", ["8", "4", "19", "", ""])  # trailing empty values, as scanners write
    assert vendor.ge_multiband_factor(ds) == 8
    assert vendor.ge_multiband_factor(Dataset()) is None
    assert vendor.ge_hyperband({"IOPT": "EDR, EPI, FMRI, ARC, HB"})
    assert vendor.ge_hyperband({"IOPT": "HYPERBAND, EPI"})
    assert not vendor.ge_hyperband({"IOPT": "EPI, Asset, FMRI"})


_CREATORS = [
    (0x0065, vendor.UIH_CREATOR),
    (0x0021, vendor.SIEMENS_SDS),
    (0x0021, vendor.SIEMENS_SDI),
    (0x0029, "SIEMENS CSA HEADER"),
    (0x0043, "GEMS_PARM_01"),
    (0x2005, "Philips MR Imaging DD 001"),
    (0x0065, ""),
    (0x0064, "even group"),
]


@pytest.mark.parametrize("dataset", ["dcm_qa_uih", "dcm_qa_xa30", "dcm_qa_nih", "dcm_qa_philips", "dcm_qa_ge"])
def test_private_blocks_are_found_where_pydicom_finds_them(corpus, dataset):
    from packager.dicom.fast import NotFast, read_fast

    files = [p for p in sorted((corpus / dataset).rglob("*.dcm"))][::25][:40]
    assert files
    found = 0
    for path in files:
        datasets = [pydicom.dcmread(path, stop_before_pixels=True, force=True)]
        try:
            datasets.append(read_fast(path, headers_only=True, lazy=True).dataset)  # tags not made yet
        except NotFast:
            pass
        for ds in datasets:
            for group, creator in _CREATORS:
                try:
                    expected = ds.private_block(group, creator).block_start >> 8
                except (KeyError, ValueError):
                    expected = None
                assert vendor._private_block(ds, group, creator) == expected, (path.name, hex(group), creator)
                found += expected is not None
    assert found
