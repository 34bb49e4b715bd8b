"""The bounded-memory conversion path gives what the whole-series path gave, in about one copy.

- ``nifti.write_nifti`` streams exactly nibabel's ``to_bytes()`` through gzip (mtime 0, no name);
- ``dicom_pixels.pixels`` decodes native grey-scale data exactly as pydicom's ``pixel_array``;
- the dicom2nifti marker probe agrees with our stack on real series and catches a swapped
  slice or a shifted affine;
- frame views made from the fast reader's walk equal those made from pydicom's items;
- a conversion task holds well under two copies of its series at its peak (tracemalloc).
"""

from __future__ import annotations

import gzip
import io
import random

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import REPO
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from benchmarks import synthetic
from packager.convert import check, nifti, stacking, task
from packager.convert import volume as convert
from packager.dicom import fast as fast_reader
from packager.dicom import frames
from packager.dicom import pixels as dicom_pixels
from packager.dicom.fast import read_fast
from packager.dicom.reader import looks_like_dicom
from packager.model import BidsName, Planned

# ---------------------------------------------------------------- NIfTI writer


def _cases():
    rng = np.random.default_rng(5)
    raw = rng.integers(-2000, 4000, size=(3, 5, 7, 9), dtype=np.int16)  # (t, k, row, column)
    rgb = np.zeros((9, 7, 5), dtype=convert.RGB24)
    rgb["R"] = rng.integers(0, 255, size=rgb.shape)
    return {
        "int16 3D (a view in NIfTI order)": (raw[0].transpose(2, 1, 0), None),
        "int16 4D with TR": (raw.transpose(3, 2, 1, 0), 2.5),
        "uint16 C-ordered": (np.ascontiguousarray(raw[0].transpose(2, 1, 0)).astype(np.uint16), None),
        "float32": (rng.normal(size=(6, 5, 4)).astype(np.float32), None),
        "int32 4D, one volume": (raw[:1].transpose(3, 2, 1, 0).astype(np.int32), 1.0),
        "RGB24": (rgb, None),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_streamed_nifti_is_nibabels_bytes(case):
    data, tr = _cases()[case]
    affine = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0.1, -120], [0, 0, 3, -60], [0, 0, 0, 1]])
    out = io.BytesIO()
    shape, zooms = nifti.write_nifti(out, data, affine, tr)
    blob = out.getvalue()
    assert blob[:2] == b"\x1f\x8b" and blob[4:8] == b"\0\0\0\0" and not blob[3] & 0x18  # mtime 0, no name/comment
    assert gzip.decompress(blob) == nifti._nifti_image(data, affine, tr).to_bytes()
    assert shape == data.shape
    image = nib.Nifti1Image.from_bytes(gzip.decompress(blob))
    assert np.array_equal(np.asanyarray(image.dataobj), data)
    assert zooms == tuple(float(z) for z in image.header.get_zooms())


# ---------------------------------------------------------------- native pixel decoding


def _native(rows=6, columns=5, frames=1, allocated=16, stored=12, signed=0, odd=False, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = rows, columns, allocated, stored
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = stored - 1, signed, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    dtype = f"<{'i' if signed else 'u'}{allocated // 8}"
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, size=rows * columns * frames, dtype=dtype, endpoint=True)
    data = values.tobytes() + (b"\0" if odd else b"")
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    return ds


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(signed=1),
        dict(stored=16),
        dict(allocated=8, stored=8),
        dict(allocated=8, stored=6, signed=1),
        dict(allocated=32, stored=32, signed=1),
        dict(allocated=32, stored=20),
        dict(frames=4, signed=1),
        dict(rows=3, columns=3, allocated=8, stored=8, odd=True),
    ],
)
def test_native_pixels_equal_pydicom(options):
    for seed in range(3):
        ds = _native(seed=seed, **options)
        ours, theirs = dicom_pixels.pixels(ds), ds.pixel_array
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_pixels_of_real_files_equal_pydicom(corpus):
    rng = random.Random(11)
    picked = []
    for name in ("dcm_qa", "dcm_qa_nih", "dcm_qa_fmap", "dcm_qa_mosaic", "dcm_qa_xa30"):
        files = sorted(p for p in (corpus / name / "In").rglob("*") if p.is_file() and looks_like_dicom(p))
        picked += rng.sample(files, min(8, len(files)))
    picked += sorted((REPO / "sample_data" / "dicom").rglob("*.dcm"))[:30:3]
    compared = 0
    for path in picked:
        ds = read_fast(path, headers_only=False).dataset
        try:
            theirs = pydicom.dcmread(path).pixel_array
        except Exception:  # noqa: BLE001 - colour/compressed objects pydicom cannot decode here
            continue
        ours = dicom_pixels.pixels(ds)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and np.array_equal(ours, theirs), path
        compared += 1
    assert compared > 30


