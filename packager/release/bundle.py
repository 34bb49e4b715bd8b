"""Release, bundle: staged dataset files -> one deterministic zip with MANIFEST.json + SHA256SUMS.

Entries are sorted, carry a fixed timestamp (1980-01-01 00:00:00, whatever SOURCE_DATE_EPOCH
says: set to a scan's time it would put a source date into every entry), fixed permissions
(0644), Unix as creating system, no extra fields and no comment. ``.nii.gz`` members are stored
(already gzip with mtime 0), everything else deflated at level 9. Members stream from staging files in 1 MiB chunks, so
memory does not grow with bundle size. Same inputs => byte-identical zip.

A stored member whose CRC-32 is known (computed as it was staged, or recorded by the build
cache) is copied by the kernel (``os.copy_file_range``) behind the local header zipfile would
have written for it, instead of passing through Python to be checksummed again: the same bytes
(tested against the streamed path), about a third of the time for the images.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from packager.errors import VerifyError

T = TypeVar("T")

MANIFEST = "MANIFEST.json"
SUMS = "SHA256SUMS"
CHUNK = 1 << 20
#: Every entry's timestamp. Not SOURCE_DATE_EPOCH: a build environment that sets it to the scan's
#: time (a common way to make "reproducible" archives) would publish a source date.
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644
#: A zip local file header (APPNOTE 4.3.7): signature, versions, flags, method, time, date, CRC-32,
#: sizes, then the lengths of the name and of the extra field that come before the member's data.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True, slots=True)
class Staged:
    """One dataset file on the staging disk, with its digest computed when it was written."""

    relpath: str
    path: Path
    size: int
    sha256: str
    #: CRC-32 of the content (what a zip entry records); None when not known (then the zip computes it).
    crc32: int | None = None


def stage_bytes(folder: Path, relpath: str, data: bytes) -> Staged:
    """Write one dataset file into staging and record size and digests."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)  # a staged file may be the build cache's own copy (a hard link): never write into it
    with open(path, "wb") as handle:
        handle.write(data)
    return Staged(relpath, path, len(data), hashlib.sha256(data).hexdigest(), zlib.crc32(data))


class Sink(Protocol):
    """What ``stage_stream`` hands its writer: a write-only binary file."""

    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...


