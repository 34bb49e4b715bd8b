"""Each conversion fix on the smallest corpus series that showed the bug (see
benchmarks/conformance_before.tsv), checked against its dcm2niix reference; synthetic cases for
what the corpus lacks. Corpus files are copied to tmp_path before any change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from benchmarks import conformance
from packager.convert import check, diffusion
from packager.convert import volume as convert
from packager.dicom import frames
from packager.model import Series


def _series(folder: Path, tmp_path: Path) -> list[Series]:
    return list(conformance.index_folder(folder, tmp_path / "staging"))


def _status(series: Series, reference: Path) -> str:
    ours = conformance.convert_series(series)
    assert not isinstance(ours, conformance.Failure), ours.detail
    result = conformance.compare(ours, conformance.load_reference(reference))
    return "unrelated" if result is None else f"{result[1]} {result[2]}".strip()


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for path in target.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return target


# ---------------------------------------------------------------- Siemens mosaics


@pytest.mark.parametrize(
    "folder, reference",
    [
        ("dcm_qa/In/Orientation/cor/corasc35", "dcm_qa/Ref/cor_asc_35sl_16.nii.gz"),  # coronal: y flip
        ("dcm_qa/In/Orientation/sag/sagasc35", "dcm_qa/Ref/sag_asc_35sl_22.nii.gz"),  # sagittal: x flip + offset
        ("dcm_qa_mosaic/In/ep2d_Asc_HF_10", "dcm_qa_mosaic/Ref/10_ep2d_Asc_HF.nii.gz"),  # H>>F storage
    ],
)
def test_mosaic_geometry_matches_reference(corpus, tmp_path, folder, reference):
    (series,) = _series(corpus / folder, tmp_path)
    assert _status(series, corpus / reference) == conformance.MATCH
    # dicom2nifti on its own gets this series wrong (the bug this guards against)
    engine = check.run_dicom2nifti(convert.read_series_datasets(series.files))["NII"]
    theirs = conformance._image("dicom2nifti", engine, None, None)
    assert conformance.compare(theirs, conformance.load_reference(corpus / reference))[1] != conformance.MATCH


# ---------------------------------------------------------------- Siemens XA enhanced


def test_multi_file_enhanced_series_keeps_every_file(corpus, tmp_path):
    (series,) = _series(corpus / "dcm_qa_xa30/In/25_asl_2d_tra", tmp_path)
    assert (series.n_files, series.n_volumes) == (7, 7)
    volume = convert.convert_datasets(convert.read_series_datasets(series.files), frames=series.frames)
    assert volume.data.shape == (64, 64, 12, 7) and len(volume.heads) == 7
    assert _status(series, corpus / "dcm_qa_xa30/Ref/25_asl_2d_tra.nii.gz") == conformance.MATCH


def test_enhanced_echoes_in_separate_files_become_separate_series(corpus, tmp_path):
    found = _series(corpus / "dcm_qa_xa30/In/8_gre_field_mapping", tmp_path)
    assert [(s.part, s.echo_number, s.n_files) for s in found] == [("mag", 1, 1), ("mag", 2, 1)]
    assert _status(found[0], corpus / "dcm_qa_xa30/Ref/8_gre_field_mapping_e1.nii.gz") == conformance.MATCH
    assert _status(found[1], corpus / "dcm_qa_xa30/Ref/8_gre_field_mapping_e2.nii.gz") == conformance.MATCH


def test_enhanced_phase_converts(corpus, tmp_path):
    (series,) = _series(corpus / "dcm_qa_xa30/In/9_gre_field_mapping", tmp_path)
    assert series.part == "phase"
    assert _status(series, corpus / "dcm_qa_xa30/Ref/9_gre_field_mapping_e2_ph.nii.gz") == conformance.MATCH


def test_enhanced_colour_converts_to_rgb24(corpus, tmp_path):
    (series,) = _series(corpus / "dcm_qa_xa30/In/14_DWI_dir80_PA", tmp_path)
    volume = convert.convert_datasets(convert.read_series_datasets(series.files), frames=series.frames)
    assert volume.data.dtype == convert.RGB24 and volume.data.shape == (72, 72, 39)
    assert _status(series, corpus / "dcm_qa_xa30/Ref/14_DWI_dir80_PA.nii.gz") == conformance.MATCH


# ---------------------------------------------------------------- Philips enhanced B0


def test_philips_b0_frames_split_and_scaled(corpus, tmp_path):
    found = _series(corpus / "dcm_qa_fmap/In/Philips", tmp_path)
    by_part = {s.part: s for s in found}
    assert sorted(by_part) == ["fieldmap", "mag"]
    for series in found:
        assert len(series.frames) == 32 and {position for position, _ in series.frames} == {0}
    assert _status(by_part["mag"], corpus / "dcm_qa_fmap/Ref/Ph_801_WIP_B0_NS_e1.nii.gz") == conformance.MATCH
    assert (
        _status(by_part["fieldmap"], corpus / "dcm_qa_fmap/Ref/Ph_801_WIP_B0_NS_e2_fieldmaphz.nii.gz")
        == conformance.MATCH
    )


def test_philips_precise_and_real_world_scaling_values(corpus, tmp_path):
    found = {s.part: s for s in _series(corpus / "dcm_qa_fmap/In/Philips", tmp_path)}
    ds = pydicom.dcmread(found["mag"].files[0])
    stored = ds.pixel_array.astype(float)
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for part, frame in (("mag", found["mag"].frames[0][1]), ("fieldmap", found["fieldmap"].frames[0][1])):
        volume = convert.convert_datasets([ds], frames=found[part].frames)
        # our slice 0 is the lowest along the normal; so is the first frame of each stack here
        ours = volume.data[:, :, 0].T
        if part == "mag":  # precise value = stored / private ScaleSlope (2005,100E)
            scale = float(per_frame[frame][0x2005, 0x140F][0][0x2005, 0x100E].value)
            expected = stored[frame] / scale
        else:  # real-world value mapping in Hz
            mapping = per_frame[frame].RealWorldValueMappingSequence[0]
            expected = stored[frame] * mapping.RealWorldValueSlope + mapping.RealWorldValueIntercept
        np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_philips_phase_is_written_in_radians(corpus, tmp_path):
    """Philips phase frames: display values are milliradians (RescaleType "mrad"); the precise
    value display / (RescaleSlope * ScaleSlope) is radians, as dcm2niix writes it (dcm_qa_philips_enh)."""
    folder = tmp_path / "enh"
    folder.mkdir()
    shutil.copy(corpus / "dcm_qa_philips_enh/In/enh/2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm.gz", folder)
    phases = [s for s in _series(folder, tmp_path) if s.part == "phase"]
    assert len(phases) == 2  # one per echo
    reference = conformance.load_reference(
        corpus / "dcm_qa_philips_enh/Ref/2001_WIP_fcMRI_Field_Mapping_enh_e1_ph.nii.gz"
    )
    ours = conformance.convert_series(phases[0])
    assert not isinstance(ours, conformance.Failure), ours.detail
    assert -np.pi - 1e-3 <= ours.data.min() < -3.1 and 3.1 < ours.data.max() <= np.pi + 1e-3  # radians, not mrad
    # dcm2niix's own slope is a float32 difference 7e-5 off 1/ScaleSlope: within a third of one
    # stored step (2*pi/4095) of ours everywhere, never more
    assert np.abs(ours.data - reference.data).max() < (2 * np.pi / 4095) / 3


def test_enhanced_frames_keep_their_stored_order_in_time(corpus, tmp_path):
    """Philips pCASL: three temporal positions x label/control, stored label-major; volumes in
    stored order as dcm2niix writes them (Temporal Position Index first interleaved them)."""
    folder = tmp_path / "enh"
    folder.mkdir()
    shutil.copy(corpus / "dcm_qa_philips_enh/In/enh/1903_WIP_SOURCE_-_3DpCASL.dcm.gz", folder)
    (series,) = _series(folder, tmp_path)
    assert _status(series, corpus / "dcm_qa_philips_enh/Ref/1903_WIP_SOURCE_-_3DpCASL_enh.nii.gz") == conformance.MATCH


# ---------------------------------------------------------------- United Imaging


def test_uih_slice_by_slice_dti_is_regrouped_with_its_b_table(corpus, tmp_path):
    """UIH "SaveBySlc" DTI: each file a grid of 20 tiles with per-tile positions in UIH's private
    block, b-values and image-frame gradients there too: one 4D DWI equal to dcm2niix's."""
    folder = "dcm_qa_uih/In/DTI_132225/dti_tra_dir16_PA_rot_SaveBySlc__134057"
    (series,) = _series(_copy(corpus / folder, tmp_path / "uih"), tmp_path)
    assert _status(series, corpus / "dcm_qa_uih/Ref/dti_tra_dir16_PA_rot_12_132222.nii.gz") == conformance.MATCH


