"""Stage 4, convert: one Series -> one NIfTI in memory (gzipped, clean header) + b-tables.

dicom2nifti is the engine: the datasets are read once here (pixel pass) and handed to
``dicom2nifti.convert_dicom.dicom_array_to_nifti`` with no output file and no reorientation,
so it neither copies the input folder nor writes twice, and never names a file after a header
value. Around it we own what dicom2nifti leaves wrong or unset (FIELD-NOTES.md): the NIfTI is
rebuilt with a fixed, non-identifying header (descrip/aux_file/intent_name/db_name empty or
fixed, no extensions), xyz units mm, t units s with pixdim[4] = TR for 4D, sform = qform =
scanner; dtype narrowed back to int16/uint16 when dicom2nifti's float64 rescale is exact;
gzip with isal at a fixed level, mtime 0 and no file name. b-vectors are recomputed from the
world-space gradients and the final affine (FSL/BIDS voxel convention).
Refuses (ConversionFailed with a value-free detail): anything dicom2nifti rejects, NaN/empty
data, or a geometry we cannot state.
"""
from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

GZIP_LEVEL = 6
DESCRIP = b"dcmpack"


class ConversionFailed(Exception):
    """A series could not be converted; ``detail`` is safe to show (no header values)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Volume:
    """Converted image before serialisation (plus the datasets heading each volume)."""

    data: np.ndarray
    affine: np.ndarray
    heads: tuple[Dataset, ...]
    slice_datasets: tuple[Dataset, ...]


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip member: isal igzip, fixed level, mtime 0, no FNAME/FCOMMENT."""
    from isal import igzip

    return igzip.compress(data, compresslevel=min(GZIP_LEVEL, 3), mtime=0)


def _safe_detail(exc: BaseException) -> str:
    """dicom2nifti's own error codes are constants (e.g. NON_IMAGING_DICOM_FILES); keep those only."""
    text = str(exc.args[0]) if exc.args else ""
    if text and all(c.isupper() or c in "_/ " for c in text) and len(text) < 60:
        return f"dicom2nifti: {text}"
    return f"dicom2nifti raised {type(exc).__name__}"


def _volume_heads(datasets: list[Dataset], n_volumes: int) -> tuple[Dataset, ...]:
    """The dataset at the head of each volume, in the order dicom2nifti stacks volumes."""
    from dicom2nifti import common, convert_generic, convert_siemens

    if n_volumes <= 1:
        return tuple(datasets[:1])
    if common.is_siemens(datasets) and convert_siemens._is_mosaic(datasets):
        return tuple(sorted(datasets, key=lambda d: d.AcquisitionNumber))
    if common.is_siemens(datasets):
        groups = convert_siemens._classic_get_grouped_dicoms(datasets)
    else:
        groups = convert_generic.get_grouped_dicoms(datasets)
    return tuple(g[0] for g in groups)


def run_dicom2nifti(datasets: list[Dataset]) -> dict:
    """Call dicom2nifti without output file or reorientation; map its errors to ConversionFailed."""
    import dicom2nifti.convert_dicom as convert_dicom
    import dicom2nifti.exceptions as d2n_errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("dicom2nifti").setLevel(logging.ERROR)
        try:
            return convert_dicom.dicom_array_to_nifti(datasets, None, reorient_nifti=False)
        except (d2n_errors.ConversionError, d2n_errors.ConversionValidationError) as exc:
            raise ConversionFailed(_safe_detail(exc)) from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, ZeroDivisionError,
                OverflowError, np.linalg.LinAlgError, MemoryError, NotImplementedError) as exc:
            raise ConversionFailed(_safe_detail(exc)) from None


def convert_datasets(datasets: list[Dataset], n_volumes_hint: int = 0) -> Volume:
    """Convert one series' datasets to data + affine (no file written)."""
    result = run_dicom2nifti(datasets)
    image = result["NII"]
    data = np.asanyarray(image.dataobj)
    affine = np.asarray(image.affine, dtype=float)
    if data.size == 0 or not np.all(np.isfinite(affine)):
        raise ConversionFailed("empty image or non-finite affine")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ConversionFailed("non-finite voxel values")
    n_volumes = data.shape[3] if data.ndim == 4 else 1
    heads = _volume_heads(datasets, n_volumes)
    if len(heads) != n_volumes:
        heads = tuple(datasets[:1]) * n_volumes if n_volumes else tuple(datasets[:1])
    return Volume(data=_narrow(data), affine=affine, heads=heads, slice_datasets=tuple(datasets))


