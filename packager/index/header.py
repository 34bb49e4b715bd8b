"""Index, one file: a SourceFile -> its ``Header`` (the fields the index groups by), or None
for a file that is not DICOM; the header's PHI values collected from the same read.

Reads each file once up to its pixel data, with the fast reader when it covers the file and
pydicom otherwise (same header, values and errors). Refuses (InputError, naming the file):
unreadable, empty (0-byte ``.dcm``/``IM0001``-style), truncated or corrupt files, a damaged
gzip stream, and images declaring an implausible size (checked before anything is decoded).
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError

from packager.dicom import header as dicom_header
from packager.dicom.fast import META_ENCODINGS, FastFile, NotFast, check_values, read_fast
from packager.dicom.frames import (
    classic_kind,
    frame_kind,
    frame_views,
    ge_private_image_type,
    is_multiframe,
    per_frame_item,
)
from packager.dicom.header import value as header_value
from packager.dicom.reader import (
    DEFLATED,
    gzip_damaged,
    is_gzip,
    looks_like_dicom,
    parse_all,
    read_stream,
    reading_settings,
)
from packager.dicom.vendor import phase_encoding_label
from packager.errors import InputError
from packager.index.record import FrameInfo, Header, orientation_label  # noqa: F401  (re-exported)
from packager.model import BadFile, SourceFile
from packager.phi.collect import collect as collect_phi
from packager.phi.collect import collect_elements

_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_DICOM_SUFFIXES = {"", ".dcm", ".dicom", ".ima", ".img"}
MAX_PIXEL_BYTES = 4 << 30  # decoded pixel bytes one file may declare

#: What reading a damaged or hostile file can raise (pydicom, our fast reader, gzip, the OS).
_READ_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    EOFError,
    OSError,
    ValueError,
    LookupError,
    TypeError,
    struct.error,
    zlib.error,
    AttributeError,
    OverflowError,
    NotImplementedError,
)


class NonImageFile(Exception):
    """A DICOM object that is no part of any series: a DICOMDIR (media directory). Skipped and
    counted, never an error (non-image objects *with* series, such as structured reports, are
    series excluded with their reason)."""


#: The Media Storage Directory SOP class: a DICOMDIR (PS3.10 section 8), the index of a CD/DVD
#: export, which belongs to no series. Only it: any other file without series UIDs is damaged.
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"


def _non_image_object(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    sop = _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
    return sop == MEDIA_DIRECTORY or "DirectoryRecordSequence" in ds


def _collect(ds: Dataset, scanned, phi: set, public: set | None, seen: set | None) -> None:
    """The PHI values of one header (file meta included) into ``phi`` (``phi.collect``)."""
    if scanned is None:
        collect_phi(ds, phi, public)
        collect_phi(ds.file_meta, phi, public)
    else:
        public = set() if public is None else public
        collect_elements(scanned.buffer, scanned.elements, scanned.encodings, phi, public, seen)
        collect_elements(scanned.buffer, scanned.meta_elements, META_ENCODINGS, phi, public, seen)


def salvage(source: SourceFile, error: InputError) -> BadFile:
    """A damaged file as a ``BadFile``, with the series UID and number its header still gives.

    pydicom with ``force`` returns the elements it read before a cut (it stops at the end of
    the bytes), and reads top-level elements only, so a UID inside a referencing sequence is
    not taken for the file's own.
    """
    uid, number = "", None
    try:
        with reading_settings():
            opener = gzip.open if is_gzip(source.path) else open
            with opener(source.path, "rb") as handle:
                ds = pydicom.dcmread(handle, force=True, stop_before_pixels=True)
            uid = _text(ds, "SeriesInstanceUID")
            number = _integer(ds, "SeriesNumber")
    except _READ_ERRORS:
        pass  # nothing readable: attributed by its folder, or listed on its own
    return BadFile(source.relpath, str(error), uid, number)


def _text(ds: Dataset, keyword: str) -> str:
    """``dicom.header.text``, "" when absent (``Header``'s text fields are plain str)."""
    return dicom_header.text(ds, keyword) or ""


_number = dicom_header.number
_integer = dicom_header.integer
_floats = dicom_header.numbers


def _expected_pixel_bytes(ds: Dataset) -> int | None:
    try:
        rows, cols = int(header_value(ds, "Rows")), int(header_value(ds, "Columns"))
        bits = int(header_value(ds, "BitsAllocated"))
        samples = int(header_value(ds, "SamplesPerPixel") or 1)
        frames = int(header_value(ds, "NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    return rows * cols * frames * samples * max(bits, 8) // 8


def _empty_dicom_file(path: Path) -> bool:
    """A zero-byte file named like DICOM (IM0001, 0001.dcm, x.IMA): a truncated copy, not junk."""
    name = path.name
    return not name.startswith(".") and path.suffix.lower() in _DICOM_SUFFIXES and os.stat(path).st_size == 0


@reading_settings()
def read_header(
    source: SourceFile, *, phi: set | None = None, public: set | None = None, seen: set | None = None, fast: bool = True
) -> Header | None:
    """One file's header, or None for a non-DICOM file. Raises InputError when corrupt.

    With a ``phi`` set, the PHI-class values of the header (file meta included) are collected
    into it from the same read (``phi.collect``), so the audit needs no second header pass;
    ``seen`` is ``phi.collect_elements``' memory of what is already in ``phi``/``public``.
    The fast reader (``dicom.fast.read_fast``) reads the file when it covers it, pydicom otherwise
    (always, with ``fast=False``); both give the same header, values and errors.
    """
    path = source.path
    try:
        if not fast:
            raise NotFast("pydicom asked for")
        fast_file = read_fast(path, headers_only=True, lazy=True)
        check_values(fast_file)
    except (NotFast, OSError):
        # Not a plain case (or not DICOM, or unreadable, or empty): the careful way, in order.
        if not os.access(path, os.R_OK):  # looks_like_dicom would call it "not DICOM"
            raise InputError(f"input: {source.relpath}: not readable (permission denied)") from None
        if _empty_dicom_file(path):
            raise InputError(
                f"input: {source.relpath}: empty file (0 bytes; an interrupted copy?): "
                "copy the series again or remove the file"
            ) from None
        if not looks_like_dicom(path):
            if gzip_damaged(path):  # may have been a DICOM file: do not skip it
                raise InputError(
                    f"input: {source.relpath}: corrupt gzip stream (a damaged copy?): copy the file again or remove it"
                ) from None
            return None
        scanned: FastFile | None = None
        ds, offset, size = _read_with_pydicom(source)
    else:
        scanned = fast_file
        ds, size = fast_file.dataset, fast_file.size
        offset = size if fast_file.pixel_at is None else fast_file.pixel_at
    if not all(header_value(ds, k) for k in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")):
        if _non_image_object(ds):
            # a DICOMDIR's records repeat the patients' names and IDs, at times in another
            # spelling (a CD writer's character set): search terms like any header's
            if phi is not None:
                _collect(ds, scanned, phi, public, seen)
            raise NonImageFile(source.relpath)
        # pydicom stops quietly at EOF between elements: a cut header looks like a short one.
        raise InputError(
            f"input: {source.relpath}: corrupt or truncated DICOM header (SOP class, study or series UID missing)"
        )
    if phi is not None:
        _collect(ds, scanned, phi, public, seen)
    remaining = size - offset
    syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", ""))
    has_pixels = remaining > 0
    expected = _expected_pixel_bytes(ds)
    if expected and expected > MAX_PIXEL_BYTES:
        # Checked before any decoder sees the file: Rows = Columns = 65535 would allocate 8 GiB.
        raise InputError(
            f"input: {source.relpath}: implausible image size ({expected / 2**30:.1f} GiB of "
            f"pixels declared; the limit is {MAX_PIXEL_BYTES / 2**30:.0f} GiB per file)"
        )
    if has_pixels and expected and syntax in _NATIVE_SYNTAXES:
        # 12 bytes of tag/VR/length precede the value in explicit VR; 8 in implicit.
        if remaining - 8 < expected:
            raise InputError(
                f"input: {source.relpath}: truncated DICOM file (pixel data {remaining} of {expected} bytes)"
            )
    try:
        return _header_from(ds, source, has_pixels)
    except (
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        OverflowError,
        IndexError,
        NotImplementedError,
    ) as exc:  # pydicom parses values lazily: a corrupt VR raises here
        raise InputError(f"input: {source.relpath}: unreadable DICOM header ({type(exc).__name__})") from None


def _read_with_pydicom(source: SourceFile) -> tuple[Dataset, int, int]:
    """(dataset, offset of the pixel data or end of header, file size) read by pydicom."""
    path = source.path
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as handle:
                blob = handle.read()
            stream: io.BufferedIOBase = io.BytesIO(blob)
            size = len(blob)
        else:
            stream = open(path, "rb")
            size = os.fstat(stream.fileno()).st_size
        with stream:
            ds = read_stream(stream, headers_only=True)
            offset = stream.tell()
            if str(ds.file_meta.get("TransferSyntaxUID", "")) == DEFLATED:
                # the data set is one deflate stream: a position in the file says nothing about
                # where the pixel data starts, so read it all (deflated files are rare and small)
                stream.seek(0)
                whole = read_stream(stream, headers_only=False)
                offset = size - (len(whole.PixelData) if "PixelData" in whole else 0)
        parse_all(ds)  # lazily parsed elements: a corrupt one fails here, naming the file
    except _READ_ERRORS as exc:
        raise _read_error(source, exc) from None
    return ds, offset, size


def _read_error(source: SourceFile, exc: Exception) -> InputError:
    if isinstance(exc, PermissionError):
        return InputError(f"input: {source.relpath}: not readable (permission denied)")
    return InputError(f"input: {source.relpath}: corrupt or truncated DICOM header ({type(exc).__name__})")


def _header_from(ds: Dataset, source: SourceFile, has_pixels: bool) -> Header:
    image_type = _tokens(ds, "ImageType")
    ge_part = ge_private_image_type(ds)
    has_diffusion = (
        "DiffusionBValue" in ds
        or (0x0043, 0x1039) in ds
        or (0x0019, 0x100C) in ds
        or (0x2001, 0x1003) in ds
        or "MRDiffusionSequence" in ds
        or "MRDiffusionSequence" in (per_frame_item(ds, 0) or ())
    )
    return Header(
        path=source.path,
        relpath=source.relpath,
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        conversion_type=_text(ds, "ConversionType").upper(),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        birth_date=_text(ds, "PatientBirthDate"),
        patient_age=_text(ds, "PatientAge"),
        patient_sex=_text(ds, "PatientSex").upper(),
        series_number=_integer(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        sequence_name=_text(ds, "SequenceName"),
        image_type=image_type,
        modality=_text(ds, "Modality").upper(),
        manufacturer=_text(ds, "Manufacturer"),
        model=_text(ds, "ManufacturerModelName"),
        rows=_integer(ds, "Rows") or 0,
        columns=_integer(ds, "Columns") or 0,
        frames=_integer(ds, "NumberOfFrames") or 1,
        echo_number=_integer(ds, "EchoNumbers"),
        echo_time=_number(ds, "EchoTime"),
        repetition_time=_number(ds, "RepetitionTime"),
        flip_angle=_number(ds, "FlipAngle"),
        inversion_time=_number(ds, "InversionTime"),
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        position=_floats(ds, "ImagePositionPatient", 3),
        instance_number=_integer(ds, "InstanceNumber"),
        acquisition_time=_text(ds, "AcquisitionTime"),
        series_time=_text(ds, "SeriesTime"),
        burned_in=_text(ds, "BurnedInAnnotation").upper(),
        photometric=_text(ds, "PhotometricInterpretation").upper(),
        samples=_integer(ds, "SamplesPerPixel") or 1,
        ge_part=ge_part,
        has_pixels=has_pixels,
        has_diffusion=has_diffusion,
        kind=classic_kind(ds, ge_part),
        frame_infos=_frame_infos(ds) if is_multiframe(ds) else (),
        pulse_sequence=_private_text(ds, (0x0019, 0x109C)) if "GE" in _text(ds, "Manufacturer").upper() else "",
        phase_encoding=phase_encoding_label(ds),
        scanning_sequence=_tokens(ds, "ScanningSequence"),
        sequence_variant=_tokens(ds, "SequenceVariant"),
    )


def _tokens(ds: Dataset, keyword: str) -> tuple[str, ...]:
    """A multi-valued code string as upper-case tokens (``SE\\IR`` -> ("SE", "IR"))."""
    return tuple(t.strip().upper() for t in _text(ds, keyword).split("\\") if t.strip())


def _private_text(ds: Dataset, tag: tuple[int, int]) -> str:
    value = dicom_header.value(ds, tag)  # converted once per distinct value, not per file
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip().strip("\x00").strip()


def _frame_infos(ds: Dataset) -> tuple[FrameInfo, ...]:
    """Kind and position of every frame; () when the functional groups are unusable."""
    try:
        infos = []
        for view in frame_views(ds):
            frame_type = tuple(str(t).strip().upper() for t in (view.get("FrameType") or ()))
            infos.append(FrameInfo(frame_kind(view), _floats(view, "ImagePositionPatient", 3), frame_type))
        return tuple(infos)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        return ()


def mosaic_images(path: Path) -> int | None:
    """How many slices a Siemens mosaic file holds (CSA ``NumberOfImagesInMosaic``), None when unknown.

    Read for the first file of a mosaic series only (a second read of one file, not a CSA parse
    per file in the header pass): the index reports a mosaic's real matrix and slice count.
    """
    import pydicom

    from packager.dicom.vendor import csa_header

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the header pass read this file already; unknown, not an error
        return None
    count = csa_header(ds, "image").get("NumberOfImagesInMosaic")
    try:
        value = int(count) if count is not None else 0
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None
