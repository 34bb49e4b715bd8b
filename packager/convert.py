"""Stage 4, convert: one Series -> one volume in memory -> one NIfTI (gzipped, clean header) + b-tables.

Engines. Classic single-frame series go through dicom2nifti (``dicom_array_to_nifti`` on the
datasets already read: no output file, no reorientation, so it neither copies the input folder
nor writes twice, and never names a file after a header value). Its result is cross-checked
against the slice geometry computed independently from the headers (``packager.stacking``):
when dicom2nifti's affine or voxel order disagrees, the series is refused rather than written
with a doubtful affine. Siemens mosaics and enhanced multi-frame objects are stacked by
``packager.stacking`` directly: dicom2nifti 2.6.2 misplaces non-axial and head-to-foot mosaics,
keeps only the first file of a multi-file enhanced series, cannot take a subset of frames, and
fails on Siemens XA phase and colour objects with numpy 2 (FIELD-NOTES.md; measured with
``benchmarks/conformance.py`` on the shared corpus).

Around the engines we own what dicom2nifti leaves wrong or unset (FIELD-NOTES.md): intensity
scaling (Philips: real-world values when they carry units such as Hz, else the "precise"
private scale, as dcm2niix does by default; Philips/README.md in dcm2niix), duplicate images
(refused, never collapsed), a fixed non-identifying NIfTI header (xyz mm, t s with
pixdim[4] = TR, sform = qform = scanner), dtype narrowed to int16/uint16 when exact, gzip with
isal at a fixed level, mtime 0 and no file name. b-vectors are recomputed from world-space
gradients and the final affine (FSL/BIDS voxel convention).

Refuses (ConversionFailed with a value-free detail): anything dicom2nifti rejects or gets
different from the header geometry, mixed echoes/parts/orientations/matrices in one series,
uneven or sheared slice spacing, incomplete volumes, duplicate images, undecodable pixel data,
NaN or empty data.
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

from . import frames as frame_model
from . import stacking
from .stacking import GeometryError, SliceImage, Stack

log = logging.getLogger(__name__)

GZIP_LEVEL = 6
DESCRIP = b"dcmpack"
RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
# dicom2nifti's voxel values must equal ours (display scaling) to this tolerance ...
ENGINE_DATA_RTOL = 1e-5
# ... and its affine ours, in the canonical frame, to this (mm; NIfTI stores float32).
ENGINE_AFFINE_MM = 1e-3
# Top-level elements not copied into per-volume heads of enhanced objects (big or per-frame).
_HEAD_SKIP = {0x52009229, 0x52009230, 0x7FE00010, 0x7FE00008, 0x7FE00009}


class ConversionFailed(Exception):
    """A series could not be converted; ``detail`` is safe to show (no header values)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Volume:
    """Converted image before serialisation (plus the datasets heading each volume).

    ``heads`` has one dataset per volume (for enhanced objects: the file's top level with that
    volume's first frame macros flattened in, see ``frames.frame_view``); ``slice_datasets``
    are the per-image headers (classic datasets or flattened frames). ``engine`` names what
    produced the voxels: ``dicom2nifti`` or ``dcmpack`` (our own stacking).
    """

    data: np.ndarray
    affine: np.ndarray
    heads: tuple[Dataset, ...]
    slice_datasets: tuple[Dataset, ...]
    engine: str = "dicom2nifti"


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip member: isal igzip, fixed level, mtime 0, no FNAME/FCOMMENT."""
    from isal import igzip

    return igzip.compress(data, compresslevel=min(GZIP_LEVEL, 3), mtime=0)


# ---------------------------------------------------------------- dicom2nifti

def _safe_detail(exc: BaseException) -> str:
    """dicom2nifti's own error codes are constants (e.g. NON_IMAGING_DICOM_FILES); keep those only."""
    text = str(exc.args[0]) if exc.args else ""
    if text and all(c.isupper() or c in "_/ " for c in text) and len(text) < 60:
        return f"dicom2nifti: {text}"
    return f"dicom2nifti raised {type(exc).__name__}"


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


