"""Release, audit: source PHI values x every byte stream of a bundle -> hits (never the values themselves).

Collects PHI-class values from every source header (``packager.phi``: PS3.15 Annex E
attributes, every person name, UID, date, time, private text) and from source file and folder
names, then searches, case-insensitively as UTF-8, Latin-1 and UTF-16LE text:

* member names (also checked against the BIDS character set), the zip comment, each entry's
  timestamp (must be the fixed date; a source date there is reported as a date hit), extra
  field and comment (must be empty);
* text members (JSON, TSV, bval/bvec, README, MANIFEST.json, SHA256SUMS, anything unknown),
  streamed in 1 MiB chunks;
* for ``.nii``/``.nii.gz`` members, the gzip header (MTIME must be 0; FNAME, FCOMMENT and
  FEXTRA must be absent and are searched when present), the NIfTI-1/2 text fields
  (``descrip`` must be empty or "dcmpack"; ``aux_file``, ``intent_name``, ``db_name``,
  ``data_type`` empty) and any header extension (must be absent; searched when present).

Voxel data is not searched (PHI burned into pixels is handled by exclusion, see README).
Memory does not grow with bundle size: members stream, NIfTI members are read only up to
their voxel offset. A description keyword the release explicitly allowed as free text
(``[sidecar] allow_free_text``, recorded in MANIFEST.json) is not itself a search term: its
scrubbed value was released on purpose; every name, ID, date and other value inside it still is.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packager import deface as deface_stage
from packager.config import ReleaseConfig
from packager.model import ExclusionReason
from packager.naming import layout, spec
from packager.phi import Matcher, PhiValue, is_generic
from packager.phi import released as released_values
from packager.release import provenance
from packager.release.bundle import FIXED_DATE, MANIFEST, SUMS
from packager.release.reuse import Verdicts
from packager.sidecar.allowlist import ALLOWLIST

_MIN_PATH_COMPONENT = 8
_CHUNK = 1 << 20
#: Member names are built from BIDS entities only: anything else is a structural finding.
_SAFE_NAME = re.compile(r"[A-Za-z0-9._\-/]+")
#: NIfTI-1 (348-byte) and NIfTI-2 (540-byte) text fields: (name, start, end).
_NIFTI1_TEXT = (
    ("data_type", 4, 14),
    ("db_name", 14, 32),
    ("descrip", 148, 228),
    ("aux_file", 228, 252),
    ("intent_name", 328, 344),
)
_NIFTI2_TEXT = (("descrip", 240, 320), ("aux_file", 320, 344), ("intent_name", 508, 524))
_ALLOWED_DESCRIP = (b"", b"dcmpack")


@dataclass(frozen=True, slots=True)
class Hit:
    """One finding: where (member and stream), which PHI class and tag; ``value`` only on request."""

    member: str
    stream: str
    kind: str
    tag: str
    value: str = ""
    #: With ``show_values`` only (``audit --explain``): the text matched (folded) and where it
    #: starts in the stream (characters of the decoded stream; -1 when not known).
    term: str = ""
    position: int = -1


@dataclass(frozen=True, slots=True)
class AuditResult:
    """Hits plus what was searched (counts only)."""

    hits: tuple[Hit, ...]
    values: int
    terms: int
    members: int
    accepted: int = 0

    @property
    def clean(self) -> bool:
        """No hit."""
        return not self.hits


def path_values(relpaths: Iterable[str]) -> set[PhiValue]:
    """Source file and folder names as PHI values (long components only; see module doc)."""
    found: set[PhiValue] = set()
    for relpath in relpaths:
        for part in re.split(r"[/\\:]", relpath):
            stem = part.rsplit(".", 1)[0] if "." in part else part
            if len(stem) >= _MIN_PATH_COMPONENT and not stem.isdigit() and not is_generic(stem):
                found.add(PhiValue("path", "file name", stem))
    return found


def released_keys(archive: zipfile.ZipFile) -> frozenset[str]:
    """Free-text keys the release allowed on purpose (MANIFEST.json config), else none."""
    try:
        manifest = json.loads(archive.read(MANIFEST))
        keys = manifest["config"]["sidecar"]["allow_free_text"]
    except (KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return frozenset()
    return frozenset(k for k in keys if isinstance(k, str))


class _Collector:
    def __init__(self, matcher: Matcher, show_values: bool):
        self.matcher = matcher
        self.show = show_values
        self.hits: list[Hit] = []

        self.names: dict[str, str] = {}

    def add(
        self, member: str, stream: str, kind: str, tag: str, value: str = "", term: str = "", position: int = -1
    ) -> None:
        shown = (value, term, position) if self.show else ("", "", -1)
        self.hits.append(Hit(self.names.get(member, member), stream, kind, tag, *shown))

    def structure(self, member: str, stream: str, problem: str) -> None:
        self.add(member, stream, "structure", problem)

    def search(self, member: str, stream: str, data: bytes, *, offset: int = 0) -> None:
        if not self.show:
            for value in self.matcher.find(data):
                self.add(member, stream, value.kind, value.tag, value.value)
            return
        for position, term, value in self.matcher.find_spans(data):
            self.add(member, stream, value.kind, value.tag, value.value, term, offset + position)


def _gzip_fields(raw: bytes) -> tuple[list[str], dict[str, bytes], int, int]:
    """(problems, optional fields present, MTIME, header length) of a gzip member's header."""
    if len(raw) < 10 or raw[:2] != b"\x1f\x8b":
        return ["not a gzip stream"], {}, 0, -1
    flags = raw[3]
    mtime = struct.unpack("<I", raw[4:8])[0]
    problems, fields = [], {}
    position = 10
    if mtime != 0:
        problems.append("gzip MTIME is not 0")
    if flags & 0x04:
        size = struct.unpack("<H", raw[position : position + 2])[0] if len(raw) >= position + 2 else 0
        fields["gzip FEXTRA"] = raw[position + 2 : position + 2 + size]
        position += 2 + size
        problems.append("gzip FEXTRA present")
    for flag, name in ((0x08, "gzip FNAME"), (0x10, "gzip FCOMMENT")):
        if flags & flag:
            end = raw.find(b"\x00", position)
            end = len(raw) if end < 0 else end
            fields[name] = raw[position:end]
            position = end + 1
            problems.append(f"{name} present")
    return problems, fields, mtime, position


