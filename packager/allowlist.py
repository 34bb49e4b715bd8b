"""The typed allowlist of sidecar keys, the hard denylist, and the free-text scrub.

A spec table, not a stage: ``ALLOWLIST`` maps every BIDS key dcmpack may emit to a JSON type,
a unit and a validator. ``apply_allowlist`` keeps only allowlisted, valid keys, refuses keys on
the hard ``DENYLIST`` whatever the config says, and drops any string that contains a PHI value
of the source. Free-text keys pass only when the config allows them by name *and* they
survive ``scrub_text``. Used by the sidecar stage and by ``verify``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable


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


VENDORS = ("Siemens", "GE", "Philips", "Canon", "Toshiba", "Hitachi", "UIH", "Bruker", "Fujifilm")

ALLOWLIST: dict[str, Field] = {
    "Modality": Field("string", "", _enum("MR", "CT", "PT")),
    "Manufacturer": Field("string", "", _enum(*VENDORS)),
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