def _canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Data and affine reordered to the closest RAS+ voxel axes (for comparing engines)."""
    ornt = nib.orientations.io_orientation(affine)
    spatial = data.shape[:3] if data.ndim >= 3 else data.shape + (1,) * (3 - data.ndim)
    reordered = nib.orientations.apply_orientation(data.reshape(spatial + data.shape[3:]), ornt)
    return reordered, affine @ nib.orientations.inv_ornt_aff(ornt, spatial)


def _engines_agree(engine: nib.Nifti1Image, data: np.ndarray, affine: np.ndarray) -> bool:
    theirs = np.asanyarray(engine.dataobj)
    while theirs.ndim > 3 and theirs.shape[-1] == 1:
        theirs = theirs[..., 0]
    theirs, their_affine = _canonical(theirs, np.asarray(engine.affine, dtype=float))
    ours, our_affine = _canonical(data, affine)
    if theirs.shape != ours.shape or not np.allclose(their_affine, our_affine, rtol=0, atol=ENGINE_AFFINE_MM):
        return False
    peak = float(np.max(np.abs(ours))) if ours.size else 0.0
    atol = ENGINE_DATA_RTOL * max(peak, 1.0)
    # Slab by slab: allclose makes several float64 temporaries the size of its inputs (20x an
    # int16 volume at once otherwise); the verdict is the same.
    return all(np.allclose(theirs[i], ours[i], rtol=ENGINE_DATA_RTOL, atol=atol) for i in range(theirs.shape[0]))


# ---------------------------------------------------------------- pixels and scaling

class _Pixels:
    """Decoded pixel arrays, one decode per dataset; images cut out by frame or tile."""

    def __init__(self, datasets: list[Dataset]):
        self._datasets = datasets
        self._arrays: dict[int, np.ndarray] = {}

    def image(self, image: SliceImage) -> np.ndarray:
        array = self._arrays.get(image.source)
        if array is None:
            ds = self._datasets[image.source]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    array = ds.pixel_array
            except (AttributeError, ValueError, TypeError, RuntimeError, NotImplementedError, KeyError) as exc:
                from .dicomio import decoder_problem  # names the plugin to install, when that is the cause

                raise ConversionFailed(decoder_problem(ds) or f"pixel data could not be decoded "
                                       f"({type(exc).__name__})") from None
            self._arrays[image.source] = array
        if image.frame is not None and frame_model.frame_count(self._datasets[image.source]) > 1:
            array = array[image.frame]
        if image.tile is not None:
            per_row = array.shape[1] // image.columns
            r, c = divmod(image.tile, per_row)
            array = array[r * image.rows:(r + 1) * image.rows, c * image.columns:(c + 1) * image.columns]
        if array.shape[:2] != (image.rows, image.columns):
            raise ConversionFailed("pixel data does not match Rows/Columns")
        return array


def _is_philips(ds: Dataset) -> bool:
    return "PHILIPS" in str(ds.get("Manufacturer", "")).upper()


def _scaling(image: SliceImage, ds: Dataset) -> tuple[float, float, str]:
    """(slope, intercept, method) turning stored values into the values we write.

    ``display`` is the DICOM modality LUT (RescaleSlope/Intercept). Philips stores a second,
    "precise" scale (private 2005,100E): precise = display / (RescaleSlope * ScaleSlope), the
    dcm2niix default; a Real World Value Mapping with physical units (e.g. a field map in Hz)
    wins over both (dcm2niix Philips/README.md, "Image Scaling"; dcm_qa_fmap Philips).
    """
    header = image.header
    slope = stacking.as_float(header.get("RescaleSlope"))
    intercept = stacking.as_float(header.get("RescaleIntercept"))
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = 0.0 if intercept is None else intercept
    if _is_philips(ds):
        mapping = frame_model.real_world_mapping(header)
        if frame_model.has_physical_units(mapping):
            return mapping[0], mapping[1], "real-world"
        private = frame_model.philips_scale_slope(ds, image.frame)
        if private:
            return 1.0 / private, intercept / (slope * private), "precise"
    return slope, intercept, "display"


def _assemble(stack: Stack, pixels: _Pixels, datasets: list[Dataset],
              display_only: bool = False) -> tuple[np.ndarray, bool]:
    """Voxel array (x=column, y=row, z=slice[, t]) and whether it differs from display scaling."""
    n_t, n_k = len(stack.volumes), stack.n_slices
    sample = pixels.image(stack.volumes[0][0])
    raw = np.empty((n_t, n_k) + sample.shape, dtype=sample.dtype)
    params = np.empty((n_t, n_k, 2))
    methods = set()
    for t, volume in enumerate(stack.volumes):
        for k, image in enumerate(volume):
            block = pixels.image(image)
            if block.shape != sample.shape:
                raise ConversionFailed("images of different pixel layouts in one series")
            raw[t, k] = block
            slope, intercept, method = _scaling(image, datasets[image.source])
            if display_only and method != "display":
                slope, intercept, method = _display(image)
            params[t, k] = (slope, intercept)
            methods.add(method)
    order = (3, 2, 1, 0)
    if sample.ndim == 3:  # colour: samples last (PhotometricInterpretation RGB, planar or not)
        if sample.shape[2] != 3 or raw.dtype != np.uint8:
            raise ConversionFailed("colour images other than 8-bit RGB are not supported")
        data = np.empty((sample.shape[1], sample.shape[0], n_k, n_t), dtype=RGB24)
        for channel, name in enumerate("RGB"):
            data[name] = raw[..., channel].transpose(order)
    else:
        if np.all(params == (1.0, 0.0)):
            scaled = raw
        elif np.all(params == params[0, 0]):
            scaled = raw * params[0, 0, 0] + params[0, 0, 1]
        else:
            scaled = raw * params[..., 0, None, None] + params[..., 1, None, None]
        data = scaled.transpose(order)
    if n_t == 1:
        data = data[..., 0]
    return data, methods != {"display"}


def _display(image: SliceImage) -> tuple[float, float, str]:
    slope = stacking.as_float(image.header.get("RescaleSlope"))
    intercept = stacking.as_float(image.header.get("RescaleIntercept"))
    return (1.0 if not slope else slope), (intercept or 0.0), "display"


def _refuse_duplicates(images: list[SliceImage], pixels: _Pixels) -> None:
    """The same pixel data twice at one slice position is a duplicate, not a time point.

    dicom2nifti drops such slices silently (``remove_duplicate_slices``); we refuse instead.
    Blank images (one value everywhere) are exempt: repeated empty slices are plausible.
    """
    seen: set[tuple[tuple[float, ...], bytes]] = set()
    for image in images:
        block = pixels.image(image)
        if block.size == 0 or np.all(block == block.flat[0]):
            continue
        where = tuple(np.round(image.position / stacking.SAME_SLICE_MM).astype(int).tolist())
        digest = hashlib.blake2b(np.ascontiguousarray(block).tobytes(), digest_size=16).digest()
        if (where, digest) in seen:
            raise ConversionFailed("duplicate images: the same pixel data twice at one slice position")
        seen.add((where, digest))


def narrow_dtype(data: np.ndarray) -> np.ndarray:
    """float64 from rescaling back to an exact integer type when possible, else float32."""
    if data.dtype.fields or not np.issubdtype(data.dtype, np.floating):
        return data
    if data.size and np.all(np.mod(data, 1) == 0):
        low, high = float(data.min()), float(data.max())
        for kind in (np.int16, np.uint16, np.int32):
            info = np.iinfo(kind)
            if info.min <= low and high <= info.max:
                return data.astype(kind)
    return data.astype(np.float32)


# ---------------------------------------------------------------- series -> volume

def _images(datasets: list[Dataset], frames: tuple[tuple[int, int], ...]) -> tuple[list[SliceImage], str]:
    """The series' images and which path produced them (classic, mosaic or enhanced)."""
    enhanced = [frame_model.is_multiframe(ds) for ds in datasets]
    if any(enhanced):
        if not all(enhanced):
            raise ConversionFailed("enhanced and classic images mixed in one series")
        return stacking.frame_images(datasets, frames), "enhanced"
    if frames:
        raise ConversionFailed("frame selection given for classic (single-frame) files")
    mosaic = ["MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])] for ds in datasets]
    if any(mosaic):
        if not all(mosaic):
            raise ConversionFailed("mosaic and single-slice images mixed in one series")
        return stacking.mosaic_images(datasets), "mosaic"
    return stacking.classic_images(datasets), "classic"


def _enhanced_head(ds: Dataset, view: Dataset) -> Dataset:
    """A file's top level plus one frame's flattened macros: reads like a classic header."""
    head = Dataset()
    for element in ds:
        if element.tag not in _HEAD_SKIP:
            head[element.tag] = element
    for element in view:
        head[element.tag] = element
    if "EchoTime" not in head and "EffectiveEchoTime" in view:
        head.EchoTime = view.EffectiveEchoTime
    if hasattr(ds, "file_meta"):
        head.file_meta = ds.file_meta
    return head


def convert_datasets(datasets: list[Dataset], *,
                     frames: tuple[tuple[int, int], ...] = ()) -> Volume:
    """Convert one series' datasets to data + affine (no file written).

    Parameters
    ----------
    datasets : list of Dataset
        Every file of the series, fully read (``read_series_datasets``), in ``Series.files`` order.
    frames : tuple of (file position, frame) pairs
        ``Series.frames``: the frames of enhanced files that belong to this series (index splits
        enhanced files by echo and image part); empty means every frame.

    Raises
    ------
    ConversionFailed
        With a value-free detail (see the module docstring).
    """
    if not datasets:
        raise ConversionFailed("no images")
    pixels = _Pixels(datasets)
    try:
        images, path = _images(datasets, frames)
        _refuse_duplicates(images, pixels)
        stack = stacking.build_stack(images)
    except GeometryError as exc:
        raise ConversionFailed(exc.detail) from None
    data, rescaled = _assemble(stack, pixels, datasets)
    affine = stack.affine
    engine = "dcmpack"
    if path == "classic" and not data.dtype.fields:
        try:
            result = run_dicom2nifti(datasets)
        except ConversionFailed as exc:
            # dicom2nifti refuses what it does not support (single slices: TOO_FEW_SLICES/
            # LOCALIZER); our stack already passed every geometry check, so it stands alone.
            log.debug("convert: dicom2nifti declined (%s); using the header stack", exc.detail)
            result = None
        display = _assemble(stack, pixels, datasets, display_only=True)[0] if rescaled else data
        if result is not None and not _engines_agree(result["NII"], display, affine):
            raise ConversionFailed("dicom2nifti and the slice positions disagree (affine or voxel order)")
        if result is not None and not rescaled:
            image = result["NII"]
            data, affine, engine = np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=float), "dicom2nifti"
            if data.ndim == 4 and data.shape[3] == 1:
                data = data[..., 0]
    if data.size == 0 or not np.all(np.isfinite(affine)):
        raise ConversionFailed("empty image or non-finite affine")
    if not data.dtype.fields and np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ConversionFailed("non-finite voxel values")
    # A volume's head is its first image in acquisition/instance order, not its lowest slice.
    firsts = [min(volume, key=lambda image: image.order) for volume in stack.volumes]
    if path == "enhanced":
        heads = tuple(_enhanced_head(datasets[image.source], image.header) for image in firsts)
        slices = tuple(image.header for volume in stack.volumes for image in volume)
    else:
        heads = tuple(datasets[image.source] for image in firsts)
        slices = tuple(datasets)
    log.debug("convert: %s path, %d slice(s) x %d volume(s), engine %s", path, stack.n_slices,
              len(stack.volumes), engine)
    return Volume(data=narrow_dtype(data), affine=affine, heads=heads, slice_datasets=slices, engine=engine)