def _read_nifti_head(handle, first: bytes, gzipped: bool) -> tuple[bytes, list[str]]:
    """Decompressed NIfTI header + extensions up to vox_offset (bounded), and problems."""
    problems: list[str] = []
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
    head = decompressor.decompress(first, 1 << 24) if decompressor else first

    def more(limit: int) -> bytes:
        nonlocal head
        while len(head) < limit:
            chunk = handle.read(64 * 1024)
            if not chunk:
                break
            head += decompressor.decompress(chunk, 1 << 24) if decompressor else chunk
        return head

    more(544)
    size = struct.unpack("<i", head[:4])[0] if len(head) >= 4 else 0
    if size == 348 and len(head) >= 352:
        vox_offset = int(struct.unpack("<f", head[108:112])[0])
        flag_at = 348
    elif size == 540 and len(head) >= 544:
        vox_offset = int(struct.unpack("<q", head[168:176])[0])
        flag_at = 540
    else:
        return head[:544], ["not a NIfTI-1/2 header"]
    vox_offset = max(min(vox_offset, 16 << 20), flag_at + 4)
    more(vox_offset)
    if head[flag_at : flag_at + 1] not in (b"\x00", b""):
        problems.append("NIfTI extension present")
    return head[:vox_offset], problems


def _audit_nifti(archive: zipfile.ZipFile, name: str, out: _Collector, dates: Matcher) -> None:
    gzipped = name.endswith(".gz")
    with archive.open(name) as handle:
        first = handle.read(64 * 1024)
        if gzipped:
            problems, fields, mtime, _ = _gzip_fields(first)
            for problem in problems:
                out.structure(name, "gzip header", problem)
            for stream, data in fields.items():
                out.search(name, stream, data)
            if mtime:
                stamp = dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y%m%d")
                for value in dates.find(stamp.encode()):
                    out.add(name, "gzip MTIME", value.kind, value.tag, value.value)
            if problems and "not a gzip stream" in problems:
                return
        try:
            head, problems = _read_nifti_head(handle, first, gzipped)
        except zlib.error:
            out.structure(name, "gzip stream", "corrupt gzip data")
            return
    for problem in problems:
        out.structure(name, "NIfTI header", problem)
    if "not a NIfTI-1/2 header" in problems:
        out.search(name, "NIfTI header", head)
        return
    layout = _NIFTI1_TEXT if struct.unpack("<i", head[:4])[0] == 348 else _NIFTI2_TEXT
    covered: set[int] = set()
    for field, start, end in layout:
        text = head[start:end].split(b"\x00", 1)[0]
        covered.update(range(start, end))
        allowed = _ALLOWED_DESCRIP if field == "descrip" else (b"",)
        if text.strip() not in allowed:
            out.structure(name, f"NIfTI {field}", f"NIfTI {field} is not the fixed value")
        out.search(name, f"NIfTI {field}", head[start:end])
    size = 352 if layout is _NIFTI1_TEXT else 544
    if len(head) > size:
        out.search(name, "NIfTI extension", head[size:])
    out.search(name, "NIfTI header", bytes(b for i, b in enumerate(head[:size]) if i not in covered))