def test_mixed_frames_without_selection_are_refused(corpus, tmp_path):
    found = _series(corpus / "dcm_qa_fmap/In/Philips", tmp_path)
    with pytest.raises(convert.ConversionFailed, match="different echoes or image parts"):
        convert.convert_datasets(convert.read_series_datasets(found[0].files))


# ---------------------------------------------------------------- GE


def test_ge_b0_map_splits_into_field_map_and_magnitude(corpus, tmp_path):
    found = _series(corpus / "dcm_qa_fmap/In/GE/6_CV_Neuro", tmp_path)
    assert sorted(s.part for s in found) == ["fieldmap", "mag"]
    by_part = {s.part: s for s in found}
    assert _status(by_part["mag"], corpus / "dcm_qa_fmap/Ref/GE_6_CV_Neuro_HH_Adv.nii.gz") == conformance.MATCH
    assert (
        _status(by_part["fieldmap"], corpus / "dcm_qa_fmap/Ref/GE_6_CV_Neuro_HH_Adv_fieldmaphz.nii.gz")
        == conformance.MATCH
    )


def test_slice_major_instance_numbers_still_order_volumes(corpus, tmp_path):
    folder = _copy(corpus / "dcm_qa_nih/In/20180918GE/mr_0004", tmp_path / "mr_0004")
    images = []
    for path in sorted(folder.iterdir()):
        try:
            images.append((path, pydicom.dcmread(path)))
        except pydicom.errors.InvalidDicomError:
            continue
    depths = sorted({round(float(ds.ImagePositionPatient[2]), 2) for _, ds in images})
    images.sort(key=lambda item: int(item[1].InstanceNumber))
    n_volumes = len(images) // len(depths)
    for number, (path, ds) in enumerate(images):  # renumber slice by slice instead of volume by volume
        ds.InstanceNumber = (
            depths.index(round(float(ds.ImagePositionPatient[2]), 2)) * n_volumes + number // len(depths) + 1
        )
        ds.save_as(path)
    (series,) = _series(folder, tmp_path)
    with pytest.raises(convert.ConversionFailed, match="NOT_A_VOLUME"):
        check.run_dicom2nifti(convert.read_series_datasets(series.files))
    assert _status(series, corpus / "dcm_qa_nih/Ref/DCM2NIIX_regression_test_4.nii.gz") == conformance.MATCH


