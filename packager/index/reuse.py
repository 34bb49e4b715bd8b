"""Index, reused: the header pass through the build cache (``packager.cache``).

The header pass reads runs of consecutive files of one folder (``runs``: a series' files, as
exported, share a folder). A run's headers, and the PHI and public values they hold, are stored
under a digest of where its files are and what the file system says about each of them (absolute
path, device, inode, size, modification and change times in nanoseconds), whether PHI values
were asked for, and ``cache.environment()``. A run whose files are all unchanged is not opened
again; any change to one of them (a copy, a rewrite, a touch, a file added to the folder) reads
that run again, and only it. Files on a file system whose stat does not stand for their content
(FUSE, network file systems, disc images: ``cache.stat_trusted``) are read on every build. The
convert task's key trusts the same stat for the files' content (``convert/cached.py``), with a
guard this pass does without: a digest is not remembered for files that changed less than 2 s
before. A header here is only used to group and name; the voxels always come from what the
task's key stands for.

Non-DICOM files and non-image objects are remembered too (as such); a run with a damaged file
is not (it is read again every time, so its report stays exact). Runs, not single files, are
stored because most of a series' header values repeat from file to file: a run's values are
collected once, as ``index.scan._read_chunk`` does.

``read_runs`` takes the unchanged runs from the cache in the calling process and sends only the
others to the workers: a header that came back from a worker would be pickled twice more on
the way. Headers are stored as tuples of their field values (without the path, which is the
file's own), because unpickling a tuple is done in C and a frozen dataclass's state is set
field by field in Python: a no-change rebuild of 4,800 files spent most of its header pass there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

from packager import cache as cache_service
from packager.cache import Store
from packager.index.record import Header
from packager.model import BadFile, SourceFile

KIND = "headers"
SCHEMA = 4  # 2: damaged files (BadFile) and non-image counts; 3: headers as tuples; 4: change times
#: Header fields as stored (the first two, path and relpath, are the file's own, given again).
_FIELDS = tuple(f.name for f in dataclasses.fields(Header))
assert _FIELDS[:2] == ("path", "relpath"), "index.reuse stores a Header without its first two fields"
#: A folder with more files is read as several runs (a fixed count from its first file, so the
#: boundaries do not depend on other folders).
RUN_FILES = 256

Chunk = list[tuple[SourceFile, int]]
Result = tuple[list[Header | BadFile | None], int, set | None, set | None]
Read = Callable[[Chunk, bool], Result]


def runs(costed: Chunk) -> list[Chunk]:
    """Runs of consecutive (file, cost) pairs in one folder, at most ``RUN_FILES`` each."""
    found: list[Chunk] = []
    parent = None
    for item in costed:
        here = os.path.dirname(os.path.abspath(item[0].path))
        if not found or here != parent or len(found[-1]) >= RUN_FILES:
            found.append([])
            parent = here
        found[-1].append(item)
    return found


def _run_key(run: Chunk, want_phi: bool, environment_digest: str) -> str | None:
    """The entry name for ``run`` as its files are on disk now; None when one cannot be stat'ed
    or is on a file system whose stat does not stand for its content (``cache.stat_trusted``)."""
    try:
        stats = cache_service.signature(source.path for source, _ in run)
    except OSError:
        return None
    if not stats.trusted:
        return None
    return hashlib.sha256(repr((SCHEMA, _FIELDS, environment_digest, want_phi, stats.digest)).encode()).hexdigest()


def read_run_storing(run: Chunk, want_phi: bool, read: Read, root: str, environment_digest: str) -> Result:
    """``read(run, want_phi)``, its result stored for the next build (a run ``read_runs`` found no
    entry for: it is not looked up again here).

    Parameters
    ----------
    run : list of (SourceFile, cost)
        From ``runs``.
    want_phi : bool
        Collect the headers' PHI and public values too.
    read : callable
        ``index.scan._read_chunk``.
    root : str
        The cache folder.
    environment_digest : str
        ``cache.environment()``.

    Returns
    -------
    tuple
        The headers (a ``BadFile`` for a damaged file, None: not DICOM), the count of non-image
        objects, and the PHI and public values (None unless ``want_phi``).
    """
    store = Store(Path(root), create=False)
    key = _run_key(run, want_phi, environment_digest)  # before reading: a change while it is read is a new key
    items, non_image, found, public = read(run, want_phi)
    if key is not None and not any(isinstance(item, BadFile) for item in items):
        # each header by its place in the run (non-image objects are counted, not listed, so
        # places and items differ) and its field values after the path
        place = {str(source.path): index for index, (source, _) in enumerate(run)}
        stored = [
            None if h is None else (place[str(h.path)], tuple(getattr(h, name) for name in _FIELDS[2:]))
            for h in items
            if not isinstance(h, BadFile)
        ]
        store.put(KIND, key, pickle.dumps((stored, non_image, found, public), protocol=5))
    return items, non_image, found, public


def _reused(store: Store, key: str | None, run: Chunk) -> Result | None:
    """The stored result of ``run`` under ``key``, with each header's path given again; None: a miss."""
    payload = None if key is None else store.get(KIND, key)
    if payload is None:
        return None
    stored, non_image, found, public = pickle.loads(payload)
    headers: list[Header | BadFile | None] = []
    for entry in stored:
        if entry is None:
            headers.append(None)
            continue
        source = run[entry[0]][0]
        headers.append(Header(source.path, source.relpath, *entry[1]))
    return headers, non_image, found, public


def read_runs(
    chunks: list[Chunk],
    want_phi: bool,
    root: str,
    environment_digest: str,
    read_others: Callable[[list[Chunk]], Iterator[Result]],
) -> Iterator[Result]:
    """Each run's result, in order: the unchanged runs' from the cache, here; the others' from
    ``read_others(runs)`` (``read_run_storing`` on the workers, yielding in order)."""
    store = Store(Path(root), create=False)
    reused = [_reused(store, _run_key(run, want_phi, environment_digest), run) for run in chunks]
    others = read_others([run for run, result in zip(chunks, reused, strict=True) if result is None])
    for result in reused:
        yield result if result is not None else next(others)
