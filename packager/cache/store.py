"""The content-addressed store under a cache folder: write-once entries, checked on every read.

A helper, not a stage: it knows nothing about DICOM or BIDS. An entry is one file named by its
key (a hex SHA-256 the caller computes from everything its payload depends on) under a
``kind`` folder (``tasks``, ``headers``, ``verdicts``, ``inputs``, ``bundles``, ``builds``).
Its bytes are a fixed first line, the SHA-256 of the payload, then the payload::

    dcmpack-cache 1\\n<sha256 of payload, hex>\\n<payload>

A ``blobs`` entry is a file as it is (an image the build stages), named by the SHA-256 of its
bytes, so that it can be hard-linked into a build's staging folder rather than copied. Its
reader checks its size and CRC-32 as it links it (``link_file``): a check of the bytes that a zip
entry needs anyway; whatever damage got past it would fail ``verify``'s SHA-256 of every member
of the bundle (then nothing is published).

Writes go to a private temporary file on the same filesystem and are renamed into place, so a
reader sees a whole entry or none; an entry is never rewritten in place (the same key always
holds the same bytes, so two builds storing it at once are harmless). A damaged entry (a
truncated write after a crash, a flipped bit) fails its digest: it is removed and reported as
a miss, and the caller rebuilds it. Reading an entry refreshes its modification time, which is
what ``prune --older-than`` and ``--max-size`` go by (least recently used first).

Refuses (``ConfigError``): a cache folder that is not a folder, belongs to another user, or that
other users can open (it holds header values of the sources, see docs/cache.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packager.errors import ConfigError

log = logging.getLogger(__name__)

MAGIC = b"dcmpack-cache 1\n"
KINDS = ("tasks", "headers", "blobs", "verdicts", "inputs", "bundles", "builds")
_TMP = "tmp"
#: Temporary files older than this are left by a killed build; ``prune`` removes them.
STALE_TMP_S = 3600


@dataclass(frozen=True, slots=True)
class Usage:
    """What a cache folder holds: entries and bytes per kind."""

    entries: tuple[tuple[str, int], ...]
    size: tuple[tuple[str, int], ...]

    @property
    def total_entries(self) -> int:
        return sum(n for _, n in self.entries)

    @property
    def total_size(self) -> int:
        return sum(n for _, n in self.size)


class Store:
    """A cache folder (see the module doc). Safe to share between concurrent builds."""

    def __init__(self, root: Path, *, create: bool = True):
        self.root = Path(root)
        if create:
            _make_private(self.root)
        _check_private(self.root)

    def _path(self, kind: str, key: str) -> Path:
        if kind not in KINDS or len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError("cache: bad entry name")  # a programming error, never user input
        return self.root / kind / key[:2] / key

    def get(self, kind: str, key: str) -> bytes | None:
        """The payload stored under ``key``, or None (absent, or damaged and now removed)."""
        path = self._path(kind, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cache: entry unreadable (%s), converting instead", type(exc).__name__)
            return None
        head = len(MAGIC) + 65
        digest = data[len(MAGIC) : head - 1].decode("ascii", "replace")
        payload = data[head:]
        if not data.startswith(MAGIC) or data[head - 1 : head] != b"\n" or _sha256(payload) != digest:
            _drop_damaged(kind, path)
            return None
        _touch(path)
        return payload

    def put(self, kind: str, key: str, payload: bytes) -> None:
        """Store ``payload`` under ``key`` unless it is there already (atomic; errors only logged:
        a cache that cannot be written makes a build slower, never different)."""

        def write(tmp: Path) -> None:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                handle.write(MAGIC + _sha256(payload).encode() + b"\n")
                handle.write(payload)

        self._store(kind, key, write)

    def put_file(self, kind: str, key: str, source: Path) -> None:
        """Store the file ``source`` as it is under ``key`` (a ``blobs`` entry: ``key`` is the
        SHA-256 of its bytes) unless it is there already: a hard link when the cache is on the
        same filesystem, else a copy; atomic, errors only logged (as ``put``)."""

        def write(tmp: Path) -> None:
            try:
                os.link(source, tmp)
            except OSError:  # another filesystem (or no hard links there): copy
                shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o600)

        self._store(kind, key, write)

    def _store(self, kind: str, key: str, write: Callable[[Path], None]) -> None:
        """The write-once step of ``put`` and ``put_file``: ``write`` makes a new private file
        in the cache's temporary folder, which is then renamed into place (atomic)."""
        path = self._path(kind, key)
        if path.exists():
            return
        tmp = self.root / _TMP / f"{uuid.uuid4().hex}.part"
        try:
            for folder in (tmp.parent, path.parent.parent, path.parent):
                folder.mkdir(mode=0o700, exist_ok=True)
            write(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cache: entry not stored (%s)", type(exc).__name__)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # a read-only cache folder: nothing was written
                pass

    def link_file(self, kind: str, key: str, target: Path, size: int, crc32: int) -> bool:
        """Put the file stored under ``key`` at ``target`` (a new path: a hard link, else a copy)
        when it has ``size`` bytes and CRC-32 ``crc32``. False when it is absent, or damaged: then
        it is removed (and ``target`` too), a warning is logged and the caller rebuilds it.

        Whoever links it must never write into ``target``: it is the cache's copy too.
        """
        path = self._path(kind, key)
        try:
            target.unlink(missing_ok=True)  # never copy into an existing file (it may be a link too)
            try:
                os.link(path, target)
            except FileNotFoundError:
                return False
            except OSError:  # another filesystem: copy
                shutil.copyfile(path, target)
            with open(target, "rb") as handle:
                crc = 0
                while chunk := handle.read(1 << 20):
                    crc = zlib.crc32(chunk, crc)
                damaged = handle.tell() != size or crc != crc32
        except OSError as exc:
            log.warning("cache: entry unreadable (%s), converting instead", type(exc).__name__)
            target.unlink(missing_ok=True)
            return False
        if damaged:
            _drop_damaged(kind, target, path)
            return False
        _touch(path)
        return True

    def entries(self) -> Iterator[tuple[str, Path, os.stat_result]]:
        """(kind, path, stat) of every entry."""
        for kind in KINDS:
            folder = self.root / kind
            if not folder.is_dir():
                continue
            for sub in sorted(folder.iterdir()):
                for path in sorted(sub.iterdir()) if sub.is_dir() else ():
                    try:
                        yield kind, path, path.stat()
                    except FileNotFoundError:  # removed by a concurrent prune
                        continue

    def usage(self) -> Usage:
        counts = {kind: [0, 0] for kind in KINDS}
        for kind, _, info in self.entries():
            counts[kind][0] += 1
            counts[kind][1] += info.st_size
        return Usage(tuple((k, v[0]) for k, v in counts.items()), tuple((k, v[1]) for k, v in counts.items()))

    def prune(self, *, older_than_s: float | None = None, max_size: int | None = None) -> tuple[int, int]:
        """Remove entries unused for ``older_than_s`` seconds, then the least recently used until
        the entries take at most ``max_size`` bytes; and temporary files of killed builds.

        Returns
        -------
        tuple of int
            Entries removed and bytes freed.
        """
        now = time.time()
        self._remove_stale_tmp(now)
        found = sorted(self.entries(), key=lambda e: (e[2].st_mtime, str(e[1])))
        total = sum(info.st_size for _, _, info in found)
        removed = freed = 0
        for _, path, info in found:
            too_old = older_than_s is not None and now - info.st_mtime > older_than_s
            too_big = max_size is not None and total > max_size
            if not (too_old or too_big):
                continue
            path.unlink(missing_ok=True)
            total -= info.st_size
            removed += 1
            freed += info.st_size
        return removed, freed

    def clear(self) -> tuple[int, int]:
        """Remove every entry (and temporary file). Returns entries removed and bytes freed."""
        usage = self.usage()
        for kind in (*KINDS, _TMP):
            shutil.rmtree(self.root / kind, ignore_errors=True)
        return usage.total_entries, usage.total_size

    def _remove_stale_tmp(self, now: float) -> None:
        folder = self.root / _TMP
        for path in folder.iterdir() if folder.is_dir() else ():
            try:
                if now - path.stat().st_mtime > STALE_TMP_S:
                    path.unlink()
            except FileNotFoundError:
                continue


def _drop_damaged(kind: str, *paths: Path) -> None:
    """A damaged entry (and what was made from it) removed: the caller rebuilds it."""
    log.warning("cache: a damaged %s entry was removed (it is rebuilt)", kind)
    for path in paths:
        path.unlink(missing_ok=True)


def _touch(path: Path) -> None:
    """An entry's last use, which ``prune`` goes by."""
    try:
        os.utime(path)
    except OSError:
        pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_private(root: Path) -> None:
    """Create the cache folder (and missing parents) mode 0700."""
    if root.is_dir():
        return
    try:
        root.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cache: {root}: cannot be created ({exc.strerror}; use --cache DIR or --no-cache)") from None


def _check_private(root: Path) -> None:
    """Refuse a cache folder others could read or plant entries in (see module doc)."""
    try:
        info = root.stat()
    except OSError:
        raise ConfigError(f"cache: {root}: no such folder") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"cache: {root}: not a folder")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"cache: {root}: belongs to another user (use a folder of your own)")
    if info.st_mode & 0o077:
        raise ConfigError(f"cache: {root}: other users can open it (chmod 700 {root})")
