"""Plain typed data passed between pipeline stages (no behaviour beyond derived names)."""

from __future__ import annotations

import enum
import posixpath
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NIFTI = ".nii.gz"  # the extension of every image dcmpack writes


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One candidate file found by a source; ``relpath`` is relative to the source root."""

    path: Path
    relpath: str


@dataclass(frozen=True, slots=True)
class SourceSet:
    """Everything a source produced: files on local disk plus counts of what it skipped."""

    root: Path
    files: tuple[SourceFile, ...]
    label: str = "input"
    not_fetched: int = 0  # non-image series a remote source skipped (excluded as NOT_IMAGE)


class ExclusionReason(enum.Enum):
    """Why a series is not in the bundle (closed set, shown in plan, manifest and report)."""

    NOT_IMAGE = "non-image object (SR, presentation state, report, raw data, PDF)"
    SECONDARY_CAPTURE = "secondary capture"
    BURNED_IN = "burned-in annotation"
    DERIVED = "derived image excluded by config"
    LOCALIZER = "localizer"
    RGB = "colour (RGB) image"
    SPECTROSCOPY = "spectroscopy or raw data"
    PHOENIX = "Siemens Phoenix protocol report"
    UNSUPPORTED_SOP = "unsupported SOP class"
    HEURISTIC_SKIP = "skipped by heuristic"
    UNNAMED = "no BIDS name from heuristic"
    CONVERSION_FAILED = "conversion failed"
    INCONSISTENT = "inconsistent geometry"
    DUPLICATE = "duplicate BIDS name"
    CONFIG = "excluded by config"
    DAMAGED = "damaged or unreadable file"
    DEFACE_REFUSED = "defacing refused"

    @property
    def is_error(self) -> bool:
        """True when the exclusion is a failure (exit 1), not policy."""
        return self in (
            ExclusionReason.CONVERSION_FAILED,
            ExclusionReason.INCONSISTENT,
            ExclusionReason.DUPLICATE,
            ExclusionReason.DAMAGED,
            ExclusionReason.DEFACE_REFUSED,
        )

    @property
    def advice(self) -> str:
        """What the data owner can do about it: one value-free line (plan, build, the report)."""
        return _ADVICE[self]


_CONVERT_ADVICE = (
    "convert it with --engine auto (dcm2niix for each series dcmpack refuses), "
    "or leave it out with a rule (skip = true)"
)
_RULE_ADVICE = "write a rule for it: dcmpack inspect lists the fields rules match on"
#: The next step for each reason (failures: shown after the detail by plan and build; every
#: reason: the report's "what to do" column).
_ADVICE = {
    ExclusionReason.NOT_IMAGE: "nothing: reports, presentation states and raw data never go into a BIDS bundle",
    ExclusionReason.SECONDARY_CAPTURE: "nothing: screenshots and secondary captures can show PHI in their pixels",
    ExclusionReason.BURNED_IN: "export the series without burned-in annotation (it is PHI in the pixels)",
    ExclusionReason.DERIVED: "if it belongs in the release: [exclude] derived = false in release.toml",
    ExclusionReason.LOCALIZER: "nothing (localizers are not analysed); [exclude] localizers = false keeps them",
    ExclusionReason.RGB: "nothing: colour images are not MR data dcmpack converts",
    ExclusionReason.SPECTROSCOPY: "nothing: spectroscopy and raw data are not converted",
    ExclusionReason.PHOENIX: "nothing: a protocol report is not an image",
    ExclusionReason.UNSUPPORTED_SOP: "convert it with another tool if it belongs in the release",
    ExclusionReason.HEURISTIC_SKIP: f"if it belongs in the release: {_RULE_ADVICE}",
    ExclusionReason.UNNAMED: _RULE_ADVICE,
    ExclusionReason.CONVERSION_FAILED: _CONVERT_ADVICE,
    ExclusionReason.INCONSISTENT: _CONVERT_ADVICE,
    ExclusionReason.DUPLICATE: "give the runs distinct entities in the heuristic (run, acq, ...), or skip one",
    ExclusionReason.CONFIG: "change the [exclude] settings of release.toml if it should be released",
    ExclusionReason.DAMAGED: "copy the series again from the scanner or archive (--strict stops the build instead)",
    ExclusionReason.DEFACE_REFUSED: (
        "check the image in a viewer: a head the template cannot be fitted to is refused rather than "
        "published with a face or a hole in the brain; to release it undefaced, set [deface] with a reason"
    ),
}


@dataclass(frozen=True, slots=True)
class BadFile:
    """A DICOM file (or one named like DICOM) that cannot be used: empty, truncated, corrupt.

    ``series_uid``/``series_number`` are what could still be read from its header ("" / None
    when nothing could); ``message`` is the value-free error line naming it by relpath.
    """

    relpath: str
    message: str
    series_uid: str = field(repr=False, default="")
    series_number: int | None = None

    @property
    def folder(self) -> str:
        """The folder holding it, relative to the SOURCE (archive members: inside their archive)."""
        return self.relpath.rpartition("/")[0]

    @property
    def problem(self) -> str:
        """The message without its ``input: `` prefix (it names the file)."""
        return self.message.removeprefix("input: ")


@dataclass(frozen=True, slots=True)
class Session:
    """One imaging session (a DICOM study) of one person.

    ``patient_id`` and ``study_uid`` are PHI: used only by ``deid`` to derive labels, never
    shown to heuristics, never written out.
    """

    index: int
    patient_id: str = field(repr=False)
    study_uid: str = field(repr=False)
    study_date: str = field(repr=False, default="")
    birth_date: str = field(repr=False, default="")
    patient_age: str = field(repr=False, default="")
    patient_sex: str = ""
    patient_name: str = field(repr=False, default="")  # for deid's identity checks only


@dataclass(frozen=True, slots=True)
class Identity:
    """De-identified facts about one session (no source values), from ``deid``."""

    subject: str
    session: str | None
    shifted_date: str | None  # YYYY-MM-DD, or None when dates are removed/unknown
    age: float | None
    sex: str | None


@dataclass(frozen=True, slots=True)
class Series:
    """One convertible unit: a DICOM series split by echo, image part, orientation and matrix.

    This is what heuristics see. It holds descriptions (needed for naming) and acquisition
    parameters, never patient identity, dates or UIDs (``uid`` stays private to the pipeline).
    """

    index: int
    session: int
    series_number: int | None
    series_description: str = field(repr=False)
    protocol_name: str = field(repr=False)
    sequence_name: str
    image_type: tuple[str, ...]
    modality: str
    sop_class_uid: str
    manufacturer: str
    model: str
    rows: int
    columns: int
    n_files: int
    n_frames: int
    n_slices: int
    n_volumes: int
    echo_number: int | None
    echo_time: float | None
    repetition_time: float | None
    flip_angle: float | None
    inversion_time: float | None
    orientation: str
    part: str
    is_derived: bool
    is_localizer: bool
    is_multiframe: bool
    is_mosaic: bool
    has_diffusion: bool
    acquisition_order: str = field(repr=False, default="")
    uid: str = field(repr=False, default="")
    files: tuple[Path, ...] = field(repr=False, default=())
    relpaths: tuple[str, ...] = field(repr=False, default=())
    exclusion: ExclusionReason | None = None
    exclusion_detail: str = ""
    # Enhanced (multi-frame) files split by echo/part: the (position in ``files``, frame)
    # pairs of this series, for ``convert.convert_datasets(frames=...)``; empty = every frame.
    frames: tuple[tuple[int, int], ...] = field(repr=False, default=())
    # Phase-encoding direction as a from-to label (AP, PA, LR, RL, SI, IS) when the header states
    # both axis and polarity (Siemens, GE); "" otherwise (Philips records no polarity).
    phase_encoding: str = ""
    duplicates_left_out: int = 0  # identical copies of an instance already in the series
    scanning_sequence: tuple[str, ...] = ()  # ScanningSequence tokens (SE, GR, IR, EP, RM)
    sequence_variant: tuple[str, ...] = ()  # SequenceVariant tokens (SK, SS, MP, OSP, ...)

    @property
    def folder(self) -> str:
        """The deepest folder holding all its files, relative to its SOURCE ("." for the root).

        PRIVATE (folder names often hold names and dates): for ``inspect`` and the QC report only.
        """
        folders = {posixpath.dirname(p) for p in self.relpaths} or {""}
        common = posixpath.commonpath(list(folders)) if len(folders) > 1 else folders.pop()
        return common or "."


@dataclass(frozen=True, slots=True)
class BidsName:
    """A heuristic's decision: where a series goes in BIDS (entities without sub/ses)."""

    datatype: str
    suffix: str
    entities: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    def get(self, key: str) -> str | None:
        """Entity value or None."""
        return dict(self.entities).get(key)


