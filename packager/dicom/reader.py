"""Reading DICOM files for index and convert: plain or gzip-compressed, Part 10, without the
preamble, or a bare data set; pydicom's reading options set only inside our own reads.

Two readers give the same ``pydicom`` datasets: ``read_dataset`` here (``pydicom.dcmread``, for
any file pydicom can read) and ``packager.dicom.fast.read_fast`` (a byte-level walk for the
common case). ``looks_like_dicom`` decides which files are DICOM at all.
"""

from __future__ import annotations

import gzip
import io
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pydicom.config
import pydicom.datadict
import pydicom.uid
from pydicom.dataset import Dataset

#: Transfer syntaxes that the fast reader leaves to pydicom.
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
#: Value representations with a 4-byte length in explicit VR, and every VR's two letters.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
ALL_VRS = LONG_VRS | {
    "AE",
    "AS",
    "AT",
    "CS",
    "DA",
    "DS",
    "DT",
    "FD",
    "FL",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "SL",
    "SS",
    "ST",
    "TM",
    "UI",
    "UL",
    "US",
}
VR_NAMES = {vr.encode(): vr for vr in ALL_VRS}

#: Users of ``reading_settings`` now running (threads), and the setting they found; guarded by
#: the lock. Module state because the setting it guards is pydicom's, one per process.
_settings_lock = threading.Lock()
_settings_users = 0
_settings_found: int | None = None


@contextmanager
def reading_settings() -> Iterator[None]:
    """pydicom's reading options for our reads and conversions (a ``with`` block or a decorator).

    pydicom's reading validation warns (and logs) with the offending value quoted, e.g.
    "Invalid value for VR DA: '<the header text>'": a header value in a log line. We never rely
    on it (index and convert parse what they need and fail with value-free messages), so it is
    off while we read files and convert their elements. pydicom keeps it in one process-wide
    setting (``pydicom.config.settings``), so the caller's value is put back when the last
    concurrent user leaves (nested and threaded uses share one entry): a host process that
    imports packager keeps its own setting outside our calls.
    """
    global _settings_users, _settings_found
    settings = pydicom.config.settings
    with _settings_lock:
        if _settings_users == 0:
            # the stored value, not the property: None means "pydicom's default" and stays so
            _settings_found = settings._reading_validation_mode
            settings.reading_validation_mode = pydicom.config.IGNORE
        _settings_users += 1
    try:
        yield
    finally:
        with _settings_lock:
            _settings_users -= 1
            if _settings_users == 0:
                settings._reading_validation_mode = _settings_found


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _head(path: Path) -> bytes:
    """A file's first 132 bytes (inflated when it is gzip-compressed); raises OSError, EOFError
    or zlib.error."""
    with open(path, "rb") as handle:
        head = handle.read(132)
        if head[:2] == b"\x1f\x8b":
            handle.seek(0)
            with gzip.open(handle) as inner:
                head = inner.read(132)
    return head


def looks_like_dicom(path: Path) -> bool:
    """A DICOM file, plain or gzip-compressed: Part 10 (DICM at byte 128), or one written
    without the 128-byte preamble, or a bare data set without file meta information (old
    ACR-NEMA-style exports; dcm2niix reads both)."""
    try:
        head = _head(path)
    except (OSError, EOFError, zlib.error):
        return False
    return _style(head) is not None


#: Elements a bare data set (no file meta) starts with: group 0008's length, character set,
#: image type, SOP class or instance UID. Only these, so that other binary files are not taken
#: for DICOM (and then refused as corrupt).
_BARE_FIRST = frozenset({0x0000, 0x0005, 0x0008, 0x0012, 0x0016, 0x0018})


def _style(head: bytes) -> str | None:
    """How a file's first 132 bytes say it is DICOM: "part10", "no-preamble", "bare" or None."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    if len(head) < 8:
        return None
    group, element = struct.unpack_from("<HH", head)
    # file meta information always comes first, explicit VR little endian: (0002,0000) UL
    # or (0002,0001) OB
    if group == 0x0002 and (element, head[4:6]) in ((0x0000, b"UL"), (0x0001, b"OB")):
        return "no-preamble"
    if group == 0x0008 and element in _BARE_FIRST:
        if head[4:6] in VR_NAMES or struct.unpack_from("<I", head, 4)[0] < 1024:
            return "bare"
    return None


def gzip_damaged(path: Path) -> bool:
    """True for a gzip file whose stream cannot be inflated as far as a DICOM preamble."""
    try:
        _head(path)
    except (EOFError, zlib.error, gzip.BadGzipFile):  # only a gzip stream raises these
        return True
    except OSError:
        return False
    return False


@reading_settings()
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


@reading_settings()
def read_dataset(path: Path, *, headers_only: bool) -> Dataset:
    """Read a DICOM file; raises pydicom/OS errors to the caller.

    Files without the preamble or without file meta information are read too; a bare data set
    gets the transfer syntax pydicom found it in, so its pixels can be decoded.
    """
    if is_gzip(path):
        with gzip.open(path, "rb") as handle:
            data = handle.read()
        return read_stream(io.BytesIO(data), headers_only=headers_only)
    with open(path, "rb") as handle:
        return read_stream(handle, headers_only=headers_only)


def read_stream(stream, *, headers_only: bool) -> Dataset:
    """``read_dataset`` on an open binary stream (positioned at the file's start)."""
    start = stream.tell()
    style = _style(stream.read(132))
    stream.seek(start)
    ds = pydicom.dcmread(stream, stop_before_pixels=headers_only, force=style in ("no-preamble", "bare"))
    if style == "bare" and "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian
            if implicit
            else pydicom.uid.ExplicitVRLittleEndian
            if little
            else pydicom.uid.ExplicitVRBigEndian
        )
    return ds