def _audit_stream(archive: zipfile.ZipFile, name: str, out: _Collector, overlap: int) -> None:
    """Search a member's (decompressed) content in chunks that overlap by the longest term."""
    gzipped = name.endswith(".gz")
    tail = b""
    with archive.open(name) as handle:
        decompressor = None
        if gzipped:
            first = handle.read(64 * 1024)
            problems, fields, _, _ = _gzip_fields(first)
            for problem in problems:
                out.structure(name, "gzip header", problem)
            for stream, data in fields.items():
                out.search(name, stream, data)
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = [first]
        else:
            pending = []
        read = 0  # bytes of content before ``tail + chunk``
        while True:
            chunk = pending.pop() if pending else handle.read(_CHUNK)
            if not chunk:
                break
            if decompressor is not None:
                try:
                    chunk = decompressor.decompress(chunk)
                except zlib.error:
                    out.structure(name, "gzip stream", "corrupt gzip data")
                    return
            out.search(name, "content", _mask_generated(name, tail + chunk, start=not tail), offset=read)
            read += len(tail) + len(chunk)
            tail = (tail + chunk)[-overlap:]
            read -= len(tail)


#: Numbers dcmpack computes for MANIFEST.json and SHA256SUMS (sizes, digests, the key
#: fingerprint): no source value is in them, but a 6+-digit MRN or time can equal a size or sit
#: inside a digest by chance, which made some releases impossible to publish. Masked (same
#: length, so positions stay) before the search; everything else in those members is searched.
_GENERATED = {
    MANIFEST: (
        re.compile(rb'"(?:size|sha256|config_sha256|key_fingerprint)": "?([0-9a-f]+)"?'),
        # the config's fixed choices (a surname "Shift" is not in ``"dates": "shift"``)
        re.compile(rb'"(?:dates|sessions|engine)": "(shift|remove|auto|always|never|dicom2nifti|dcm2niix)"'),
    ),
    SUMS: (re.compile(rb"^([0-9a-f]{64})  ", re.M),),
}


_JSON_KEY = re.compile(rb'"([A-Za-z0-9_]+)":')
_OWN_SENTENCES = tuple(
    sorted(
        {*layout.constant_texts(), *provenance.constant_texts(), *deface_stage.constant_texts()},
        key=lambda f: (-len(f), f),  # longest first
    )
)


#: The JSON keys and TSV columns dcmpack writes: sidecar keys (the allowlist), the dataset-level
#: files', MANIFEST.json's (with the config it records and the exclusion reasons it counts).
#: Only these are blanked; any other key or column (a planted one, a bug) is searched.
_OWN_KEYS = frozenset(
    k.encode()
    for k in (
        set(ALLOWLIST)
        | layout.dict_keys(ReleaseConfig().digest_view())
        | layout.constant_keys()
        | {reason.name.lower() for reason in ExclusionReason}
        | provenance.KEYS
        | {
            "tool",
            "name",
            "version",
            "engine",
            "dataset",
            "config",
            "config_sha256",
            "key_fingerprint",
            "files",
            "path",
            "size",
            "sha256",
            "runs",
            "datatype",
            "suffix",
            "shape",
            "voxel_size",
            "excluded",
            "sidecar_dropped",
            "unknown",
            "invalid",
            "phi",
            "denied",
            "audit",
            "accepted",
            "deface",
            "method",
            "template",
            "enabled",
            "reason",
            "suffixes",
            "fallback",
            "provenance",
            "labels_neutralised",
        }
    )
)
_OWN_COLUMNS = frozenset({b"participant_id", b"age", b"sex", b"session_id", b"acq_time", b"filename"})


def _blank(match: re.Match) -> bytes:
    return match.group(0).replace(match.group(1), b" " * len(match.group(1)))


def _blank_own_key(match: re.Match) -> bytes:
    return _blank(match) if match.group(1) in _OWN_KEYS else match.group(0)


