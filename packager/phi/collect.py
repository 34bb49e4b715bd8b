"""PHI collection for the phi service: headers (pydicom datasets or the fast reader's element tree) -> PhiValue sets.

Used by the index (every source header, once) and through it by the sidecar scrub, the report
scrubber and the audit. What counts as PHI:

* every PHI-class attribute of Annex E (``packager.phi.annex``);
* whatever its keyword: every person name (PN), UID (UI, except the public DICOM-standard
  UIDs under 1.2.840.10008), date (DA), date-time (DT) and time (TM);
* every text element nested in a PHI-class sequence (e.g. Request Attributes Sequence);
* the text of private elements (LO/LT/SH/ST/UT/UC, and printable runs of UN/OB bytes in
  ASCII, UTF-8 or UTF-16LE), except private copies of public non-PHI values of the same
  dataset (a private tag repeating SequenceName is not a leak when SequenceName is released).

Values become search terms in ``packager.phi.terms`` and are searched by ``packager.phi.matcher``.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from packager.dicom.reader import reading_settings
from packager.phi.annex import is_phi_tag
from packager.phi.public import DIRECT_IDENTIFIERS, _public_copy, released, without_public  # noqa: F401
from packager.phi.terms import STANDARD_UID_ROOT, WORD_LENGTH, PhiValue, is_generic, is_number

_DATE_VRS = {"DA"}
_TIME_VRS = {"TM"}
_DATETIME_VRS = {"DT"}
_TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "PN", "CS", "AE", "UC", "DS", "IS", "AS"}
_FREE_TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "PN"}
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
#: Private elements collected besides text: UIDs, dates and times (as their PHI class), URIs,
#: and the printable runs of UN/OB bytes.
_PRIVATE_ALSO = frozenset({"UN", "OB", "UI", "DA", "DT", "TM", "UR"})
#: Private text runs longer than this are whole documents (protocol dumps), not searchable values.
MAX_PRIVATE_PIECE = 256
#: Free-text descriptions a heuristic reads; their *whole* value is what must not leak.
DESCRIPTION_KEYWORDS = frozenset(
    {
        "SeriesDescription",
        "ProtocolName",
        "StudyDescription",
        "PerformedProcedureStepDescription",
        "RequestedProcedureDescription",
        "ScheduledProcedureStepDescription",
        "RequestedSeriesDescription",
    }
)
#: Coded-entry structure inside sequences: standard vocabulary, not a person's data (CodeValue
#: is kept: in a person or institution identification sequence it is the identifier).
_CODE_KEYWORDS = frozenset(
    {
        "CodeMeaning",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "LongCodeValue",
        "URNCodeValue",
        "ValueType",
        "RelationshipType",
        "ContinuityOfContent",
        "TemplateIdentifier",
        "MappingResource",
        "ContextIdentifier",
        "CodingSchemeName",
        "CodingSchemeResponsibleOrganization",
    }
)
#: Numeric or coded PHI-class values that are too generic to search for as text.
_NOT_SEARCHED = frozenset(
    {
        "PatientSex",
        "PatientSize",
        "PatientWeight",
        "PregnancyStatus",
        "SmokingStatus",
        "PatientSexNeutered",
        "TimezoneOffsetFromUTC",
    }
)


def _decode(value: bytes) -> list[str]:
    """Printable text runs of a byte value (UTF-8 or Latin-1, plus UTF-16LE when it looks so).

    Every character that is not printable (``str.isprintable``) becomes NUL. A hot path (every
    private value of every source header passes here), so it works on whole buffers with a
    byte table and numpy rather than character by character; the result is the same.
    """
    try:
        text = value.decode("utf-8")
        texts = [value.translate(_PRINTABLE_LATIN1).decode("ascii") if text.isascii() else _printable(text)]
    except UnicodeDecodeError:
        texts = [value.translate(_PRINTABLE_LATIN1).decode("latin-1")]
    if len(value) >= 4 and value.count(0) * 3 >= len(value):
        for start in (0, 1):
            texts.append(_printable_utf16(value[start : len(value) - ((len(value) - start) % 2)]))
    return texts


#: ``bytes.translate`` table: a Latin-1 (or ASCII) byte stays when printable, else becomes NUL.
_PRINTABLE_LATIN1 = bytes(b if chr(b).isprintable() else 0 for b in range(256))


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _printable(text: str) -> str:
    """``text`` with every character that is not printable replaced by NUL."""
    if text.isprintable():
        return text
    text = _printable_bmp()[1].sub("\x00", text)
    if max(text) > "\uffff":
        text = _ASTRAL.sub(lambda m: m.group(0) if m.group(0).isprintable() else "\x00", text)
    return text


@lru_cache(maxsize=1)
def _printable_bmp() -> tuple[np.ndarray, re.Pattern]:
    """Printable or not, for each BMP code point: a lookup array and a regex of the others."""
    table = np.array([chr(c).isprintable() for c in range(0x10000)], dtype=bool)
    bad = np.flatnonzero(~table)
    starts = bad[np.r_[True, np.diff(bad) > 1]]
    ends = bad[np.r_[np.diff(bad) > 1, True]]
    ranges = "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in zip(starts, ends, strict=True))
    return table, re.compile(f"[{ranges}]")


def _printable_utf16(data: bytes) -> str:
    """``_printable(data.decode("utf-16-le", "replace"))``, vectorised when no surrogates occur."""
    units = np.frombuffer(data, dtype="<u2")
    if ((units >= 0xD800) & (units <= 0xDFFF)).any():
        return _printable(data.decode("utf-16-le", "replace"))
    return np.where(_printable_bmp()[0][units], units, 0).astype("<u2").tobytes().decode("utf-16-le")


def _strings(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        out: list[str] = []
        for item in value:
            out.extend(_strings(item))
        return out
    if isinstance(value, bytes):
        return [t.strip("\x00 ") for t in _decode(value)]
    return [str(value).strip().strip("\x00").strip()]


def _kind(keyword: str, vr: str, private: bool) -> str:
    if vr == "UI":
        return "uid"
    if vr in _DATE_VRS:
        return "date"
    if vr in _TIME_VRS:
        return "time"
    if vr in _DATETIME_VRS:
        return "datetime"
    if vr == "PN":
        return "name"
    if private:
        return "private-text" if vr in _FREE_TEXT_VRS else "private"
    if keyword in DESCRIPTION_KEYWORDS:
        return "description"
    if keyword.endswith(("ID", "IDs", "Number", "Numbers", "Identifier")):
        return "id"
    return "text"


def _public_values(ds: Dataset, out: set[str]) -> set[str]:
    """Lower-case values of standard, non-PHI text elements (what we may legitimately release)."""
    for element in ds:
        tag, vr, keyword = int(element.tag), element.VR, element.keyword or ""
        if vr == "SQ":
            if _public_sequence(tag, keyword):
                for item in element.value or []:
                    _public_values(item, out)
            continue
        if not _public_text(tag, vr, keyword):
            continue
        try:
            _add_public(out, _strings(element.value))
        except Exception:  # an undecodable value is simply not public
            continue
    return out


def _public_sequence(tag: int, keyword: str) -> bool:
    """A sequence whose items may hold public values: standard and not PHI-class."""
    return not tag >> 16 & 1 and not is_phi_tag(tag, keyword)


def _public_text(tag: int, vr: str, keyword: str) -> bool:
    """A standard, non-PHI text element (not a person name): its value may be released."""
    return not tag >> 16 & 1 and vr in _TEXT_VRS and vr != "PN" and not is_phi_tag(tag, keyword)


def _add_public(out: set[str], texts: list[str]) -> None:
    for text in texts:
        out.add(text.lower())
        out.update(t.lower() for t in text.split("\\"))


@reading_settings()
def collect(ds: Dataset, found: set[PhiValue] | None = None, public: set[str] | None = None) -> set[PhiValue]:
    """Every PHI-class value in ``ds`` (recursing into sequences), as PhiValue records.

    Parameters
    ----------
    ds : Dataset
        A header (or ``file_meta``); pixel data is never read.
    found : set, optional
        Accumulator shared across datasets (the values of a whole source).
    public : set, optional
        Accumulator of public non-PHI values across datasets (for ``without_public``).
    """
    found = set() if found is None else found
    public = _public_values(ds, set() if public is None else public)
    for element in ds:
        _visit(element, found, public, inherited=False)
    return found


def _visit(element, found: set[PhiValue], public: set[str], inherited: bool) -> None:
    vr = element.VR
    tag = int(element.tag)
    keyword = element.keyword or ""
    if vr == "SQ":
        inside = _phi_sequence(tag, keyword, inherited)
        for item in element.value or []:
            for child in item:
                _visit(child, found, public, inside)
        return
    kind = _wanted(tag, vr, keyword, inherited)
    if kind is None:
        return
    try:
        values = _strings(element.value)
    except Exception:  # an undecodable value cannot be searched; skip it
        return
    _add_values(found, public, kind, _name(tag, keyword), values)


def _phi_sequence(tag: int, keyword: str, inherited: bool) -> bool:
    """Whether what a sequence holds is PHI-class (its free text is then collected too)."""
    return inherited or bool(tag >> 16 & 1) or is_phi_tag(tag, keyword)


def _wanted(tag: int, vr: str, keyword: str, inherited: bool) -> str | None:
    """The PHI class (``_kind``) of a non-sequence element to collect, or None to skip it."""
    private = bool(tag >> 16 & 1)
    if tag == 0x7FE00010 or (vr in _BINARY_VRS and not private):
        return None  # pixel data and binary planes (overlays, curves) carry no text
    if private and 0x10 <= tag & 0xFFFF <= 0xFF:
        return None  # private creator: a vendor name, not PHI
    if private and vr not in _TEXT_VRS and vr not in _PRIVATE_ALSO:
        return None
    wanted = (
        is_phi_tag(tag, keyword)
        or private
        or vr in ("PN", "UI", "DA", "DT", "TM")
        or (inherited and vr in _FREE_TEXT_VRS and keyword not in _CODE_KEYWORDS)
    )
    if not wanted or keyword in _NOT_SEARCHED:
        return None
    return _kind(keyword, vr, private)


def _name(tag: int, keyword: str) -> str:
    return keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _add_values(found: set[PhiValue], public: set[str], kind: str, name: str, values: list[str]) -> None:
    for text in values:
        if kind in ("private", "private-text"):
            for piece_kind, piece, lowered in _private_pieces(text, kind):
                if lowered not in public:
                    found.add(PhiValue(piece_kind, name, piece))
            continue
        if kind == "uid" and text.startswith(STANDARD_UID_ROOT):
            continue
        if kind in ("text", "description", "id") and _public_copy(kind, name, text, public):
            continue  # the same dataset states it in a public attribute (e.g. model name)
        if text:
            found.add(PhiValue(kind, name, text))


#: Runs between private-text separators long enough to be a piece (``WORD_LENGTH`` or more):
#: what splitting on the separators and keeping the long pieces gives, found by the regex engine.
_PRIVATE_RUNS = re.compile(rf"[^\\^\x00\r\n\t]{{{WORD_LENGTH},}}")
_LETTER = re.compile(r"[A-Za-z]")


@lru_cache(maxsize=256)
def _private_pieces(text: str, kind: str = "private") -> tuple[tuple[str, str, str], ...]:
    """(kind, piece, lower-case piece) of the searchable pieces of a private value.

    A bare word (a vendor field name, an enumeration) is ``private-word``, searched in member
    names only; pieces with digits, spaces or punctuation are ``private`` (from bytes) or
    ``private-text`` (a private LO/LT/SH/ST/UT/UC: typed text, whose words are searched too),
    searched everywhere (module doc). Cached, as is each piece: private values repeat from file
    to file of a series (CSA headers).
    """
    pieces = []
    for run in _PRIVATE_RUNS.findall(text):
        found = _private_piece(run)
        if found is not None:
            pieces.append(found if found[0] == "private-word" else (kind, *found[1:]))
    return tuple(pieces)


@lru_cache(maxsize=1 << 16)
def _private_piece(piece: str) -> tuple[str, str, str] | None:
    piece = piece.strip()
    if (
        WORD_LENGTH <= len(piece) <= MAX_PRIVATE_PIECE
        and _LETTER.search(piece)
        and not is_number(piece)
        and not is_generic(piece)
    ):
        return ("private-word" if piece.isalpha() else "private", piece, piece.lower())
    return None


# ---------------------------------------------------------------- the fast reader's elements

#: Character sets whose ASCII bytes (without ESC) decode to the same characters: values in
#: them are split and stripped here; anything else goes through pydicom's own decoding.
_ASCII_SAFE_ENCODINGS = frozenset(
    {
        "iso8859",
        "latin_1",
        "iso8859_2",
        "iso8859_3",
        "iso8859_4",
        "iso_ir_126",
        "iso_ir_127",
        "iso_ir_138",
        "iso_ir_144",
        "iso_ir_148",
        "iso_ir_166",
        "UTF8",
        "GB18030",
        "GBK",
    }
)
#: VRs pydicom splits on backslash into multiple values (the others are one text).
_MULTI_VALUED = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC", "UI"})
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})


@cache
def _keyword(tag: int) -> str:
    """``DataElement.keyword``: the dictionary keyword of a registered tag, else ""."""
    from pydicom.datadict import dictionary_has_tag, dictionary_keyword

    return dictionary_keyword(tag) if dictionary_has_tag(tag) else ""


@reading_settings()
def collect_elements(
    buffer: bytes, elements, encodings: tuple[str, ...], found: set[PhiValue], public: set[str], seen: set | None = None
) -> set[PhiValue]:
    """``collect`` on one dataset of the fast reader's element tree (``dicom.fast.read_fast``).

    The same values as ``collect`` on the dataset pydicom reads from the same bytes (tested on
    every element of the corpus, the sample and the torture set): the same decisions (the
    helpers above are shared), values split and stripped as pydicom converts them, and
    anything beyond plain ASCII text decoded by pydicom's own converter.

    ``seen`` (kept with ``found`` and ``public`` across the files of a run) skips an element,
    or a whole sequence, whose tag, VR, context and bytes were already collected into these
    same sets: it would add nothing. (Its values went into ``found`` unless ``public`` held
    them then, and ``public`` only grows; its public values are in ``public`` already.) Most
    of a series' header repeats from file to file, so this skips most of the work.
    """
    seen = set() if seen is None else seen
    _elements_public(buffer, elements, encodings, public, seen)
    _elements_visit(buffer, elements, encodings, found, public, False, seen)
    return found


@cache
def _public_decision(tag: int, vr: str) -> bool:
    """``_public_sequence`` for a sequence, else ``_public_text`` (cached per tag and VR)."""
    if vr == "SQ":
        return _public_sequence(tag, _keyword(tag))
    return _public_text(tag, vr, _keyword(tag))


@cache
def _visit_decision(tag: int, vr: str, inherited: bool):
    """``_phi_sequence`` for a sequence, else (kind, name) or None (cached per tag and VR)."""
    keyword = _keyword(tag)
    if vr == "SQ":
        return _phi_sequence(tag, keyword, inherited)
    kind = _wanted(tag, vr, keyword, inherited)
    return None if kind is None else (kind, _name(tag, keyword))


_PUBLIC_PASS = 2  # ``seen`` key marker of the public pass (the visit pass uses inherited: False/True)


def _elements_public(buffer: bytes, elements, encodings, out: set[str], seen: set) -> None:
    from packager.dicom.fast import encodings_of

    for element in elements:
        tag, vr, start, end, items, _ = element
        if not _public_decision(tag, vr):
            continue
        key = (_PUBLIC_PASS, tag, vr, encodings, buffer[start:end])
        if key in seen:
            continue
        seen.add(key)
        if items is not None:
            for item in items:
                _elements_public(buffer, item, encodings_of(buffer, item, encodings), out, seen)
            continue
        texts = _element_strings(buffer, element, encodings)
        if texts is not None:
            _add_public(out, texts)


def _elements_visit(
    buffer: bytes, elements, encodings, found: set[PhiValue], public: set[str], inherited: bool, seen: set
) -> None:
    from packager.dicom.fast import encodings_of

    for element in elements:
        tag, vr, start, end, items, _ = element
        decision = _visit_decision(tag, vr, inherited)
        if decision is None:
            continue
        key = (inherited, tag, vr, encodings, buffer[start:end])
        if key in seen:
            continue
        seen.add(key)
        if items is not None:
            for item in items:
                _elements_visit(buffer, item, encodings_of(buffer, item, encodings), found, public, decision, seen)
            continue
        texts = _element_strings(buffer, element, encodings)
        if texts is not None:
            _add_values(found, public, decision[0], decision[1], texts)


def _element_strings(buffer: bytes, element, encodings) -> list[str] | None:
    """``_strings`` of the value pydicom would convert ``element`` to (None: it would fail)."""
    _, vr, start, end, _, _ = element
    if end == start:
        return _empty_strings(vr)
    value = buffer[start:end]
    if vr in _BINARY_VRS:
        return [t.strip("\x00 ") for t in _decode(value)]
    if (
        value.isascii()
        and b"\x1b" not in value
        and (vr not in _TEXT_ENCODED or (len(encodings) == 1 and encodings[0] in _ASCII_SAFE_ENCODINGS))
    ):
        text = value.decode("ascii")
        if vr in _MULTI_VALUED:
            return [piece.strip().strip("\x00").strip() for piece in text.split("\\")]
        if vr in _SINGLE_VALUED:
            return [text.strip().strip("\x00").strip()]
    from packager.dicom.fast import convert

    try:
        return _strings(convert(buffer, element, encodings).value)
    except Exception:  # NotFast among them; as in ``_visit``: an undecodable value cannot be searched
        return None


@cache
def _empty_strings(vr: str) -> list[str]:
    """``_strings`` of the value pydicom gives an empty element of this VR."""
    from pydicom.dataelem import empty_value_for_VR

    return _strings(empty_value_for_VR(vr))


#: VRs pydicom decodes with the dataset's character set (the others are always Latin-1).
_TEXT_ENCODED = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})
