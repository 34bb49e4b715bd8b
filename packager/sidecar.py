"""Stage 5, sidecar: headers of one series -> BIDS JSON fields, then the typed allowlist.

``derive_fields`` computes BIDS metadata from the datasets already in memory (Siemens CSA via
``nibabel.nicom.csareader``, GE private tags, standard tags). ``apply_allowlist`` keeps only
keys in ``ALLOWLIST`` (typed: each key has a type, unit and validator), drops values that fail
validation (counted), refuses keys on the hard ``DENYLIST`` whatever the config says, and drops
any string that contains a PHI value of the source series. Free-text keys pass only when the
config allows them by name *and* they survive the scrub.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from pydicom.dataset import Dataset

#: Keys no config can allow (matched case-insensitively against the key name).
DENYLIST = (
    re.compile(r"date", re.I), re.compile(r"(study|series|acquisition|content|instance|start|end|scan|birth)time$", re.I),
    re.compile(r"uid", re.I), re.compile(r"patient", re.I), re.compile(r"physician", re.I),
    re.compile(r"operator", re.I), re.compile(r"institution", re.I), re.compile(r"department", re.I),
    re.compile(r"station", re.I), re.compile(r"serial", re.I), re.compile(r"address", re.I),
    re.compile(r"comment", re.I), re.compile(r"accession", re.I), re.compile(r"studyid", re.I),
    re.compile(r"telephone|phone", re.I), re.compile(r"^(?!ManufacturersModelName$|TaskName$|SequenceName$)\w*Name$"),
    re.compile(r"performed|requested|scheduled|referring|reading", re.I),
)

IMAGE_TYPE_VOCABULARY = frozenset("""
ORIGINAL DERIVED PRIMARY SECONDARY M P R I MAGNITUDE PHASE REAL IMAGINARY ND NORM DIS2D DIS3D
MOSAIC DIFFUSION FMRI MOCO ADC FA TRACEW TRACE OTHER NONE MFSPLIT FILTERED UNI T1 T2 PD
SUBTRACT PERFUSION ASL FM B0 B0MAP FIELDMAP CSA ENDORECTAL MIXED MPR PROJECTION VOLUME AXIAL
CALC CBF RELCBF TTEST STATISTICS WATER FAT IN_PHASE OUT_PHASE VELOCITY DIXON SWI MIP MNIP
TENSOR TENSOR_B0 COLFA EADC EXP RGB DIS1D SH PMU STD NONE
""".split())
SCANNING_SEQUENCE = frozenset({"SE", "IR", "GR", "EP", "RM"})
SEQUENCE_VARIANT = frozenset({"SK", "MTC", "SS", "TRSS", "SP", "MP", "OSP", "NONE"})


@dataclass(frozen=True, slots=True)
class Field:
    """One allowlisted key: JSON type, unit (documentation) and a validator."""

    kind: str
    unit: str
    check: Callable[[Any], bool]
    default_on: bool = True
    free_text: bool = False


def _num(low: float, high: float, *, low_open: bool = True) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return (low < value if low_open else low <= value) and value <= high
    return check


def _int(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _enum(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _tokens(vocabulary: frozenset[str]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and 0 < len(v) <= 12 and all(isinstance(t, str) and t in vocabulary for t in v)


def _pattern(regex: str, maxlen: int) -> Callable[[Any], bool]:
    compiled = re.compile(regex)
    return lambda v: isinstance(v, str) and 0 < len(v) <= maxlen and bool(compiled.fullmatch(v))


def _numbers(low: float, high: float, maxlen: int) -> Callable[[Any], bool]:
    item = _num(low, high, low_open=False)
    return lambda v: isinstance(v, list) and 0 < len(v) <= maxlen and all(item(x) for x in v)


def _bids_uris(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and re.fullmatch(r"bids::sub-[A-Za-z0-9]+/[A-Za-z0-9_/\-.]+", v) for v in value)


_VENDORS = ("Siemens", "GE", "Philips", "Canon", "Toshiba", "Hitachi", "UIH", "Bruker", "Fujifilm")

ALLOWLIST: dict[str, Field] = {
    "Modality": Field("string", "", _enum("MR", "CT", "PT")),
    "Manufacturer": Field("string", "", _enum(*_VENDORS)),
    "ManufacturersModelName": Field("string", "", _pattern(r"[A-Za-z0-9][A-Za-z0-9 _.+\-]*", 40)),
    "MagneticFieldStrength": Field("number", "T", _num(0.0, 21.0)),
    "ImageType": Field("array", "", _tokens(IMAGE_TYPE_VOCABULARY)),
    "ScanningSequence": Field("string", "", lambda v: isinstance(v, str) and all(t in SCANNING_SEQUENCE for t in v.split("_"))),
    "SequenceVariant": Field("string", "", lambda v: isinstance(v, str) and all(t in SEQUENCE_VARIANT for t in v.split("_"))),
    "MRAcquisitionType": Field("string", "", _enum("2D", "3D")),
    "SequenceName": Field("string", "", _pattern(r"[A-Za-z0-9_*+#\-]+", 32)),
    "RepetitionTime": Field("number", "s", _num(0.0, 100.0)),
    "EchoTime": Field("number", "s", _num(0.0, 1.0, low_open=False)),
    "EchoTime1": Field("number", "s", _num(0.0, 1.0)),
    "EchoTime2": Field("number", "s", _num(0.0, 1.0)),
    "InversionTime": Field("number", "s", _num(0.0, 30.0)),
    "FlipAngle": Field("number", "degree", _num(0.0, 360.0)),
    "SliceThickness": Field("number", "mm", _num(0.0, 100.0)),
    "SliceTiming": Field("array", "s", _numbers(0.0, 100.0, 1024)),
    "PhaseEncodingDirection": Field("string", "", _enum("i", "j", "k", "i-", "j-", "k-")),
    "SliceEncodingDirection": Field("string", "", _enum("i", "j", "k", "i-", "j-", "k-")),
    "EffectiveEchoSpacing": Field("number", "s", _num(0.0, 0.01)),
    "TotalReadoutTime": Field("number", "s", _num(0.0, 1.0)),
    "MultibandAccelerationFactor": Field("number", "", _int(1, 16)),
    "ParallelReductionFactorInPlane": Field("number", "", _num(0.0, 16.0)),
    "PixelBandwidth": Field("number", "Hz", _num(0.0, 100000.0)),
    "ReconMatrixPE": Field("number", "", _int(1, 4096)),
    "PercentPhaseFOV": Field("number", "%", _num(0.0, 200.0)),
    "TaskName": Field("string", "", _pattern(r"[A-Za-z0-9]+", 64)),
    "Units": Field("string", "", _enum("Hz", "rad/s", "T", "mm", "s", "rad")),
    "IntendedFor": Field("array", "", _bids_uris),
    "B0FieldIdentifier": Field("string", "", _pattern(r"[A-Za-z0-9_\-]+", 64)),
    "B0FieldSource": Field("string", "", _pattern(r"[A-Za-z0-9_\-]+", 64)),
    "ConversionSoftware": Field("string", "", _pattern(r"[A-Za-z0-9_\-+]+", 40)),
    "ConversionSoftwareVersion": Field("string", "", _pattern(r"[A-Za-z0-9_.\-+ ()/;:]+", 120)),
    "SeriesNumber": Field("number", "", _int(0, 1_000_000), default_on=False),
    "SeriesDescription": Field("string", "", lambda v: isinstance(v, str) and 0 < len(v) <= 64, default_on=False, free_text=True),
    "ProtocolName": Field("string", "", lambda v: isinstance(v, str) and 0 < len(v) <= 64, default_on=False, free_text=True),
}


def is_denied(key: str) -> bool:
    """True for keys the hard denylist forbids (identity, dates, times of day, UIDs, ...)."""
    return any(p.search(key) for p in DENYLIST)


# ---------------------------------------------------------------- deriving fields from headers

def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        value = value[0] if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, (str, bytes)) else value
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _vendor(ds: Dataset) -> str | None:
    text = str(ds.get("Manufacturer", "")).upper()
    for vendor in _VENDORS:
        if vendor.upper() in text:
            return vendor
    if "MEDICAL SYSTEMS" in text and "GE" in text.split():
        return "GE"
    return None


def _csa(ds: Dataset, which: str) -> dict:
    try:
        from nibabel.nicom import csareader

        header = csareader.get_csa_header(ds, which)
    except Exception:  # malformed CSA: treat as absent
        return {}
    if not header:
        return {}
    out = {}
    for name, item in header.get("tags", {}).items():
        items = item.get("items") or []
        if items:
            out[name] = items if len(items) > 1 else items[0]
    return out


def _pe_axis_world(ds: Dataset) -> np.ndarray | None:
    """Unit vector (LPS) of the phase-encoding axis in DICOM terms (+ = increasing index)."""
    direction = str(ds.get("InPlanePhaseEncodingDirection", "")).strip().upper()
    iop = ds.get("ImageOrientationPatient")
    if direction not in ("ROW", "COL") or iop is None or len(iop) != 6:
        return None
    vector = np.array([float(v) for v in (iop[:3] if direction == "ROW" else iop[3:])])
    return vector / np.linalg.norm(vector)


def _pe_sign(ds: Dataset, csa_image: dict, dir_label: str | None, axis_world: np.ndarray) -> int | None:
    """+1 if phase encoding runs along increasing DICOM index, -1 if against, None if unknown."""
    positive = csa_image.get("PhaseEncodingDirectionPositive")
    if positive in (0, 1, 0.0, 1.0):
        return 1 if int(positive) == 1 else -1
    if dir_label:
        # A dir- label names where the encoding starts and ends: AP = anterior -> posterior.
        letters = {"R": (-1, 0, 0), "L": (1, 0, 0), "A": (0, -1, 0), "P": (0, 1, 0), "I": (0, 0, -1), "S": (0, 0, 1)}
        label = dir_label.upper()
        if len(label) == 2 and label[0] in letters and label[1] in letters:
            towards = np.array(letters[label[1]], dtype=float) - np.array(letters[label[0]], dtype=float)
            dot = float(towards @ axis_world)
            if abs(dot) > 0.5:
                return 1 if dot > 0 else -1
    return None


def _axis_code(world: np.ndarray, affine: np.ndarray) -> str | None:
    """BIDS axis code (i/j/k with sign) of an LPS world direction in the NIfTI voxel frame."""
    ras = world * np.array([-1.0, -1.0, 1.0])
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    dots = columns.T @ ras
    axis = int(np.argmax(np.abs(dots)))
    if abs(dots[axis]) < 0.8:
        return None
    return "ijk"[axis] + ("" if dots[axis] > 0 else "-")


def _slice_timing(slice_datasets, affine: np.ndarray, n_slices: int, tr: float | None,
                  csa_image: dict, head: Dataset) -> list[float] | None:
    """Slice acquisition onsets (s) in NIfTI k order."""
    times = csa_image.get("MosaicRefAcqTimes")
    if times is None and (0x0019, 0x1029) in head:
        try:
            times = [float(v) for v in head[(0x0019, 0x1029)].value]
        except (TypeError, ValueError):
            times = None
    if isinstance(times, (list, tuple)) and len(times) == n_slices:
        onsets = [float(t) / 1000.0 for t in times]
        # Mosaic times are in acquisition-slice order along the mosaic's own slice axis, which
        # dicom2nifti keeps; if our k axis runs opposite to the CSA slice normal, reverse.
        normal = csa_image.get("SliceNormalVector")
        if isinstance(normal, (list, tuple)) and len(normal) == 3:
            ras = np.array([float(v) for v in normal]) * np.array([-1.0, -1.0, 1.0])
            if float(ras @ affine[:3, 2]) < 0:
                onsets = onsets[::-1]
        return _clean_timing(onsets, tr)
    # Classic single-slice files: AcquisitionTime (or TriggerTime) of the first volume's slices.
    origin = affine[:3, 3]
    step = affine[:3, 2]
    norm2 = float(step @ step)
    if norm2 == 0:
        return None
    by_k: dict[int, float] = {}
    for ds in slice_datasets:
        position = ds.get("ImagePositionPatient")
        stamp = _seconds(str(ds.get("AcquisitionTime", "")))
        if position is None or stamp is None:
            continue
        ras = np.array([float(v) for v in position]) * np.array([-1.0, -1.0, 1.0])
        k = int(round(float((ras - origin) @ step) / norm2))
        if 0 <= k < n_slices:
            by_k[k] = min(by_k.get(k, stamp), stamp)
    if len(by_k) != n_slices:
        return None
    start = min(by_k.values())
    onsets = [by_k[k] - start for k in range(n_slices)]
    if max(onsets) == 0:
        return None
    return _clean_timing(onsets, tr)


def _clean_timing(onsets: list[float], tr: float | None) -> list[float] | None:
    if tr and (max(onsets) >= tr or min(onsets) < 0):
        return None
    return [round(t, 5) for t in onsets]


def _seconds(text: str) -> float | None:
    match = re.fullmatch(r"(\d{2})(\d{2})(\d{2})(\.\d+)?", text.strip())
    if not match:
        return None
    return int(match.group(1)) * 3600 + int(match.group(2)) * 60 + int(match.group(3)) + float(match.group(4) or 0)


def derive_fields(heads, slice_datasets, affine: np.ndarray, shape: tuple[int, ...],
                  entities: dict[str, str], datatype: str, suffix: str) -> dict[str, Any]:
    """BIDS metadata for one converted series, before the allowlist."""
    head = heads[0]
    fields: dict[str, Any] = {}
    vendor = _vendor(head)
    csa_image = _csa(head, "image") if vendor == "Siemens" else {}
    modality = str(head.get("Modality", "")).upper()
    if modality:
        fields["Modality"] = modality
    if vendor:
        fields["Manufacturer"] = vendor
    model = str(head.get("ManufacturerModelName", "")).strip().replace(" ", "_")
    if model:
        fields["ManufacturersModelName"] = model
    for key, keyword, scale in (("MagneticFieldStrength", "MagneticFieldStrength", 1.0),
                                ("RepetitionTime", "RepetitionTime", 1e-3), ("EchoTime", "EchoTime", 1e-3),
                                ("InversionTime", "InversionTime", 1e-3), ("FlipAngle", "FlipAngle", 1.0),
                                ("SliceThickness", "SliceThickness", 1.0), ("PixelBandwidth", "PixelBandwidth", 1.0),
                                ("PercentPhaseFOV", "PercentPhaseFieldOfView", 1.0)):
        value = _float(head, keyword)
        if value is not None:
            fields[key] = round(value * scale, 6)
    if "MagneticFieldStrength" in fields and fields["MagneticFieldStrength"] > 100:
        fields["MagneticFieldStrength"] = round(fields["MagneticFieldStrength"] / 10000.0, 4)  # gauss
    image_type = [t.strip().upper() for t in str("\\".join(head.get("ImageType", []) or [])).split("\\") if t.strip()]
    if image_type:
        fields["ImageType"] = image_type
    for key in ("ScanningSequence", "SequenceVariant", "MRAcquisitionType", "SequenceName"):
        value = head.get(key)
        if value:
            fields[key] = "_".join(str(v) for v in value) if not isinstance(value, str) else str(value).strip()
    if datatype == "func" and entities.get("task"):
        fields["TaskName"] = entities["task"]
    tr = fields.get("RepetitionTime")
    n_slices = shape[2] if len(shape) >= 3 else 1
    if len(shape) == 4 or datatype in ("func", "dwi", "perf") or suffix in ("epi", "sbref"):
        timing = _slice_timing(slice_datasets, affine, n_slices, tr, csa_image, head)
        if timing is not None and len(shape) >= 3:
            fields["SliceTiming"] = timing
    axis_world = _pe_axis_world(head)
    if axis_world is not None:
        sign = _pe_sign(head, csa_image, entities.get("dir"), axis_world)
        if sign is not None:
            code = _axis_code(axis_world * sign, affine)
            if code:
                fields["PhaseEncodingDirection"] = code
        code = _axis_code(axis_world, affine)
        recon_pe = shape["ijk".index(code[0])] if code else None
        if recon_pe:
            fields["ReconMatrixPE"] = int(recon_pe)
        spacing = _echo_spacing(head, vendor, recon_pe)
        if spacing:
            fields["EffectiveEchoSpacing"] = round(spacing, 8)
            if recon_pe and recon_pe > 1:
                fields["TotalReadoutTime"] = round(spacing * (recon_pe - 1), 7)
    accel = _parallel_factor(head, csa_image, vendor)
    if accel:
        fields["ParallelReductionFactorInPlane"] = accel
    band = _multiband(head, vendor)
    if band:
        fields["MultibandAccelerationFactor"] = band
    return fields


def _echo_spacing(head: Dataset, vendor: str | None, recon_pe: int | None) -> float | None:
    if vendor == "Siemens" and (0x0019, 0x1028) in head and recon_pe:
        try:
            bandwidth_pe = float(head[(0x0019, 0x1028)].value if not isinstance(head[(0x0019, 0x1028)].value, bytes)
                                 else np.frombuffer(head[(0x0019, 0x1028)].value[:8], "<f8")[0])
        except (TypeError, ValueError):
            return None
        return 1.0 / (bandwidth_pe * recon_pe) if bandwidth_pe > 0 else None
    if vendor == "GE" and (0x0043, 0x102C) in head:
        try:
            microseconds = float(head[(0x0043, 0x102C)].value)
        except (TypeError, ValueError):
            return None
        asset = 1.0
        if (0x0043, 0x1083) in head:
            try:
                value = head[(0x0043, 0x1083)].value
                asset = float(value[0] if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else value)
            except (TypeError, ValueError, IndexError):
                asset = 1.0
        return microseconds * 1e-6 * (asset if 0 < asset <= 1 else 1.0) if microseconds > 0 else None
    return None


def _parallel_factor(head: Dataset, csa_image: dict, vendor: str | None) -> float | None:
    value = csa_image.get("AcceleratorFactorPE") if vendor == "Siemens" else None
    if value is None and "ParallelReductionFactorInPlane" in head:
        value = head.ParallelReductionFactorInPlane
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return number if number and number > 1 else None


def _multiband(head: Dataset, vendor: str | None) -> int | None:
    if vendor == "Siemens":
        text = str(head.get("ImageComments", ""))
        match = re.search(r"\bMB\s*(\d+)", text)  # CMRR sequences note "Unaliased MB3/PE3"
        if match:
            return int(match.group(1))
    return None


# ---------------------------------------------------------------- allowlist

@dataclass(frozen=True, slots=True)
class Filtered:
    """The sidecar that may leave, plus value-free counts of what was dropped and why."""

    fields: dict[str, Any]
    dropped_unknown: int
    dropped_invalid: int
    dropped_phi: int
    dropped_denied: int


def apply_allowlist(fields: dict[str, Any], *, allow: tuple[str, ...] = (),
                    allow_free_text: tuple[str, ...] = (), phi_terms: frozenset[str] = frozenset()) -> Filtered:
    """Keep allowlisted, valid, PHI-free fields.

    Parameters
    ----------
    fields : dict
        Candidate metadata (from ``derive_fields`` or another engine's JSON).
    allow, allow_free_text : tuple of str
        Keys switched on by config (must be in ALLOWLIST; never on the denylist).
    phi_terms : frozenset of str
        Lower-case PHI strings of the source; a string value containing one is dropped.
    """
    kept: dict[str, Any] = {}
    unknown = invalid = phi = denied = 0
    for key in sorted(fields):
        value = fields[key]
        spec = ALLOWLIST.get(key)
        if is_denied(key):
            denied += 1
            continue
        if spec is None or not (spec.default_on or key in allow or (spec.free_text and key in allow_free_text)):
            unknown += 1
            continue
        if spec.free_text:
            value = scrub_text(str(value), phi_terms)
            if not value:
                phi += 1
                continue
        if not spec.check(value):
            invalid += 1
            continue
        if _contains_phi(value, phi_terms):
            phi += 1
            continue
        kept[key] = value
    return Filtered(kept, unknown, invalid, phi, denied)


_DATE_LIKE = re.compile(r"\b(19|20)\d{2}[-./]?\d{2}[-./]?\d{2}\b|\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b")
_TIME_LIKE = re.compile(r"\b\d{2}:\d{2}(:\d{2})?\b|\b\d{6}(\.\d+)?\b")
_ID_LIKE = re.compile(r"\b(?=[A-Za-z]*\d)[A-Za-z0-9]{6,}\b")
_NAME_LIKE = re.compile(r"\b[A-Z][a-z]+\^[A-Z][a-z]+\b|\b[A-Z][a-z]+,\s*[A-Z][a-z]+\b")


def scrub_text(text: str, phi_terms: frozenset[str]) -> str:
    """Remove source PHI values and anything shaped like a date, time, ID or person name."""
    cleaned = text
    for term in sorted(phi_terms, key=len, reverse=True):
        if term and term in cleaned.lower():
            cleaned = re.sub(re.escape(term), " ", cleaned, flags=re.I)
    for pattern in (_DATE_LIKE, _TIME_LIKE, _ID_LIKE, _NAME_LIKE):
        cleaned = pattern.sub(" ", cleaned)
    cleaned = re.sub(r"[^A-Za-z0-9 _+\-.]", " ", cleaned)
    return re.sub(r"\s+", " ", cleaned).strip()


def _contains_phi(value: Any, phi_terms: frozenset[str]) -> bool:
    if not phi_terms:
        return False
    texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
    for text in texts:
        lowered = text.lower()
        if any(term in lowered for term in phi_terms if len(term) >= 3):
            return True
    return False
