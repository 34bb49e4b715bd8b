"""Index, the record of one file's header (``Header``) and what the grouping derives from it
without reading anything: kept apart from ``index.header``, which reads files with pydicom, so
that a build whose headers all come from the build cache (``index.reuse``) groups and names them
without importing pydicom (~0.1 s of such a build's 0.9 s on the incremental benchmark)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from packager.dicom.kinds import ImageKind


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """One frame of an enhanced file: what it is (``ImageKind``) and where it is."""

    kind: ImageKind
    position: tuple[float, ...] | None
    frame_type: tuple[str, ...]


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
    kind: ImageKind = ImageKind(None, "mag")
    frame_infos: tuple[FrameInfo, ...] = ()  # enhanced files only
    pulse_sequence: str = ""  # GE private (0019,109C)
    phase_encoding: str = ""  # AP/PA/LR/RL/SI/IS when the header states axis and polarity
    sop_instance_uid: str = ""
    conversion_type: str = ""  # secondary-capture equipment: WSD, SD, DV, ... (a picture of a screen)
    scanning_sequence: tuple[str, ...] = ()  # ScanningSequence tokens (SE, GR, IR, EP, RM)
    sequence_variant: tuple[str, ...] = ()  # SequenceVariant tokens (SK, SS, MP, ...)
    patient_name: str = ""  # only for deid's identity checks (one ID, several people?)


@lru_cache(maxsize=4096)
def orientation_label(orientation: tuple[float, ...] | None) -> str:
    """The plane an image is closest to, from its direction cosines (row, column): the largest
    component of their cross product (the first of equal ones)."""
    if orientation is None:
        return "unknown"
    r0, r1, r2, c0, c1, c2 = orientation[:6]
    normal = (abs(r1 * c2 - r2 * c1), abs(r2 * c0 - r0 * c2), abs(r0 * c1 - r1 * c0))
    nan = [axis for axis, length in enumerate(normal) if length != length]  # numpy's argmax: a NaN wins
    return ("sagittal", "coronal", "axial")[nan[0] if nan else normal.index(max(normal))]
