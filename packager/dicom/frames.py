"""Per-image header model shared by index and convert (a helper, not a stage).

Enhanced (multi-frame) DICOM keeps per-image attributes in functional-group macros: the Shared
and Per-frame Functional Groups Sequences (PS3.3 C.7.6.16). ``frame_view`` flattens one frame's
macros into a small Dataset carrying the classic keywords (ImagePositionPatient, PixelSpacing,
RescaleSlope, EffectiveEchoTime, DiffusionBValue, ...), so a frame is read like a classic file.
``frame_kind``/``classic_kind`` say which image a frame or file is (echo time, complex part,
direct field map, derived isotropic diffusion image): index splits series by it and convert
refuses to stack images of different kinds. Header values never leave this module in messages.
"""

from __future__ import annotations

import struct

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from packager.dicom import header
from packager.dicom.fast import one_encoding, walked_sequence
from packager.dicom.header import decoding_charset
from packager.dicom.kinds import ImageKind

# Standard macros whose single item holds another single-item macro worth flattening.
_NESTED = {"DiffusionGradientDirectionSequence"}
# Philips private per-frame item (PS3.3 allows private functional groups): holds the private
# scale slope. Never flattened: its ImagePositionPatient differs from the public one by half a
# voxel (dcm2niix Philips/README.md, "Image Patient Position").
PHILIPS_PRIVATE_FRAME = (0x2005, 0x140F)
PHILIPS_SCALE_SLOPE = (0x2005, 0x100E)
_COMPLEX_PART = {"MAGNITUDE": "mag", "PHASE": "phase", "REAL": "real", "IMAGINARY": "imag"}
_TYPE_PART = {
    "M": "mag",
    "MAGNITUDE": "mag",
    "P": "phase",
    "PHASE": "phase",
    "R": "real",
    "REAL": "real",
    "I": "imag",
    "IMAGINARY": "imag",
}
_GE_PART = {0: "mag", 1: "phase", 2: "real", 3: "imag"}
# Image/Frame Type values 3-4 of a direct field map: enhanced FrameType FIELD_MAP; Philips
# classic "B0 MAP" (R5) or "B0" (R11, dcm2niix issue #455).
_FIELD_MAP_TOKENS = {"FIELD_MAP", "FIELDMAP", "B0 MAP", "B0"}
_NO_UNITS = {"", "1", "NO UNITS"}


PER_FRAME = 0x52009230  # Per-frame Functional Groups Sequence
SHARED = 0x52009229  # Shared Functional Groups Sequence


def is_multiframe(ds: Dataset) -> bool:
    """True for an enhanced (functional-group) object."""
    return "PerFrameFunctionalGroupsSequence" in ds


def frame_items(ds: Dataset) -> int:
    """Items of the Per-frame Functional Groups Sequence (0 when absent)."""
    walked = walked_sequence(ds, PER_FRAME)
    if walked is not None:
        return len(walked)
    return len(ds.get("PerFrameFunctionalGroupsSequence") or ())


def per_frame_item(ds: Dataset, frame: int) -> Dataset | None:
    """One frame's functional groups (an item of the Per-frame sequence), None when absent.

    From the fast reader's walk when the sequence was not made yet (one item, not thousands).
    """
    walked = walked_sequence(ds, PER_FRAME)
    if walked is not None:
        return walked.item(frame) if 0 <= frame < len(walked) else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    return per_frame[frame] if per_frame is not None and 0 <= frame < len(per_frame) else None


def shared_item(ds: Dataset) -> Dataset | None:
    """The item of the Shared Functional Groups Sequence, None when absent."""
    walked = walked_sequence(ds, SHARED)
    if walked is not None:
        return walked.item(0) if len(walked) else None
    shared = ds.get("SharedFunctionalGroupsSequence")
    return shared[0] if shared else None


