"""Stage 4, convert: one Series -> one volume in memory -> one NIfTI (gzipped, clean header) + b-tables.

Geometry and engines. Every series is stacked from its headers by ``packager.stacking``
(slice order, volumes, affine). Classic single-frame series are also put through dicom2nifti
(``dicom_array_to_nifti``: no output file, no reorientation, so it neither copies the input
folder nor writes twice, and never names a file after a header value) as an independent check
of that geometry: it gets the real headers with each image replaced by a 2x2 marker image
(the image's place in the series), so its slice sorting, volume grouping and affine run as on
the real data, and its result says where it put every image; an affine or voxel order that
disagrees with ours refuses the series rather than writing a doubtful affine. dicom2nifti does
not decode the real pixels: its pixel path deep-copies every dataset, holds the whole series
twice and rescales to float64 (FIELD-NOTES.md), which neither fits the memory bound below nor
changes a voxel (the previous release compared them: equal wherever it accepted a series).
Siemens mosaics and enhanced multi-frame objects are not given to dicom2nifti: 2.6.2
misplaces non-axial and head-to-foot mosaics, keeps only the first file of a multi-file
enhanced series, cannot take a subset of frames, and fails on Siemens XA phase and colour
objects with numpy 2 (measured with ``benchmarks/conformance.py`` on the shared corpus).

Memory. Voxels are decoded file by file straight into the output array (in NIfTI order), each
file's pixel data released once its images are placed (``release=True``, the build's path), and
the NIfTI is written through the gzip stream (``write_nifti``): a task holds about one copy of
its series (two while rescaling to a wider type), not the five a whole-series decode took.

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

from packager.dicom import frames as frame_model
from packager.dicom.reader import value as header_value
from packager.executors import release_memory
from packager.convert import stacking
from packager.convert.stacking import GeometryError, SliceImage, Stack

log = logging.getLogger(__name__)

#: isal igzip level (0-3). Measured on the corpus and the synthetic phantom: level 1 compresses
#: within 1 % of level 3 (and 6 % of zlib's 6) at twice level 3's speed and 15x zlib's.
GZIP_LEVEL = 1
#: Bytes handed to the gzip stream per write (fixed, so the stream is the same in every build).
WRITE_CHUNK = 1 << 22
DESCRIP = b"dcmpack"
RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
# dicom2nifti's affine must equal ours, in the canonical frame, to this (mm; NIfTI stores float32).
ENGINE_AFFINE_MM = 1e-3
# Pixel-module elements the dicom2nifti probe drops or sets anew (its 2x2 marker images are
# native uint16): rescale, modality LUT, padding, pixel ranges, frames, planar configuration,
# pixel data, and the image pixel description it is given fresh elements for (the originals'
# DataElement objects are shared with the real dataset and must not be changed).
_PROBE_DROPPED = (0x00281052, 0x00281053, 0x00281054, 0x00283000, 0x00280106, 0x00280107, 0x00280120,
                  0x00280008, 0x00280006, 0x7FE00008, 0x7FE00009, 0x7FE00010, 0x00280034,
                  0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280102, 0x00280103, 0x00280002,
                  0x00280004)
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
    are the per-image headers (classic datasets or flattened frames).
    """

    data: np.ndarray
    affine: np.ndarray
    heads: tuple[Dataset, ...]
    slice_datasets: tuple[Dataset, ...]


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


class _ProbeDataset(Dataset):
    """A probe image for dicom2nifti (see ``_probe``).

    dicom2nifti deep-copies every slice to keep decoded pixels off the original
    (common.get_volume_pixeldata); a shallow copy does that for these throwaway datasets at a
    fraction of the cost (element-by-element deepcopy was 90 % of its time). Its pixels are the
    marker image itself: nothing to decode.
    """

    def __deepcopy__(self, memo):
        from packager.dicom.reader import copy_elements

        clone = _ProbeDataset.__new__(_ProbeDataset)
        clone.__dict__.update(self.__dict__)
        clone.__dict__["_dict"] = copy_elements(self._dict)
        return clone

    @property
    def pixel_array(self) -> np.ndarray:
        return np.full((2, 2), self.__dict__["_marker"], dtype=np.uint16)


