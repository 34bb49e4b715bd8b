"""Convert, the plan-time check: planned series -> the refusal each would get in ``build``,
from headers alone (no pixel is decoded).

``dcmpack plan`` runs every check of the default engine that does not need pixels: slice
geometry and stacking (``volume.check_headers``: positions, orientations, spacing, complete
volumes, duplicate images, the dicom2nifti cross-check), stored bits, a decoder for the transfer
syntax, and the b-table of a DWI series. The same functions refuse the series in ``build``, so a
series ``plan`` marks "convert" converts (tests/test_plan_build.py holds that on the corpus).
Refuses nothing itself: it returns the value-free details.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from packager import executors
from packager.convert import ConversionFailed
from packager.convert.diffusion import MISSING_TABLES, diffusion_tables
from packager.convert.volume import check_headers
from packager.dicom.fast import NotFast, check_values, make_all, read_fast
from packager.dicom.frames import is_multiframe
from packager.dicom.reader import read_dataset, reading_settings
from packager.model import Planned


@reading_settings()
def preflight(item: Planned) -> str | None:
    """The detail ``build`` would refuse ``item`` with (default engine), or None when it converts.

    Parameters
    ----------
    item : Planned
        A planned series with its BIDS name (a DWI name asks for a b-table).

    Returns
    -------
    str or None
    """
    try:
        datasets = [_read_header(path) for path in item.series.files]
    except Exception as exc:  # any read failure of one file fails this series only, as in build
        return f"file unreadable in pixel pass ({type(exc).__name__})"
    try:
        heads, affine = check_headers(datasets, frames=item.series.frames)
    except ConversionFailed as exc:
        return exc.detail
    if item.name.datatype == "dwi" and diffusion_tables(heads, affine) is None:
        return MISSING_TABLES
    return None


def _read_header(path: Path) -> Dataset:
    """One file up to its pixel data, by the fast reader when it covers the file (as the
    header pass reads it), pydicom otherwise."""
    try:
        scanned = read_fast(path, headers_only=True, lazy=True)
        check_values(scanned)
    except NotFast:
        return read_dataset(path, headers_only=True)
    return scanned.dataset if is_multiframe(scanned.dataset) else make_all(scanned.dataset)


def preflight_all(items: Sequence[Planned], jobs: int = 1, workers: executors.Workers | None = None) -> dict[int, str]:
    """``preflight`` for every planned series (in worker processes): {series index: detail}.

    Parameters
    ----------
    items : sequence of Planned
    jobs : int
        Worker processes (0: all cores; 1: in this process).
    workers : executors.Workers, optional
        Processes to use instead.

    Returns
    -------
    dict
        The series that ``build`` would refuse, with the detail it would give.
    """
    found = executors.imap(preflight, list(items), jobs=jobs, cost=lambda item: len(item.series.files), workers=workers)
    return {item.series.index: detail for item, detail in zip(items, found, strict=True) if detail is not None}
