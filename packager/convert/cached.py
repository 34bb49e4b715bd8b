"""Convert, reused: the per-series task through the build cache (``packager.cache``).

``convert.task.convert_task`` is a pure function of its arguments, so its result can be stored
under a digest of everything it depends on and reused. ``task_key`` is that digest:

- the bytes of the series' input files, in the series' order (read and hashed every time: a
  file's name, size or date never stands for its content here);
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

A task that failed is not stored (a decoder installed later may make it succeed). On Dask,
workers use the cache when they see its folder (a shared filesystem, as for the inputs) and
convert without it otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packager.cache import Store
from packager.errors import ConfigError
from packager.model import Planned, Series
from packager.release import bundle as bundle_stage

KIND = "tasks"
#: Bumped when the entry's payload changes shape (old entries are then never read).
SCHEMA = 2
#: ``Series`` fields that say where a series sits (plan position, session position, paths),
#: not what it is: outside the key.
_WHERE = frozenset({"index", "session", "files", "relpaths"})


def task_key(item: Planned, environment_digest: str, args: tuple) -> str:
    """The entry name of ``item``'s task result (see the module doc).

    Parameters
    ----------
    item : Planned
    environment_digest : str
        ``cache.environment()``, computed once by the build.
    args : tuple
        The task's further arguments (tool string, engine).

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
    for path in series.files:
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


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
        key = task_key(item, environment_digest, args)
    except OSError:  # an unreadable input: the task reports it in its own, value-free words
        return task(item, dataset_dir, *args)
    payload = store.get(KIND, key)
    if payload is not None:
        stored, files = pickle.loads(payload)
        staged = tuple(_restage(Path(dataset_dir), item.relpath + suffix, data, sha) for suffix, data, sha in files)
        return dataclasses.replace(stored, series_index=item.series.index, relpath=item.relpath, staged=staged)
    result = task(item, dataset_dir, *args)
    if not result.error:
        files = tuple((s.relpath[len(item.relpath) :], s.path.read_bytes(), s.sha256) for s in result.staged)
        neutral = dataclasses.replace(result, series_index=-1, relpath="", staged=())
        store.put(KIND, key, pickle.dumps((neutral, files), protocol=5))
    return result


def _restage(folder: Path, relpath: str, data: bytes, sha256: str) -> bundle_stage.Staged:
    """``bundle.stage_bytes`` with the digest the entry recorded: the entry's own digest, checked
    when it was read, already vouches for these bytes (hashing them again costs as much)."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(data)
    return bundle_stage.Staged(relpath, path, len(data), sha256)
