"""Progress callbacks and stage timing for the API (a helper, not a stage).

A caller (the CLI's progress bars, a notebook) passes ``progress(step, done, total)``; each
stage takes a plain ``(done, total)`` callback, made here. ``Clock`` records the wall time of
each build stage for ``BuildResult.timings`` and logs it (stage names and seconds only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from packager.release.bundle import Staged

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int | None], None]


def step(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    """``progress(name, done, total)`` as the ``(done, total)`` callback a stage takes."""
    return None if progress is None else (lambda done, total: progress(name, done, total))


def zip_bytes(progress: Progress | None, staged: Iterable[Staged], manifest: bytes) -> Callable[[int], None] | None:
    """``write_bundle``'s ``progress(nbytes)`` as ``progress("zip", done, total)``."""
    if progress is None:
        return None
    total = sum(s.size for s in staged) + len(manifest)
    done = 0

    def advance(nbytes: int) -> None:
        nonlocal done
        done = min(done + nbytes, total)
        progress("zip", done, total)

    progress("zip", 0, total)
    return advance


class Clock:
    """Wall time per build stage, logged as each one ends (``with clock("convert"): ...``)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.laps: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - began
            self.laps.append((stage, round(seconds, 3)))
            log.info("time: %s %.2f s", stage, seconds)

    def total(self) -> float:
        return time.monotonic() - self.started
