"""Index: local files -> an ``Index``: sessions, series and, when asked, the headers'
PHI values (one header pass, no pixel data).

Every candidate file is read once up to its pixel data. Files without the DICM prefix are
skipped and counted (gzip-compressed DICOM is opened transparently). Files grouped by
SeriesInstanceUID are split by SeriesNumber (re-exported copies), echo (number and time), image
part (magnitude/phase/real/imaginary/direct field map), orientation, matrix and ORIGINAL/DERIVED
(``GroupKey``), so
each resulting ``Series`` is one
convertible volume stack. Enhanced (multi-frame) files are split per frame the same way
(``Series.frames`` lists the frames taken), derived isotropic diffusion frames go to a series
of their own, and GE direct B0 maps are split into field map and magnitude.
Non-image SOP classes, burned-in annotation, localizers and other policy exclusions are
marked on the ``Series`` with a reason; nothing is dropped silently. A damaged file (truncated,
empty, corrupt) excludes the series it belongs to (``index.damaged``); DICOMDIR files are counted.
Refuses (InputError): no DICOM image at all; with ``strict``, any damaged file.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from packager import cache as cache_service
from packager import executors
from packager.config import ExcludeConfig
from packager.dicom.kinds import ImageKind
from packager.errors import InputError
from packager.index.damaged import attribute
from packager.index.record import Header, orientation_label
from packager.index.scan import read_headers
from packager.model import ExclusionReason, Index, Series, Session

log = logging.getLogger(__name__)

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
IMAGE_SOP_CLASSES = {
    MR_IMAGE,
    ENHANCED_MR,
    "1.2.840.10008.5.1.4.1.1.4.4",  # legacy converted enhanced MR
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",  # CT, enhanced CT
    "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.130",  # PET, enhanced PET
}
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"
_LOCALIZER_WORDS = ("localizer", "localiser", "scout", "survey", "aahead_scout", "3plane", "3-plane")
_DERIVED_TOKENS = {
    "ADC",
    "FA",
    "TRACEW",
    "TRACE",
    "MOCO",
    "MPR",
    "MIP",
    "MNIP",
    "COLFA",
    "EADC",
    "TENSOR",
    "CPR",
    "SUBTRACT",
    "PROJECTION IMAGE",
    "CSAPARALLEL",
    "CSA MPR",
}
# GE direct B0 field maps keep the field map (Hz) and its magnitude in one series as two
# volumes, field map first, with no public tag telling them apart (GE in dcm2niix issue #501);
# dcm2niix splits them by these pulse sequence names (0019,109C) (checked on dcm_qa_fmap/GE by
# renaming the sequence: the split disappears).
_GE_B0_SEQUENCES = {"B0MAP", "B0RF", "3DB0MAP"}


@dataclass(frozen=True, slots=True)
class _Unit:
    """The images of one file that belong to one series: a classic file, or some frames."""

    header: Header
    frames: tuple[int, ...]  # frames taken from an enhanced file; () for a classic file
    kind: ImageKind
    echo_number: int | None  # enhanced files: None here, ranked by echo time later
    echo_time: float | None

    @property
    def positions(self) -> list[tuple[float, ...] | None]:
        if self.frames:
            return [self.header.frame_infos[f].position for f in self.frames]
        return [self.header.position]

    @property
    def image_type(self) -> tuple[str, ...]:
        if self.frames and self.header.frame_infos[self.frames[0]].frame_type:
            return self.header.frame_infos[self.frames[0]].frame_type
        return self.header.image_type


class GroupKey(NamedTuple):
    """What the images of one series share: one key, one NIfTI (``None``: not in the header)."""

    patient_id: str
    study_uid: str
    series_uid: str
    # Re-exported or edited copies keep the SeriesInstanceUID but not the SeriesNumber: dcm2niix
    # keeps them apart, and so do we (one UID, two numbers: two series)
    series_number: int | None
    echo_number: int | None
    echo_time: float | None
    part: str
    plane: str  # sagittal/coronal/axial/unknown for classic files, "mf" for enhanced frames
    orientation: tuple[float, ...] | None  # classic files only, rounded
    rows: int | None
    columns: int | None
    isotropic: bool
    # ORIGINAL and DERIVED images of one series (a lossy or processed copy stored beside the
    # acquired images) are two volumes in dcm2niix, never one stack
    derived: bool

    @classmethod
    def of(cls, unit: _Unit) -> GroupKey:
        header = unit.header
        classic = header.frames == 1 and not unit.frames
        return cls(
            header.patient_id,
            header.study_uid,
            header.series_uid,
            header.series_number,
            unit.echo_number,
            unit.echo_time,
            unit.kind.part,
            orientation_label(header.orientation) if classic else "mf",
            tuple(round(v, 3) for v in header.orientation) if header.orientation and classic else None,
            header.rows,
            header.columns,
            unit.kind.isotropic,
            "DERIVED" in header.image_type,
        )

    @property
    def session(self) -> tuple[str, str]:
        return self.patient_id, self.study_uid

    def without_matrix(self) -> GroupKey:
        """The same stack whatever its rows and columns (to find a series split by matrix)."""
        return self._replace(rows=None, columns=None)

    def echo_order(self) -> tuple[int, bool, float]:
        """Echoes in order, an unstated number or time first."""
        return self.echo_number or 0, self.echo_time is not None, self.echo_time or 0.0


def _ge_b0_parts(headers: list[Header]) -> dict[Path, str]:
    """GE direct B0 maps: per file, "fieldmap" (first volume) or "mag" (second volume)."""
    by_series: dict[str, list[Header]] = defaultdict(list)
    for header in headers:
        if header.pulse_sequence.upper() in _GE_B0_SEQUENCES and not header.frame_infos and header.position:
            by_series[header.series_uid].append(header)
    parts: dict[Path, str] = {}
    for group in by_series.values():
        at: dict[tuple[float, ...], list[Header]] = defaultdict(list)
        for header in group:
            at[tuple(round(v, 2) for v in header.position or ())].append(header)  # set: filtered above
        if any(len(pair) != 2 for pair in at.values()):
            continue  # not the documented two-volume layout: leave the series whole
        for pair in at.values():
            first, second = sorted(pair, key=lambda h: (h.instance_number or 0, h.relpath))
            parts[first.path], parts[second.path] = "fieldmap", "mag"
    return parts


def _units(headers: list[Header]) -> list[_Unit]:
    """Classic files whole; enhanced files cut into one unit per frame kind."""
    ge_parts = _ge_b0_parts(headers)
    units = []
    for header in headers:
        if header.frame_infos:
            by_kind: dict[ImageKind, list[int]] = defaultdict(list)
            for frame, info in enumerate(header.frame_infos):
                by_kind[info.kind].append(frame)
            for kind, frames in by_kind.items():
                units.append(_Unit(header, tuple(frames), kind, None, kind.echo_time))
        else:
            kind = header.kind
            if header.path in ge_parts:
                kind = replace(kind, part=ge_parts[header.path])
            echo = round(header.echo_time, 4) if header.echo_time is not None else None
            # echo number 0 is "not stated", as when the element is absent
            units.append(_Unit(header, (), kind, header.echo_number or None, echo))
    return units


def _echo_numbers(units: list[_Unit]) -> dict[tuple[str, str, float | None], int]:
    """Enhanced files have no per-frame echo number: rank echo times within series and part."""
    times: dict[tuple[str, str], set[float]] = defaultdict(set)
    for unit in units:
        if unit.frames and unit.kind.echo_time is not None:
            times[(unit.header.series_uid, unit.kind.part)].add(unit.kind.echo_time)
    return {
        (uid, part, time): rank + 1 for (uid, part), values in times.items() for rank, time in enumerate(sorted(values))
    }


def _in_family(sop: str, root: str) -> bool:
    """``sop`` is the SOP class ``root`` or one of its sub-classes (``root.N``), not a longer number."""
    return sop == root or sop.startswith(root + ".")


def pixel_policy(header: Header) -> tuple[ExclusionReason | None, str]:
    """What may be drawn into one image's pixels (text, a screen, colour overlays): checked on
    every file of a series, not its first only, since one flagged image is enough to leak."""
    if header.burned_in and header.burned_in != "NO":
        return ExclusionReason.BURNED_IN, "BurnedInAnnotation is not NO"
    if header.conversion_type:
        return (
            ExclusionReason.SECONDARY_CAPTURE,
            "image converted from a screen, video, film or document (ConversionType)",
        )
    if any("SCREEN" in token for token in header.image_type):
        return ExclusionReason.SECONDARY_CAPTURE, "screen capture (ImageType)"
    if header.photometric.startswith(("RGB", "YBR", "PALETTE")) or header.samples != 1:
        return ExclusionReason.RGB, "colour image"
    return None, ""


def _exclusion(header: Header, series_text: str, exclude: ExcludeConfig) -> tuple[ExclusionReason | None, str]:
    # PHI policy (README "PHI policy"): objects that are text, pictures of text or a picture of
    # the screen never convert; checked before anything else reads their pixels.
    sop = header.sop_class_uid
    if sop == SIEMENS_CSA_NON_IMAGE or "PHOENIX" in series_text.upper() or "CSA REPORT" in header.image_type:
        return ExclusionReason.PHOENIX, "Siemens non-image (CSA/Phoenix) object"
    if sop in exclude.sop_classes:
        return ExclusionReason.CONFIG, "SOP class listed in [exclude] sop_classes"
    if _in_family(sop, "1.2.840.10008.5.1.4.1.1.7"):
        return ExclusionReason.SECONDARY_CAPTURE, "secondary capture SOP class"
    if sop == "1.2.840.10008.5.1.4.1.1.88.59":
        return ExclusionReason.NOT_IMAGE, "key object selection"
    if _in_family(sop, "1.2.840.10008.5.1.4.1.1.88"):
        return ExclusionReason.NOT_IMAGE, "structured report"
    if _in_family(sop, "1.2.840.10008.5.1.4.1.1.481"):
        return ExclusionReason.NOT_IMAGE, "radiotherapy object (RT structure set, plan, dose, image)"
    if _in_family(sop, "1.2.840.10008.5.1.4.1.1.11"):
        return ExclusionReason.NOT_IMAGE, "presentation state"
    if _in_family(sop, "1.2.840.10008.5.1.4.1.1.104"):
        return ExclusionReason.NOT_IMAGE, "encapsulated document"
    if sop in ("1.2.840.10008.5.1.4.1.1.4.2", "1.2.840.10008.5.1.4.1.1.66") or "SPECTROSCOPY" in header.image_type:
        return ExclusionReason.SPECTROSCOPY, "spectroscopy or raw data SOP class"
    if sop == "1.2.840.10008.5.1.4.1.1.4.3":
        return ExclusionReason.RGB, "enhanced MR colour image"
    if sop not in IMAGE_SOP_CLASSES:
        return ExclusionReason.UNSUPPORTED_SOP, "not an MR/CT/PET image SOP class"
    reason, detail = pixel_policy(header)
    if reason is not None:
        return reason, detail
    if not header.has_pixels:
        return ExclusionReason.CONVERSION_FAILED, "no pixel data"
    lowered = series_text.lower()
    if exclude.localizers and ("LOCALIZER" in header.image_type or any(word in lowered for word in _LOCALIZER_WORDS)):
        return ExclusionReason.LOCALIZER, "localizer"
    if (
        exclude.derived
        and header.image_type[:1] == ("DERIVED",)
        and (header.image_type[1:2] == ("SECONDARY",) or set(header.image_type) & _DERIVED_TOKENS)
    ):
        return ExclusionReason.DERIVED, "derived image"
    return None, ""


def _volume_counts(group: list[_Unit]) -> tuple[int, int]:
    images = [
        p
        for unit in group
        for p in (unit.positions if unit.frames or unit.header.frames == 1 else [None] * unit.header.frames)
    ]
    if any(p is None for p in images) and any(unit.header.frames > 1 for unit in group):
        return len(images), 0
    positions = {tuple(round(v, 2) for v in p) for p in images if p}
    slices = max(len(positions), 1)
    return slices, max(len(images) // slices, 1)


def _mosaic_matrix(first: Header, slices: int) -> tuple[int, int, int]:
    """A mosaic's real (rows, columns, slices): its tiles, not the 384x384 image that holds them.

    A mosaic of N slices is ceil(sqrt(N)) tiles per side (as the converter cuts it); unknown
    counts keep the file's matrix, so a series is never described smaller than it is.
    """
    from packager.index.header import mosaic_images  # reads the file (pydicom): only for mosaics

    count = mosaic_images(first.path)
    if count is None:
        return first.rows, first.columns, slices
    per_side = math.ceil(math.sqrt(count))
    if first.rows % per_side or first.columns % per_side:
        return first.rows, first.columns, slices
    return first.rows // per_side, first.columns // per_side, count


#: A series as the index splits it before echoes and parts: its UID and its SeriesNumber.
_SeriesId = tuple[str, int | None]


def _one_file_per_instance(headers: list[Header]) -> tuple[list[Header], dict[_SeriesId, int], set[_SeriesId]]:
    """One file per SOP instance: identical copies of a file (a folder exported twice, a
    ``(copy)`` beside the original) are left out and counted per series (UID and number); files
    that share a SOPInstanceUID but differ in content make their series conflicting. A copy that
    carries another SeriesNumber (re-exported, edited) is a series of its own, not a conflict.

    Images of *distinct* instances are never collapsed, even when their pixels are identical
    (GE multiband QA volumes repeat bit-identical slices): they are distinct time points, as
    dcm2niix stacks them.
    """
    by_instance: dict[tuple[_SeriesId, str], list[Header]] = defaultdict(list)
    for header in headers:
        if header.sop_instance_uid:
            by_instance[((header.series_uid, header.series_number), header.sop_instance_uid)].append(header)
    dropped: set[Path] = set()
    copies: dict[_SeriesId, int] = defaultdict(int)
    conflicts: set[_SeriesId] = set()
    for (series_id, _), same in by_instance.items():
        if len(same) < 2:
            continue
        same = sorted(same, key=lambda h: h.relpath)
        first = _file_digest(same[0].path)
        if all(_file_digest(h.path) == first for h in same[1:]):
            dropped.update(h.path for h in same[1:])
            copies[series_id] += len(same) - 1
        else:
            conflicts.add(series_id)
    if dropped:
        log.warning("index: %d identical copy/copies of files already read left out", len(dropped))
    return [h for h in headers if h.path not in dropped], dict(copies), conflicts


def _file_digest(path: Path) -> bytes:
    """The file's content digest (gzip-compressed files by their DICOM content)."""
    from packager.dicom.reader import is_gzip  # with pydicom: only for duplicate instances

    if is_gzip(path):
        with gzip.open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest()
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def index_files(
    files,
    exclude: ExcludeConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    jobs: int = 1,
    collect_phi: bool = False,
    workers: executors.Workers | None = None,
    cache: Path | None = None,
    strict: bool = False,
) -> Index:
    """Group files into sessions and series.

    Parameters
    ----------
    files : iterable of SourceFile
    exclude : ExcludeConfig
        Policy for localizers, derived images and extra SOP classes.
    progress : callable, optional
        ``progress(done, total)`` as files' headers are read.
    jobs : int
        Worker processes for the header pass (0: all cores; 1: in this process).
    workers : executors.Workers, optional
        Processes to use instead (the build's, shared by its steps).
    collect_phi : bool
        Also collect the PHI-class and public values of every header (``phi.collect``, see
        ``read_header``) into ``Index.phi_values``/``public_values``; the caller applies
        ``phi.without_public`` once everything (source path names too) is collected.
    cache : Path, optional
        The build cache folder: headers of files unchanged since they were stored are reused
        (``index.reuse``).
    strict : bool
        A damaged file stops everything (InputError) instead of leaving out its series.

    Returns
    -------
    Index
        Sessions, series (a series with a damaged file is excluded, ``ExclusionReason.DAMAGED``),
        the counts of skipped non-DICOM files and non-image objects (DICOMDIR), the damaged
        files no series could be named for, and the values collected.

    Raises
    ------
    InputError
        A damaged DICOM file with ``strict``, or no usable DICOM file at all.
    """
    if cache is not None:
        cache_service.Store(cache)  # made private now; ConfigError when others can open it
    scanned = read_headers(list(files), jobs, collect_phi, progress, workers, cache)
    if scanned.bad and (strict or not scanned.headers):
        raise InputError(scanned.bad[0].message)
    if not scanned.headers and not scanned.non_image:
        raise InputError(f"input: no DICOM files found ({scanned.skipped} other file(s) skipped)")
    if not scanned.headers:
        raise InputError(
            f"input: no DICOM images found ({scanned.skipped} other file(s) and "
            f"{scanned.non_image} non-image DICOM object(s), such as a DICOMDIR, skipped)"
        )
    headers, copies, conflicts = _one_file_per_instance(scanned.headers)
    damaged, unattributed = attribute(scanned.bad, headers)

    groups: dict[GroupKey, list[_Unit]] = defaultdict(list)
    units = _units(headers)
    for unit in units:
        groups[GroupKey.of(unit)].append(unit)
    echo_numbers = _echo_numbers(units)
    matrices: dict[GroupKey, set[tuple[int | None, int | None]]] = defaultdict(set)
    for key in groups:
        matrices[key.without_matrix()].add((key.rows, key.columns))

    session_keys: dict[tuple[str, str], list[Header]] = defaultdict(list)
    for key, members in groups.items():
        session_keys[key.session].append(members[0].header)
    ordered_sessions = sorted(
        session_keys, key=lambda k: (k[0], min(h.study_date + h.study_time for h in session_keys[k]), k[1])
    )
    sessions = []
    for number, skey in enumerate(ordered_sessions):
        first = session_keys[skey][0]
        sessions.append(
            Session(
                index=number,
                patient_id=skey[0],
                study_uid=skey[1],
                study_date=first.study_date,
                birth_date=first.birth_date,
                patient_age=first.patient_age,
                patient_sex=first.patient_sex,
                patient_name=first.patient_name,
            )
        )
    session_of = {skey: n for n, skey in enumerate(ordered_sessions)}

    def order(key: GroupKey) -> tuple:
        group = [unit.header for unit in groups[key]]
        times = sorted(h.acquisition_time or h.series_time for h in group)
        return (
            session_of[key.session],
            group[0].series_number if group[0].series_number is not None else 1 << 30,
            times[0] if times else "",
            key.echo_order(),
            key.part,
            key.isotropic,
            key.derived,
            key.series_uid,
        )

    series = []
    first_of: dict[_SeriesId, int] = {}  # a series's copies are counted once, on its first part
    for number, key in enumerate(sorted(groups, key=order)):
        series_id = (key.series_uid, key.series_number)
        first_of.setdefault(series_id, number)
        units_here = sorted(
            groups[key],
            key=lambda u: (u.header.instance_number if u.header.instance_number is not None else 0, u.header.relpath),
        )
        group = [unit.header for unit in units_here]
        unit = units_here[0]
        image_type = unit.image_type
        first = replace(group[0], image_type=image_type)
        text = f"{first.series_description} {first.protocol_name}"
        reason, detail = _exclusion(first, text, exclude)
        if key.series_uid in damaged:
            # issue 19: one bad file leaves out its series, not the study; nothing damaged is published
            reason, detail = ExclusionReason.DAMAGED, damaged[key.series_uid]
        for other in group[1:]:
            if reason is not None:
                break
            reason, detail = pixel_policy(other)
        if reason is None and unit.kind.isotropic and exclude.derived:
            # Philips appends a derived isotropic (trace) image to DWI series; it is derived
            # whatever its frame type says (dcm2niix Philips/README.md).
            reason, detail = ExclusionReason.DERIVED, "derived isotropic (trace) diffusion image"
        if reason is None and series_id in conflicts:
            reason, detail = (
                ExclusionReason.INCONSISTENT,
                (
                    "conflicting instances: two files with one SOPInstanceUID and different contents "
                    "(an edited or re-exported copy?): keep one of them"
                ),
            )
        if reason is None and len({h.sop_class_uid for h in group}) > 1:
            reason, detail = ExclusionReason.INCONSISTENT, "mixed SOP classes in one series"
        if reason is None and len(matrices[key.without_matrix()]) > 1:
            sizes = ", ".join(f"{c}x{r}" for r, c in sorted(matrices[key.without_matrix()]))
            reason, detail = ExclusionReason.INCONSISTENT, f"mixed matrix sizes in one series ({sizes})"
        slices, volumes = _volume_counts(units_here)
        times = sorted(h.acquisition_time or h.series_time for h in group)
        partial = any(u.frames and len(u.frames) != u.header.frames for u in units_here)
        selected = (
            tuple((position, frame) for position, u in enumerate(units_here) for frame in u.frames) if partial else ()
        )
        if unit.frames:
            echo_time = unit.kind.echo_time
            echo_number = echo_numbers.get((first.series_uid, unit.kind.part, echo_time), first.echo_number)
        else:
            echo_time, echo_number = first.echo_time, first.echo_number
        rows, columns = first.rows, first.columns
        if "MOSAIC" in first.image_type:
            rows, columns, slices = _mosaic_matrix(first, slices)
        series.append(
            Series(
                index=number,
                session=session_of[key.session],
                series_number=first.series_number,
                series_description=first.series_description,
                protocol_name=first.protocol_name,
                sequence_name=first.sequence_name,
                image_type=first.image_type,
                modality=first.modality,
                sop_class_uid=first.sop_class_uid,
                manufacturer=first.manufacturer,
                model=first.model,
                rows=rows,
                columns=columns,
                n_files=len(group),
                n_frames=sum(len(u.frames) or u.header.frames for u in units_here),
                n_slices=slices,
                n_volumes=volumes,
                echo_number=echo_number,
                echo_time=echo_time,
                repetition_time=first.repetition_time,
                flip_angle=first.flip_angle,
                inversion_time=first.inversion_time,
                orientation=orientation_label(first.orientation),
                part=unit.kind.part,
                is_derived=first.image_type[:1] == ("DERIVED",) or unit.kind.isotropic,
                is_localizer=reason is ExclusionReason.LOCALIZER,
                is_multiframe=any(h.frames > 1 for h in group),
                is_mosaic="MOSAIC" in first.image_type,
                has_diffusion=any(h.has_diffusion for h in group),  # Canon b=0 images state none
                acquisition_order=times[0] if times else "",
                uid=first.series_uid,
                files=tuple(h.path for h in group),
                relpaths=tuple(h.relpath for h in group),
                exclusion=reason,
                exclusion_detail=detail,
                frames=selected,
                phase_encoding=first.phase_encoding,
                duplicates_left_out=copies.get(series_id, 0) if number == first_of[series_id] else 0,
                scanning_sequence=first.scanning_sequence,
                sequence_variant=first.sequence_variant,
            )
        )
    log.info(
        "index: %d DICOM file(s) in %d series, %d session(s); %d other file(s), %d non-image object(s) "
        "skipped; %d damaged file(s)",
        len(headers),
        len(series),
        len(sessions),
        scanned.skipped,
        scanned.non_image,
        len(scanned.bad),
    )
    return Index(
        tuple(sessions),
        tuple(series),
        scanned.skipped,
        frozenset(scanned.phi),
        frozenset(scanned.public),
        non_image_files=scanned.non_image,
        unattributed=tuple(unattributed),
    )
