"""Stage unit test, index: SourceFiles -> sessions and series (``index_files``), on tiny synthetic images."""

from __future__ import annotations

import pydicom
import pytest
import synthetic_dicom as dicom

from packager.config import ExcludeConfig
from packager.errors import InputError
from packager.index import index_files
from packager.model import ExclusionReason, SourceFile


def _files(root):
    return [SourceFile(path, path.relative_to(root).as_posix()) for path in sorted(root.rglob("*")) if path.is_file()]


def _index(root, exclude=ExcludeConfig(), **options):
    found = index_files(_files(root), exclude, jobs=1, **options)
    return found.sessions, found.series, found.skipped


def test_series_and_sessions_are_grouped_and_counted(tmp_path):
    dicom.write_series(tmp_path / "one" / "t1", 3, series=1, description="anat-T1w")
    dicom.write_series(tmp_path / "one" / "bold", 4, series=2, description="func-bold_task-rest")
    dicom.write_series(tmp_path / "two" / "t1", 2, patient_id="ZZUNIT002", series=1)
    sessions, series, skipped = _index(tmp_path)
    assert skipped == 0
    assert len(sessions) == 2 and [s.index for s in sessions] == [0, 1]
    assert [(s.session, s.series_number, s.n_files, s.n_slices, s.n_volumes) for s in series] == [
        (0, 1, 3, 3, 1),
        (0, 2, 4, 4, 1),
        (1, 1, 2, 2, 1),
    ]
    first = series[0]
    assert (first.rows, first.columns, first.orientation, first.modality) == (4, 4, "axial", "MR")
    assert first.exclusion is None and not first.is_localizer and not first.is_derived
    assert [p.name for p in first.files] == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm"]  # instance order


def test_identity_stays_out_of_repr(tmp_path):
    """Patient ID and study UID reach ``deid`` through Session, never through its repr."""
    dicom.write_series(tmp_path / "t1", 1)
    sessions, series, _ = _index(tmp_path)
    assert sessions[0].patient_id == "ZZUNIT001"
    assert "ZZUNIT001" not in repr(sessions) and "2.25." not in repr(sessions) + repr(series)


def test_one_series_uid_splits_by_echo(tmp_path):
    for echo, echo_time in ((2, 5.0), (1, 3.0)):
        for k in range(2):
            dicom.write(
                dicom.mr_image(
                    series=3, description="fmap-gre", echo=echo, echo_time=echo_time, instance=k + 1, position=(0, 0, k)
                ),
                tmp_path / f"e{echo}_{k}.dcm",
            )
    _, series, _ = _index(tmp_path)
    assert [(s.echo_number, s.echo_time, s.n_files) for s in series] == [(1, 3.0, 2), (2, 5.0, 2)]
    assert len({s.uid for s in series}) == 1


def test_non_dicom_is_skipped_and_counted(tmp_path):
    dicom.write_series(tmp_path / "t1", 2)
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    _, series, skipped = _index(tmp_path)
    assert skipped == 2 and len(series) == 1


def test_no_dicom_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image\n")
    with pytest.raises(InputError, match=r"no DICOM files found \(1 other file\(s\) skipped\)") as info:
        _index(tmp_path)
    assert info.value.exit_code == 3


def test_truncated_file_leaves_out_its_series_or_stops_with_strict(tmp_path):
    paths = dicom.write_series(tmp_path / "t1", 3)
    dicom.write_series(tmp_path / "t2", 2, series=8)
    paths[1].write_bytes(paths[1].read_bytes()[:-10])
    index = index_files(_files(tmp_path), ExcludeConfig(), jobs=1)
    reasons = {s.series_number: (s.exclusion, s.exclusion_detail) for s in index.series}
    assert reasons[8] == (None, "")
    reason, detail = next(value for number, value in reasons.items() if number != 8)
    assert reason is ExclusionReason.DAMAGED and detail.startswith("t1/IM0002.dcm: truncated DICOM file")
    with pytest.raises(InputError, match="truncated") as info:
        _index(tmp_path, strict=True)
    assert "t1/IM0002.dcm" in str(info.value)


@pytest.mark.parametrize("localizers, expected", [(True, ExclusionReason.LOCALIZER), (False, None)])
def test_localizer_policy(tmp_path, localizers, expected):
    dicom.write_series(tmp_path / "loc", 3, description="localizer")
    _, series, _ = _index(tmp_path, ExcludeConfig(localizers=localizers))
    assert series[0].exclusion is expected
    assert series[0].is_localizer is (expected is not None)


