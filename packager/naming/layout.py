"""Naming, layout: BIDS names + de-identified identities -> paths and dataset-level files.

Paths follow the BIDS schema (``bidsschematools``, as ``naming.schema`` reads it): the folder
``sub-<label>/[ses-<label>/]<datatype>/``, then ``sub``, ``ses`` and the run's entities in the
spec's entity order, the suffix and the extension; a name is placed only when the schema has a
file rule for its datatype and suffix that allows each of its entities and none it requires is
missing. Written by hand, not with pybids' ``build_path``: pybids' path patterns encode the same
rules less completely (no plain fmap ``magnitude``, a few entities missing from some suffixes) and
importing pybids costs a quarter of a second in every build, more than a no-change rebuild's
whole plan (``tests/test_layout.py`` checks the paths against pybids' wherever pybids places a
name). Dataset files:
dataset_description.json (BIDSVersion 1.11.1, GeneratedBy, DatasetType, de-identification
record), participants.tsv/.json, sub-*/sub-*_sessions.tsv/.json when sessions are used,
per-session *_scans.tsv/.json (acq_time: shifted date, time of day withheld), README, CHANGES.
Refuses (returns None for) names pybids cannot place; the caller excludes those series.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from packager.model import BidsName
from packager.naming.schema import entity_rules
from packager.naming.spec import BIDS_VERSION, ENTITY_KEYS


def bids_relpath(name: BidsName, subject: str, session: str | None, extension: str = ".nii.gz") -> str | None:
    """Dataset-relative path for a run (e.g. ``sub-x/ses-01/anat/sub-x_ses-01_T1w.nii.gz``);
    None when BIDS has no place for the name (see the module doc)."""
    rules = entity_rules(name.datatype, name.suffix)
    entities = {key: value for key, value in name.entities if key != "ses"}  # deid's session wins
    if rules is None or any(key not in ENTITY_KEYS or key not in rules[0] for key in entities):
        return None
    if rules[1] - set(entities) - {"ses"}:
        return None
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    stem = "_".join([prefix, *(f"{key}-{entities[key]}" for key in ENTITY_KEYS if key in entities), name.suffix])
    folder = f"sub-{subject}/" + (f"ses-{session}/" if session else "") + name.datatype
    return f"{folder}/{stem}{extension}"


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


#: DICOM CID 7050 de-identification codes (PS3.16) for what dcmpack does.
_DEID_CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113102": "Clean Recognizable Visual Features",
    "113105": "Clean Descriptors Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
}


def deidentification_record(dates: str, defaced: bool = False) -> dict[str, Any]:
    """BIDS 1.10+ DeidentificationMethod(+CodeSequence) for every MRI sidecar; a defaced run's
    also names 113102 (Clean Recognizable Visual Features)."""
    codes = ["113100", "113105", "113108"] + (["113107"] if dates == "shift" else []) + (["113102"] if defaced else [])
    method = (
        "dcmpack: DICOM not released; allowlisted metadata only; keyed pseudonyms; "
        + ("dates shifted per subject" if dates == "shift" else "dates removed")
        + ("; face removed" if defaced else "")
        + "; output audited"
    )
    return {
        "DeidentificationMethod": [method],
        "DeidentificationMethodCodeSequence": [
            {"CodeValue": code, "CodingSchemeDesignator": "DCM", "CodeMeaning": _DEID_CODES[code]}
            for code in sorted(codes)
        ],
    }


#: How GeneratedBy names an engine setting that is not one engine's name.
_ENGINE_TEXT = {"auto": "dicom2nifti, and dcm2niix for the series it refuses"}


def dataset_description(
    *, name: str, license_: str, authors: tuple[str, ...], version: str, tool_version: str, dates: str, engine: str
) -> bytes:
    """dataset_description.json with provenance (GeneratedBy) and the release's description."""
    engine = _ENGINE_TEXT.get(engine, engine)
    data = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": license_,
        "Authors": list(authors) or ["dcmpack user"],
        "GeneratedBy": [
            {
                "Name": "dcmpack",
                "Version": tool_version,
                "Description": f"DICOM to BIDS with {engine}, allowlisted metadata, PHI audit",
            }
        ],
        "HowToAcknowledge": f"Cite the {name} dataset, version {version}.",
    }
    return canonical_json(data)


def participants(rows: dict[str, dict[str, Any]]) -> tuple[bytes, bytes]:
    """participants.tsv and participants.json (every column described; a column nobody has,
    e.g. sex with ``[deid] sex = false``, is left out rather than written as n/a)."""
    has_age = any(info.get("age") is not None for info in rows.values())
    has_sex = any(info.get("sex") for info in rows.values())
    columns = ["participant_id"] + (["age"] if has_age else []) + (["sex"] if has_sex else [])
    lines = ["\t".join(columns)]
    for subject in sorted(rows):
        info = rows[subject]
        age = info.get("age")
        cells = [f"sub-{subject}"]
        if has_age:
            cells.append("n/a" if age is None else _age_text(age))
        if has_sex:
            cells.append(info.get("sex") or "n/a")
        lines.append("\t".join(cells))
    sidecar = {
        "participant_id": {"Description": "Pseudonymous subject label (keyed hash or mapping file)"},
        "age": {
            "Description": "Age at the first released session, whole years, capped at 89 "
            "(89 means 89 or older, as BIDS recommends)",
            "Units": "year",
        },
        "sex": {"Description": "Sex as recorded by the scanner", "Levels": {"M": "male", "F": "female", "O": "other"}},
    }
    sidecar = {k: v for k, v in sidecar.items() if k in columns}
    return ("\n".join(lines) + "\n").encode(), canonical_json(sidecar)


