"""Sources, local: a folder or a ``.zip`` -> local files (SourceSet).

Folders are walked recursively, following a symlinked folder once (a loop or a dangling link is
counted and skipped). Zip archives are checked for unsafe member names (absolute, ``..``, drive
letters, symlinks) *before* anything is extracted, then extracted under neutral names into the
private staging dir. A single plain file is a source of one file.
Refuses (``InputError``): missing paths, unreadable folders, unreadable or unsafe zips.
"""

from __future__ import annotations

import logging
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from packager.errors import InputError
from packager.model import SourceFile, SourceSet

log = logging.getLogger(__name__)


def open_local(spec: str, staging: Path) -> SourceSet:
    """Turn a local SOURCE argument (folder, zip or single file) into local files.

    Parameters
    ----------
    spec : str
        A folder, a ``.zip`` file or a single file, as the user gave it.
    staging : Path
        Private (0700) folder for extracted zip members; removed by the caller.

    Returns
    -------
    SourceSet
        The files sorted by relpath (folders), in archive order (zips).

    Raises
    ------
    InputError
        Missing path, unreadable folder, unsafe or corrupt zip.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(f"input: {spec}: no such file or folder")
    if path.is_file():
        if zipfile.is_zipfile(path):
            files = _extract_zip(path, staging)
            return SourceSet(root=staging, files=tuple(files), label=path.name)
        return SourceSet(root=path.parent, files=(SourceFile(path, path.name),), label=path.name)
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"input: {spec}: folder not readable (permission denied)")
    files, loops = _walk(path)
    if loops:
        log.warning("input: skipped %d symlink loop(s) or dangling link(s)", loops)
    return SourceSet(root=path, files=tuple(files), label=str(spec))


def _walk(root: Path) -> tuple[list[SourceFile], int]:
    """All regular files under ``root``; symlinked dirs followed once (loops counted)."""
    files: list[SourceFile] = []
    seen: set[tuple[int, int]] = set()
    loops = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
        except OSError:
            loops += 1
            continue
        ident = (info.st_dev, info.st_ino)
        if ident in seen:
            loops += 1
            continue
        seen.add(ident)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError:
            raise InputError(f"input: {_rel(folder, root)}: folder not readable (permission denied)") from None
        except OSError as exc:
            raise InputError(f"input: {_rel(folder, root)}: folder unreadable ({type(exc).__name__})") from None
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(path)
                elif entry.is_file(follow_symlinks=True):
                    files.append(SourceFile(path=path, relpath=_rel(path, root)))
                elif entry.is_symlink():
                    loops += 1  # dangling or looping link
            except OSError:
                loops += 1
    files.sort(key=lambda f: f.relpath)
    return files, loops


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return path.name


def _unsafe_member(name: str) -> bool:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return ".." in parts


def _extract_zip(path: Path, staging: Path) -> list[SourceFile]:
    """Extract a zip after checking every member name; files are named by archive path."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"input: {path.name}: not a readable zip archive ({type(exc).__name__})") from None
    with archive:
        members = archive.infolist()
        for number, info in enumerate(members):
            if _unsafe_member(info.filename):
                raise InputError(
                    f"input: {path.name}: member {number + 1} has an unsafe path "
                    "(absolute or '..'): refusing the whole archive"
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InputError(
                    f"input: {path.name}: member {number + 1} is a symbolic link: refusing the whole archive"
                )
        target = staging / f"zip-{len(list(staging.glob('zip-*')))}"
        target.mkdir(mode=0o700, parents=True)
        files = []
        for number, info in enumerate(members):
            if info.is_dir():
                continue
            # Extracted under a neutral name: archive member names may carry PHI.
            dest = target / f"m{number:06d}"
            files.append(SourceFile(dest, f"{path.name}:{info.filename}"))
            try:
                with archive.open(info) as src, open(dest, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise InputError(f"input: {path.name}: member {number + 1} unreadable ({type(exc).__name__})") from None
    return files
