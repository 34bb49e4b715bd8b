"""Stage 7, layout: BIDS names + de-identified identities -> paths and dataset-level files.

Paths come from pybids' path patterns (``bids.layout.writing.build_path`` with the default
BIDS config), so entity order and folders follow the spec as pybids encodes it. Dataset files:
dataset_description.json (BIDSVersion 1.11.1, GeneratedBy, DatasetType, de-identification
record), participants.tsv/.json, sub-*/sub-*_sessions.tsv/.json when sessions are used,
per-session *_scans.tsv/.json (acq_time: shifted date, time of day withheld), README, CHANGES.
Refuses (returns None for) names pybids cannot place; the caller excludes those series.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from .model import BidsName

BIDS_VERSION = "1.11.1"
#: ReproIn/short entity keys -> pybids entity names.
ENTITY_NAMES = {"task": "task", "acq": "acquisition", "ce": "ceagent", "rec": "reconstruction",
                "dir": "direction", "run": "run", "echo": "echo", "part": "part", "flip": "flip",
                "inv": "inversion", "mt": "mt", "mod": "modality", "trc": "tracer",
                "recording": "recording", "chunk": "chunk", "stain": "staining", "ses": "session"}


@functools.lru_cache(maxsize=1)
def _patterns() -> tuple[str, ...]:
    from bids.layout.models import Config

    return tuple(Config.load("bids").default_path_patterns)


def bids_relpath(name: BidsName, subject: str, session: str | None, extension: str = ".nii.gz") -> str | None:
    """Dataset-relative path for a run (e.g. ``sub-x/ses-01/anat/sub-x_ses-01_T1w.nii.gz``)."""
    from bids.layout.writing import build_path

    entities: dict[str, Any] = {"subject": subject, "datatype": name.datatype, "suffix": name.suffix,
                                "extension": extension}
    if session:
        entities["session"] = session
    for key, value in name.entities:
        if key == "ses":
            continue
        mapped = ENTITY_NAMES.get(key)
        if mapped is None:
            return None
        entities[mapped] = value
    return build_path(entities, list(_patterns()), strict=True)


def canonical_json(data: Any) -> bytes:
    """Deterministic JSON: sorted keys, 2-space indent, fixed float repr, trailing newline."""
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode()


@dataclass(frozen=True, slots=True)
class Row:
    """One run as the dataset tables need it."""

    subject: str
    session: str | None
    relpath: str  # dataset-relative .nii.gz path
    shifted_date: str | None


def dataset_description(*, name: str, license_: str, authors: tuple[str, ...], version: str,
                        tool_version: str, dates: str, engine: str) -> bytes:
    """dataset_description.json with provenance and a de-identification record (BIDS 1.10+)."""
    codes = [
        {"CodeValue": "113100", "CodingSchemeDesignator": "DCM", "CodeMeaning": "Basic Application Confidentiality Profile"},
        {"CodeValue": "113105", "CodingSchemeDesignator": "DCM", "CodeMeaning": "Clean Descriptors Option"},
        {"CodeValue": "113108", "CodingSchemeDesignator": "DCM", "CodeMeaning": "Retain Patient Characteristics Option"},
    ]
    if dates == "shift":
        codes.append({"CodeValue": "113107", "CodingSchemeDesignator": "DCM",
                      "CodeMeaning": "Retain Longitudinal Temporal Information Modified Dates Option"})
    data = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": license_,
        "Authors": list(authors) or ["dcmpack user"],
        "GeneratedBy": [{"Name": "dcmpack", "Version": tool_version,
                         "Description": f"DICOM to BIDS with {engine}, allowlisted metadata, PHI audit"}],
        "HowToAcknowledge": f"Cite the {name} dataset, version {version}.",
    }
    return canonical_json(data)


def participants(rows: dict[str, dict[str, Any]]) -> tuple[bytes, bytes]:
    """participants.tsv and participants.json (every column described)."""
    columns = ["participant_id", "age", "sex"]
    lines = ["\t".join(columns)]
    for subject in sorted(rows):
        info = rows[subject]
        age = info.get("age")
        lines.append("\t".join([f"sub-{subject}", "n/a" if age is None else _age_text(age),
                                info.get("sex") or "n/a"]))
    sidecar = {
        "participant_id": {"Description": "Pseudonymous subject label (keyed hash or mapping file)"},
        "age": {"Description": "Age at the first released session, whole years, capped (89 means 89 or older)",
                "Units": "year"},
        "sex": {"Description": "Sex as recorded by the scanner", "Levels": {"M": "male", "F": "female", "O": "other"}},
    }
    return ("\n".join(lines) + "\n").encode(), canonical_json(sidecar)


def _age_text(age: float) -> str:
    return str(int(age)) if float(age).is_integer() else f"{age:.1f}"


def sessions_table(session_rows: list[tuple[str, str | None, float | None]]) -> tuple[bytes, bytes]:
    """sub-X_sessions.tsv rows: (session label, shifted date, age)."""
    lines = ["session_id\tacq_time\tage"]
    for label, date, age in sorted(session_rows, key=lambda r: r[0]):
        lines.append("\t".join([f"ses-{label}", f"{date}T00:00:00" if date else "n/a",
                                "n/a" if age is None else _age_text(age)]))
    sidecar = {
        "acq_time": {"Description": "Session date shifted by a per-subject offset (intervals kept); "
                                    "time of day withheld (always 00:00:00)"},
        "age": {"Description": "Age at this session, whole years, capped (89 means 89 or older)", "Units": "year"},
    }
    return ("\n".join(lines) + "\n").encode(), canonical_json(sidecar)


def scans_table(rows: list[Row], prefix: str) -> tuple[bytes, bytes]:
    """*_scans.tsv for one subject/session: filename relative to ``prefix`` and shifted date."""
    lines = ["filename\tacq_time"]
    for row in sorted(rows, key=lambda r: r.relpath):
        name = row.relpath[len(prefix):] if row.relpath.startswith(prefix) else row.relpath
        lines.append(f"{name}\t{row.shifted_date + 'T00:00:00' if row.shifted_date else 'n/a'}")
    sidecar = {"acq_time": {"Description": "Acquisition date shifted by a per-subject offset; "
                                           "time of day withheld (always 00:00:00)"}}
    return ("\n".join(lines) + "\n").encode(), canonical_json(sidecar)


def readme(name: str, description: str, n_subjects: int, n_runs: int, dates: str) -> bytes:
    """A README of real length: what, how it was made, what was removed."""
    text = f"""# {name}

{description or "A BIDS dataset released with dcmpack."}

This dataset holds {n_runs} imaging run(s) from {n_subjects} participant(s), converted from DICOM.

## How it was made
- DICOM was converted to NIfTI outside the archive; DICOM files themselves are not included.
- Subject labels are pseudonyms (a keyed hash or a mapping kept by the data owner).
- Sidecar JSON files carry only an allowlist of acquisition parameters; names, identifiers,
  institution, device and free-text fields are never copied.
- Dates are {"shifted by a per-subject offset (intervals kept) to before 1925" if dates == "shift" else "removed"};
  times of day are withheld.
- Every file of the release was searched for the source's identifying values before publishing.

## Limits
Anatomical images still show faces; they have not been defaced.
"""
    return text.encode()


def changes(version: str) -> bytes:
    """CHANGES in the BIDS changelog format."""
    return f"{version}\n  - Initial release built with dcmpack.\n".encode()
