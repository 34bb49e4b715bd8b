"""Release, bundle: staged dataset files -> one deterministic zip with MANIFEST.json + SHA256SUMS.

Entries are sorted, carry a fixed timestamp (1980-01-01 00:00:00, whatever SOURCE_DATE_EPOCH
says: set to a scan's time it would put a source date into every entry), fixed permissions
(0644), Unix as creating system, no extra fields and no comment. ``.nii.gz`` members are stored
(already gzip with mtime 0), everything else deflated at level 9. Members stream from staging files in 1 MiB chunks, so
memory does not grow with bundle size. Same inputs => byte-identical zip.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")

MANIFEST = "MANIFEST.json"
SUMS = "SHA256SUMS"
CHUNK = 1 << 20
#: Every entry's timestamp. Not SOURCE_DATE_EPOCH: a build environment that sets it to the scan's
#: time (a common way to make "reproducible" archives) would publish a source date.
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644


@dataclass(frozen=True, slots=True)
class Staged:
    """One dataset file on the staging disk, with its digest computed when it was written."""

    relpath: str
    path: Path
    size: int
    sha256: str


def stage_bytes(folder: Path, relpath: str, data: bytes) -> Staged:
    """Write one dataset file into staging and record size and digest."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "wb") as handle:
        handle.write(data)
    return Staged(relpath, path, len(data), hashlib.sha256(data).hexdigest())


class _Digesting:
    """A write-only file that digests and counts what passes through it to ``handle``."""

    def __init__(self, handle):
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._handle.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._handle.flush()


def stage_stream(folder: Path, relpath: str, write: Callable[[BinaryIO], T]) -> tuple[Staged, T]:
    """Stage a file that ``write(sink)`` streams into ``sink``; returns it and what ``write`` returned."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "wb") as handle:
        sink = _Digesting(handle)
        result = write(sink)
    return Staged(relpath, path, sink.size, sink.digest.hexdigest()), result


def _info(name: str, size: int, date) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date)
    info.create_system = 3
    info.external_attr = FILE_MODE << 16
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".gz") else zipfile.ZIP_DEFLATED
    info.file_size = size
    info.extra = b""
    info.comment = b""
    return info


def sums_text(entries: dict[str, str]) -> bytes:
    """``sha256sum -c`` compatible text for ``{member: sha256}``."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items())).encode()


def write_bundle(
    target: Path, top: str, staged: list[Staged], manifest: bytes, progress=None, digest: bool = True
) -> tuple[str, int]:
    """Write the zip to ``target`` (a staging path); returns (sha256, size).

    ``manifest`` is the MANIFEST.json content; SHA256SUMS covers it and every dataset member.
    With ``digest=False`` the sha256 is "" (compute it with ``file_sha256``, e.g. in parallel).
    """
    date = FIXED_DATE
    members: dict[str, tuple[Path | None, bytes | None, int]] = {}
    digests: dict[str, str] = {MANIFEST: hashlib.sha256(manifest).hexdigest()}
    members[MANIFEST] = (None, manifest, len(manifest))
    for item in staged:
        name = f"{top}/{item.relpath}"
        members[name] = (item.path, None, item.size)
        digests[name] = item.sha256
    sums = sums_text(digests)
    members[SUMS] = (None, sums, len(sums))
    with zipfile.ZipFile(target, "w", allowZip64=True) as archive:
        archive.comment = b""
        for name in sorted(members):
            path, data, size = members[name]
            info = _info(name, size, date)
            if data is None and info.compress_type != zipfile.ZIP_STORED:
                data = path.read_bytes()  # small text members: compress in memory
            if data is not None:
                archive.writestr(info, data, compress_type=info.compress_type, compresslevel=9)
                continue
            with open(path, "rb") as source, archive.open(info, "w", force_zip64=size > (1 << 31)) as sink:
                while chunk := source.read(CHUNK):
                    sink.write(chunk)
                    if progress:
                        progress(len(chunk))
    return (file_sha256(target) if digest else ""), target.stat().st_size


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks (hashlib releases the GIL: other threads run meanwhile)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