def _narrow(data: np.ndarray) -> np.ndarray:
    """float64 from dicom2nifti's modality-LUT rescale back to an exact integer type when possible."""
    if not np.issubdtype(data.dtype, np.floating):
        return data
    if data.size and np.all(np.mod(data, 1) == 0):
        low, high = float(data.min()), float(data.max())
        for kind in (np.int16, np.uint16, np.int32):
            info = np.iinfo(kind)
            if info.min <= low and high <= info.max:
                return data.astype(kind)
    return data.astype(np.float32)


def to_nifti_bytes(data: np.ndarray, affine: np.ndarray, tr_seconds: float | None) -> bytes:
    """Serialise with a clean, fixed header; returns gzipped bytes."""
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_xyzt_units("mm", "sec")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    if data.ndim == 4:
        zooms = list(header.get_zooms())
        zooms[3] = float(tr_seconds) if tr_seconds else 1.0
        header.set_zooms(zooms)
    header["descrip"] = DESCRIP
    header["aux_file"] = b""
    header["intent_name"] = b""
    header["db_name"] = b""
    header["data_type"] = b""
    header["glmax"] = 0
    header["glmin"] = 0
    header.set_slope_inter(1.0, 0.0)
    image.header.extensions.clear()
    return gzip_bytes(image.to_bytes())


def _world_gradient(ds: Dataset) -> tuple[float, np.ndarray] | None:
    """(b-value, unit gradient in DICOM LPS) from standard, Siemens or Philips tags."""
    from dicom2nifti import common

    def vec(values):
        try:
            v = np.array([float(x) for x in values], dtype=float)
        except (TypeError, ValueError):
            return None
        return v if v.shape == (3,) and np.all(np.isfinite(v)) else None

    bval = None
    gradient = None
    if "DiffusionBValue" in ds:
        bval = float(ds.DiffusionBValue)
        if "DiffusionGradientOrientation" in ds:
            gradient = vec(ds.DiffusionGradientOrientation)
    elif (0x0019, 0x100C) in ds:  # Siemens classic: B_value, DiffusionGradientDirection (LPS)
        bval = float(common.get_is_value(ds[(0x0019, 0x100C)]))
        if (0x0019, 0x100E) in ds:
            gradient = vec(common.get_fd_array_value(ds[(0x0019, 0x100E)], 3))
    if bval is None:
        return None
    if gradient is None or bval == 0 or np.linalg.norm(gradient) == 0:
        return bval, np.zeros(3)
    return bval, gradient / np.linalg.norm(gradient)


def diffusion_tables(heads: tuple[Dataset, ...], affine: np.ndarray,
                     fallback: dict | None = None) -> tuple[str, str] | None:
    """BIDS .bval/.bvec text for the volumes, b-vectors in the FSL voxel frame of ``affine``."""
    pairs = [_world_gradient(ds) for ds in heads]
    rotation = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if all(p is not None for p in pairs) and len(pairs) > 1:
        bvals = np.array([p[0] for p in pairs])
        vectors = []
        for _, g in pairs:
            ras = g * np.array([-1.0, -1.0, 1.0])
            v = rotation.T @ ras
            if np.linalg.det(rotation) > 0:
                v[0] = -v[0]
            vectors.append(v)
        bvecs = np.array(vectors).T
    elif fallback is not None and fallback.get("BVAL") is not None and fallback.get("BVEC") is not None:
        # dicom2nifti's vectors are already in the DICOM image frame (read, phase, slice),
        # i.e. our voxel axes, since we do not reorient; only the FSL x flip is ours to add.
        bvals = np.asarray(fallback["BVAL"], dtype=float)
        bvecs = np.asarray(fallback["BVEC"], dtype=float).T.copy()
        if np.linalg.det(rotation) > 0:
            bvecs[0] = -bvecs[0]
    else:
        return None
    bvecs = np.where(np.abs(bvecs) < 5e-7, 0.0, bvecs)
    bval_text = " ".join(_fmt(b) for b in bvals) + "\n"
    bvec_text = "".join(" ".join(_fmt(v) for v in row) + "\n" for row in bvecs)
    return bval_text, bvec_text


def _fmt(value: float) -> str:
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def read_series_datasets(files) -> list[Dataset]:
    """Full read (with pixels) of every file of a series, in the given order."""
    from .dicomio import read_dataset

    datasets = []
    for path in files:
        try:
            datasets.append(read_dataset(path, headers_only=False))
        except Exception as exc:  # any read failure of one file fails this series only
            raise ConversionFailed(f"file unreadable in pixel pass ({type(exc).__name__})") from None
    return datasets


def nifti_summary(nifti_gz: bytes) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and zooms of gzipped NIfTI bytes (for manifest and report)."""
    import gzip

    header = nib.Nifti1Header.from_fileobj(io.BytesIO(gzip.decompress(nifti_gz)[:352]))
    return tuple(int(x) for x in header.get_data_shape()), tuple(float(x) for x in header.get_zooms())