def _age_text(age: float) -> str:
    return str(int(age)) if float(age).is_integer() else f"{age:.1f}"


def sessions_table(session_rows: list[tuple[str, str | None, float | None]]) -> tuple[bytes, bytes]:
    """sub-X_sessions.tsv rows: (session label, shifted date, age)."""
    dated = any(date for _, date, _ in session_rows)  # dates = "remove": no acq_time column at all
    lines = ["session_id\tacq_time\tage" if dated else "session_id\tage"]
    for label, date, age in sorted(session_rows, key=lambda r: r[0]):
        cells = [f"ses-{label}"] + ([f"{date}T00:00:00" if date else "n/a"] if dated else [])
        lines.append("\t".join(cells + ["n/a" if age is None else _age_text(age)]))
    sidecar = {
        "acq_time": {
            "Description": "Session date shifted by a per-subject offset (intervals kept); "
            "time of day withheld (always 00:00:00)"
        },
        "age": {
            "Description": "Age at this session, whole years, capped at 89 (89 means 89 or older)",
            "Units": "year",
        },
    }
    if not dated:
        del sidecar["acq_time"]
    return ("\n".join(lines) + "\n").encode(), canonical_json(sidecar)


def scans_table(rows: list[Row], prefix: str) -> tuple[bytes, bytes]:
    """*_scans.tsv for one subject/session: filename relative to ``prefix`` and shifted date."""
    dated = any(row.shifted_date for row in rows)  # dates = "remove": no acq_time column at all
    lines = ["filename\tacq_time" if dated else "filename"]
    for row in sorted(rows, key=lambda r: r.relpath):
        name = row.relpath[len(prefix) :] if row.relpath.startswith(prefix) else row.relpath
        lines.append(f"{name}\t{row.shifted_date + 'T00:00:00' if row.shifted_date else 'n/a'}" if dated else name)
    sidecar = (
        {
            "acq_time": {
                "Description": "Acquisition date shifted by a per-subject offset; "
                "time of day withheld (always 00:00:00)"
            }
        }
        if dated
        else {}
    )
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


#: Stands for every value a template takes, when its constant text is wanted.
_HOLE = "\x00"


def constant_texts() -> tuple[bytes, ...]:
    """The fixed text dcmpack writes around the values it fills in: the README's and CHANGES'
    sentences, and the constant string values of the dataset-level JSON (descriptions, the
    de-identification record). The PHI audit blanks them before searching, so a patient called
    "Day" or an ID "dicom" does not match dcmpack's own words. Values filled in (name,
    description, authors, labels, counts) are not in here and stay searched."""
    pieces: set[str] = set()
    for dates, description in (("shift", _HOLE), ("remove", _HOLE), ("shift", "")):
        text = readme(_HOLE, description, 0, 0, dates).decode()
        text = text.replace("0 imaging run(s) from 0", f"{_HOLE} imaging run(s) from {_HOLE}")
        pieces.update(text.split(_HOLE))
    pieces.update(changes(_HOLE).decode().split(_HOLE))
    # Text around a value is blanked only where it is a phrase (a space and 8+ characters), and
    # a constant JSON value only as a whole quoted value: blanking a short word everywhere would
    # also blank it inside source values ("male" in a name) and hide them from the search.
    fragments = {piece for piece in pieces if _is_phrase(piece)}
    for document in _constant_documents():
        for value in _strings(document):
            if _HOLE in value:  # as it stands in the JSON text (canonical_json escapes non-ASCII)
                fragments.update(json.dumps(part)[1:-1] for part in value.split(_HOLE) if _is_phrase(part))
            else:
                fragments.add(json.dumps(value))
    return tuple(sorted((f.encode() for f in fragments), key=lambda f: (-len(f), f)))  # longest first


def constant_keys() -> set[str]:
    """The keys of the dataset-level JSON dcmpack writes (descriptions of the tables' columns,
    dataset_description.json, the de-identification record)."""
    return {key for document in _constant_documents() for key in dict_keys(document)}


def _constant_documents() -> list[Any]:
    """The dataset-level JSON documents as dcmpack writes them, every filled-in value a hole."""
    documents: list[Any] = [
        deidentification_record(dates, defaced) for dates in ("shift", "remove") for defaced in (False, True)
    ]
    for engine in ("dicom2nifti", "dcm2niix", "auto"):
        description = dataset_description(
            name=_HOLE, license_=_HOLE, authors=(), version=_HOLE, tool_version=_HOLE, dates="shift", engine=engine
        )
        documents.append(json.loads(description))
    documents.append(json.loads(participants({"x": {"age": 1.0, "sex": "F"}})[1]))
    documents.append(json.loads(sessions_table([("01", "1900-01-01", 1.0)])[1]))
    documents.append(json.loads(scans_table([Row("x", None, "anat/x.nii.gz", "1900-01-01")], "")[1]))
    return documents


def _is_phrase(text: str) -> bool:
    """Worth blanking around a value: 8+ characters with a space (never a lone short word)."""
    return len(text.strip()) >= 8 and " " in text.strip()


def dict_keys(document: Any) -> set[str]:
    """Every object key in a JSON-shaped document."""
    if isinstance(document, dict):
        return set(document) | {k for value in document.values() for k in dict_keys(value)}
    if isinstance(document, list):
        return {k for value in document for k in dict_keys(value)}
    return set()


def _strings(document: Any) -> list[str]:
    """Every string value in a JSON document (not the keys)."""
    if isinstance(document, str):
        return [document]
    if isinstance(document, dict):
        return [s for value in document.values() for s in _strings(value)]
    if isinstance(document, list):
        return [s for value in document for s in _strings(value)]
    return []