# ---------------------------------------------------------------- NIfTI

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


# ---------------------------------------------------------------- diffusion

def _vector(values) -> np.ndarray | None:
    try:
        vector = np.array([float(x) for x in values], dtype=float)
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (3,) and np.all(np.isfinite(vector)) else None


def _standard_diffusion(ds: Dataset) -> tuple[float, np.ndarray | None] | None:
    """MR Diffusion macro (PS3.3 C.8.13.5.9) at top level or in a one-item MRDiffusionSequence.

    Canon/Toshiba classic files carry it inside MRDiffusionSequence; enhanced frames are
    flattened by ``frames.frame_view``.
    """
    holders = [ds]
    sequence = ds.get("MRDiffusionSequence")
    if sequence:
        holders.append(sequence[0])
    for holder in holders:
        if "DiffusionBValue" not in holder:
            continue
        bval = stacking.as_float(holder.DiffusionBValue)
        if bval is None:
            return None
        gradient = None
        if "DiffusionGradientOrientation" in holder:
            gradient = _vector(holder.DiffusionGradientOrientation)
        else:
            inner = holder.get("DiffusionGradientDirectionSequence")
            if inner and "DiffusionGradientOrientation" in inner[0]:
                gradient = _vector(inner[0].DiffusionGradientOrientation)
        return bval, gradient
    return None


