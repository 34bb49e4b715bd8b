"""Stage 2, index: local files -> sessions and series (one header pass, no pixel data).

Every candidate file is read once up to its pixel data. Files without the DICM prefix are
skipped and counted (gzip-compressed DICOM is opened transparently). Files grouped by
SeriesInstanceUID are split by echo number, image part (magnitude/phase/real/imaginary),
orientation and matrix, so each resulting ``Series`` is one convertible volume stack.
Non-image SOP classes, burned-in annotation, localizers and other policy exclusions are
marked on the ``Series`` with a reason; nothing is dropped silently.
Refuses (InputError): DICOM files that cannot be parsed or are truncated, no DICOM at all.
"""
from __future__ import annotations

import gzip
import io
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .config import ExcludeConfig
from .dicomio import looks_like_dicom
from .errors import InputError
from .model import ExclusionReason, Series, Session, SourceFile

log = logging.getLogger(__name__)

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
IMAGE_SOP_CLASSES = {
    MR_IMAGE, ENHANCED_MR, "1.2.840.10008.5.1.4.1.1.4.4",  # legacy converted enhanced MR
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",  # CT, enhanced CT
    "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.130",  # PET, enhanced PET
}
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"
_LOCALIZER_WORDS = ("localizer", "localiser", "scout", "survey", "aahead_scout", "3plane", "3-plane")
_DERIVED_TOKENS = {"ADC", "FA", "TRACEW", "TRACE", "MOCO", "MPR", "MIP", "MNIP", "COLFA", "EADC",
                   "TENSOR", "CPR", "SUBTRACT", "PROJECTION IMAGE", "CSAPARALLEL", "CSA MPR"}
_PART_TOKENS = {"M": "mag", "MAGNITUDE": "mag", "P": "phase", "PHASE": "phase", "R": "real",
                "REAL": "real", "I": "imag", "IMAGINARY": "imag"}
_GE_PART = {0: "mag", 1: "phase", 2: "real", 3: "imag"}
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


@dataclass(frozen=True, slots=True)
class Header:
    """The typed subset of one file's header that indexing needs (None when absent)."""

    path: Path
    relpath: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    study_date: str
    study_time: str
    birth_date: str
    patient_age: str
    patient_sex: str
    series_number: int | None
    series_description: str
    protocol_name: str
    sequence_name: str
    image_type: tuple[str, ...]
    modality: str
    manufacturer: str
    model: str
    rows: int
    columns: int
    frames: int
    echo_number: int | None
    echo_time: float | None
    repetition_time: float | None
    flip_angle: float | None
    inversion_time: float | None
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    instance_number: int | None
    acquisition_time: str
    series_time: str
    burned_in: str
    photometric: str
    samples: int
    ge_part: int | None
    has_pixels: bool
    has_diffusion: bool


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _integer(ds: Dataset, keyword: str) -> int | None:
    number = _number(ds, keyword)
    return int(number) if number is not None and np.isfinite(number) else None


def _floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == count and all(np.isfinite(values)) else None


def _expected_pixel_bytes(ds: Dataset) -> int | None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    return rows * cols * frames * samples * max(bits, 8) // 8