def frame_count(ds: Dataset) -> int:
    """Frames in the object (1 for classic single-frame files)."""
    try:
        return max(int(header.value(ds, "NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def _merge(target: dict, item: Dataset, encoding) -> None:
    """The public elements of one macro item into ``target``. Raw elements stay raw when the item
    decodes text as the view will (``encoding``): the flattened view then converts only what
    is read from it, to the same values; otherwise they are converted here, in the item."""
    raw_ok = decoding_charset(item) == encoding
    for element in item.elements():
        tag = element.tag
        if tag.is_private:
            continue
        if element.VR == "SQ" and keyword_for_tag(tag) in _NESTED:
            nested = item[tag].value
            if len(nested) == 1:
                _merge(target, nested[0], encoding)
                continue
            element = item[tag]
        elif not raw_ok or element.VR is None or (element.VR == "SQ" and not isinstance(element, DataElement)):
            element = item[tag]  # implicit VR (no VR until converted), a sequence not yet parsed
        target[tag] = element


def _merge_groups(target: dict, groups: Dataset, encoding) -> None:
    """Merge the first item of every public macro sequence in one functional-groups item."""
    for element in groups.elements():
        if element.tag.is_private or element.VR not in ("SQ", None):
            continue
        element = groups[element.tag]
        if element.VR != "SQ" or not element.value:
            continue
        _merge(target, element.value[0], encoding)


def _view(merged: dict, encoding) -> Dataset:
    # Dataset(dict) adopts the elements in one step (element-wise assignment is ~10x slower).
    view = Dataset(merged)
    view.set_original_encoding(False, True, encoding)
    return view


def _shared(ds: Dataset, encoding) -> dict:
    merged: dict = {}
    shared = shared_item(ds)
    if shared is not None:
        _merge_groups(merged, shared, encoding)
    return merged


def frame_view(ds: Dataset, frame: int) -> Dataset:
    """One frame's shared + per-frame macros flattened into a small Dataset (per-frame wins)."""
    encoding = decoding_charset(ds)
    merged = _shared(ds, encoding)
    item = per_frame_item(ds, frame)
    if item is not None:
        _merge_groups(merged, item, encoding)
    return _view(merged, encoding)


def frame_views(ds: Dataset) -> list[Dataset]:
    """``frame_view`` for every frame (the shared part merged once)."""
    encoding = decoding_charset(ds)
    base = _shared(ds, encoding)
    walked = walked_sequence(ds, PER_FRAME)
    if walked is not None:
        views = _walked_views(walked, base, encoding)
        if views is not None:
            return views
    views = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or Sequence():
        merged = dict(base)
        _merge_groups(merged, item, encoding)
        views.append(_view(merged, encoding))
    return views


def _walked_views(walked, base: dict, encoding) -> list[Dataset] | None:
    """``frame_views`` straight from the fast reader's walk of the Per-frame sequence: the same
    elements merged by the same rules, without a pydicom object for every item of every macro
    of every frame. None (use the items) when an item has a character set of its own."""
    views = []
    for item in walked.items:
        merged = dict(base)
        own = walked.encodings_of(item, walked.encodings)
        for tag, vr, _, _, items, _ in item:
            if tag >> 16 & 1 or vr != "SQ" or not items:
                continue
            if not _merge_walked(merged, walked, items[0], walked.encodings_of(items[0], own), encoding):
                return None
        views.append(_view(merged, encoding))
    return views


def _merge_walked(target: dict, walked, elements, encodings, view_encoding) -> bool:
    """``_merge`` of one macro item of the walk (False: it decodes text otherwise than the view)."""
    if one_encoding(encodings) != view_encoding:
        return False
    for element in elements:
        tag, vr, _, _, items, _ = element
        if tag >> 16 & 1:
            continue
        if vr == "SQ" and items is not None and len(items) == 1 and keyword_for_tag(tag) in _NESTED:
            if not _merge_walked(target, walked, items[0], walked.encodings_of(items[0], encodings), view_encoding):
                return False
            continue
        made = walked.element(element, encodings)
        target[made.tag] = made
    return True


def philips_scale_slope(ds: Dataset, frame: int | None) -> float | None:
    """Philips private scale slope SS (2005,100E): per frame in enhanced files, else top level.

    A frame without its own falls back to the top level: GDCM rewrites a classic file into
    functional groups (NumberOfFrames 1) and leaves the private slope where Philips wrote it,
    where dcm2niix still reads it (GDCM-written JPEG lossless copies of dcm_qa_philips).
    """
    holder: Dataset | None = ds
    if frame is not None:
        item = per_frame_item(ds, frame)
        if item is not None and PHILIPS_PRIVATE_FRAME in item:
            items = item[PHILIPS_PRIVATE_FRAME].value
            holder = items[0] if items else ds
    if holder is None or PHILIPS_SCALE_SLOPE not in holder:
        return None
    value = holder[PHILIPS_SCALE_SLOPE].value
    if isinstance(value, bytes):  # VR UN after an implicit-VR round trip: a little-endian FL
        value = struct.unpack("<f", value[:4])[0] if len(value) >= 4 else None
    elif isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    slope = header.as_number(value)
    return slope if slope else None


def real_world_mapping(view: Dataset) -> tuple[float, float, str] | None:
    """(slope, intercept, units) of the first Real World Value Mapping item, if any."""
    slope = view.get("RealWorldValueSlope")
    if slope is None:
        mapping = view.get("RealWorldValueMappingSequence")
        if not mapping:
            return None
        view = mapping[0]
        slope = view.get("RealWorldValueSlope")
    if slope is None:
        return None
    intercept = view.get("RealWorldValueIntercept", 0.0) or 0.0
    units = ""
    codes = view.get("MeasurementUnitsCodeSequence")
    if codes:
        units = str(codes[0].get("CodeValue", "") or "").strip()
    try:
        return float(slope), float(intercept), units
    except (TypeError, ValueError):
        return None


def has_physical_units(mapping: tuple[float, float, str] | None) -> bool:
    """True when a real-world mapping states real units (e.g. Hz), not UCUM "1" (no units)."""
    return mapping is not None and mapping[0] != 0 and mapping[2].upper() not in _NO_UNITS


def _tokens(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(str(v).strip().upper() for v in value if str(v).strip())


def frame_kind(view: Dataset) -> ImageKind:
    """Kind of one enhanced frame, from its flattened view (``frame_view``)."""
    frame_type = _tokens(header.value(view, "FrameType"))
    component = str(header.value(view, "ComplexImageComponent") or "").strip().upper()
    mapping = real_world_mapping(view)
    if _FIELD_MAP_TOKENS & set(frame_type[2:4]) or (mapping is not None and mapping[2] == "Hz"):
        part = "fieldmap"
    else:
        part = _COMPLEX_PART.get(component) or next((_TYPE_PART[t] for t in frame_type[2:4] if t in _TYPE_PART), "mag")
    echo = header.number(view, "EffectiveEchoTime")
    isotropic = str(header.value(view, "DiffusionDirectionality") or "").strip().upper() == "ISOTROPIC"
    return ImageKind(echo_time=None if echo is None else round(echo, 4), part=part, isotropic=isotropic)


def ge_private_image_type(ds: Dataset) -> int | None:
    """GE Private Image Type (0043,102F): 0-3 = magnitude, phase, real, imaginary (GE/README.md
    in dcm2niix); None for other vendors or when absent. Read by tag: pydicom then returns the
    element; after an implicit-VR round trip its value is raw little-endian bytes."""
    if "GE" not in str(header.value(ds, "Manufacturer") or "").upper():
        return None
    value = header.value(ds, (0x0043, 0x102F))  # converted once per distinct value, not per file
    try:
        if isinstance(value, bytes):
            return int.from_bytes(value[:2], "little", signed=True) if len(value) >= 2 else None
        if isinstance(value, (list, tuple, MultiValue)):
            value = value[0] if len(value) else None
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def classic_kind(ds: Dataset, ge_part: int | None = None) -> ImageKind:
    """Kind of a classic single-frame file (ImageType value 3/4, GE private image type)."""
    if ge_part is not None and ge_part in _GE_PART:
        part = _GE_PART[ge_part]
    else:
        component = str(header.value(ds, "ComplexImageComponent") or "").strip().upper()
        image_type = _tokens(header.value(ds, "ImageType"))
        part = _COMPLEX_PART.get(component) or next((_TYPE_PART[t] for t in image_type[2:4] if t in _TYPE_PART), "mag")
        if _FIELD_MAP_TOKENS & set(image_type[2:4]):
            part = "fieldmap"
    echo = header.number(ds, "EchoTime")
    isotropic = str(header.value(ds, "DiffusionDirectionality") or "").strip().upper() == "ISOTROPIC"
    return ImageKind(echo_time=None if echo is None else round(echo, 4), part=part, isotropic=isotropic)