def test_derived_policy(tmp_path):
    dicom.write_series(tmp_path / "adc", 2, image_type=("DERIVED", "PRIMARY", "ADC"))
    _, series, _ = _index(tmp_path)
    assert series[0].is_derived and series[0].exclusion is ExclusionReason.DERIVED
    _, series, _ = _index(tmp_path, ExcludeConfig(derived=False))
    assert series[0].is_derived and series[0].exclusion is None


def test_progress_reaches_the_total(tmp_path):
    dicom.write_series(tmp_path / "t1", 3)
    (tmp_path / "notes.txt").write_text("x")
    calls = []
    _index(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (4, 4)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_one_series_uid_with_two_series_numbers_is_two_series(tmp_path):
    """A re-exported or edited copy keeps the SeriesInstanceUID and SOPInstanceUIDs but carries
    another SeriesNumber: two series, as dcm2niix keeps them apart, not one conflicting series."""
    originals = dicom.write_series(tmp_path / "t1", 3, series=5)
    (tmp_path / "copy").mkdir()
    for path in originals:
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = 105
        ds.save_as(tmp_path / "copy" / path.name)
    _, series, _ = _index(tmp_path)
    assert sorted((s.series_number, s.n_files, s.exclusion) for s in series) == [(5, 3, None), (105, 3, None)]
    assert len({s.uid for s in series}) == 1


@pytest.mark.parametrize(
    "sop_class, detail",
    [
        ("1.2.840.10008.5.1.4.1.1.88.59", "key object selection"),
        ("1.2.840.10008.5.1.4.1.1.88.22", "structured report"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "presentation state"),
        ("1.2.840.10008.5.1.4.1.1.481.3", "radiotherapy object (RT structure set, plan, dose, image)"),
        ("1.2.840.10008.5.1.4.1.1.66", "spectroscopy or raw data SOP class"),
        ("1.2.840.10008.5.1.4.1.1.104.1", "encapsulated document"),
    ],
)
def test_non_image_objects_beside_images_are_left_out_not_fatal(tmp_path, sop_class, detail):
    """What a PACS export carries besides images (KO, SR, presentation states, RT, raw data,
    PDFs): each a series excluded by policy (not an error), the images beside it indexed."""
    dicom.write_series(tmp_path / "t1", 2, series=1)
    ds = pydicom.Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = pydicom.dcmread(tmp_path / "t1" / "IM0001.dcm").StudyInstanceUID
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.PatientID = "ZZUNIT001"
    ds.SeriesNumber = 99
    ds.Modality = "OT"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    (tmp_path / "other").mkdir()
    ds.save_as(tmp_path / "other" / "OBJ0001", enforce_file_format=True)
    _, series, _ = _index(tmp_path)
    by_number = {s.series_number: s for s in series}
    assert by_number[1].exclusion is None
    assert by_number[99].exclusion is not None and not by_number[99].exclusion.is_error
    assert by_number[99].exclusion_detail == detail


def test_orientation_label_equals_numpys_cross_product_and_argmax():
    """``index.record.orientation_label`` is written without numpy (a fully cached build never
    imports it): the same plane as ``np.argmax(abs(np.cross(row, column)))`` on random, axis-aligned,
    oblique, degenerate and NaN direction cosines."""
    import random

    import numpy as np

    from packager.index.record import orientation_label

    rng = random.Random(7)
    cases = [(1.0, 0, 0, 0, 1, 0), (0, 1.0, 0, 0, 0, -1), (1.0, 0, 0, 0, 0, -1), (0.0,) * 6]
    cases += [(float("nan"), 0, 0, 0, 1.0, 0), (1.0, float("nan"), 0, 0, 0, 1.0), (0.7071, 0.7071, 0, 0, 0, 1.0)]
    cases += [tuple(rng.choice([rng.uniform(-1, 1), 0.0, 1.0, -1.0, 0.5]) for _ in range(6)) for _ in range(3000)]
    for case in cases:
        axis = int(np.argmax(np.abs(np.cross(case[:3], case[3:]))))
        assert orientation_label.__wrapped__(case) == ("sagittal", "coronal", "axial")[axis], case
    assert orientation_label(None) == "unknown"
