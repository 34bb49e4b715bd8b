"""Convert, reused: the per-series task through the build cache (``packager.cache``).

``convert.task.convert_task`` is a pure function of its arguments, so its result can be stored
under a digest of everything it depends on and reused. ``task_key`` is that digest:

- the bytes of the series' input files, in the series' order. Their digest is read and hashed
  in full, then remembered (an ``inputs`` entry) under the files' paths and what the file system
  says about each (device, inode, size, modification and change times in nanoseconds), as git and
  make trust a file's stat: the next build hashes them again only when one of these changed. The
  change time cannot be set by a program (any write, rename or ``touch`` moves it), so a file
  rewritten with its old size and modification time is still read again. This holds on local
  file systems only (``cache.TRUSTED_FILE_SYSTEMS``); elsewhere (FUSE, network file systems, disc
  images) the files are hashed on every build. A digest is not remembered while any of the
  files changed less than ``RACY_S`` seconds before (a file still being written, or a file
  system whose times are coarser than the change): such a series is hashed again next time.
  One write the times miss: Linux moves them at the first write through a shared memory map to
  a page, not at later writes to that page before it is written back (as git, make and rsync
  would, the build then sees the file unchanged);
- the series' plan entry as the task reads it: the ``Series`` facts (but not its position in
  the plan, its session's position or the files' paths: adding a session or moving a folder
  changes none of the outputs) and the BIDS datatype, suffix and entities the heuristic chose
  (so a heuristic edit invalidates exactly the series whose name it changes);
- the config parts the task reads (the engine, and ``ConversionSoftwareVersion``);
- ``cache.environment()``: dcmpack's version and a digest of its own code and data files, Python's
  version, and the versions of the libraries that shape output bytes (``executors.versions``,
  the same list a Dask cluster must match).

The pseudonym key is not part of it because the task never sees it: pseudonyms only name the
files, and the entry stores them under neutral names (``.nii.gz``, ``.bval``, ``.bvec``), so
the cache holds no pseudonym and no link from a source to a published label. Date shifts are
applied after the task, in the dataset files. (A step that ever writes a keyed value into a
task's output must add ``deid.key_fingerprint(key)`` to ``args``, and so to this key.)

The entry holds the result (its fields, shape, pictures, defacing record) and, for each file it
staged, the suffix, size, SHA-256 and CRC-32; the files themselves are ``blobs`` entries named
by their SHA-256, hard-linked into staging when the cache is on the same filesystem (copied
otherwise) and checked by size and CRC-32 as they are (``Store.link_file``). The CRC-32 is the
one the zip entry records, so the bundle copies the file without reading it again
(``bundle.write_bundle``). A blob that is missing (pruned) or damaged makes the entry a miss.

A task that failed is not stored (a decoder installed later may make it succeed), except a run
the defacing step refused: its voxels were decoded and the refusal is a function of them, of
dcmpack's code and libraries and of ``[deface]`` (in ``args``), all in the key; it is the
costly case (a registration per build) and is reused like any result. On Dask,
workers use the cache when they see its folder (a shared filesystem, as for the inputs) and
convert without it otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from packager import cache as cache_service
from packager.cache import Store
from packager.errors import ConfigError
from packager.model import Planned, Series
from packager.release import bundle as bundle_stage

KIND = "tasks"
BLOBS = "blobs"
INPUTS = "inputs"
#: Bumped when the entry's payload changes shape (old entries are then never read).
SCHEMA = 4  # 4: the input files' digest is one digest of their digests (``inputs_digest``)
#: A series whose newest file changed less than this before its digest was taken is hashed again
#: next time: a file still being written, or changed again within its file system's time
#: resolution (up to 2 s: FAT, some network file systems), could otherwise keep the times
#: the digest was remembered under.
RACY_S = 2.0
#: ``Series`` fields that say where a series sits (plan position, session position, paths),
#: not what it is: outside the key.
_WHERE = frozenset({"index", "session", "files", "relpaths"})


def task_key(
    item: Planned, environment_digest: str, args: tuple, store: Store | None = None, *, read: bool = True
) -> str | None:
    """The entry name of ``item``'s task result (see the module doc).

    Parameters
    ----------
    item : Planned
    environment_digest : str
        ``cache.environment()``, computed once by the build.
    args : tuple
        The task's further arguments (tool string, engine).
    store : Store, optional
        Where the input files' digest is remembered under their stat (None: hashed in full).
    read : bool
        False: None instead of reading the input files when their digest is not remembered.

    Returns
    -------
    str
        Hex SHA-256.
    """
    series = item.series
    facts = tuple((f.name, getattr(series, f.name)) for f in dataclasses.fields(Series) if f.name not in _WHERE)
    digest = hashlib.sha256()
    digest.update(repr((SCHEMA, environment_digest, args, facts, item.name.datatype, item.name.suffix)).encode())
    digest.update(repr(item.name.entities).encode())
    inputs = inputs_digest(store, series.files, read=read)
    if inputs is None:
        return None
    digest.update(inputs)
    return digest.hexdigest()


def inputs_digest(store: Store | None, paths: Sequence[str | os.PathLike[str]], *, read: bool = True) -> bytes | None:
    """SHA-256 of the files' SHA-256 digests in order, remembered in ``store`` under their stat
    (see the module doc); ``store`` None: always hashed. ``read=False``: None instead of reading
    the files when their digest is not remembered.

    Raises
    ------
    OSError
        A file that cannot be stat'ed or read.
    """
    stats = cache_service.signature(paths)
    remembered = store.get(INPUTS, stats.digest) if store is not None and stats.trusted else None
    if remembered is not None and len(remembered) == 32:
        return remembered
    if not read:
        return None
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    if store is not None and stats.trusted and stats.settled(RACY_S):
        store.put(INPUTS, stats.digest, digest.digest())
    return digest.digest()


def convert_cached(
    item: Planned, dataset_dir: str, task: Callable[..., Any], root: str, environment_digest: str, *args: Any
) -> Any:
    """``task(item, dataset_dir, *args)``, or its stored result with its files staged again.

    Parameters
    ----------
    item : Planned
    dataset_dir : str
        The private staging folder the files are written into.
    task : callable
        ``convert.task.convert_task``.
    root : str
        The cache folder.
    environment_digest : str
        ``cache.environment()``.
    *args
        The task's further arguments.

    Returns
    -------
    TaskResult
        Equal to what ``task`` returns, its files byte-identical.
    """
    try:
        store = Store(Path(root), create=False)
    except ConfigError:  # a Dask worker that does not see the cache folder: convert, store nothing
        return task(item, dataset_dir, *args)
    try:
        key = task_key(item, environment_digest, args, store)
    except OSError:  # an unreadable input: the task reports it in its own, value-free words
        return task(item, dataset_dir, *args)
    assert key is not None  # read=True: the files are hashed when their digest is not remembered
    found = _reuse(store, key, item, dataset_dir)
    if found is not None:
        return found
    result = task(item, dataset_dir, *args)
    if not result.error or (result.deface is not None and result.deface.refused):
        files = []
        for s in result.staged:
            crc = s.crc32 if s.crc32 is not None else zlib.crc32(s.path.read_bytes())
            store.put_file(BLOBS, s.sha256, s.path)  # before the entry that names it
            files.append((s.relpath[len(item.relpath) :], s.size, s.sha256, crc))
        neutral = dataclasses.replace(result, series_index=-1, relpath="", staged=())
        store.put(KIND, key, pickle.dumps((neutral, tuple(files)), protocol=5))
    return result


def reused(item: Planned, dataset_dir: str, root: str, environment_digest: str, *args: Any) -> Any:
    """The stored result of ``item``'s task with its files staged again, or None (a miss: the
    caller sends the task to a worker, where ``convert_cached`` converts and stores it). Used by
    the build's own process before any task is sent, so that a reused series costs no round trip
    through a worker (same arguments as ``convert_cached`` without the task)."""
    try:
        store = Store(Path(root), create=False)
        key = task_key(item, environment_digest, args, store, read=False)  # no file read here
    except (ConfigError, OSError):
        return None
    return None if key is None else _reuse(store, key, item, dataset_dir)


def _reuse(store: Store, key: str, item: Planned, dataset_dir: str) -> Any:
    payload = store.get(KIND, key)
    if payload is None:
        return None
    stored, files = pickle.loads(payload)
    staged = _restage(store, Path(dataset_dir), item.relpath, files)
    if staged is None:
        return None
    return dataclasses.replace(stored, series_index=item.series.index, relpath=item.relpath, staged=staged)


def _restage(
    store: Store, folder: Path, relpath: str, files: tuple[tuple[str, int, str, int], ...]
) -> tuple[bundle_stage.Staged, ...] | None:
    """The entry's files put into staging with the digests it recorded (their size and CRC-32
    are checked as they are linked); None (and nothing left in staging) when one is missing or
    damaged."""
    staged: list[bundle_stage.Staged] = []
    for suffix, size, sha256, crc in files:
        path = folder / (relpath + suffix)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not store.link_file(BLOBS, sha256, path, size, crc):
            for done in staged:
                done.path.unlink(missing_ok=True)
            return None
        staged.append(bundle_stage.Staged(relpath + suffix, path, size, sha256, crc))
    return tuple(staged)
