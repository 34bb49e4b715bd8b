"""Convert: one Series -> one volume in memory -> one NIfTI (gzipped, clean header) + b-tables.

Geometry and engines. Every series is stacked from its headers by ``packager.convert.stacking``
(slice order, volumes, affine). Classic single-frame series are also put through dicom2nifti
as an independent check of that geometry (``packager.convert.check``); an affine or voxel
order that disagrees with ours refuses the series. Siemens mosaics and enhanced multi-frame
objects are not given to dicom2nifti: 2.6.2
misplaces non-axial and head-to-foot mosaics, keeps only the first file of a multi-file
enhanced series, cannot take a subset of frames, and fails on Siemens XA phase and colour
objects with numpy 2 (measured with ``benchmarks/conformance.py`` on the shared corpus).

Memory. Voxels are decoded file by file straight into the output array (in NIfTI order), each
file's pixel data released once its images are placed (``release=True``, the build's path), and
the NIfTI is written through the gzip stream (``nifti.write_nifti``): a task holds about one copy of
its series (two while rescaling to a wider type), not the five a whole-series decode took.

Around the engines we own what dicom2nifti leaves wrong or unset (FIELD-NOTES.md): intensity
scaling (Philips: real-world values when they carry units such as Hz, else the "precise"
private scale, as dcm2niix does by default; Philips/README.md in dcm2niix), dtype narrowed to
int16/uint16 when exact. The fixed NIfTI header and its gzip stream are
``packager.convert.nifti``'s; b-tables ``packager.convert.diffusion``'s.

Refuses (ConversionFailed with a value-free detail): anything dicom2nifti rejects or gets
different from the header geometry, mixed echoes/parts/orientations/matrices in one series,
uneven or sheared slice spacing, incomplete volumes, undecodable pixel data, NaN or empty
data. Images of distinct instances at one position are time points even when their pixels are
identical (GE multiband QA data); copies of one instance are left out by the index.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from packager.convert import ConversionFailed, stacking
from packager.convert.check import check_with_dicom2nifti
from packager.convert.stacking import GeometryError, SliceImage, Stack
from packager.dicom import frames as frame_model
from packager.dicom import header, vendor
from packager.dicom.reader import reading_settings
from packager.executors import release_memory

log = logging.getLogger(__name__)

RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
# Top-level elements not copied into per-volume heads of enhanced objects (big or per-frame).
_HEAD_SKIP = {0x52009229, 0x52009230, 0x7FE00010, 0x7FE00008, 0x7FE00009}


@dataclass(frozen=True, slots=True)
class Volume:
    """Converted image before serialisation (plus the datasets heading each volume).

    ``heads`` has one dataset per volume (for enhanced objects: the file's top level with that
    volume's first frame macros flattened in, see ``frames.frame_view``); ``slice_datasets``
    are the per-image headers (classic datasets or flattened frames).
    """

    data: np.ndarray
    affine: np.ndarray
    heads: tuple[Dataset, ...]
    slice_datasets: tuple[Dataset, ...]


# ---------------------------------------------------------------- pixels and scaling


def _check_pixel_header(ds: Dataset) -> None:
    """What the header says about decoding one dataset's pixels (refusals before decoding)."""
    stored, high = header.value(ds, "BitsStored"), header.value(ds, "HighBit")
    if isinstance(stored, int) and isinstance(high, int) and high != stored - 1:
        # values kept in the upper bits (allowed by old IODs): pydicom and our decoder would both
        # read the low bits only, a wrong image
        raise ConversionFailed("HighBit is not BitsStored - 1 (stored values not in the low bits)")


def _decode(ds: Dataset) -> np.ndarray:
    """All of one dataset's pixels (frames first for enhanced objects); value-free errors."""
    from packager.dicom.pixels import pixels

    _check_pixel_header(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixels(ds)
    except (AttributeError, ValueError, TypeError, RuntimeError, NotImplementedError, KeyError) as exc:
        from packager.dicom.pixels import decoder_problem  # names the plugin to install, when that is the cause

        raise ConversionFailed(
            decoder_problem(ds) or f"pixel data could not be decoded ({type(exc).__name__})"
        ) from None


def _cut(array: np.ndarray, image: SliceImage, ds: Dataset) -> np.ndarray:
    """The 2D image (frame or mosaic tile) ``image`` of ``array``, the decoded pixels of ``ds``."""
    if image.frame is not None and frame_model.frame_count(ds) > 1:
        array = array[image.frame]
    if image.tile is not None:
        per_row = array.shape[1] // image.columns
        r, c = divmod(image.tile, per_row)
        array = array[r * image.rows : (r + 1) * image.rows, c * image.columns : (c + 1) * image.columns]
    if array.shape[:2] != (image.rows, image.columns):
        raise ConversionFailed("pixel data does not match Rows/Columns")
    return array


#: Bytes of released pixel data after which freed heap memory is returned to the OS.
_TRIM_EVERY = 32 << 20


def _release(ds: Dataset) -> int:
    """Drop a dataset's pixel data (raw and decoded) once its images are in the volume; returns
    about how many bytes that freed."""
    freed = 0
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        element = ds.get_item(tag)
        if element is not None:
            value = element.value
            freed += len(value) if isinstance(value, (bytes, bytearray)) else 0
            del ds[tag]
    for attribute in ("_pixel_array", "_pixel_id"):
        ds.__dict__.pop(attribute, None)
    return freed


def _is_philips(ds: Dataset) -> bool:
    return "PHILIPS" in str(header.value(ds, "Manufacturer") or "").upper()


def _scaling(image: SliceImage, ds: Dataset) -> tuple[float, float, str]:
    """(slope, intercept, method) turning stored values into the values we write.

    ``display`` is the DICOM modality LUT (RescaleSlope/Intercept). Philips stores a second,
    "precise" scale (private 2005,100E): precise = display / (RescaleSlope * ScaleSlope), the
    dcm2niix default, taken whenever the frame has one: it puts phase in radians (display is
    milliradians, 1000x: dcm_qa_philips_enh) and a B0 map in Hz (equal to its Real World Value
    Mapping: dcm_qa_fmap Philips). A Real World Value Mapping with physical units is used only
    without it. dcm2niix computes its precise slope as the difference of two float32 values
    (``PhilipsPrecise``: l1 - l0), 7e-5 off 1/ScaleSlope on that phase map; ours is exact.
    """
    slope = header.number(image.header, "RescaleSlope")
    intercept = header.number(image.header, "RescaleIntercept")
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = 0.0 if intercept is None else intercept
    if _is_philips(ds):
        private = frame_model.philips_scale_slope(ds, image.frame)
        if private:
            return 1.0 / private, intercept / (slope * private), "precise"
        mapping = frame_model.real_world_mapping(image.header)
        if mapping is not None and frame_model.has_physical_units(mapping):
            return mapping[0], mapping[1], "real-world"
    return slope, intercept, "display"


def _assemble(stack: Stack, datasets: list[Dataset], release: bool) -> np.ndarray:
    """Voxel array (x=column, y=row, z=slice[, t]), decoded file by file into its final place.

    Stored values are decoded into ``raw`` (t, k, row, column), C order, so that its transpose
    is the NIfTI (Fortran) order and is written without a copy. Scaling (``_scaling``) keeps
    the stored type when it is the identity; otherwise the values are computed in float64 one
    image at a time and stored in the narrowest type that holds them exactly (``narrow_dtype``'s
    rule, applied without a float64 copy of the series).
    """
    n_t, n_k = len(stack.volumes), stack.n_slices
    places: dict[int, tuple[int, int]] = {}
    by_source: dict[int, list[SliceImage]] = {}
    params = np.empty((n_t, n_k, 2))
    for t, volume in enumerate(stack.volumes):
        for k, image in enumerate(volume):
            places[id(image)] = (t, k)
            by_source.setdefault(image.source, []).append(image)
            params[t, k] = _scaling(image, datasets[image.source])[:2]
    raw: np.ndarray | None = None
    released = 0
    for source in sorted(by_source):
        ds = datasets[source]
        array = _decode(ds)
        for image in by_source[source]:
            block = _cut(array, image, ds)
            if raw is None:
                raw = np.empty((n_t, n_k) + block.shape, dtype=block.dtype)
            elif block.shape != raw.shape[2:]:
                raise ConversionFailed("images of different pixel layouts in one series")
            elif not np.can_cast(block.dtype, raw.dtype, "safe"):
                raw = _widened(raw, block.dtype)
            raw[places[id(image)]] = block
        del array
        if release:
            released += _release(ds)
            if released >= _TRIM_EVERY:
                # freed pixel data stays in the heap (resident) until handed back: without this
                # the files' bytes and the volume would both be resident at the end
                release_memory()
                released = 0
    assert raw is not None  # a stack has at least one image
    order = (3, 2, 1, 0)
    if raw.ndim == 5:  # colour: samples last (PhotometricInterpretation RGB, planar or not)
        if raw.shape[4] != 3 or raw.dtype != np.uint8:
            raise ConversionFailed("colour images other than 8-bit RGB are not supported")
        data = np.empty((raw.shape[3], raw.shape[2], n_k, n_t), dtype=RGB24)
        for channel, name in enumerate("RGB"):
            data[name] = raw[..., channel].transpose(order)
    elif np.all(params == (1.0, 0.0)):
        data = raw.transpose(order)
        if np.issubdtype(data.dtype, np.floating):
            data = narrow_dtype(data)  # stored floats: the same rule as rescaled values
    else:
        data = _rescaled(raw, params).transpose(order)
    return data[..., 0] if n_t == 1 else data


def _widened(raw: np.ndarray, kind: np.dtype) -> np.ndarray:
    """``raw`` in a type that also holds every ``kind`` value exactly (files of one series with
    different BitsAllocated or PixelRepresentation); refused when only a float would."""
    wider = np.promote_types(raw.dtype, kind)
    if raw.ndim == 5 or (wider.kind == "f" and raw.dtype.kind != "f" and kind.kind != "f"):
        raise ConversionFailed("files of one series store their pixels in incompatible types")
    return raw.astype(wider)


def _rescaled(raw: np.ndarray, params: np.ndarray) -> np.ndarray:
    """``narrow_dtype(raw * slope + intercept)`` image by image (float64 per image only)."""

    def scaled(t: int, k: int) -> np.ndarray:
        return raw[t, k] * params[t, k, 0] + params[t, k, 1]

    integral, low, high = True, np.inf, -np.inf
    for t in range(raw.shape[0]):
        for k in range(raw.shape[1]):
            values = scaled(t, k)
            if not np.all(np.isfinite(values)):
                raise ConversionFailed("non-finite voxel values")
            if values.size:
                integral = integral and bool(np.all(np.mod(values, 1) == 0))
                low, high = min(low, float(values.min())), max(high, float(values.max()))
    kind: np.dtype = np.dtype(np.float32)
    if raw.size and integral:
        for candidate in (np.int16, np.uint16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= low and high <= info.max:
                kind = np.dtype(candidate)
                break
    out = np.empty(raw.shape, dtype=kind)
    for t in range(raw.shape[0]):
        for k in range(raw.shape[1]):
            out[t, k] = scaled(t, k).astype(kind)
    return out


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
    mosaic = ["MOSAIC" in [str(v).upper() for v in (header.value(ds, "ImageType") or [])] for ds in datasets]
    if any(mosaic):
        if not all(mosaic):
            raise ConversionFailed("mosaic and single-slice images mixed in one series")
        return stacking.mosaic_images(datasets), "mosaic"
    grid = [vendor.uih_grid_positions(ds) is not None for ds in datasets]
    if any(grid):
        if not all(grid):
            raise ConversionFailed("United Imaging grid and single-slice images mixed in one series")
        return stacking.uih_grid_images(datasets), "mosaic"
    return stacking.classic_images(datasets), "classic"


def _enhanced_head(ds: Dataset, view: Dataset) -> Dataset:
    """A file's top level plus one frame's flattened macros: reads like a classic header."""
    from packager.dicom.fast import tags

    head = Dataset()
    for tag in tags(ds):
        if tag not in _HEAD_SKIP:
            head[tag] = ds[tag]
    for element in view:
        head[element.tag] = element
    if "EchoTime" not in head and "EffectiveEchoTime" in view:
        head.EchoTime = view.EffectiveEchoTime
    if hasattr(ds, "file_meta"):
        head.file_meta = ds.file_meta
    return head


@reading_settings()
def convert_datasets(
    datasets: list[Dataset], *, frames: tuple[tuple[int, int], ...] = (), release: bool = False
) -> Volume:
    """Convert one series' datasets to data + affine (no file written).

    Parameters
    ----------
    datasets : list of Dataset
        Every file of the series, fully read (``read_series_datasets``), in ``Series.files`` order.
    frames : tuple of (file position, frame) pairs
        ``Series.frames``: the frames of enhanced files that belong to this series (index splits
        enhanced files by echo and image part); empty means every frame.
    release : bool
        Drop each dataset's pixel data once its images are in the volume (the datasets are the
        caller's to throw away then); keeps memory at about one copy of the series.

    Raises
    ------
    ConversionFailed
        With a value-free detail (see the module docstring).
    """
    stack, path = _stack(datasets, frames)
    data = _assemble(stack, datasets, release)
    affine = stack.affine
    if data.size == 0 or not np.all(np.isfinite(affine)):
        raise ConversionFailed("empty image or non-finite affine")
    if not data.dtype.fields and np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ConversionFailed("non-finite voxel values")
    heads, slices = _heads(stack, datasets, path)
    log.debug("convert: %s path, %d slice(s) x %d volume(s)", path, stack.n_slices, len(stack.volumes))
    return Volume(data=data, affine=affine, heads=heads, slice_datasets=slices)


def _stack(datasets: list[Dataset], frames: tuple[tuple[int, int], ...]) -> tuple[Stack, str]:
    """The series' geometry from headers alone (no pixel is decoded), or ConversionFailed."""
    if not datasets:
        raise ConversionFailed("no images")
    try:
        images, path = _images(datasets, frames)
        stack = stacking.build_stack(images)
    except GeometryError as exc:
        raise ConversionFailed(exc.detail) from None
    if path == "classic" and not _is_colour(datasets[0]):
        check_with_dicom2nifti(datasets, stack)
    return stack, path


def _heads(stack: Stack, datasets: list[Dataset], path: str) -> tuple[tuple[Dataset, ...], tuple[Dataset, ...]]:
    """Per-volume heads and per-image headers (see ``Volume``)."""
    # A volume's head is its first image in acquisition/instance order, not its lowest slice.
    firsts = [min(volume, key=lambda image: image.order) for volume in stack.volumes]
    if path == "enhanced":
        heads = tuple(_enhanced_head(datasets[image.source], image.header) for image in firsts)
        return heads, tuple(image.header for volume in stack.volumes for image in volume)
    return tuple(datasets[image.source] for image in firsts), tuple(datasets)


@reading_settings()
def check_headers(
    datasets: list[Dataset], *, frames: tuple[tuple[int, int], ...] = ()
) -> tuple[tuple[Dataset, ...], np.ndarray]:
    """Every refusal ``convert_datasets`` can make without decoding pixels, on headers alone.

    Parameters
    ----------
    datasets : list of Dataset
        Every file of the series, read up to the pixel data, in ``Series.files`` order.
    frames : tuple of (file position, frame) pairs
        As for ``convert_datasets``.

    Returns
    -------
    tuple
        The per-volume heads and the affine (for the diffusion tables of a DWI series).

    Raises
    ------
    ConversionFailed
        Geometry, stacking, dicom2nifti disagreement, stored bits, a missing decoder.
    """
    from packager.dicom.pixels import decoder_problem

    stack, path = _stack(datasets, frames)
    for ds in datasets:
        _check_pixel_header(ds)
        problem = decoder_problem(ds)
        if problem:
            raise ConversionFailed(problem)
    return _heads(stack, datasets, path)[0], stack.affine


def _is_colour(ds: Dataset) -> bool:
    photometric = str(header.value(ds, "PhotometricInterpretation") or "").upper()
    return photometric.startswith(("RGB", "YBR", "PALETTE")) or header.number(ds, "SamplesPerPixel") not in (None, 1.0)


# ---------------------------------------------------------------- reading


def _parse_after_pixels(ds: Dataset) -> Dataset:
    """Parse the elements the header pass never saw (those after PixelData), so a corrupt one
    fails here with the series named; everything before PixelData was parsed by the index."""
    for tag in [t for t in ds.keys() if t > 0x7FE00010]:
        ds[tag]
    return ds


def _read_file(path) -> Dataset:
    """One whole file, by the fast reader when it covers the file (else pydicom). The fast
    reader checks every element, those after the pixel data included (``check_values``).

    Enhanced objects keep their functional groups as walked (``frames.frame_views`` makes the
    frames' views from the walk, without a pydicom object per item); other files are made
    whole at once (their every element is read by the dicom2nifti check).
    """
    from packager.dicom.fast import NotFast, check_values, make_all, read_fast
    from packager.dicom.reader import read_dataset

    try:
        scanned = read_fast(path, headers_only=False, lazy=True)
        check_values(scanned)
    except NotFast:
        return _parse_after_pixels(read_dataset(path, headers_only=False))
    ds = scanned.dataset
    return ds if frame_model.is_multiframe(ds) else make_all(ds)


@reading_settings()
def read_series_datasets(files) -> list[Dataset]:
    """Full read (with pixels) of every file of a series, in the given order."""
    datasets: list[Dataset] = []
    for path in files:
        try:
            datasets.append(_read_file(path))
        except Exception as exc:  # any read failure of one file fails this series only
            raise ConversionFailed(f"file unreadable in pixel pass ({type(exc).__name__})") from None
    return datasets
