"""audit: source PHI values x every byte stream of a bundle -> hits (never the values themselves).

Collects PHI-class values from every source header (``packager.phi``: PS3.15 Annex E
keywords, every person name, UID, date, time, private text) and from source file and folder
names, then searches, case-insensitively as ASCII/UTF-8 and UTF-16LE text:
member names, the zip comment, each entry's timestamp/extra field/comment (which must be the
fixed values), text members (JSON, TSV, bval/bvec, README, ...), and for ``.nii.gz`` members
the gzip header (MTIME must be 0, no FNAME/FCOMMENT/FEXTRA) and the NIfTI-1/2 header and
extensions (``descrip``, ``aux_file``, ``intent_name``, ``db_name``, ``data_type``...).
Voxel data is not searched as text (PHI burned into pixels is handled by exclusion).
Members stream: memory does not grow with bundle size.
"""
from __future__ import annotations

import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .bundle import zip_date
from .phi import PhiValue, is_generic, search_terms

_TEXT_EXT = (".json", ".tsv", ".bval", ".bvec", ".txt", ".md", "README", "CHANGES", "SHA256SUMS",
             ".bidsignore", ".csv", ".html")
_MIN_PATH_COMPONENT = 8


@dataclass(frozen=True, slots=True)
class Hit:
    """One finding: where (member and stream), which PHI class and tag; ``value`` only on request."""

    member: str
    stream: str
    kind: str
    tag: str
    value: str = ""


@dataclass(frozen=True, slots=True)
class AuditResult:
    """Hits plus what was searched (counts only)."""

    hits: tuple[Hit, ...]
    values: int
    terms: int
    members: int

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


class _Matcher:
    """All search terms compiled into one regex per encoding."""

    def __init__(self, values: Iterable[PhiValue]):
        self.owner: dict[str, PhiValue] = {}
        for value in sorted(values, key=lambda v: (v.kind, v.tag, v.value)):
            for term in search_terms(value):
                self.owner.setdefault(term, value)
        terms = sorted(self.owner, key=len, reverse=True)
        self.count = len(terms)
        if terms:
            self.utf8 = re.compile("|".join(re.escape(t) for t in terms).encode())
            self.utf16 = re.compile(b"|".join(re.escape(t.encode("utf-16-le")) for t in terms))
        else:
            self.utf8 = self.utf16 = None

    def find(self, data: bytes) -> list[PhiValue]:
        if self.utf8 is None:
            return []
        lowered = data.lower()
        found = []
        for pattern, encoding in ((self.utf8, "utf-8"), (self.utf16, "utf-16-le")):
            for match in pattern.finditer(lowered):
                term = match.group(0).decode(encoding, errors="replace")
                if term in self.owner:
                    found.append(self.owner[term])
        return found


def _gzip_header(raw: bytes) -> tuple[list[str], int]:
    """Problems in a gzip member header and its length (or -1 if not gzip)."""
    if len(raw) < 10 or raw[:2] != b"\x1f\x8b":
        return ["not a gzip stream"], -1
    flags = raw[3]
    mtime = struct.unpack("<I", raw[4:8])[0]
    problems = []
    if mtime != 0:
        problems.append("gzip MTIME is not 0")
    if flags & 0x04:
        problems.append("gzip FEXTRA present")
    if flags & 0x08:
        problems.append("gzip FNAME present")
    if flags & 0x10:
        problems.append("gzip FCOMMENT present")
    return problems, 10


def _nifti_header(archive: zipfile.ZipFile, name: str) -> tuple[bytes, list[str]]:
    """Raw gzip header + decompressed NIfTI header and extensions (not voxel data)."""
    problems: list[str] = []
    with archive.open(name) as handle:
        raw = handle.read(64 * 1024)
        gz_problems, _ = _gzip_header(raw)
        problems += gz_problems
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        head = decompressor.decompress(raw, 1 << 20)
        while len(head) < 540:
            more = handle.read(64 * 1024)
            if not more:
                break
            head += decompressor.decompress(more, 1 << 20)
        size = struct.unpack("<i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 352:
            vox_offset = int(struct.unpack("<f", head[108:112])[0])
        elif size == 540 and len(head) >= 544:
            vox_offset = int(struct.unpack("<q", head[168:176])[0])
        else:
            return raw[:64] + head[:540], problems + ["not a NIfTI-1/2 header"]
        vox_offset = max(min(vox_offset, 16 << 20), 352)
        while len(head) < vox_offset:
            more = handle.read(64 * 1024)
            if not more:
                break
            head += decompressor.decompress(more, 1 << 20)
        extension_flag = head[348:352] if size == 348 else head[540:544]
        if extension_flag[:1] not in (b"\x00", b""):
            problems.append("NIfTI extension present")
        return raw[:64] + head[:vox_offset], problems


def audit_bundle(bundle: Path, values: set[PhiValue], *, show_values: bool = False) -> AuditResult:
    """Search every byte stream of ``bundle`` for ``values``.

    Parameters
    ----------
    bundle : Path
        The zip (staged or published).
    values : set of PhiValue
        From ``phi.collect`` over the source headers plus ``path_values`` of source paths.
    show_values : bool
        Put the matched value into each Hit (for the user's own terminal; never logged).
    """
    matcher = _Matcher(values)
    hits: list[Hit] = []

    def add(member: str, stream: str, found: Iterable[PhiValue]) -> None:
        for value in found:
            hits.append(Hit(member, stream, value.kind, value.tag, value.value if show_values else ""))

    fixed = zip_date()
    with zipfile.ZipFile(bundle) as archive:
        if archive.comment:
            hits.append(Hit("(zip)", "zip comment", "structure", "comment not empty"))
            add("(zip)", "zip comment", matcher.find(archive.comment))
        infos = archive.infolist()
        for info in infos:
            name = info.filename
            add(name, "member name", matcher.find(name.encode()))
            if tuple(info.date_time) != tuple(fixed):
                hits.append(Hit(name, "zip timestamp", "structure", "entry timestamp is not the fixed date"))
            if info.extra:
                hits.append(Hit(name, "zip extra field", "structure", "extra field present"))
                add(name, "zip extra field", matcher.find(info.extra))
            if info.comment:
                hits.append(Hit(name, "zip entry comment", "structure", "entry comment present"))
                add(name, "zip entry comment", matcher.find(info.comment))
            if name.endswith((".nii.gz", ".gz")):
                header, problems = _nifti_header(archive, name)
                for problem in problems:
                    hits.append(Hit(name, "gzip/NIfTI header", "structure", problem))
                add(name, "gzip/NIfTI header", matcher.find(header))
            elif name.endswith(".nii"):
                with archive.open(name) as handle:
                    add(name, "NIfTI header", matcher.find(handle.read(352)))
            else:
                # Text (and anything unknown) is searched whole, streamed with an overlap.
                overlap = 512
                tail = b""
                with archive.open(name) as handle:
                    while chunk := handle.read(1 << 20):
                        add(name, "content", matcher.find(tail + chunk))
                        tail = chunk[-overlap:]
    unique = list(dict.fromkeys(hits))
    return AuditResult(tuple(unique), len(values), matcher.count, len(infos))