@dataclass(frozen=True, slots=True)
class Skip:
    """A heuristic's decision not to release a series."""

    reason: str


@dataclass(frozen=True, slots=True)
class Planned:
    """A series with its final BIDS path (after run/echo/part resolution)."""

    series: Series
    name: BidsName
    subject: str
    session: str | None
    relpath: str  # BIDS path without extension, relative to the dataset root
    fallback: str = ""  # --engine auto, in plan: why our engine would refuse it (dcm2niix converts it)

    @property
    def image(self) -> str:
        """The path of its NIfTI image (``relpath`` + ``.nii.gz``)."""
        return self.relpath + NIFTI


@dataclass(frozen=True, slots=True)
class Excluded:
    """A series not in the bundle, with a reason from the closed set and a value-free detail."""

    series_index: int
    series_number: int | None
    reason: ExclusionReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Index:
    """The index stage's result: sessions and series, plus what the header pass collected.

    ``phi_values``/``public_values`` (PHI-class and public header values, ``phi.collect``) are
    empty unless asked for; they feed the audit and the sidecar PHI check, never an output.
    """

    sessions: tuple[Session, ...]
    series: tuple[Series, ...]
    skipped: int  # non-DICOM files
    phi_values: frozenset = field(repr=False, default=frozenset())
    public_values: frozenset[str] = field(repr=False, default=frozenset())
    non_image_files: int = 0  # DICOMDIR and other objects outside any series, skipped
    unattributed: tuple[BadFile, ...] = ()  # damaged files no series could be named for