class _Digesting:
    """A write-only file that digests and counts what passes through it to ``handle``."""

    def __init__(self, handle):
        self._handle = handle
        self.digest = hashlib.sha256()
        self.crc32 = 0
        self.size = 0

    def write(self, data) -> int:
        self._handle.write(data)
        self.digest.update(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._handle.flush()


def stage_stream(folder: Path, relpath: str, write: Callable[[Sink], T]) -> tuple[Staged, T]:
    """Stage a file that ``write(sink)`` streams into ``sink``; returns it and what ``write`` returned."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)  # as in ``stage_bytes``
    with open(path, "wb") as handle:
        sink = _Digesting(handle)
        result = write(sink)
    return Staged(relpath, path, sink.size, sink.digest.hexdigest(), sink.crc32), result


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
    The zip is left without write permission for group and others, whatever the umask (a
    release is not edited in place; the build cache trusts only such a file, ``release.reuse``).
    """
    date = FIXED_DATE
    # each member's content: a staged file's path, or the bytes themselves; and its CRC-32 if known
    members: dict[str, tuple[Path | bytes, int, int | None]] = {}
    digests: dict[str, str] = {MANIFEST: hashlib.sha256(manifest).hexdigest()}
    members[MANIFEST] = (manifest, len(manifest), None)
    for item in staged:
        name = f"{top}/{item.relpath}"
        members[name] = (item.path, item.size, item.crc32)
        digests[name] = item.sha256
    sums = sums_text(digests)
    members[SUMS] = (sums, len(sums), None)
    with zipfile.ZipFile(target, "w", allowZip64=True) as archive:
        archive.comment = b""
        for name in sorted(members):
            content, size, crc = members[name]
            info = _info(name, size, date)
            if isinstance(content, Path) and info.compress_type != zipfile.ZIP_STORED:
                content = content.read_bytes()  # small text members: compress in memory
            if isinstance(content, bytes):
                archive.writestr(info, content, compress_type=info.compress_type, compresslevel=9)
                continue
            if crc is not None and _copy_stored(archive, info, content, crc):
                if progress:
                    progress(size)
                continue
            with open(content, "rb") as source, archive.open(info, "w", force_zip64=_force_zip64(size)) as sink:
                while chunk := source.read(CHUNK):
                    sink.write(chunk)
                    if progress:
                        progress(len(chunk))
            if crc is not None and info.CRC != crc:  # its SHA256SUMS digest was taken from other bytes
                raise VerifyError(
                    f"verify: {name}: the staged file changed after its digest was taken; nothing published"
                )
    os.chmod(target, stat.S_IMODE(os.stat(target).st_mode) & ~0o022)
    return (file_sha256(target) if digest else ""), target.stat().st_size


def _force_zip64(size: int) -> bool:
    return size > (1 << 31)


def _copy_stored(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, crc: int) -> bool:
    """Append a stored member whose CRC-32 is known: the local header ``archive.open(info, "w")``
    ends up with (it writes one, streams the data, then rewrites the header with CRC and sizes),
    then the file's bytes copied by the kernel. False (nothing written) when this zipfile lacks
    the attributes used here (they are internal: 3.11 to 3.13 have them), or the file changed
    size since it was staged; the caller then streams it.

    Written by hand because zipfile has no public way to add a member whose CRC is known
    without reading it again; ``tests/test_bundle.py`` checks the bytes equal the streamed path.
    """
    needed = ("fp", "start_dir", "filelist", "NameToInfo", "_writecheck", "_seekable")
    if not all(hasattr(archive, name) for name in needed) or not archive._seekable:  # type: ignore[attr-defined]
        return False
    with open(path, "rb") as source:
        if os.fstat(source.fileno()).st_size != info.file_size:
            return False
        size = info.file_size
        zip64 = _force_zip64(size) or size * 1.05 > zipfile.ZIP64_LIMIT  # as ZipFile._open_to_write decides
        info.flag_bits = 0
        info.CRC, info.compress_size = crc, size
        out = archive.fp
        assert out is not None
        out.seek(archive.start_dir)
        info.header_offset = out.tell()
        archive._writecheck(info)  # type: ignore[attr-defined]
        archive._didModify = True  # type: ignore[attr-defined]
        out.write(info.FileHeader(zip64))
        out.flush()
        _copy_bytes(source, out, size)
        archive.start_dir = out.tell()
    archive.filelist.append(info)
    archive.NameToInfo[info.filename] = info
    return True


def _copy_bytes(source, out, size: int) -> None:
    """``size`` bytes from ``source`` to ``out`` at their current positions, by the kernel when it
    can (``copy_file_range``), else through a buffer; ``out`` is left after them."""
    start = out.tell()
    done = 0
    try:
        while done < size:
            copied = os.copy_file_range(source.fileno(), out.fileno(), size - done)
            if copied == 0:
                break
            done += copied
    except OSError:  # not supported between these files (another filesystem type): copy by hand
        pass
    if done < size:
        source.seek(done)
        out.seek(start + done)
        shutil.copyfileobj(source, out, CHUNK)
    out.seek(start + size)


@dataclass(frozen=True, slots=True)
class ReadBack:
    """A written bundle read back once: its SHA-256 and size, and the members whose bytes do not
    match the CRC-32 the zip records for them (none, for a sound write)."""

    sha256: str
    size: int
    damaged: tuple[str, ...]


def read_back(path: Path) -> ReadBack:
    """Read a bundle ``write_bundle`` wrote from start to end once: the file's SHA-256 (for the
    result and the report) and, in the same pass, each stored member's CRC-32 against the one its
    entry records; deflated members (small text) are inflated by zipfile, which checks theirs.

    The build checks its own bundle with this instead of hashing every member again: the
    member digests in SHA256SUMS were computed from the same bytes as the CRC-32s when they were
    staged (or recorded with them by the build cache), so a byte changed on the way into the
    zip fails here; ``verify`` on its own (a recipient's check) recomputes every SHA-256.
    Written by hand because zipfile checks a member's CRC-32 only by reading it on its own,
    which would read the images a second time after the file's digest.
    """
    damaged: list[str] = []
    ranges: list[tuple[int, int, int, str]] = []  # stored members: data start, end, CRC-32, name
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                try:
                    archive.read(info)  # zipfile checks the CRC-32 as it inflates
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError):  # incl. offsets past the end
                    damaged.append(info.filename)
                continue
            handle.seek(max(info.header_offset, 0))
            header = handle.read(_LOCAL_HEADER.size)
            fields = _LOCAL_HEADER.unpack(header) if len(header) == _LOCAL_HEADER.size else None
            if fields is None or fields[0] != _LOCAL_MAGIC:
                damaged.append(info.filename)
                continue
            start = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]  # name, extra lengths
            ranges.append((start, start + info.compress_size, info.CRC, info.filename))
    ranges.sort()
    digest = hashlib.sha256()
    crcs = [0] * len(ranges)
    first = 0  # ranges before this one end before the current chunk
    position = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            view = memoryview(chunk)
            digest.update(view)
            end = position + len(chunk)
            while first < len(ranges) and ranges[first][1] <= position:
                first += 1
            for index in range(first, len(ranges)):
                start, stop = ranges[index][0], ranges[index][1]
                if start >= end:
                    break
                crcs[index] = zlib.crc32(view[max(start, position) - position : min(stop, end) - position], crcs[index])
            position = end
    for (_, stop, crc, name), found in zip(ranges, crcs, strict=True):
        if found != crc or stop > position:  # changed bytes, or cut short
            damaged.append(name)
    return ReadBack(digest.hexdigest(), position, tuple(sorted(damaged)))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks (hashlib releases the GIL: other threads run meanwhile)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