def _probe(ds: Dataset, marker: int, meta: Dataset) -> Dataset:
    """``ds``'s header with its image replaced by a 2x2 native uint16 image of value ``marker``
    (``meta``: file meta naming a native transfer syntax, shared by the probes of a series)."""
    from pydicom.dataelem import DataElement

    from packager.dicom.reader import copy_elements

    probe = _ProbeDataset.__new__(_ProbeDataset)
    probe.__dict__.update(ds.__dict__)
    elements = copy_elements(ds._dict)
    for tag in _PROBE_DROPPED:
        elements.pop(tag, None)
    for tag, vr, content in _PROBE_PIXEL_MODULE:
        elements[tag] = DataElement(tag, vr, content)
    elements[0x7FE00010] = DataElement(0x7FE00010, "OW", np.full(4, marker, dtype="<u2").tobytes())
    probe.__dict__["_dict"] = elements
    for attribute in ("_pixel_array", "_pixel_id"):
        probe.__dict__.pop(attribute, None)
    probe.__dict__["file_meta"] = meta
    probe.__dict__["_marker"] = marker
    return probe


#: The probe's image pixel description: 2x2, one sample, 16-bit unsigned (fresh elements per probe).
_PROBE_PIXEL_MODULE = ((0x00280010, "US", 2), (0x00280011, "US", 2), (0x00280100, "US", 16), (0x00280101, "US", 16),
                       (0x00280102, "US", 15), (0x00280103, "US", 0), (0x00280002, "US", 1),
                       (0x00280004, "CS", "MONOCHROME2"))


def probe_agrees(engine: nib.Nifti1Image, stack: Stack) -> bool:
    """dicom2nifti's image of the marker probes against ``stack``: every marker where our stack
    puts its image, and the same affine, in the canonical (RAS+) frame (see below)."""
    theirs = np.asanyarray(engine.dataobj)
    while theirs.ndim > 3 and theirs.shape[-1] == 1:
        theirs = theirs[..., 0]
    ours = np.zeros((2, 2, stack.n_slices, len(stack.volumes)), dtype=np.uint16)
    for t, volume in enumerate(stack.volumes):
        for k, image in enumerate(volume):
            ours[:, :, k, t] = image.source + 1
    if ours.shape[3] == 1:
        ours = ours[..., 0]
    theirs, their_affine = _canonical(theirs, np.asarray(engine.affine, dtype=float))
    ours, our_affine = _canonical(ours, stack.affine)
    return (theirs.shape == ours.shape and np.array_equal(theirs, ours)
            and np.allclose(their_affine, our_affine, rtol=0, atol=ENGINE_AFFINE_MM))


