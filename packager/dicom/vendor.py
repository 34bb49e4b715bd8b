"""Vendor private headers, read for acquisition facts only (a helper, not a stage).

Siemens: the CSA image/series headers of classic files (``nibabel.nicom.csareader``), the
ASCCONV part of the Phoenix protocol (CSA series ``MrPhoenixProtocol`` in classic files,
private ``(0021,xx19)`` of the "SIEMENS MR SDS 01" shared functional group in XA enhanced
files), and the per-frame "SIEMENS MR SDI 02" items of XA enhanced files. GE: the gzip
"Protocol Data Block" ``(0025,101B)`` and the user-data block ``(0043,102A)``.

Only numbers and fixed vocabularies are taken from these blocks (slice order, echo times,
acceleration factors, phase-encoding polarity); their free text (protocol and series names,
comments) is never returned. Readers return None/empty on anything malformed: a vendor block
we cannot read is a missing fact, not an error.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import warnings
import zlib
from functools import lru_cache
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from packager.dicom import header
from packager.dicom.fast import group_tags
from packager.dicom.frames import per_frame_item, shared_item

SIEMENS_SDS = "SIEMENS MR SDS 01"  # shared-group private creator (XA)
SIEMENS_SDI = "SIEMENS MR SDI 02"  # per-frame private creator (XA)
GE_PROTOCOL_BLOCK = (0x0025, 0x101B)
GE_USER_DATA = (0x0043, 0x102A)
_ASCCONV = re.compile(rb"### ASCCONV BEGIN[^\n]*\n(.*?)### ASCCONV END", re.S)


def vendor_of(ds: Dataset) -> str:
    """Siemens | GE | Philips | Canon | UIH | "" from Manufacturer."""
    text = str(header.value(ds, "Manufacturer") or "").upper()
    for needle, name in (
        ("SIEMENS", "Siemens"),
        ("GE ", "GE"),
        ("GE_", "GE"),
        ("GENERAL ELECTRIC", "GE"),
        ("PHILIPS", "Philips"),
        ("CANON", "Canon"),
        ("TOSHIBA", "Canon"),
        ("UIH", "UIH"),
        ("UNITED IMAGING", "UIH"),
        ("HITACHI", "Hitachi"),
        ("FUJIFILM", "Fujifilm"),
        ("BRUKER", "Bruker"),
    ):
        if needle in text + " ":
            return name
    return "GE" if text.strip() == "GE" else ""


# ---------------------------------------------------------------- private blocks


def private_value(ds: Dataset | None, group: int, creator: str, offset: int) -> Any:
    """Value of a private element found through its creator (block numbers vary by file)."""
    if ds is None:
        return None
    element = _private_block(ds, group, creator)
    if element is None:
        return None
    tag = (group << 16) | (element << 8) | offset
    found = header.value(ds, tag)
    vr = _IMPLICIT_VRS.get((creator, group, offset))
    if vr is not None and isinstance(found, bytes) and ds[tag].VR == "UN":
        return _as_vr(tag, vr, found)
    return found


def _private_block(ds: Dataset, group: int, creator: str) -> int | None:
    """The block number (0x10-0xFF) ``creator`` reserves in ``group``, as ``Dataset.private_block``
    finds it (the first creator element in tag order whose value is ``creator``), None when there
    is none. Not pydicom's own: it slices the dataset, which sorts all of its tags with Python
    comparisons, a sixth of a classic series' conversion on dcm_qa_nih (every file is asked
    for a UIH grid)."""
    if not creator or group % 2 == 0:  # where pydicom raises ValueError
        return None
    for tag in group_tags(ds, group):
        if 0x10 <= tag & 0xFFFF <= 0xFF and header.value(ds, tag) == creator:
            return tag & 0xFF
    return None


def _as_vr(tag: int, vr: str, raw: bytes) -> Any:
    """A private value an implicit-VR file left as bytes, read with the VR the vendor writes."""
    from pydicom.dataelem import RawDataElement, convert_raw_data_element
    from pydicom.tag import Tag

    try:
        return convert_raw_data_element(RawDataElement(Tag(tag), vr, len(raw), raw, 0, True, True)).value
    except (ValueError, TypeError, struct.error):
        return None


def _first_item(value: Any) -> Dataset | None:
    try:
        return value[0] if value is not None and len(value) else None
    except (TypeError, IndexError):
        return None


def xa_shared_item(ds: Dataset) -> Dataset | None:
    """The "SIEMENS MR SDS 01" item of the shared functional groups (XA enhanced)."""
    return _first_item(private_value(shared_item(ds), 0x0021, SIEMENS_SDS, 0xFE))


def xa_frame_item(ds: Dataset, frame: int) -> Dataset | None:
    """The "SIEMENS MR SDI 02" item of one frame (XA enhanced)."""
    item = per_frame_item(ds, frame)
    if item is None:
        return None
    return _first_item(private_value(item, 0x0021, SIEMENS_SDI, 0xFE))


# ---------------------------------------------------------------- Siemens


def csa_header(ds: Dataset, which: str) -> dict[str, Any]:
    """CSA ``image`` or ``series`` header of a classic Siemens file as {name: value(s)}."""
    try:
        with warnings.catch_warnings():  # nibabel.nicom warns on import that it is experimental
            warnings.simplefilter("ignore")
            from nibabel.nicom import csareader

            header = csareader.get_csa_header(ds, which)
    except Exception:  # noqa: BLE001 - any malformed CSA block is simply absent
        return {}
    if not header:
        return {}
    out: dict[str, Any] = {}
    for name, item in header.get("tags", {}).items():
        items = item.get("items") or []
        if items:
            out[name] = items if len(items) > 1 else items[0]
    return out


def _ascconv(blob: bytes | str | None) -> dict[str, str]:
    if blob is None:
        return {}
    data = blob.encode("latin-1", "replace") if isinstance(blob, str) else bytes(blob)
    match = _ASCCONV.search(data)
    if not match:
        return {}
    values: dict[str, str] = {}
    for line in match.group(1).decode("latin-1", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            value = value.split("#", 1)[0].strip()
            values[key.strip()] = value
    return values


def siemens_protocol(ds: Dataset) -> dict[str, str]:
    """ASCCONV key -> raw value text of the Phoenix protocol ({} when absent)."""
    series = csa_header(ds, "series")
    protocol = series.get("MrPhoenixProtocol")
    if isinstance(protocol, list):
        protocol = protocol[0] if protocol else None
    values = _ascconv(protocol)
    if values:
        return values
    item = xa_shared_item(ds)
    blob = private_value(item, 0x0021, SIEMENS_SDS, 0x19)
    if blob is None:  # some XA exports keep it at top level
        blob = private_value(ds, 0x0021, SIEMENS_SDS, 0x19)
    return _ascconv(blob)


def protocol_number(protocol: dict[str, str], key: str) -> float | None:
    """A numeric ASCCONV value (hex allowed), or None."""
    text = protocol.get(key)
    if text is None:
        return None
    try:
        return float(int(text, 16)) if text.lower().startswith("0x") else float(text)
    except ValueError:
        return None


def csa_positive(csa_image: dict) -> int | None:
    """+1/-1 from CSA PhaseEncodingDirectionPositive (1 = along increasing index)."""
    value = header.as_number(csa_image.get("PhaseEncodingDirectionPositive"))
    if value in (0.0, 1.0):
        return 1 if value == 1.0 else -1
    return None


def _csa_positive_fast(ds: Dataset) -> int | None:
    """PhaseEncodingDirectionPositive read straight from CSA2 bytes (index pass: no full parse)."""
    raw = header.value(ds, (0x0029, 0x1010))
    if not isinstance(raw, (bytes, bytearray)):
        return None
    at = raw.find(b"PhaseEncodingDirectionPositive\x00")
    # CSA2 tag: name[64] vm vr[4] syngodt nitems xx (4 bytes each), items: 4 int32 + value padded
    if at < 0 or len(raw) < at + 64 + 20 + 16:
        return None
    try:
        nitems = struct.unpack_from("<i", raw, at + 64 + 12)[0]
        if nitems < 1:
            return None
        length = struct.unpack_from("<i", raw, at + 88)[0]
        text = raw[at + 100 : at + 100 + max(length, 0)].split(b"\x00", 1)[0].strip()
        value = int(float(text.decode("ascii")))
    except (struct.error, ValueError, UnicodeDecodeError):
        return None
    return 1 if value == 1 else -1 if value == 0 else None


# ---------------------------------------------------------------- GE


def ge_protocol(ds: Dataset) -> dict[str, str]:
    """KEY -> value text of the GE Protocol Data Block (gzip text after a 4-byte length)."""
    raw = header.value(ds, GE_PROTOCOL_BLOCK)
    if not isinstance(raw, (bytes, bytearray)):
        return {}
    return dict(_ge_protocol_block(bytes(raw)))  # a copy: the cached pairs stay as parsed


_GE_PROTOCOL_LINE = re.compile(r'^([A-Z0-9_]+) "(.*)"\s*$')


@lru_cache(maxsize=16)
def _ge_protocol_block(raw: bytes) -> tuple[tuple[str, str], ...]:
    """The block's KEY/value pairs, in order. Cached on the bytes: every file of a GE series
    carries the same block, and inflating and parsing it per file was a fifth of the header
    pass on dcm_qa_nih."""
    start = raw.find(b"\x1f\x8b")
    if start < 0:
        return ()
    try:
        text = gzip.decompress(raw[start:]).decode("latin-1", "replace")
    except (OSError, EOFError, zlib.error):
        return ()
    pairs = []
    for line in text.splitlines():
        match = _GE_PROTOCOL_LINE.match(line.strip())
        if match:
            pairs.append((match.group(1), match.group(2)))
    return tuple(pairs)


def ge_volume_delay(ds: Dataset, protocol: dict[str, str]) -> float | None:
    """Seconds GE waits after each volume, which its RepetitionTime (0018,0080) leaves out, or None.

    The epiRT Group Delay (0043,107C, seconds; dcm2niix's GE notes), else the Protocol Data
    Block's ``DELACQ`` (the "epi" multiphase delay after acquisition, seconds; "Minimum" is none).
    On dcm_qa_ge the RTIA timer (epiRT, delay 3 s, TR 2000) and TriggerTime (multiphase, 0.35 s,
    TR 1000) step by TR + delay from volume to volume.
    """
    raw = header.value(ds, (0x0043, 0x107C))
    if isinstance(raw, (bytes, bytearray)):  # implicit VR without a private dictionary: DS text
        raw = raw.decode("ascii", "replace").strip("\x00 ")
    for found in (raw, protocol.get("DELACQ")):
        seconds = header.as_number(found)
        if seconds is not None and 0 < seconds < 100:
            return seconds
    return None


def ge_polarity(ds: Dataset) -> int | None:
    """+1 ("unflipped") / -1 ("flipped") from bit 2 of rhdacqctrl in GE user data (0043,102A),
    reversed when the Protocol Data Block says VIEWORDER 1.

    Layout as read by dcm2niix: a uint16 header offset at byte 24, a float32 version there,
    0x4C more bytes from version 25.002 on, and rhdacqctrl at +0x30 (bit 2 = flipped).
    """
    raw = header.value(ds, GE_USER_DATA)
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < 32:
        return None
    try:
        offset = struct.unpack_from("<H", raw, 24)[0]
        version = struct.unpack_from("<f", raw, offset)[0]
        if version >= 25.002:
            offset += 0x4C
        control = struct.unpack_from("<H", raw, offset + 0x30)[0]
    except struct.error:
        return None
    polarity = -1 if control & 0x0004 else 1
    # The Protocol Data Block's VIEWORDER 1 (bottom-up k-space view order) reverses the
    # traversal the user-data bit describes: on every GE EPI/DWI series of the corpus (software
    # 14 to 29) the product of the two is the polarity dcm2niix reports, the bit alone is not.
    if ge_protocol(ds).get("VIEWORDER") == "1":
        polarity = -polarity
    return polarity


def ge_hyperband(protocol: dict[str, str]) -> bool:
    """The Protocol Data Block's imaging options name hyperband: "HYPERBAND" on older software,
    the option code "HB" on DV28 and later (IOPT is a comma-separated list)."""
    options = {o.strip().upper() for o in protocol.get("IOPT", "").split(",")}
    return "HB" in options or "HYPERBAND" in protocol.get("IOPT", "").upper()


def ge_multiband_factor(ds: Dataset) -> int | None:
    """GE hyperband factor: first value of the Multiband Parameters (0043,10B6)."""
    raw = header.value(ds, (0x0043, 0x10B6))
    # LO with empty trailing values ("8\\4\\19\\\\"), which header.numbers refuses as a whole
    first = (raw.split("\\") if isinstance(raw, str) else list(raw or ()) or [""])[0]
    factor = header.as_number(str(first).strip() or None)
    return int(factor) if factor and factor >= 1 and float(factor).is_integer() else None


def ge_acquired_lines(ds: Dataset, matrix_pe: int) -> int:
    """Phase-encoding lines GE acquires with ASSET: AcquisitionMatrix PE x (0043,1083)[0] (the
    reciprocal of R), rounded up to a multiple of 2, or of 4 with partial Fourier (PFF in
    ScanOptions): GE's rule as documented in dcm2niix's GE notes."""
    asset = header.numbers(ds, (0x0043, 0x1083)) or ()
    fraction = asset[0] if asset and 0 < asset[0] <= 1 else 1.0
    options = header.value(ds, "ScanOptions") or ()
    flags = {str(o).strip().upper() for o in (options.split("\\") if isinstance(options, str) else options)}
    round_to = 4 if "PFF" in flags else 2
    return math.ceil(round(matrix_pe * fraction / round_to, 6)) * round_to


# ---------------------------------------------------------------- phase encoding


def pe_direction(ds: Dataset) -> str | None:
    """ROW or COL (InPlanePhaseEncodingDirection, enhanced "COLUMN" included), else None."""
    value = str(header.value(ds, "InPlanePhaseEncodingDirection") or "").strip().upper()
    if not value:
        shared = shared_item(ds)
        fov = _first_item(shared.get("MRFOVGeometrySequence")) if shared is not None else None
        if fov is not None:
            value = str(header.value(fov, "InPlanePhaseEncodingDirection") or "").strip().upper()
    if not value and vendor_of(ds) == "GE" and (0x0043, 0x108A) in ds:
        value = str(ds[(0x0043, 0x108A)].value or "").strip().upper()
    return {"ROW": "ROW", "COL": "COL", "COLUMN": "COL"}.get(value)


def orientation(ds: Dataset) -> np.ndarray | None:
    """ImageOrientationPatient (6 floats) from the top level or the first frame."""
    value = header.value(ds, "ImageOrientationPatient")
    if value is None:
        for group in (shared_item(ds), per_frame_item(ds, 0)):
            plane = _first_item(group.get("PlaneOrientationSequence")) if group is not None else None
            if plane is not None and header.value(plane, "ImageOrientationPatient") is not None:
                value = header.value(plane, "ImageOrientationPatient")
                break
    found = header.as_numbers(value, 6)
    return None if found is None else np.array(found)


def pe_polarity(ds: Dataset, frame: int = 0) -> int | None:
    """+1 when phase encoding runs along increasing row/column index, -1 against, None unknown."""
    vendor = vendor_of(ds)
    if vendor == "Siemens":
        if "PerFrameFunctionalGroupsSequence" in ds:
            value = header.as_number(private_value(xa_frame_item(ds, frame), 0x0021, SIEMENS_SDI, 0x1C))
            return None if value not in (0.0, 1.0) else (1 if value == 1.0 else -1)
        return _csa_positive_fast(ds)
    if vendor == "GE":
        return ge_polarity(ds)
    return None  # Philips and others do not record the polarity in DICOM


def pe_world(ds: Dataset, polarity: int | None = None) -> np.ndarray | None:
    """Unit LPS vector of the phase-encoding direction (signed when the polarity is known)."""
    direction = pe_direction(ds)
    iop = orientation(ds)
    if direction is None or iop is None:
        return None
    # ROW: phase changes along a row, i.e. with the column index (row cosine, IOP[:3]).
    vector = iop[:3] if direction == "ROW" else iop[3:]
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        return None
    return vector / norm * (polarity if polarity else 1)


_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # LPS: +x = towards L, +y = P, +z = S
#: Where each letter of a from-to label lies, in LPS.
_LETTER_LPS = {"R": (-1, 0, 0), "L": (1, 0, 0), "A": (0, -1, 0), "P": (0, 1, 0), "I": (0, 0, -1), "S": (0, 0, 1)}


def direction_label(world_lps: np.ndarray) -> str:
    """Two-letter from-to label of the dominant axis, e.g. (0, +1, 0) -> "AP"."""
    axis = int(np.argmax(np.abs(world_lps)))
    low, high = _AXIS_LETTERS[axis]
    return low + high if world_lps[axis] > 0 else high + low


def label_polarity(label: str | None, axis_lps: np.ndarray) -> int | None:
    """+1 when a from-to label (``AP``: anterior to posterior) runs along ``axis_lps``, -1 against.

    None for anything but two direction letters, or when the label names another axis than
    ``axis_lps`` (less than 60 degrees off it). The one rule for a ``dir-`` label read as the
    operator's statement of the phase-encoding polarity, which BIDS requires for epi field maps
    and which Philips and some GE headers do not record: used by the sidecar (LPS world axis
    from the headers) and the dcm2niix engine (a voxel axis of its affine).
    """
    text = (label or "").upper()
    if len(text) != 2 or text[0] not in _LETTER_LPS or text[1] not in _LETTER_LPS:
        return None
    towards = np.array(_LETTER_LPS[text[1]], dtype=float) - np.array(_LETTER_LPS[text[0]], dtype=float)
    axis = np.asarray(axis_lps, dtype=float)
    norm = float(np.linalg.norm(towards) * np.linalg.norm(axis))
    if norm == 0:
        return None
    dot = float(towards @ axis) / norm
    if abs(dot) < 0.5:  # the label names another axis than the one phase is encoded along
        return None
    return 1 if dot > 0 else -1


def phase_encoding_label(ds: Dataset) -> str:
    """AP/PA/LR/RL/SI/IS when both axis and polarity are known from the header, else ""."""
    try:
        polarity = pe_polarity(ds)
        if polarity is None:
            return ""
        world = pe_world(ds, polarity)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        return ""
    return direction_label(world) if world is not None else ""


#: United Imaging's private block: "grid" (VFRAME) images hold a whole volume as tiles, like a
#: Siemens mosaic, with the slice count at offset 0x50 and one item per slice (its own
#: ImagePositionPatient, in tile order) at 0x51; b-value at 0x09 and the gradient at 0x37.
UIH_CREATOR = "Image Private Header"

#: VRs of the private elements read here that pydicom's private dictionary does not know: an
#: implicit-VR file (a PACS export of any vendor's images) leaves them as bytes otherwise
#: (the VRs as UIH writes them in its explicit-VR files, dcm_qa_uih and dcm_qa_stc).
_IMPLICIT_VRS = {
    (UIH_CREATOR, 0x0065, 0x09): "FD",
    (UIH_CREATOR, 0x0065, 0x37): "FD",
    (UIH_CREATOR, 0x0065, 0x50): "DS",
    (UIH_CREATOR, 0x0065, 0x51): "SQ",
}


def uih_grid_positions(ds: Dataset) -> tuple[tuple[float, ...], ...] | None:
    """Per-tile ImagePositionPatient of a UIH grid image (tile order); None when it is not one.

    A grid needs more than one slice and a position for each; anything else (a missing or
    malformed item) is None, and the image is then read as a plain single slice.
    """
    count = header.as_integer(private_value(ds, 0x0065, UIH_CREATOR, 0x50))
    items = private_value(ds, 0x0065, UIH_CREATOR, 0x51)
    if not count or count < 2 or items is None:
        return None
    try:
        positions = tuple(header.numbers(item, "ImagePositionPatient", 3) for item in items)
    except (TypeError, AttributeError):
        return None
    if len(positions) != count or any(p is None for p in positions):
        return None
    return positions  # type: ignore[return-value]  # None ruled out just above


def uih_grid_times(ds: Dataset) -> tuple[tuple[tuple[float, ...], str], ...] | None:
    """(ImagePositionPatient, AcquisitionTime text) per tile of a UIH grid image; None when
    it is not a grid or an item lacks either."""
    positions = uih_grid_positions(ds)
    items = private_value(ds, 0x0065, UIH_CREATOR, 0x51)
    if positions is None or items is None:
        return None
    times = tuple(str(header.value(item, "AcquisitionTime") or "").strip() for item in items)
    if len(times) != len(positions) or not all(times):
        return None
    return tuple(zip(positions, times, strict=True))


def uih_diffusion(ds: Dataset) -> tuple[float, np.ndarray | None] | None:
    """(b-value, LPS gradient) from UIH's private block; None when it states no b-value.

    UIH states the gradient in the image's frame (row, column, slice normal): on dcm_qa_uih's
    rotated ("rot") DTI, g0 row + g1 column + g2 normal equals dcm2niix's vectors for all 17
    volumes within 1e-6, where the vector read as LPS is off by the slices' 25 degree rotation.
    """
    bval = header.as_number(private_value(ds, 0x0065, UIH_CREATOR, 0x09))
    if bval is None:
        return None
    parts = header.as_numbers(private_value(ds, 0x0065, UIH_CREATOR, 0x37), 3)
    orientation = header.numbers(ds, "ImageOrientationPatient", 6)
    if parts is None or orientation is None:
        return bval, None
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    return bval, parts[0] * row + parts[1] * column + parts[2] * np.cross(row, column)
