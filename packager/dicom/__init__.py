"""DICOM reading: the fast walker beside pydicom, multi-frame views, vendor private data."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def without_requests() -> Iterator[None]:
    """Import what is imported inside this block as if ``requests`` were not installed, unless
    it is loaded already; afterwards it imports as usual.

    pydicom imports ``requests`` (with urllib3, idna, certifi and charset_normalizer: ~40 ms, an
    eighth of a build's start-up before it reads its first file) only to download its own test
    files, which dcmpack never does; it falls back to ``urllib`` without it. The remote sources
    (DICOMweb, XNAT) import ``requests`` for real when they run. ``load_pydicom`` imports
    pydicom in this block; ``tests/test_startup.py`` checks that a build reads its first file
    without ``requests`` and that a later import of it works.
    """
    if "requests" in sys.modules:
        yield
        return
    sys.modules["requests"] = None  # type: ignore[assignment]  # "import requests" raises ImportError
    try:
        yield
    finally:
        if "requests" in sys.modules and sys.modules["requests"] is None:
            del sys.modules["requests"]


@contextmanager
def _never_collected() -> Iterator[None]:
    """What is imported inside this block is kept out of the cyclic collector's reach: it is
    paused while pydicom is imported, and everything alive then is frozen (``gc.freeze``, as
    ``executors`` does before forking workers). pydicom's import builds ~45,000 objects (its
    data dictionaries) that live as long as the process; the collector walked them once in every
    build before its first file was read (a young-generation collection of ~8 ms) and found
    nothing to free. Nothing changes when pydicom is imported already.
    """
    if "pydicom" in sys.modules:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def load_pydicom() -> None:
    """Import pydicom (without ``requests``) and this package's readers, in the build's own process
    before files are read or converted: worker processes forked from then on share them instead
    of each importing them (~0.15 CPU-s a process). A build whose every header run and series
    come from the build cache never calls this, and never imports pydicom."""
    with without_requests(), _never_collected():
        import packager.dicom.fast
        import packager.dicom.frames
        import packager.dicom.vendor  # noqa: F401