def read_header(source: SourceFile) -> Header | None:
    """One file's header, or None for a non-DICOM file. Raises InputError when corrupt."""
    path = source.path
    if not looks_like_dicom(path):
        return None
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        if compressed:
            with gzip.open(path, "rb") as handle:
                blob = handle.read()
            stream: io.BufferedIOBase = io.BytesIO(blob)
            size = len(blob)
        else:
            stream = open(path, "rb")
            size = os.fstat(stream.fileno()).st_size
        with stream:
            ds = pydicom.dcmread(stream, stop_before_pixels=True)
            offset = stream.tell()
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, OverflowError, IndexError, NotImplementedError) as exc:
        if isinstance(exc, PermissionError):
            raise InputError(f"input: {source.relpath}: not readable (permission denied)") from None
        raise InputError(f"input: {source.relpath}: corrupt or truncated DICOM header "
                         f"({type(exc).__name__})") from None
    if not all(ds.get(k) for k in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")):
        # pydicom stops quietly at EOF between elements: a cut header looks like a short one.
        raise InputError(f"input: {source.relpath}: corrupt or truncated DICOM header "
                         "(SOP class, study or series UID missing)")
    remaining = size - offset
    syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", ""))
    has_pixels = remaining > 0
    expected = _expected_pixel_bytes(ds)
    if has_pixels and expected and syntax in _NATIVE_SYNTAXES:
        # 12 bytes of tag/VR/length precede the value in explicit VR; 8 in implicit.
        if remaining - 8 < expected:
            raise InputError(f"input: {source.relpath}: truncated DICOM file "
                             f"(pixel data {remaining} of {expected} bytes)")
    try:
        return _header_from(ds, source, has_pixels)
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
        raise InputError(f"input: {source.relpath}: unreadable DICOM header "
                         f"({type(exc).__name__})") from None


def _header_from(ds: Dataset, source: SourceFile, has_pixels: bool) -> Header:
    image_type = tuple(t.strip().upper() for t in _text(ds, "ImageType").split("\\") if t.strip())
    ge_part = None
    if "GE" in _text(ds, "Manufacturer").upper():
        element = ds.get((0x0043, 0x102F))
        if element is not None:
            try:
                ge_part = int(element.value if not isinstance(element.value, bytes)
                              else int.from_bytes(element.value[:2], "little", signed=True))
            except (TypeError, ValueError):
                ge_part = None
    has_diffusion = (
        "DiffusionBValue" in ds or (0x0043, 0x1039) in ds or (0x0019, 0x100C) in ds
        or (0x2001, 0x1003) in ds or "MRDiffusionSequence" in ds
        or any("MRDiffusionSequence" in item for item in ds.get("PerFrameFunctionalGroupsSequence", [])[:1])
    )
    return Header(
        path=source.path, relpath=source.relpath,
        sop_class_uid=_text(ds, "SOPClassUID"), study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"), patient_id=_text(ds, "PatientID"),
        study_date=_text(ds, "StudyDate"), study_time=_text(ds, "StudyTime"),
        birth_date=_text(ds, "PatientBirthDate"), patient_age=_text(ds, "PatientAge"),
        patient_sex=_text(ds, "PatientSex").upper(),
        series_number=_integer(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"), protocol_name=_text(ds, "ProtocolName"),
        sequence_name=_text(ds, "SequenceName"), image_type=image_type,
        modality=_text(ds, "Modality").upper(), manufacturer=_text(ds, "Manufacturer"),
        model=_text(ds, "ManufacturerModelName"),
        rows=_integer(ds, "Rows") or 0, columns=_integer(ds, "Columns") or 0,
        frames=_integer(ds, "NumberOfFrames") or 1,
        echo_number=_integer(ds, "EchoNumbers"), echo_time=_number(ds, "EchoTime"),
        repetition_time=_number(ds, "RepetitionTime"), flip_angle=_number(ds, "FlipAngle"),
        inversion_time=_number(ds, "InversionTime"),
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        position=_floats(ds, "ImagePositionPatient", 3),
        instance_number=_integer(ds, "InstanceNumber"),
        acquisition_time=_text(ds, "AcquisitionTime"), series_time=_text(ds, "SeriesTime"),
        burned_in=_text(ds, "BurnedInAnnotation").upper(),
        photometric=_text(ds, "PhotometricInterpretation").upper(),
        samples=_integer(ds, "SamplesPerPixel") or 1,
        ge_part=ge_part, has_pixels=has_pixels, has_diffusion=has_diffusion,
    )


def _orientation_label(orientation: tuple[float, ...] | None) -> str:
    if orientation is None:
        return "unknown"
    normal = np.cross(orientation[:3], orientation[3:])
    axis = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[axis]


def _part(header: Header) -> str:
    if header.ge_part is not None and header.ge_part in _GE_PART:
        return _GE_PART[header.ge_part]
    for token in header.image_type[2:4]:
        if token in _PART_TOKENS:
            return _PART_TOKENS[token]
    return "mag"


def _exclusion(header: Header, series_text: str, exclude: ExcludeConfig) -> tuple[ExclusionReason | None, str]:
    sop = header.sop_class_uid
    if sop == SIEMENS_CSA_NON_IMAGE or "PHOENIX" in series_text.upper() or "CSA REPORT" in header.image_type:
        return ExclusionReason.PHOENIX, "Siemens non-image (CSA/Phoenix) object"
    if sop in exclude.sop_classes:
        return ExclusionReason.CONFIG, "SOP class listed in [exclude] sop_classes"
    if sop.startswith("1.2.840.10008.5.1.4.1.1.7"):
        return ExclusionReason.SECONDARY_CAPTURE, "secondary capture SOP class"
    if sop.startswith("1.2.840.10008.5.1.4.1.1.88"):
        return ExclusionReason.NOT_IMAGE, "structured report"
    if sop.startswith("1.2.840.10008.5.1.4.1.1.11"):
        return ExclusionReason.NOT_IMAGE, "presentation state"
    if sop.startswith("1.2.840.10008.5.1.4.1.1.104"):
        return ExclusionReason.NOT_IMAGE, "encapsulated document"
    if sop in ("1.2.840.10008.5.1.4.1.1.4.2", "1.2.840.10008.5.1.4.1.1.66") or "SPECTROSCOPY" in header.image_type:
        return ExclusionReason.SPECTROSCOPY, "spectroscopy or raw data SOP class"
    if sop == "1.2.840.10008.5.1.4.1.1.4.3":
        return ExclusionReason.RGB, "enhanced MR colour image"
    if sop not in IMAGE_SOP_CLASSES:
        return ExclusionReason.UNSUPPORTED_SOP, "not an MR/CT/PET image SOP class"
    if header.burned_in and header.burned_in != "NO":
        return ExclusionReason.BURNED_IN, "BurnedInAnnotation is not NO"
    if header.photometric.startswith(("RGB", "YBR", "PALETTE")) or header.samples != 1:
        return ExclusionReason.RGB, "colour image"
    if not header.has_pixels:
        return ExclusionReason.CONVERSION_FAILED, "no pixel data"
    lowered = series_text.lower()
    if exclude.localizers and ("LOCALIZER" in header.image_type
                               or any(word in lowered for word in _LOCALIZER_WORDS)):
        return ExclusionReason.LOCALIZER, "localizer"
    if exclude.derived and header.image_type[:1] == ("DERIVED",) and (
            header.image_type[1:2] == ("SECONDARY",) or set(header.image_type) & _DERIVED_TOKENS):
        return ExclusionReason.DERIVED, "derived image"
    return None, ""


def _volume_counts(group: list[Header]) -> tuple[int, int]:
    frames = sum(h.frames for h in group)
    if any(h.frames > 1 for h in group):
        return frames, 0
    positions = {tuple(round(v, 2) for v in h.position) for h in group if h.position}
    slices = max(len(positions), 1)
    return slices, max(len(group) // slices, 1)


def index_files(files, exclude: ExcludeConfig) -> tuple[tuple[Session, ...], tuple[Series, ...], int]:
    """Group files into sessions and series.

    Parameters
    ----------
    files : iterable of SourceFile
    exclude : ExcludeConfig
        Policy for localizers, derived images and extra SOP classes.

    Returns
    -------
    sessions, series, skipped
        ``skipped`` counts non-DICOM files.

    Raises
    ------
    InputError
        A corrupt or truncated DICOM file, or no DICOM file at all.
    """
    headers: list[Header] = []
    skipped = 0
    for source in files:
        header = read_header(source)
        if header is None:
            skipped += 1
        else:
            headers.append(header)
    if not headers:
        raise InputError(f"input: no DICOM files found ({skipped} other file(s) skipped)")

    groups: dict[tuple, list[Header]] = defaultdict(list)
    for header in headers:
        key = (header.patient_id, header.study_uid, header.series_uid, header.echo_number or 0,
               _part(header), _orientation_label(header.orientation) if header.frames == 1 else "mf",
               tuple(round(v, 3) for v in header.orientation) if header.orientation and header.frames == 1 else (),
               header.rows, header.columns)
        groups[key].append(header)

    session_keys: dict[tuple[str, str], list[Header]] = defaultdict(list)
    for key, group in groups.items():
        session_keys[(key[0], key[1])].extend(group[:1])
    ordered_sessions = sorted(session_keys, key=lambda k: (k[0], min(h.study_date + h.study_time for h in session_keys[k]), k[1]))
    sessions = []
    for number, skey in enumerate(ordered_sessions):
        first = session_keys[skey][0]
        sessions.append(Session(index=number, patient_id=skey[0], study_uid=skey[1],
                                study_date=first.study_date, birth_date=first.birth_date,
                                patient_age=first.patient_age, patient_sex=first.patient_sex))
    session_of = {skey: n for n, skey in enumerate(ordered_sessions)}

    def order(key):
        group = groups[key]
        times = sorted(h.acquisition_time or h.series_time for h in group)
        return (session_of[(key[0], key[1])], group[0].series_number if group[0].series_number is not None else 1 << 30,
                times[0] if times else "", key[3], key[4], key[2])

    series = []
    for number, key in enumerate(sorted(groups, key=order)):
        group = sorted(groups[key], key=lambda h: (h.instance_number if h.instance_number is not None else 0, h.relpath))
        first = group[0]
        text = f"{first.series_description} {first.protocol_name}"
        reason, detail = _exclusion(first, text, exclude)
        if reason is None and len({h.sop_class_uid for h in group}) > 1:
            reason, detail = ExclusionReason.INCONSISTENT, "mixed SOP classes in one series"
        slices, volumes = _volume_counts(group)
        times = sorted(h.acquisition_time or h.series_time for h in group)
        series.append(Series(
            index=number, session=session_of[(key[0], key[1])], series_number=first.series_number,
            series_description=first.series_description, protocol_name=first.protocol_name,
            sequence_name=first.sequence_name, image_type=first.image_type, modality=first.modality,
            sop_class_uid=first.sop_class_uid, manufacturer=first.manufacturer, model=first.model,
            rows=first.rows, columns=first.columns, n_files=len(group),
            n_frames=sum(h.frames for h in group), n_slices=slices, n_volumes=volumes,
            echo_number=first.echo_number, echo_time=first.echo_time,
            repetition_time=first.repetition_time, flip_angle=first.flip_angle,
            inversion_time=first.inversion_time,
            orientation=_orientation_label(first.orientation), part=key[4],
            is_derived=first.image_type[:1] == ("DERIVED",),
            is_localizer=reason is ExclusionReason.LOCALIZER,
            is_multiframe=any(h.frames > 1 for h in group), is_mosaic="MOSAIC" in first.image_type,
            has_diffusion=first.has_diffusion, acquisition_order=times[0] if times else "",
            uid=first.series_uid, files=tuple(h.path for h in group),
            relpaths=tuple(h.relpath for h in group), exclusion=reason, exclusion_detail=detail,
        ))
    log.info("index: %d DICOM file(s) in %d series, %d session(s); %d other file(s) skipped",
             len(headers), len(series), len(sessions), skipped)
    return tuple(sessions), tuple(series), skipped


def mark_excluded(series: Series, reason: ExclusionReason, detail: str) -> Series:
    """A copy of ``series`` carrying an exclusion."""
    return replace(series, exclusion=reason, exclusion_detail=detail)
