"""Index, the header pass: source files -> their headers, in parallel over runs of files.

Each file is read once (``index.header.read_header``) in a worker process; a damaged file
becomes a ``BadFile`` (with what is left of its header), a DICOMDIR or other object outside any
series is counted, a non-DICOM file is counted. Results keep the files' order whatever the
number of workers. Refuses nothing itself: the caller decides what a damaged file means.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packager import cache as cache_service
from packager import executors
from packager.dicom import load_pydicom
from packager.errors import InputError
from packager.index import reuse
from packager.index.record import Header
from packager.model import BadFile, SourceFile


def _read_chunk(
    chunk: list[tuple[SourceFile, int]], want_phi: bool
) -> tuple[list[Header | BadFile | None], int, set | None, set | None]:
    """Headers of a run of files (in a worker process), in order: a ``BadFile`` for a damaged one,
    None for a non-DICOM one; the count of non-image objects (DICOMDIR); the PHI and public values
    when asked."""
    # the reader (pydicom) is imported where files are read: a build whose headers all come from
    # the build cache never imports it (``index.record``)
    from packager.index.header import NonImageFile, read_header, salvage

    found: set | None
    public: set | None
    seen: set | None
    found, public, seen = (set(), set(), set()) if want_phi else (None, None, None)
    read: list[Header | BadFile | None] = []
    non_image = 0
    for source, _ in chunk:
        try:
            read.append(read_header(source, phi=found, public=public, seen=seen))
        except NonImageFile:
            non_image += 1
        except InputError as exc:
            read.append(salvage(source, exc))
    return read, non_image, found, public


#: Header-pass cost of a file: a fixed part plus its size up to a cap (big files are mostly pixels).
_FILE_COST, _SIZE_CAP = 32 << 10, 2 << 20


def _file_cost(source: SourceFile) -> int:
    try:
        size = os.stat(source.path).st_size
    except OSError:
        size = 0
    return _FILE_COST + min(size, _SIZE_CAP)


def _chunk_cost(chunk: list[tuple[SourceFile, int]]) -> int:
    return sum(cost for _, cost in chunk)


def _chunks(files: list[SourceFile], workers: int) -> list[list[tuple[SourceFile, int]]]:
    """Runs of consecutive files (a series' files stay together: their repeated header values are
    collected once per run) of about equal cost, about three per worker, at most 256 files each."""
    costed = [(source, _file_cost(source)) for source in files]
    target = max(sum(cost for _, cost in costed) / (3 * workers), 1)
    chunks: list[list[tuple[SourceFile, int]]] = [[]]
    total = 0
    for item in costed:
        if chunks[-1] and (total + item[1] > target or len(chunks[-1]) >= 256):
            chunks.append([])
            total = 0
        chunks[-1].append(item)
        total += item[1]
    return [chunk for chunk in chunks if chunk]


@dataclass(slots=True)
class _Scanned:
    """What the header pass found, filled as the chunks come back (headers in file order)."""

    headers: list[Header]
    skipped: int  # not DICOM
    non_image: int  # DICOMDIR and other objects outside any series
    bad: list[BadFile]  # damaged, in file order
    phi: set
    public: set


def _load_reader() -> None:
    """pydicom and the header reader imported here, before files are read (``dicom.load_pydicom``)."""
    load_pydicom()
    import packager.index.header  # noqa: F401


def read_headers(
    files: list[SourceFile],
    jobs: int,
    want_phi: bool,
    progress: Callable[[int, int], None] | None,
    workers: executors.Workers | None = None,
    cache: Path | None = None,
) -> _Scanned:
    """The header pass: each file read once, in parallel over runs of files when ``jobs`` != 1.

    Headers and damaged files keep the files' order, so results (and, with ``strict``, the
    error raised) do not depend on the number of workers. With ``cache`` (the build cache
    folder), runs of one folder each are read, and their headers are reused while their files
    are unchanged (``index.reuse``).
    """
    if cache is None:
        chunks = _chunks(files, workers.size if workers is not None else max(jobs or executors.cpu_count(), 1))
        _load_reader()
        results = executors.imap(_read_chunk, chunks, (want_phi,), jobs=jobs, cost=_chunk_cost, workers=workers)
    else:  # unchanged runs from the cache here, the others on the workers (``index.reuse``)
        root, environment = str(cache), cache_service.environment()
        args = (want_phi, _read_chunk, root, environment)

        def read_others(others: list) -> Iterator:
            if others:
                _load_reader()
            return executors.imap(reuse.read_run_storing, others, args, jobs=jobs, cost=_chunk_cost, workers=workers)

        results = reuse.read_runs(
            reuse.runs([(source, _file_cost(source)) for source in files]), want_phi, root, environment, read_others
        )
    scanned = _Scanned([], 0, 0, [], set(), set())
    done = 0
    for chunk_read, non_image, found, seen in results:
        for item in chunk_read:
            if item is None:
                scanned.skipped += 1
            elif isinstance(item, BadFile):
                scanned.bad.append(item)
            else:
                scanned.headers.append(item)
        scanned.non_image += non_image
        if want_phi:
            scanned.phi.update(found)
            scanned.public.update(seen)
        done += len(chunk_read) + non_image
        if progress is not None:
            progress(done, len(files))
    return scanned
