"""Sources, local: a folder, a zip or tar archive, or one file -> local files (SourceSet).

Folders are walked recursively, following a symlinked folder once (a loop or a dangling link is
counted and skipped). Archives, given as SOURCE or found inside a folder (zip, tar, tar.gz,
nested too), are checked member by member *before* anything is extracted, then extracted under
neutral names into the private staging dir (``packager.sources.archives``). A single plain file
is a source of one file.
Refuses (``InputError``): missing paths, unreadable folders, unreadable or unsafe archives.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from packager.errors import InputError
from packager.model import SourceFile, SourceSet
from packager.sources.archives import archive_kind, extract_archive

log = logging.getLogger(__name__)


def open_local(spec: str, staging: Path) -> SourceSet:
    """Turn a local SOURCE argument (folder, zip or single file) into local files.

    Parameters
    ----------
    spec : str
        A folder, a zip or tar archive or a single file, as the user gave it.
    staging : Path
        Private (0700) folder for extracted archive members; removed by the caller.

    Returns
    -------
    SourceSet
        The files sorted by relpath (folders; an archive inside one gives its members in
        archive order, at its place), in archive order (archives).

    Raises
    ------
    InputError
        Missing path, unreadable folder, unsafe or corrupt archive.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(f"input: {spec}: no such file or folder")
    if path.is_file():
        if archive_kind(path) is not None:
            files = extract_archive(path, path.name, staging)
            return SourceSet(root=staging, files=tuple(files), label=path.name)
        return SourceSet(root=path.parent, files=(SourceFile(path, path.name),), label=path.name)
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"input: {spec}: folder not readable (permission denied)")
    files, loops = _walk(path)
    if loops:
        log.warning("input: skipped %d symlink loop(s) or dangling link(s)", loops)
    return SourceSet(root=path, files=tuple(_open_archives(files, staging)), label=str(spec))


def _open_archives(files: list[SourceFile], staging: Path) -> list[SourceFile]:
    """Archives found in a folder replaced by their members (CD/PACS exports ship zips too)."""
    opened: list[SourceFile] = []
    found = 0
    for source in files:
        if archive_kind(source.path) is None:
            opened.append(source)
        else:
            found += 1
            opened.extend(extract_archive(source.path, source.relpath, staging))
    if found:
        log.info("input: %d archive(s) inside the source opened", found)
    return opened


def _walk(root: Path) -> tuple[list[SourceFile], int]:
    """All regular files under ``root``; symlinked dirs followed once (loops counted)."""
    files: list[SourceFile] = []
    seen: set[tuple[int, int]] = set()
    loops = 0
    stack = [root]
    # relative paths by string slicing: every entry's path starts with its folder's, which starts
    # with the root's (pathlib's relative_to is a third of a walk of a few thousand files)
    prefix = os.path.join(str(root), "")
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
                    relpath = entry.path[len(prefix) :] if entry.path.startswith(prefix) else _rel(path, root)
                    files.append(SourceFile(path=path, relpath=relpath.replace(os.sep, "/")))
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
