"""Reading DICOM files (plain or gzip-compressed); shared by index and convert."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def looks_like_dicom(path: Path) -> bool:
    """Part 10 file (DICM at byte 128), plain or gzip-compressed."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
            if head[:2] == b"\x1f\x8b":
                handle.seek(0)
                with gzip.open(handle) as inner:
                    head = inner.read(132)
    except (OSError, EOFError, gzip.BadGzipFile):
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dataset(path: Path, *, headers_only: bool) -> Dataset:
    """Read a DICOM file; raises pydicom/OS errors to the caller."""
    if is_gzip(path):
        with gzip.open(path, "rb") as handle:
            data = handle.read()
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=headers_only)
    return pydicom.dcmread(path, stop_before_pixels=headers_only)