def _world_gradient(ds: Dataset) -> tuple[float, np.ndarray | None] | None:
    """(b-value, unit gradient in DICOM LPS) from standard or Siemens tags.

    The gradient is a zero vector for b = 0 and None when a weighted volume has none (e.g. a
    gradient kept only in private tags we do not read): that must not become "0 0 0".
    """
    from dicom2nifti import common

    found = _standard_diffusion(ds)
    if found is None and (0x0019, 0x100C) in ds:  # Siemens classic: B_value, DiffusionGradientDirection (LPS)
        gradient = None
        if (0x0019, 0x100E) in ds:
            gradient = _vector(common.get_fd_array_value(ds[(0x0019, 0x100E)], 3))
        found = (float(common.get_is_value(ds[(0x0019, 0x100C)])), gradient)
    if found is None:
        return None
    bval, gradient = found
    if bval == 0:
        return bval, np.zeros(3)
    if gradient is None:
        return bval, None
    if np.linalg.norm(gradient) == 0:
        return bval, np.zeros(3)  # weighted but undirected: a trace image, stated as such
    return bval, gradient / np.linalg.norm(gradient)


def diffusion_tables(heads: tuple[Dataset, ...], affine: np.ndarray,
                     fallback: dict | None = None) -> tuple[str, str] | None:
    """BIDS .bval/.bvec text for the volumes, b-vectors in the FSL voxel frame of ``affine``."""
    pairs = [_world_gradient(ds) for ds in heads]
    rotation = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if all(p is not None and p[1] is not None for p in pairs) and len(pairs) > 1:
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


# ---------------------------------------------------------------- reading and summaries

def _parse_after_pixels(ds: Dataset) -> Dataset:
    """Parse the elements the header pass never saw (those after PixelData), so a corrupt one
    fails here with the series named; everything before PixelData was parsed by the index."""
    for tag in [t for t in ds.keys() if t > 0x7FE00010]:
        ds[tag]
    return ds


def read_series_datasets(files) -> list[Dataset]:
    """Full read (with pixels) of every file of a series, in the given order."""
    from .dicomio import read_dataset

    datasets = []
    for path in files:
        try:
            datasets.append(_parse_after_pixels(read_dataset(path, headers_only=False)))
        except Exception as exc:  # any read failure of one file fails this series only
            raise ConversionFailed(f"file unreadable in pixel pass ({type(exc).__name__})") from None
    return datasets


def nifti_summary(nifti_gz: bytes) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and zooms of gzipped NIfTI bytes (for manifest and report)."""
    import zlib

    # Only the 352 header bytes are inflated, not the whole image.
    head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(nifti_gz, 352)
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(head))
    return tuple(int(x) for x in header.get_data_shape()), tuple(float(x) for x in header.get_zooms())
