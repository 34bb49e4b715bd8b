"""The build cache: where it lives, and sizes as the CLI takes them (the store is ``store.py``).

A service, like ``executors``: the convert stage reuses whole per-series task results through it
(``convert/cached.py``) and the index stage reuses the header pass (``index/reuse.py``). What it
may hold, and why it never holds the key or a pseudonym, is in docs/cache.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packager import __version__, executors
from packager.cache.store import Store, Usage

#: ``DIR`` or ``off``: the cache folder when neither ``--cache`` nor ``--no-cache`` is given.
CACHE_ENV = "DCMPACK_CACHE"
_OFF = ("off", "0", "no", "false")
_PACKAGE = Path(__file__).resolve().parent.parent
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@functools.cache
def environment() -> str:
    """Digest of the software that shapes what the cache holds, once per process: dcmpack's version
    and a digest of its code and data files (a development checkout changes without a new version),
    Python's version, and ``executors.versions()`` (the libraries that shape output bytes)."""
    code = hashlib.sha256()
    shaping = (".py", ".tsv", ".json", ".txt", ".gz")  # code, tables, vocabulary, the defacing template
    for path in sorted(p for p in _PACKAGE.rglob("*") if p.suffix in shaping and p.is_file()):
        code.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    facts = {
        "versions": executors.versions(),
        "python": list(sys.version_info[:3]),
        "dcmpack": __version__,
        "code": code.hexdigest(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


#: File systems whose change time moves on every write and cannot be set back, and whose inode
#: numbers name one file: a file's stat stands for its content there (``stat_trusted``). Not in
#: the list, so always read: FUSE (sshfs reports ctime = mtime), network file systems (another
#: machine's clock and caching), and read-only images (ISO 9660 discs, squashfs, UDF), whose inode
#: numbers come from the layout and repeat on the next disc.
TRUSTED_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "bcachefs", "jfs"})


@functools.cache
def _file_systems() -> dict[int, str]:
    """Device number -> file system type of every mount (Linux ``/proc/self/mountinfo``; empty
    elsewhere: nothing is trusted)."""
    found: dict[int, str] = {}
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        fields = line.split()
        try:
            major, minor = fields[2].split(":")
            kind = fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        found[os.makedev(int(major), int(minor))] = kind
    return found


#: Loop devices (a file system image mounted as a disk): two images made alike (same layout, times
#: and inode numbers) can be mounted in turn at the same place with the same device number.
_LOOP_MAJOR = 7


def stat_trusted(device: int) -> bool:
    """Whether files on ``device`` (``st_dev``) may be taken as unchanged while their stat is
    (``TRUSTED_FILE_SYSTEMS``, not from a loop-mounted image): the build cache's header runs and
    input digests are kept under it there, and read again on every build elsewhere (docs/cache.md)."""
    return os.major(device) != _LOOP_MAJOR and _file_systems().get(device) in TRUSTED_FILE_SYSTEMS


@dataclass(frozen=True, slots=True)
class Signature:
    """What the file system says about some files, as the build cache keys entries by it."""

    #: SHA-256 of every file's absolute path, device, inode, size, modification and change times (ns)
    digest: str
    #: the latest change time of any of them (ns; every write, rename or ``touch`` moves it, and a
    #: program cannot set it, unlike a modification time, which may even lie in the future)
    newest_ns: int
    #: the clock just before the first stat (ns): a file changed less than ``RACY_S`` before this
    #: could change again unseen
    taken_ns: int
    #: every file is on a file system whose stat stands for its content (``stat_trusted``)
    trusted: bool

    def settled(self, racy_s: float) -> bool:
        """No file changed within ``racy_s`` seconds before the signature was taken."""
        return self.taken_ns - self.newest_ns >= racy_s * 1e9


def signature(paths: Iterable[str | os.PathLike[str]]) -> Signature:
    """The ``Signature`` of ``paths``, in order (one ``stat`` each).

    Raises
    ------
    OSError
        A file that cannot be stat'ed.
    """
    digest = hashlib.sha256()
    newest = 0
    trusted = True
    taken = time.time_ns()
    for path in paths:
        info = os.stat(path)
        facts = (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        digest.update(repr(facts).encode())
        newest = max(newest, info.st_ctime_ns)
        trusted = trusted and stat_trusted(info.st_dev)
    return Signature(digest.hexdigest(), newest, taken, trusted)


def default_dir() -> Path:
    """``dcmpack`` under the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("dcmpack", appauthor=False))


def cache_dir(flag: Path | None, disabled: bool) -> Path | None:
    """The cache folder a command uses: ``--no-cache`` (None), ``--cache DIR``, ``$DCMPACK_CACHE``
    (a folder or ``off``; empty is unset), or ``default_dir()``.

    Parameters
    ----------
    flag : Path, optional
        ``--cache DIR``.
    disabled : bool
        ``--no-cache``.

    Returns
    -------
    Path or None
        None: no cache.
    """
    if disabled:
        return None
    if flag is not None:
        return Path(flag).expanduser().resolve()
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:  # set and not empty
        return None if env.strip().lower() in _OFF else Path(env).expanduser().resolve()
    return default_dir()


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``1.5T``, ``123`` (bytes; K/M/G/T are powers of 1024) -> bytes.

    Raises
    ------
    ValueError
        Not a size.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f'"{text}" is not a size (e.g. 500M, 2G)')
    return int(float(match[1]) * _UNITS[match[2].upper()])


def prune(root: Path, *, older_than_days: float | None = None, max_size: str | None = None) -> tuple[int, int]:
    """``dcmpack cache prune``: entries unused for ``older_than_days``, then the least recently
    used beyond ``max_size``; and temporary files of killed builds.

    Parameters
    ----------
    root : Path
        The cache folder (nothing to do when it does not exist).
    older_than_days : float, optional
    max_size : str, optional
        A size as ``parse_size`` takes it.

    Returns
    -------
    tuple of int
        Entries removed and bytes freed.

    Raises
    ------
    ConfigError
        A bad size or age, or a cache folder others can open.
    """
    from packager.errors import ConfigError

    if older_than_days is not None and older_than_days < 0:
        raise ConfigError("--older-than: must be a number of days >= 0")
    try:
        limit = None if max_size is None else parse_size(max_size)
    except ValueError as exc:
        raise ConfigError(f"--max-size: {exc}") from None
    if not Path(root).exists():
        return 0, 0
    seconds = None if older_than_days is None else older_than_days * 86400
    return Store(root, create=False).prune(older_than_s=seconds, max_size=limit)


def clear(root: Path) -> tuple[int, int]:
    """``dcmpack cache clear``: remove every entry. Returns entries removed and bytes freed.

    Raises
    ------
    ConfigError
        A cache folder others can open (not touched).
    """
    if not Path(root).exists():
        return 0, 0
    return Store(root, create=False).clear()


__all__ = ["CACHE_ENV", "Store", "Usage", "cache_dir", "clear", "default_dir", "environment", "parse_size", "prune"]