# ---------------------------------------------------------------- refusals


def test_extra_image_at_one_position_is_refused_not_collapsed(corpus, tmp_path):
    folder = _copy(corpus / "dcm_qa_fmap/In/Siemens/4_gre_field_ph", tmp_path / "ph")
    original = sorted(folder.iterdir())[10]
    copy = pydicom.dcmread(original)
    copy.SOPInstanceUID = generate_uid()
    copy.InstanceNumber = 99
    copy.save_as(folder / "duplicate.dcm")
    (series,) = _series(folder, tmp_path)
    datasets = convert.read_series_datasets(series.files)
    assert check.run_dicom2nifti(datasets)["NII"].shape == (64, 64, 36)  # silently collapsed
    # a distinct instance is an image of its own (GE repeats identical pixels on purpose), so
    # the extra one at a position is an incomplete volume: refused, never dropped
    with pytest.raises(convert.ConversionFailed, match="slice positions occur unequal numbers of times"):
        convert.convert_datasets(datasets)


def test_missing_slice_is_refused(corpus, tmp_path):
    folder = _copy(corpus / "dcm_qa_fmap/In/Siemens/4_gre_field_ph", tmp_path / "ph")
    by_depth = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    by_depth[17].unlink()
    (series,) = _series(folder, tmp_path)
    with pytest.raises(convert.ConversionFailed, match="uneven slice spacing"):
        convert.convert_datasets(convert.read_series_datasets(series.files))


def test_single_slice_steps_by_its_spacing_between_slices(corpus, tmp_path):
    """One slice's z step is SpacingBetweenSlices (3.6 mm here, thickness 3 mm plus the gap), as
    dcm2niix writes for this very file; SliceThickness only when no spacing is stated."""
    (series,) = [s for s in _series(corpus / "dcm_qa_fmap/In/Siemens/4_gre_field_ph", tmp_path)]
    datasets = convert.read_series_datasets(series.files[:1])
    volume = convert.convert_datasets(datasets)
    assert volume.data.shape == (64, 64, 1)
    ds = pydicom.dcmread(series.files[0])
    assert float(ds.SpacingBetweenSlices) == 3.6 and float(ds.SliceThickness) == 3.0
    assert np.isclose(np.linalg.norm(volume.affine[:3, 2]), 3.6)
    del datasets[0].SpacingBetweenSlices
    volume = convert.convert_datasets(datasets)
    assert np.isclose(np.linalg.norm(volume.affine[:3, 2]), 3.0)


# ---------------------------------------------------------------- what the corpus lacks


