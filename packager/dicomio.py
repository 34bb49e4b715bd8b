"""Reading DICOM files (plain or gzip-compressed); shared by index and convert."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import pydicom
import pydicom.config
from pydicom.dataset import Dataset

# pydicom's reading validation warns (and logs) with the offending value quoted, e.g.
# "Invalid value for VR DA: '<the header text>'": a header value in a log line. We never rely
# on it (index and convert parse what they need and fail with value-free messages), so it is off.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


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


def parse_all(ds: Dataset) -> Dataset:
    """Convert every element now (pydicom parses lazily), recursing into sequences.

    A corrupt VR or value then raises here, where the caller names the file, instead of later
    in whichever stage first touches that element (NotImplementedError, ValueError, ...).
    """
    for element in ds:
        if element.VR == "SQ":
            for item in element.value or ():
                parse_all(item)
    meta = getattr(ds, "file_meta", None)  # group 0002 lives in a dataset of its own
    if meta is not None and meta is not ds:
        parse_all(meta)
    return ds


def read_dataset(path: Path, *, headers_only: bool) -> Dataset:
    """Read a DICOM file; raises pydicom/OS errors to the caller."""
    if is_gzip(path):
        with gzip.open(path, "rb") as handle:
            data = handle.read()
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=headers_only)
    return pydicom.dcmread(path, stop_before_pixels=headers_only)


# What to install for each family of compressed transfer syntaxes (pydicom's decoder plugins).
_DECODER_PACKAGES = (
    (("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20"), "pylibjpeg pylibjpeg-openjpeg"),  # JPEG 2000, HTJ2K
    (("1.2.840.10008.1.2.4.",), "pylibjpeg pylibjpeg-libjpeg"),  # JPEG baseline/extended/lossless, JPEG-LS
)


def decoder_problem(ds: Dataset) -> str | None:
    """Why the pixel data of ``ds`` cannot be decoded here, naming what to install; None if it can.

    Value-free: names the transfer syntax (a DICOM standard name), never a header value.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    syntax = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
    if not syntax or not syntax.is_transfer_syntax or not syntax.is_compressed:
        return None
    name = syntax.name
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"{name} pixel data: no decoder exists for this transfer syntax (export the series uncompressed)"
    if decoder.is_available:
        return None
    packages = next((pkgs for prefixes, pkgs in _DECODER_PACKAGES if syntax.startswith(prefixes)),
                    "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
    return (f"{name} pixel data and no decoder installed: pip install {packages} "
            "(or python-gdcm; all in dcmpack[decoders])")