@dataclass(frozen=True, slots=True)
class UnapprovedLabel:
    """A heuristic's label the label policy did not approve (``naming.labels``).

    ``proposed`` is header text: shown on the data owner's terminal only, never in a file, a
    pipe or an error message. The plan uses ``neutral`` in its place.
    """

    series_index: int
    entity: str
    proposed: str = field(repr=False)
    neutral: str
    reason: str  # value-free: why the label was not approved


@dataclass(frozen=True, slots=True)
class Plan:
    """The dry-run result: what goes where, and what is left out and why."""

    sessions: tuple[Session, ...]
    series: tuple[Series, ...]
    planned: tuple[Planned, ...]
    excluded: tuple[Excluded, ...]
    skipped_files: int = 0
    identities: tuple[tuple[int, Identity], ...] = ()  # (session index, identity)
    unapproved: tuple[UnapprovedLabel, ...] = ()  # labels replaced by neutral ones (naming.labels)
    warnings: tuple[str, ...] = ()  # value-free identity warnings (naming.integrity)
    non_image_files: int = 0  # DICOMDIR and other objects outside any series, skipped

    @property
    def subject_labels(self) -> tuple[tuple[int, str, str | None], ...]:
        """(session index, subject label, session label) for every session."""
        return tuple((index, who.subject, who.session) for index, who in self.identities)


@dataclass(frozen=True, slots=True)
class Sidecar:
    """One run's JSON sidecar: its BIDS path without extension and its fields (sorted by key)."""

    relpath: str
    fields: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, relpath: str, fields: Mapping[str, Any]) -> Sidecar:
        return cls(relpath, tuple(sorted(fields.items())))

    def get(self, key: str) -> Any:
        """Field value or None."""
        return dict(self.fields).get(key)

    def updated(self, changes: Mapping[str, Any], removed: tuple[str, ...] = ()) -> Sidecar:
        """A copy with ``changes`` set and ``removed`` keys left out."""
        fields = {k: v for k, v in self.fields if k not in removed}
        fields.update(changes)
        return Sidecar.of(self.relpath, fields)

    @property
    def image(self) -> str:
        """The path of the image it describes (``relpath`` + ``.nii.gz``)."""
        return self.relpath + NIFTI

    @property
    def json_relpath(self) -> str:
        return self.relpath + ".json"


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What ``build`` returns.

    An *up-to-date* result (``plan`` None) is the answer of a build that found nothing changed
    since the build that published the bundle and report at their paths (``release.uptodate``):
    nothing was read but their stat, ``runs`` come from the bundle's MANIFEST.json, ``excluded``
    is empty (that build had no failed series) and ``counts()`` returns that build's counts.
    """

    bundle: Path | None
    sha256: str
    size: int
    plan: Plan | None
    runs: tuple[str, ...]
    excluded: tuple[Excluded, ...]
    report: Path | None = None
    seconds: float = 0.0
    validator: dict = field(default_factory=dict)
    timings: tuple[tuple[str, float], ...] = ()  # wall seconds per stage (scan, plan, convert, ...)
    #: The bundle already at ``bundle`` was byte for byte this build's: checked and left in place.
    unchanged: bool = False
    #: An up-to-date result: the counts the build that published the bundle recorded.
    recorded: Mapping[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        """0, or 1 when series failed (not when they were excluded by policy)."""
        return 1 if any(e.reason.is_error for e in self.excluded) else 0

    @property
    def up_to_date(self) -> bool:
        """Nothing changed since the build that published the bundle: nothing was done."""
        return self.plan is None

    def counts(self) -> dict[str, Any]:
        """What the summary counts, without a name or a label: subjects, sessions, runs per
        datatype, exclusions per reason (with their wording), skipped and neutralised items."""
        if self.plan is None:
            return dict(self.recorded or {})
        planned = {p.relpath: p for p in self.plan.planned}
        done = [planned[r] for r in self.runs if r in planned]
        datatypes = Counter(r.split("/")[-2] for r in self.runs)
        reasons = Counter(e.reason.name.lower() for e in self.excluded)
        return {
            "subjects": len({p.subject for p in done}),
            "sessions": len({p.series.session for p in done}),
            "runs": dict(sorted(datatypes.items())),
            "excluded": dict(sorted(reasons.items())),
            "excluded_labels": dict(sorted({e.reason.name.lower(): e.reason.value for e in self.excluded}.items())),
            "skipped_files": self.plan.skipped_files,
            "labels_neutralised": len({(u.entity, u.proposed) for u in self.plan.unapproved}),
            "non_image_files": self.plan.non_image_files,
        }