def test_isotropic_diffusion_frames_form_their_own_series(corpus, tmp_path):
    folder = _copy(corpus / "dcm_qa_xa30/In/25_asl_2d_tra", tmp_path / "asl")
    last = sorted(folder.iterdir())[-1]
    ds = pydicom.dcmread(last)
    for item in ds.PerFrameFunctionalGroupsSequence:
        diffusion = Dataset()
        diffusion.DiffusionDirectionality = "ISOTROPIC"
        diffusion.DiffusionBValue = 1000.0
        item.MRDiffusionSequence = Sequence([diffusion])
    ds.save_as(last)
    found = _series(folder, tmp_path)
    assert sorted((s.n_files, s.is_derived) for s in found) == [(1, True), (6, False)]
    assert {s.n_volumes for s in found} == {1, 6}
    source = conformance.psources.open_source(str(folder), tmp_path / "policy")
    policed = conformance.pindex.index_files(source.files, conformance.pconfig.ExcludeConfig()).series
    assert [s.exclusion_detail for s in policed if s.exclusion] == ["derived isotropic (trace) diffusion image"]


def test_b0_images_without_diffusion_tags_in_a_dwi_series_are_b0(corpus, tmp_path):
    """Canon/Toshiba write no diffusion element on b=0 images; made here from the corpus's GE DTI
    by deleting every diffusion element of its b=0 files: the same tables as dcm2niix's for the
    untouched series. A b=0 file whose b-value is present but unreadable stays refused."""
    folder = _copy(corpus / "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2", tmp_path / "dti")
    b0_files = []
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        if int(ds[0x0043, 0x1039].value[0]) == 0:
            for tag in ((0x0043, 0x1039), (0x0019, 0x10BB), (0x0019, 0x10BC), (0x0019, 0x10BD), (0x0018, 0x9087)):
                if tag in ds:
                    del ds[tag]
            ds.save_as(path)
            b0_files.append(path)
    assert len(b0_files) == 2
    (series,) = _series(folder, tmp_path)
    assert series.has_diffusion  # from the weighted files, though the first file states none
    assert _status(series, corpus / "dcm_qa_ge/Ref/Ax_DWI_TENSOR_R2_1.nii.gz") == conformance.MATCH
    ds = pydicom.dcmread(b0_files[0])
    ds.add_new((0x0018, 0x9087), "FD", float("nan"))  # stated, but not a number
    ds.save_as(b0_files[0])
    volume = convert.convert_datasets(convert.read_series_datasets(series.files))
    assert diffusion.diffusion_tables(volume.heads, volume.affine) is None


def test_b_table_from_a_top_level_mr_diffusion_sequence():
    """Canon/Toshiba classic DWI: the MR Diffusion macro sits in MRDiffusionSequence."""
    heads = []
    for bval, gradient in ((0.0, (0.0, 0.0, 0.0)), (1000.0, (0.0, 0.0, 1.0)), (1000.0, (1.0, 0.0, 0.0))):
        direction = Dataset()
        direction.DiffusionGradientOrientation = list(gradient)
        item = Dataset()
        item.DiffusionBValue = bval
        item.DiffusionGradientDirectionSequence = Sequence([direction])
        head = Dataset()
        head.MRDiffusionSequence = Sequence([item])
        heads.append(head)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS: det < 0, FSL frame = voxel frame
    bval, bvec = diffusion.diffusion_tables(tuple(heads), affine)
    assert bval == "0 1000 1000\n"
    # LPS z -> voxel k; LPS x (= -R = +L) -> voxel i (which points L here)
    assert bvec == "0 0 1\n0 0 0\n0 1 0\n"


def test_frame_kind_reads_part_echo_and_field_map():
    view = Dataset()
    view.FrameType = ["ORIGINAL", "PRIMARY", "T1", "FIELD_MAP"]
    view.ComplexImageComponent = "REAL"
    view.EffectiveEchoTime = 0.0
    assert frames.frame_kind(view) == frames.ImageKind(0.0, "fieldmap", False)
    view.FrameType = ["ORIGINAL", "PRIMARY", "T1", "P"]
    view.ComplexImageComponent = "PHASE"
    view.EffectiveEchoTime = 4.92
    assert frames.frame_kind(view) == frames.ImageKind(4.92, "phase", False)


def test_weighted_volume_without_a_gradient_gets_no_b_table():
    heads = []
    for bval in (0.0, 1000.0):
        head = Dataset()
        head.DiffusionBValue = bval  # no DiffusionGradientOrientation anywhere
        heads.append(head)
    assert diffusion.diffusion_tables(tuple(heads), np.diag([-2.0, 2.0, 2.0, 1.0])) is None