def dicom2nifti_probe(datasets: list[Dataset]) -> dict:
    """dicom2nifti on the marker probes of ``datasets`` (``run_dicom2nifti``'s result)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return run_dicom2nifti([_probe(ds, number + 1, meta) for number, ds in enumerate(datasets)])


def _check_with_dicom2nifti(datasets: list[Dataset], stack: Stack) -> None:
    """Refuse the series when dicom2nifti places its images or its affine otherwise than we do.

    Marker ``i + 1`` stands for dataset ``i``; where dicom2nifti put each marker is compared with
    where our stack puts that image, and its affine with ours, both in the canonical (RAS+) frame.
    The affine of a voxel grid does not depend on its in-plane size, so the 2x2 probe's affine
    is the real series' affine. A series dicom2nifti declines (single slices: TOO_FEW_SLICES,
    LOCALIZER) stands on our geometry checks alone.
    """
    if len(datasets) >= 0xFFFF:
        return  # more images than 16-bit markers can tell apart
    try:
        result = dicom2nifti_probe(datasets)
    except ConversionFailed as exc:
        log.debug("convert: dicom2nifti declined (%s); using the header stack", exc.detail)
        return
    if not probe_agrees(result["NII"], stack):
        raise ConversionFailed("dicom2nifti and the slice positions disagree (affine or voxel order)")


# ---------------------------------------------------------------- pixels and scaling

def _decode(ds: Dataset) -> np.ndarray:
    """All of one dataset's pixels (frames first for enhanced objects); value-free errors."""
    from packager.dicom.reader import pixels

    stored, high = header_value(ds, "BitsStored"), header_value(ds, "HighBit")
    if isinstance(stored, int) and isinstance(high, int) and high != stored - 1:
        # values kept in the upper bits (allowed by old IODs): pydicom and our decoder would both
        # read the low bits only, a wrong image
        raise ConversionFailed("HighBit is not BitsStored - 1 (stored values not in the low bits)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixels(ds)
    except (AttributeError, ValueError, TypeError, RuntimeError, NotImplementedError, KeyError) as exc:
        from packager.dicom.reader import decoder_problem  # names the plugin to install, when that is the cause

        raise ConversionFailed(decoder_problem(ds) or f"pixel data could not be decoded "
                               f"({type(exc).__name__})") from None


def _cut(array: np.ndarray, image: SliceImage, ds: Dataset) -> np.ndarray:
    """The 2D image (frame or mosaic tile) ``image`` of ``array``, the decoded pixels of ``ds``."""
    if image.frame is not None and frame_model.frame_count(ds) > 1:
        array = array[image.frame]
    if image.tile is not None:
        per_row = array.shape[1] // image.columns
        r, c = divmod(image.tile, per_row)
        array = array[r * image.rows:(r + 1) * image.rows, c * image.columns:(c + 1) * image.columns]
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
    return "PHILIPS" in str(header_value(ds, "Manufacturer") or "").upper()


def _scaling(image: SliceImage, ds: Dataset) -> tuple[float, float, str]:
    """(slope, intercept, method) turning stored values into the values we write.

    ``display`` is the DICOM modality LUT (RescaleSlope/Intercept). Philips stores a second,
    "precise" scale (private 2005,100E): precise = display / (RescaleSlope * ScaleSlope), the
    dcm2niix default; a Real World Value Mapping with physical units (e.g. a field map in Hz)
    wins over both (dcm2niix Philips/README.md, "Image Scaling"; dcm_qa_fmap Philips).
    """
    header = image.header
    slope = stacking.as_float(header_value(header, "RescaleSlope"))
    intercept = stacking.as_float(header_value(header, "RescaleIntercept"))
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


class _Duplicates:
    """The same pixel data twice at one slice position is a duplicate, not a time point.

    dicom2nifti drops such slices silently (``remove_duplicate_slices``); we refuse instead.
    Blank images (one value everywhere) are exempt: repeated empty slices are plausible.
    """

    def __init__(self) -> None:
        self._seen: set[tuple[tuple[int, ...], bytes]] = set()

    def check(self, image: SliceImage, block: np.ndarray) -> None:
        if block.size == 0 or block.max() == block.min():  # blank (NaN never equals itself: not blank)
            return
        where = tuple(np.round(image.position / stacking.SAME_SLICE_MM).astype(int).tolist())
        digest = hashlib.blake2b(np.ascontiguousarray(block).data, digest_size=16).digest()
        if (where, digest) in self._seen:
            raise ConversionFailed("duplicate images: the same pixel data twice at one slice position")
        self._seen.add((where, digest))


def _refuse_duplicates(images: list[SliceImage], datasets: list[Dataset]) -> None:
    """Raise for duplicate images (decoding one dataset at a time, keeping nothing)."""
    duplicates = _Duplicates()
    by_source: dict[int, list[SliceImage]] = {}
    for image in images:
        by_source.setdefault(image.source, []).append(image)
    for source, members in by_source.items():
        array = _decode(datasets[source])
        for image in members:
            duplicates.check(image, _cut(array, image, datasets[source]))


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
    duplicates = _Duplicates()
    raw: np.ndarray | None = None
    released = 0
    for source in sorted(by_source):
        ds = datasets[source]
        array = _decode(ds)
        for image in by_source[source]:
            block = _cut(array, image, ds)
            duplicates.check(image, block)
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
    kind = np.dtype(np.float32)
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
    mosaic = ["MOSAIC" in [str(v).upper() for v in (header_value(ds, "ImageType") or [])] for ds in datasets]
    if any(mosaic):
        if not all(mosaic):
            raise ConversionFailed("mosaic and single-slice images mixed in one series")
        return stacking.mosaic_images(datasets), "mosaic"
    return stacking.classic_images(datasets), "classic"


def _enhanced_head(ds: Dataset, view: Dataset) -> Dataset:
    """A file's top level plus one frame's flattened macros: reads like a classic header."""
    from packager.dicom.reader import tags

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


def convert_datasets(datasets: list[Dataset], *, frames: tuple[tuple[int, int], ...] = (),
                     release: bool = False) -> Volume:
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
    if not datasets:
        raise ConversionFailed("no images")
    try:
        images, path = _images(datasets, frames)
        try:
            stack = stacking.build_stack(images)
        except GeometryError:
            _refuse_duplicates(images, datasets)  # a duplicate is the reason to name, when there is one
            raise
    except GeometryError as exc:
        raise ConversionFailed(exc.detail) from None
    if path == "classic" and not _is_colour(datasets[0]):
        _check_with_dicom2nifti(datasets, stack)
    data = _assemble(stack, datasets, release)
    affine = stack.affine
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
    log.debug("convert: %s path, %d slice(s) x %d volume(s)", path, stack.n_slices, len(stack.volumes))
    return Volume(data=data, affine=affine, heads=heads, slice_datasets=slices)


def _is_colour(ds: Dataset) -> bool:
    photometric = str(header_value(ds, "PhotometricInterpretation") or "").upper()
    return photometric.startswith(("RGB", "YBR", "PALETTE")) or stacking.as_float(header_value(ds, "SamplesPerPixel")) not in (None, 1.0)


# ---------------------------------------------------------------- NIfTI

def _nifti_image(data: np.ndarray, affine: np.ndarray, tr_seconds: float | None) -> nib.Nifti1Image:
    """The image with its clean, fixed header (nothing from the source but geometry and TR)."""
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
    return image


def to_nifti_bytes(data: np.ndarray, affine: np.ndarray, tr_seconds: float | None) -> bytes:
    """Serialise with a clean, fixed header; returns gzipped bytes (``write_nifti``'s bytes)."""
    out = io.BytesIO()
    write_nifti(out, data, affine, tr_seconds)
    return out.getvalue()


def _header_block(image: nib.Nifti1Image) -> bytes:
    """What ``image.to_bytes()`` writes before the voxels (nibabel's own ``to_file_map`` steps:
    update the header, write it with its extension flag, pad to the data offset)."""
    image.update_header()
    image.get_data_dtype(finalize=True)
    header = image.header
    block = io.BytesIO()
    header.write_to(block)
    offset = int(header.get_data_offset())
    return block.getvalue().ljust(offset, b"\x00")


def write_nifti(sink, data: np.ndarray, affine: np.ndarray,
                tr_seconds: float | None) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Write the gzipped NIfTI of ``data`` to the binary file object ``sink``; returns shape and zooms.

    The bytes are those of nibabel's ``to_bytes()`` (tested), gzipped by isal at ``GZIP_LEVEL``
    with mtime 0 and no name, but streamed: the voxels go from the array (Fortran order, as
    ``convert_datasets`` lays them out) through the compressor in fixed chunks, never copied
    whole. The affine and TR are the only source facts in the header.
    """
    from isal import igzip

    image = _nifti_image(data, affine, tr_seconds)
    dtype = image.get_data_dtype()
    array = np.asarray(data)
    if array.dtype != dtype:
        array = array.astype(dtype)
    if not array.flags.f_contiguous:
        array = np.asfortranarray(array)
    flat = memoryview(array.T.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
    with igzip.IGzipFile(filename="", mode="wb", fileobj=sink, compresslevel=GZIP_LEVEL, mtime=0) as stream:
        stream.write(_header_block(image))
        for start in range(0, len(flat), WRITE_CHUNK):
            stream.write(flat[start:start + WRITE_CHUNK])
    return tuple(int(n) for n in image.shape), tuple(float(z) for z in image.header.get_zooms())


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


def _read_file(path) -> Dataset:
    """One whole file, by the fast reader when it covers the file (else pydicom). The fast
    reader checks every element, those after the pixel data included (``check_values``).

    Enhanced objects keep their functional groups as walked (``frames.frame_views`` makes the
    frames' views from the walk, without a pydicom object per item); other files are made
    whole at once (their every element is read by the dicom2nifti check).
    """
    from packager.dicom.reader import NotFast, check_values, make_all, read_dataset, read_fast

    try:
        scanned = read_fast(path, headers_only=False, lazy=True)
        check_values(scanned)
    except NotFast:
        return _parse_after_pixels(read_dataset(path, headers_only=False))
    ds = scanned.dataset
    return ds if frame_model.is_multiframe(ds) else make_all(ds)


def read_series_datasets(files) -> list[Dataset]:
    """Full read (with pixels) of every file of a series, in the given order."""
    datasets: list[Dataset] = []
    for path in files:
        try:
            datasets.append(_read_file(path))
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