def _slice_file(z: int, values: np.ndarray, signed: int, allocated: int) -> Dataset:
    """One classic MR slice at z mm, its pixels stored with the given type, as the reader gives it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = f"2.25.{z + 1}"
    ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = "2.25.99", "MR", z + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, z], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = allocated
    ds.HighBit, ds.PixelRepresentation = allocated - 1, signed
    ds.PixelData = values.astype(f"<{'i' if signed else 'u'}{allocated // 8}").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return read_fast(None, headers_only=False, data=buffer.getvalue()).dataset


@pytest.mark.parametrize(
    "stored",
    [
        [(0, 16, 100), (1, 16, -100), (1, 16, -5)],  # unsigned, then signed files
        [(0, 8, 200), (0, 16, 1000), (0, 16, 300)],  # 8-bit, then 16-bit files
        [(1, 16, -7), (0, 16, 60000), (1, 16, 9)],  # signed, unsigned, signed
    ],
)
def test_files_of_one_series_with_different_pixel_types_keep_their_values(stored):
    rng = np.random.default_rng(3)
    datasets, expected = [], []
    for z, (signed, allocated, level) in enumerate(stored):
        values = np.full((4, 3), level) + rng.integers(0, 3, size=(4, 3))
        datasets.append(_slice_file(z, values, signed, allocated))
        expected.append(datasets[-1].pixel_array.astype(np.int64))
    volume = convert.convert_datasets(datasets).data
    for z, values in enumerate(expected):
        assert np.array_equal(volume[:, :, z].astype(np.int64), values.T)


# ---------------------------------------------------------------- the dicom2nifti probe


@pytest.mark.parametrize("folder", ["dcm_qa_nih/In/20180918GE/mr_0004", "dcm_qa_fmap/In/Siemens/4_gre_field_ph"])
def test_probe_agrees_with_our_stack_and_catches_a_swap(corpus, folder):
    files = sorted(p for p in (corpus / folder).iterdir() if looks_like_dicom(p))
    datasets = convert.read_series_datasets(files)
    stack = stacking.build_stack(stacking.classic_images(datasets))
    engine = check.dicom2nifti_probe(datasets)["NII"]
    assert check.probe_agrees(engine, stack)
    markers = np.asanyarray(engine.dataobj).copy()
    markers[:, :, [0, 1]] = markers[:, :, [1, 0]]  # two slices the other way round
    assert not check.probe_agrees(nib.Nifti1Image(markers, engine.affine), stack)
    shifted = engine.affine.copy()
    shifted[:3, 3] += 0.5  # half a millimetre off
    assert not check.probe_agrees(nib.Nifti1Image(np.asanyarray(engine.dataobj), shifted), stack)


# ---------------------------------------------------------------- frame views from the walk


def _equal_views(ours: list[Dataset], theirs: list[Dataset]) -> bool:
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours, theirs, strict=True):
        if list(a.keys()) != list(b.keys()):
            return False
        for tag in a.keys():
            x, y = a[tag], b[tag]
            if x.VR != y.VR or (x.VR != "SQ" and (x.value != y.value or type(x.value) is not type(y.value))):
                return False
            if x.VR == "SQ" and len(x.value) != len(y.value):
                return False
    return True


def test_frame_views_from_the_walk_equal_those_from_items(corpus):
    folders = [corpus / "dcm_qa_xa30" / "In", corpus / "dcm_qa_fmap" / "In" / "Philips"]
    checked = 0
    for path in sorted(p for folder in folders for p in folder.rglob("*") if p.is_file() and looks_like_dicom(p)):
        lazy = read_fast(path, headers_only=False, lazy=True).dataset
        if not frames.is_multiframe(lazy):
            continue
        assert fast_reader.walked_sequence(lazy, frames.PER_FRAME) is not None
        walked = frames.frame_views(lazy)
        assert _equal_views(walked, frames.frame_views(pydicom.dcmread(path))), path
        first = frames.per_frame_item(lazy, 0)
        whole_first = pydicom.dcmread(path).PerFrameFunctionalGroupsSequence[0]
        assert first is not None and list(first.keys()) == list(whole_first.keys())
        checked += 1
    assert checked >= 10


def test_lazy_datasets_answer_like_whole_ones(corpus):
    folder = corpus / "dcm_qa_nih" / "In"
    path = (
        sorted(folder.rglob("*.dcm"))[0]
        if list(folder.rglob("*.dcm"))
        else sorted(p for p in (corpus / "dcm_qa_nih" / "In").rglob("*") if p.is_file() and looks_like_dicom(p))[0]
    )
    lazy = read_fast(path, headers_only=True, lazy=True).dataset
    whole = read_fast(path, headers_only=True).dataset
    assert len(lazy) == len(whole)
    assert "PatientName" in lazy and (0x7777, 0x0010) not in lazy
    assert lazy.get("Rows") == whole.get("Rows") and lazy.get("NoSuchKeyword", 5) == 5
    branch = fast_reader.copy_elements(lazy._dict)
    del branch[0x00280010]
    assert 0x00280010 in lazy and 0x00280010 not in branch
    assert fast_reader.tags(lazy) == sorted(whole.keys())
    assert [e.tag for e in lazy] == [e.tag for e in whole]  # iterating makes every element
    # once every element is made, a copy is a plain dict (the dicom2nifti probes' lookups stay in C)
    made = fast_reader.copy_elements(lazy._dict)
    assert type(made) is dict and made == dict(lazy._dict.items())
    assert type(branch) is not dict  # made while elements were pending: it stayed lazy


# ---------------------------------------------------------------- memory


def _convert_in_child(item: Planned, folder: str, results) -> None:
    """In a forked process: convert, and report the growth of the peak resident size (KiB)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = task.convert_task(item, folder, "dcmpack test")
    results.put((result.error, result.shape, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before))


def test_a_conversion_task_holds_about_one_copy_of_its_series(tmp_path):
    """Peak resident memory (the OS's figure) of a 128 MiB series: the whole-series path held
    over five copies; reading keeps the pixel data once, the volume fills as the files are
    released, and the NIfTI and the QC pictures are made without a copy."""
    import multiprocessing

    from packager import index, sources
    from packager.config import ExcludeConfig

    root = synthetic.make_session(tmp_path / "session", series=1, images=256, matrix=512)
    series_kib = 256 * 512 * 512 * 2 // 1024
    source = sources.open_source(str(root), tmp_path / "staging")
    (series,) = index.index_files(source.files, ExcludeConfig()).series
    item = Planned(series, BidsName("anat", "T1w", (("acq", "mem"),)), "x", None, "sub-x/anat/sub-x_acq-mem_T1w")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_convert_in_child, args=(item, str(tmp_path / "dataset"), results))
    child.start()
    error, shape, grown = results.get(timeout=600)
    child.join()
    assert not error, error
    assert shape == (512, 512, 256)
    assert grown < 1.5 * series_kib, grown / series_kib
