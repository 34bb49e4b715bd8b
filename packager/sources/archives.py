"""Sources, archives: a zip or tar file (plain, gzip, bzip2 or xz) -> its members as local files.

Used for an archive given as SOURCE and for archives found inside a source folder (exports often
hold a zip or a ``.tar.gz`` beside the DICOM folders), nested ones included, up to
``MAX_DEPTH`` archives deep. Every member is checked *before* anything is extracted: an absolute
or ``..`` name, a drive letter, a symbolic or hard link, a device or a FIFO refuses the whole
archive. Members are extracted under neutral names into the private staging dir (member names
may carry PHI) and keep ``ARCHIVE:MEMBER`` as their relpath.
Refuses (``InputError``): unreadable, unsafe or too deeply nested archives.
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from packager.errors import InputError
from packager.model import SourceFile

#: Archives inside archives are opened this many levels deep; deeper is refused (a loop of
#: archives, or a decompression bomb built from nesting).
MAX_DEPTH = 4
_CHUNK = 1 << 20
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def archive_kind(path: Path) -> str | None:
    """ "zip", "tar" or None, from the file's first bytes (never from its name).

    A Part 10 DICOM file (DICM at byte 128) is never an archive, whatever its preamble holds
    (the preamble may legally start with a zip or TIFF signature). A compressed file is a tar
    only when its inflated start is one: gzip-compressed DICOM stays DICOM.
    """
    try:
        head = _head(path, 512)
    except OSError:
        return None
    if head[128:132] == b"DICM":
        return None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") and zipfile.is_zipfile(path):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith(_COMPRESSED):
        try:
            with tarfile.open(path, "r:*") as archive:
                return "tar" if archive.next() is not None else None
        except (tarfile.TarError, OSError, EOFError):
            return None
    return None


def _head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of a file (fewer if it is shorter). Unbuffered by hand: every
    file of a source is looked at before the header pass starts, and Python's ``open`` builds a
    buffered reader around each (twice the time: 0.15 s instead of 0.07 s on 19,600 files)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        head = b""
        while len(head) < size:
            more = os.read(descriptor, size - len(head))
            if not more:
                break
            head += more
        return head
    finally:
        os.close(descriptor)


def _unsafe_name(name: str) -> bool:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    return ".." in PurePosixPath(name.replace("\\", "/")).parts


def _private_folder(staging: Path) -> Path:
    """A new 0700 folder for one archive's members (made only once every member passed)."""
    return Path(tempfile.mkdtemp(prefix="arc-", dir=staging))


def _copy(source: IO[bytes], dest: Path) -> None:
    with open(dest, "wb") as out:
        while chunk := source.read(_CHUNK):
            out.write(chunk)


def _zip_members(path: Path, label: str, staging: Path) -> list[SourceFile]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"input: {label}: not a readable zip archive ({type(exc).__name__})") from None
    with archive:
        members = archive.infolist()
        for number, info in enumerate(members):
            if _unsafe_name(info.filename):
                raise InputError(
                    f"input: {label}: member {number + 1} has an unsafe path "
                    "(absolute or '..'): refusing the whole archive"
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InputError(f"input: {label}: member {number + 1} is a symbolic link: refusing the whole archive")
        target = _private_folder(staging)
        files = []
        for number, info in enumerate(members):
            if info.is_dir():
                continue
            dest = target / f"m{number:06d}"
            try:
                with archive.open(info) as src:
                    _copy(src, dest)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise InputError(f"input: {label}: member {number + 1} unreadable ({type(exc).__name__})") from None
            files.append(SourceFile(dest, f"{label}:{info.filename}"))
    return files


def _tar_members(path: Path, label: str, staging: Path) -> list[SourceFile]:
    try:
        archive = tarfile.open(path, "r:*")
        members = archive.getmembers()  # reads the whole index: every member is checked first
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"input: {label}: not a readable tar archive ({type(exc).__name__})") from None
    with archive:
        for number, info in enumerate(members):
            if _unsafe_name(info.name):
                raise InputError(
                    f"input: {label}: member {number + 1} has an unsafe path "
                    "(absolute or '..'): refusing the whole archive"
                )
            if info.issym() or info.islnk():
                raise InputError(
                    f"input: {label}: member {number + 1} is a symbolic or hard link: refusing the whole archive"
                )
            if not (info.isfile() or info.isdir()):
                raise InputError(f"input: {label}: member {number + 1} is a device or FIFO: refusing the whole archive")
        target = _private_folder(staging)
        files = []
        for number, info in enumerate(members):
            if not info.isfile():
                continue
            dest = target / f"m{number:06d}"
            try:
                handle = archive.extractfile(info)
                if handle is None:
                    continue
                with handle:
                    _copy(handle, dest)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise InputError(f"input: {label}: member {number + 1} unreadable ({type(exc).__name__})") from None
            files.append(SourceFile(dest, f"{label}:{info.name}"))
    return files


def extract_archive(path: Path, label: str, staging: Path, *, depth: int = 0) -> list[SourceFile]:
    """An archive's members as local files, archives among them opened in turn.

    Parameters
    ----------
    path : Path
        A zip or tar file (``archive_kind`` is not None).
    label : str
        How messages and relpaths name it (its path relative to the SOURCE).
    staging : Path
        Private (0700) folder; members go to a new private folder inside it.
    depth : int
        How many archives enclose this one.

    Returns
    -------
    list of SourceFile
        Members in archive order, relpath ``LABEL:MEMBER`` (nested: ``A.zip:B.tar:MEMBER``).

    Raises
    ------
    InputError
        Unreadable or unsafe archive, or archives nested deeper than ``MAX_DEPTH``.
    """
    if depth >= MAX_DEPTH:
        raise InputError(f"input: {label}: archives nested more than {MAX_DEPTH} deep: refusing it")
    kind = archive_kind(path)
    members = _zip_members(path, label, staging) if kind == "zip" else _tar_members(path, label, staging)
    files: list[SourceFile] = []
    for member in members:
        if archive_kind(member.path) is None:
            files.append(member)
        else:
            files.extend(extract_archive(member.path, member.relpath, staging, depth=depth + 1))
            member.path.unlink()  # its members are what counts; the copy is not kept
    return files