def _mask_generated(name: str, data: bytes, *, start: bool) -> bytes:
    """``data`` with dcmpack's own text blanked (same length): the generated numbers of
    MANIFEST.json / SHA256SUMS (see above), JSON keys, a TSV's header row, and the fixed
    sentences of the README and CHANGES. What a value filled in is left to be searched.
    ``start``: ``data`` begins the member (only there is a TSV's first line its header)."""
    base = name.rsplit("/", 1)[-1]
    for pattern in _GENERATED.get(base, ()) if "/" not in name else ():
        data = pattern.sub(_blank, data)
    if base.endswith(".json"):
        data = _JSON_KEY.sub(_blank_own_key, data)
        for sentence in _OWN_SENTENCES:
            data = data.replace(sentence, b" " * len(sentence))
    elif base.endswith(".tsv") and start and b"\n" in data:
        head, rest = data.split(b"\n", 1)
        cells = [b" " * len(cell) if cell in _OWN_COLUMNS else cell for cell in head.split(b"\t")]
        data = b"\t".join(cells) + b"\n" + rest
    elif base in ("README.md", "CHANGES"):
        for sentence in _OWN_SENTENCES:
            data = data.replace(sentence, b" " * len(sentence))
    return data


#: Words of member names dcmpack writes itself (file and folder names, datatypes, suffixes,
#: extensions): blanked before a member name is searched, so a label's value is searched on its
#: own (a surname "Nat" is not in ``anat/``, "Old" not in ``_bold``). Entity keys are blanked
#: with their dash; the values after them are what is searched.
_OWN_NAME_WORDS = frozenset(
    word.lower()
    for word in (
        "dataset",
        "description",
        "participants",
        "sessions",
        "scans",
        "README",
        "CHANGES",
        MANIFEST.split(".")[0],
        SUMS,
        *spec.DATATYPES,
        *(suffix for suffixes in spec.SUFFIXES.values() for suffix in suffixes),
    )
)
_OWN_EXTENSIONS = frozenset({"json", "tsv", "nii", "gz", "bval", "bvec", "md"})
_ENTITY_KEYS = frozenset(("sub", *spec.ENTITY_KEYS))
#: Inside the keyed-hash subject label (8 chance letters and digits) a name part counts from
#: this length (or as the whole label): shorter ones occur in random labels by chance.
_SUBJECT_MIN_INSIDE = 5


def member_name_view(name: str) -> tuple[str, list[tuple[int, int]]]:
    """``name`` with dcmpack's own words blanked (same length), and the spans of its subject
    labels (blanked too: they are searched on their own, see ``_SUBJECT_MIN_INSIDE``)."""
    chars = list(name)
    subjects: list[tuple[int, int]] = []

    def blank(start: int, end: int) -> None:
        chars[start:end] = " " * (end - start)

    for component in re.finditer(r"[^/]+", name):
        stem, dot, extension = component.group(0).partition(".")
        start = component.start()
        if dot and all(part.lower() in _OWN_EXTENSIONS for part in extension.split(".")):
            blank(start + len(stem), component.end())
        for piece in re.finditer(r"[^_]+", stem):
            key, dash, _ = piece.group(0).partition("-")
            at = start + piece.start()
            if dash and key in _ENTITY_KEYS:
                blank(at, at + len(key) + 1)
                if key == "sub":
                    subjects.append((at + len(key) + 1, start + piece.end()))
                    blank(*subjects[-1])
            elif not dash and piece.group(0).lower() in _OWN_NAME_WORDS:
                blank(at, start + piece.end())
    return "".join(chars), subjects


def member_name_hits(matcher: Matcher, name: str) -> tuple[list[tuple[int, int, PhiValue]], str]:
    """(hits, name with each hit masked) of one member name: its labels searched with every
    member-name term (``inside`` ones too), dcmpack's own words left out."""
    masked, subjects = member_name_view(name)
    found = list(matcher.spans(masked, member_name=True))
    shown = matcher.redact(name, member_name=True, search=masked) if found else name
    for start, end in subjects:
        label = name[start:end]
        hits = matcher.spans(label, member_name=True, min_inside=_SUBJECT_MIN_INSIDE)
        if hits:
            # offsets into the name, not the label: the matched text is what [audit] accept keys
            found += [(start + first, start + last, value) for first, last, value in hits]
            shown = shown.replace(label, f"[{hits[0][2].kind}]")
    return found, shown


