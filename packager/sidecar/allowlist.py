"""The typed allowlist of sidecar keys, the hard denylist, and the free-text scrub.

A spec table, not a stage: ``ALLOWLIST`` maps every BIDS key dcmpack may emit to a JSON type,
a unit and a validator. ``apply_allowlist`` keeps only allowlisted, valid keys, refuses keys on
the hard ``DENYLIST`` whatever the config says, and drops any string that contains a PHI value
of the source. Free-text keys pass only when the config allows them by name *and* they
survive ``scrub_text``. Used by the sidecar stage and by ``verify``.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packager.dicom.vocabulary import IMAGE_TYPE_VOCABULARY, VENDORS
from packager.naming.labels import shipped_vocabulary, vocabulary_problem

#: Keys no config can allow (searched case-insensitively in the key name unless marked): dates,
#: times of day, UIDs, identities and names, addresses and phone numbers, institution,
#: department, station, device serial numbers, operators and physicians, comments, accession,
#: study/patient/procedure IDs. A spec table: the rules that keep a key out whatever the config.
DENYLIST = (
    re.compile(r"date", re.I),
    re.compile(
        r"(study|series|acquisition|content|instance|creation|start|end|scan|birth|overlay|curve"
        r"|admitting|procedure|step|observation|treatment|plan|structureset)time$",
        re.I,
    ),
    re.compile(r"timestamp|timezone|timeofday|clocktime", re.I),
    re.compile(r"uid", re.I),
    re.compile(r"patient", re.I),
    re.compile(r"physician", re.I),
    re.compile(r"operator|performer|observer|reviewer|author|interpret|transcrib|recipient", re.I),
    re.compile(r"institution", re.I),
    re.compile(r"department", re.I),
    re.compile(r"station", re.I),
    re.compile(r"serial", re.I),
    re.compile(r"address|telecom|telephone|phone|email", re.I),
    re.compile(r"comment", re.I),
    re.compile(r"accession", re.I),
    re.compile(r"ID(s)?$|Identification|Issuer"),  # StudyID, PatientID, AdmissionID, ... (case-sensitive)
    re.compile(r"^(?!ManufacturersModelName$|TaskName$|SequenceName$|ProtocolName$|PulseSequenceName$)\w*Name$"),
    re.compile(r"performed|requested|scheduled|referring|reading|requesting|ordering", re.I),
    re.compile(r"residence|location|ethnic|religio|occupation|military|insurance|allerg|history|diagnos", re.I),
    re.compile(r"(order|placer|filler)number|medicalrecord|\bmrn\b|visit|admission|episode", re.I),
    re.compile(r"aetitle|ae_title|barcode|label text|deviceuid|device(id|label)", re.I),
)

#: Tokens matching this are also ImageType vocabulary (Siemens/GE echo indices: ECHO_00).
_IMAGE_TYPE_PATTERN = re.compile(r"(ECHO|TE|PHASE|FRAME|VOLUME)_?\d{1,3}")
SCANNING_SEQUENCE = frozenset({"SE", "IR", "GR", "EP", "RM"})
SEQUENCE_VARIANT = frozenset({"SK", "MTC", "SS", "TRSS", "SP", "MP", "OSP", "NONE"})


@dataclass(frozen=True, slots=True)
class Field:
    """One allowlisted key: JSON type, unit (documentation) and a validator.

    ``open_text``: a string not drawn from a closed set (model or sequence name, free text);
    it is dropped when it occurs inside a source PHI value too (a model name typed into the
    institution field), not only when a PHI value occurs inside it.
    """

    kind: str
    unit: str
    check: Callable[[Any], bool]
    default_on: bool = True
    free_text: bool = False
    open_text: bool = False


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
    def check(value: Any) -> bool:
        return (
            isinstance(value, list)
            and 0 < len(value) <= 12
            and all(isinstance(t, str) and (t in vocabulary or bool(_IMAGE_TYPE_PATTERN.fullmatch(t))) for t in value)
        )

    return check


#: No value of an open-text key may hold something shaped like a date, a time or a long number.
_IDENTIFYING_SHAPE = re.compile(r"\d{6,}|\d{1,4}[-./]\d{1,2}[-./]\d{2,4}|\d{1,2}:\d{2}")


def _pattern(regex: str, maxlen: int, max_words: int = 6, *, shapes: bool = True) -> Callable[[Any], bool]:
    compiled = re.compile(regex)

    def check(value: Any) -> bool:
        return (
            isinstance(value, str)
            and 0 < len(value) <= maxlen
            and bool(compiled.fullmatch(value))
            and len(value.split()) <= max_words
            and not (shapes and _IDENTIFYING_SHAPE.search(value))
        )

    return check


def _numbers(low: float, high: float, maxlen: int) -> Callable[[Any], bool]:
    item = _num(low, high, low_open=False)
    return lambda v: isinstance(v, list) and 0 < len(v) <= maxlen and all(item(x) for x in v)


def _bids_uris(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and re.fullmatch(r"bids::sub-[A-Za-z0-9]+/[A-Za-z0-9_/\-.]+", v) for v in value
    )


ALLOWLIST: dict[str, Field] = {
    "Modality": Field("string", "", _enum("MR", "CT", "PT")),
    "Manufacturer": Field("string", "", _enum(*VENDORS)),
    "ManufacturersModelName": Field("string", "", _pattern(r"[A-Za-z0-9][A-Za-z0-9 _.+\-]*", 40, 4), open_text=True),
    "MagneticFieldStrength": Field("number", "T", _num(0.0, 21.0)),
    "ImageType": Field("array", "", _tokens(IMAGE_TYPE_VOCABULARY)),
    "ScanningSequence": Field(
        "string", "", lambda v: isinstance(v, str) and all(t in SCANNING_SEQUENCE for t in v.split("_"))
    ),
    "SequenceVariant": Field(
        "string", "", lambda v: isinstance(v, str) and all(t in SEQUENCE_VARIANT for t in v.split("_"))
    ),
    "MRAcquisitionType": Field("string", "", _enum("2D", "3D")),
    "SequenceName": Field("string", "", _pattern(r"[A-Za-z0-9_*+#\-]+", 32, 1), open_text=True),
    "RepetitionTime": Field("number", "s", _num(0.0, 100.0)),
    "DelayTime": Field("number", "s", _num(0.0, 100.0)),
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
    "DwellTime": Field("number", "s", _num(0.0, 0.001)),
    "DeidentificationMethod": Field(
        "array",
        "",
        lambda v: (
            isinstance(v, list)
            and len(v) == 1
            and isinstance(v[0], str)
            and v[0].startswith("dcmpack: ")
            and len(v[0]) < 200
        ),
    ),
    "DeidentificationMethodCodeSequence": Field(
        "array",
        "",
        lambda v: (
            isinstance(v, list)
            and all(
                isinstance(c, dict)
                and set(c) == {"CodeValue", "CodingSchemeDesignator", "CodeMeaning"}
                and c["CodingSchemeDesignator"] == "DCM"
                and c["CodeValue"] in ("113100", "113102", "113105", "113107", "113108")
                for c in v
            )
        ),
    ),
    "NonlinearGradientCorrection": Field("boolean", "", lambda v: isinstance(v, bool)),
    "TaskName": Field("string", "", _pattern(r"[A-Za-z0-9]+", 64)),
    "Units": Field("string", "", _enum("Hz", "rad/s", "T", "mm", "s", "rad", "arbitrary")),
    "IntendedFor": Field("array", "", _bids_uris),
    "B0FieldIdentifier": Field("string", "", _pattern(r"[A-Za-z0-9_\-]+", 64)),
    "B0FieldSource": Field("string", "", _pattern(r"[A-Za-z0-9_\-]+", 64)),
    "ConversionSoftware": Field("string", "", _pattern(r"[A-Za-z0-9_\-+]+", 40)),
    "ConversionSoftwareVersion": Field("string", "", _pattern(r"[A-Za-z0-9_.\-+ ()/;:]+", 120, 12, shapes=False)),
    "SeriesNumber": Field("number", "", _int(0, 1_000_000), default_on=False),
    "SeriesDescription": Field(
        "string", "", _pattern(r"[A-Za-z0-9 _+\-.]+", 64, 8), default_on=False, free_text=True, open_text=True
    ),
    "ProtocolName": Field(
        "string", "", _pattern(r"[A-Za-z0-9 _+\-.]+", 64, 8), default_on=False, free_text=True, open_text=True
    ),
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
    # (key, reason) of each key dropped for a reason a reviewer should see: invalid, phi, denied
    # (keys the allowlist does not know or that are not switched on are the ordinary case)
    dropped_keys: tuple[tuple[str, str], ...] = ()


def check_config(allow: tuple[str, ...], allow_free_text: tuple[str, ...]) -> str | None:
    """The problem with a ``[sidecar]`` config, or None: unknown keys, denied keys, free text in
    the wrong list. Called by ``config.load_config`` (a ConfigError naming the line)."""
    for key in allow:
        if is_denied(key):
            return f'"{key}" is on the hard denylist (identifying): no config can allow it'
        spec = ALLOWLIST.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, list(ALLOWLIST), n=1)
            return f'"{key}" is not an allowlisted key' + (f' (did you mean "{close[0]}"?)' if close else "")
        if spec.free_text:
            return f'"{key}" is free text: list it in allow_free_text (it is scrubbed and audited)'
    for key in allow_free_text:
        if is_denied(key):
            return f'"{key}" is on the hard denylist (identifying): no config can allow it'
        spec = ALLOWLIST.get(key)
        if spec is None or not spec.free_text:
            free = sorted(k for k, f in ALLOWLIST.items() if f.free_text)
            return f'"{key}" is not a free-text key (one of: {", ".join(free)})'
    return None


def apply_allowlist(
    fields: dict[str, Any],
    *,
    allow: tuple[str, ...] = (),
    allow_free_text: tuple[str, ...] = (),
    phi_terms: frozenset[str] = frozenset(),
    identity_terms: frozenset[str] | None = None,
    vocabulary: frozenset[str] | None = None,
) -> Filtered:
    """Keep allowlisted, valid, PHI-free fields.

    Parameters
    ----------
    fields : dict
        Candidate metadata (from ``derive_fields`` or another engine's JSON).
    allow, allow_free_text : tuple of str
        Keys switched on by config (must be in ALLOWLIST; the denylist wins over both).
    phi_terms : frozenset of str
        Lower-case PHI strings of the source series; a string value containing one is dropped
        (and for open-text keys also a value contained in one of ``identity_terms``).
    identity_terms : frozenset of str, optional
        The terms of names and identifiers (default: ``phi_terms``): an open-text value inside
        one of these is a piece of a person's identity; inside an institution's name it is not.
    vocabulary : frozenset of str, optional
        The words released free text may keep (``scrub_text``; default: the shipped vocabulary).

    Returns
    -------
    Filtered
        Kept fields and value-free counts: unknown (or not switched on), invalid, phi, denied.
    """
    kept: dict[str, Any] = {}
    unknown = invalid = phi = denied = 0
    named: list[tuple[str, str]] = []
    for key in sorted(fields):
        value = fields[key]
        spec = ALLOWLIST.get(key)
        if is_denied(key):
            denied += 1
            named.append((key, "denied"))
            continue
        if spec is None or not (
            spec.default_on or (not spec.free_text and key in allow) or (spec.free_text and key in allow_free_text)
        ):
            unknown += 1
            continue
        if spec.free_text:
            value = scrub_text(str(value), phi_terms, vocabulary)
            if not value:
                phi += 1
                named.append((key, "phi"))
                continue
        if not spec.check(value):
            invalid += 1
            named.append((key, "invalid"))
            continue
        identity = phi_terms if identity_terms is None else identity_terms
        if _contains_phi(value, phi_terms) or (spec.open_text and _contains_phi(value, identity, both_ways=True)):
            phi += 1
            named.append((key, "phi"))
            continue
        kept[key] = value
    return Filtered(kept, unknown, invalid, phi, denied, tuple(named))


_DATE_LIKE = re.compile(r"\b(19|20)\d{2}[-./]?\d{2}[-./]?\d{2}\b|\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b")
_TIME_LIKE = re.compile(r"\b\d{1,2}:\d{2}(:\d{2})?\b|\b\d{6}(\.\d+)?\b")
_ID_LIKE = re.compile(r"\b(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]{6,}\b|\b\d{5,}\b")
_NAME_LIKE = re.compile(r"\b[A-Z][a-z]+\^[A-Z][a-z]*\b|\b[A-Z][a-z]+,\s*[A-Z][a-z]+\b|\b[A-Za-z]+\^[A-Za-z^]*")


def scrub_text(text: str, phi_terms: frozenset[str], vocabulary: frozenset[str] | None = None) -> str:
    """Remove source PHI values, anything shaped like a date, time, ID or person name, and every
    word that is not protocol vocabulary or a plain number.

    The last step is the label policy's (``naming.labels``): a search for the source's values
    misses every spelling it does not generate (a passport transliteration, a nickname, a name
    abbreviated, a word of the address, a date written in words), so released free text is
    default-deny like a label. ``vocabulary``: the shipped protocol vocabulary plus ``[labels]
    vocabulary`` (default: the shipped one). What is left is letters, digits, space and ``_+-.``
    only; the caller still validates it and checks it against the PHI terms, and the audit
    searches the bundle for every value.
    """
    cleaned = text
    for term in sorted(phi_terms, key=len, reverse=True):
        if term and len(term) >= 3 and term in cleaned.lower():
            cleaned = re.sub(
                re.escape(term) if len(term) >= 6 else rf"(?<![^\W_]){re.escape(term)}(?![^\W_])",
                " ",
                cleaned,
                flags=re.I,
            )
    for pattern in (_NAME_LIKE, _DATE_LIKE, _TIME_LIKE, _ID_LIKE):
        cleaned = pattern.sub(" ", cleaned)
    cleaned = re.sub(r"[^A-Za-z0-9 _+\-.]", " ", cleaned)
    words = shipped_vocabulary() if vocabulary is None else vocabulary
    cleaned = _WORD.sub(lambda m: m.group(0) if _plain_word(m.group(0), words) else "\x00", cleaned)
    # a removed word takes one separator with it (gre_X_mag -> gre_mag), and a word left with
    # none is dropped from the ends of its run
    cleaned = re.sub(r"[_+\-.]?\x00+", "", cleaned)
    cleaned = re.sub(r"(?:(?<=\s)|^)[_+\-.]+|[_+\-.]+(?=\s|$)", " ", cleaned)
    return re.sub(r"\s+", " ", cleaned).strip(" _-.")


_WORD = re.compile(r"[A-Za-z0-9]+")


def _plain_word(word: str, vocabulary: frozenset[str]) -> bool:
    """A word free text may keep: the label policy's, and no bare number of 3+ digits (a label's
    ``1800`` or ``4417`` is one entity among others; alone in a description it is as likely
    the piece of an ID or a phone number that was split by its separators)."""
    return not (word.isdigit() and len(word) >= 3) and vocabulary_problem(word, vocabulary) is None


def _contains_phi(value: Any, phi_terms: frozenset[str], *, both_ways: bool = False) -> bool:
    """A PHI term in a string of ``value`` (short terms as whole words); with ``both_ways`` also
    the string (4+ characters) as a whole word inside a PHI term."""
    if not phi_terms:
        return False
    texts = (
        [value]
        if isinstance(value, str)
        else [v for v in value if isinstance(v, str)]
        if isinstance(value, list)
        else []
    )
    if not texts:
        return False
    longest, joined = _term_facts(phi_terms)
    for text in texts:
        lowered = text.lower()
        # Every substring of 3+ characters (sidecar strings are short) looked up in the set:
        # the same verdict as trying every term, without a pass over thousands of terms.
        size = len(lowered)
        for start in range(size):
            for end in range(start + 3, min(size, start + longest) + 1):
                if lowered[start:end] in phi_terms and (
                    end - start >= 6
                    or not ((start > 0 and lowered[start - 1].isalnum()) or (end < size and lowered[end].isalnum()))
                ):
                    return True
        if (
            both_ways
            and len(lowered) >= 4
            and lowered in joined
            and re.search(rf"(?<![^\W_]){re.escape(lowered)}(?![^\W_])", joined)
        ):
            return True
    return False


@functools.lru_cache(maxsize=8)
def _term_facts(phi_terms: frozenset[str]) -> tuple[int, str]:
    """Length of the longest term, and the terms of 3+ characters as one NUL-separated string (a
    value inside a term: one regex search)."""
    usable = [t for t in phi_terms if len(t) >= 3]
    return max((len(t) for t in usable), default=0), "\x00" + "\x00".join(sorted(usable)) + "\x00"