def _zip64_only(extra: bytes) -> bool:
    """True when an entry's extra field is one ZIP64 extended-information record and nothing else:
    zip must write it for members past 4 GiB (sizes and offsets, no text); anything else is a finding."""
    if len(extra) < 4:
        return False
    header_id, size = struct.unpack("<HH", extra[:4])
    return header_id == 0x0001 and size in (8, 16, 24, 28) and len(extra) == 4 + size


def audit_bundle(
    bundle: Path,
    values: set[PhiValue],
    *,
    show_values: bool = False,
    released: Iterable[str] | None = None,
    matcher: Matcher | None = None,
    accept: Iterable[str] = (),
    key: bytes = b"",
    verdicts: Verdicts | None = None,
) -> AuditResult:
    """Search every byte stream of ``bundle`` for ``values``.

    Parameters
    ----------
    bundle : Path
        The zip (staged or published).
    values : set of PhiValue
        From ``phi.collect`` over the source headers plus ``path_values`` of source paths.
    show_values : bool
        Put the matched value into each Hit (for the user's own terminal; never logged).
    released : iterable of str, optional
        Free-text keywords released on purpose; default: read from the bundle's MANIFEST.json.
    matcher : Matcher, optional
        ``Matcher(values, accept=..., key=...)`` when the caller has it (used when nothing was
        released on purpose).
    accept, key : optional
        ``[audit] accept`` (HMACs of terms reviewed as harmless) and the release key: those terms
        are not searched (``phi.accept``).
    verdicts : release.reuse.Verdicts, optional
        The build cache's verdicts (``build`` only, where every member is then read back against
        the CRC-32 taken with its SHA256SUMS digest): a member whose listed digest was found
        clean by the same search is not searched again (its name and zip metadata still are); after an audit without any
        hit, every member's verdict is stored.

    Returns
    -------
    AuditResult
        Hits name the member, the stream and the PHI class/tag, never the value (unless asked).
    """
    with zipfile.ZipFile(bundle) as archive:
        allowed = frozenset(released) if released is not None else released_keys(archive)
        kept = released_values(values, allowed)
        if matcher is None or len(kept) != len(values):
            given, given_key = matcher.exceptions if matcher is not None else (frozenset(), b"")
            matcher = Matcher(kept, accept=frozenset(accept) or given, key=key or given_key)
        dates = Matcher(v for v in kept if v.kind in ("date", "datetime"))
        out = _Collector(matcher, show_values)
        overlap = max(64, 4 * matcher.longest)
        if archive.comment:
            out.structure("(zip)", "zip comment", "zip comment not empty")
            out.search("(zip)", "zip comment", archive.comment)
        infos = archive.infolist()
        known: frozenset[str] = frozenset()
        if verdicts is not None and SUMS in archive.NameToInfo:
            known = verdicts.clean_before(archive.read(SUMS), kept, matcher)
        for info in infos:
            name = info.filename
            found, shown = member_name_hits(matcher, name)
            if not show_values:  # a leaking member is named with its leaking part masked
                out.names[name] = shown
            for start, end, value in found:
                out.add(name, "member name", value.kind, value.tag, value.value, name[start:end].lower(), start)
            if not _SAFE_NAME.fullmatch(name) or "//" in name or name.startswith("/"):
                out.structure(name, "member name", "member name outside the BIDS character set")
            if tuple(info.date_time) != FIXED_DATE:
                out.structure(name, "zip timestamp", "entry timestamp is not the fixed date")
                stamp = "{:04d}{:02d}{:02d}".format(*info.date_time[:3])
                for value in dates.find(stamp.encode()):
                    out.add(name, "zip timestamp", value.kind, value.tag, value.value)
            if info.extra and not _zip64_only(info.extra):
                out.structure(name, "zip extra field", "extra field present")
                out.search(name, "zip extra field", info.extra)
            if info.comment:
                out.structure(name, "zip entry comment", "entry comment present")
                out.search(name, "zip entry comment", info.comment)
            if name in known:
                continue  # this content, searched for these terms before: clean (see ``release.reuse``)
            if name.endswith((".nii.gz", ".nii")):
                _audit_nifti(archive, name, out, dates)
            else:
                _audit_stream(archive, name, out, overlap)
    if verdicts is not None and not out.hits:
        verdicts.remember()
    unique = tuple(dict.fromkeys(out.hits))
    return AuditResult(unique, len(kept), matcher.count, len(infos), matcher.accepted)
