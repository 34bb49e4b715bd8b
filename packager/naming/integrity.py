"""Naming, identity integrity: the index's sessions -> warnings (and refusals) about who is who.

Subjects are keyed by PatientID (``deid``). That goes wrong in two ways the data cannot show
afterwards: one PatientID carried by different people (an empty or placeholder ID such as
``ANONYMOUS``, or a reused one: different names or birth dates), and one person under several
PatientIDs (the same name and birth date). The first kind merges people into one subject, so a
placeholder ID that holds several sessions is refused until a subject map says who is who; the
rest are warnings for the terminal and the private report. Messages name sessions by number and
never show an ID, a name or a date.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict

from packager.errors import ConfigError
from packager.model import Session

#: PatientIDs that identify no one: what anonymisers and consoles write instead of an ID
#: (compared case-insensitively; empty IDs, IDs without a letter or digit and all-zero IDs too).
GENERIC_IDS = frozenset(
    """
anonymous anon anonymised anonymized anonymous^patient deidentified de-identified removed redacted
unknown none null nil n/a na not^available notavailable noid no^id patient test x xx xxx xxxx
""".split()
)

SUBJECT_MAP_HOWTO = (
    "give --subject-map TSV with a row StudyInstanceUID<TAB>label for each study "
    "(or PatientID<TAB>label if all its studies are one person; see docs/phi.md)"
)


def is_generic_id(patient_id: str) -> bool:
    """True for an empty or placeholder PatientID (``ANONYMOUS``, ``0000``, ``***``, ``N/A``)."""
    text = patient_id.strip().casefold()
    return (
        not text
        or text.replace(" ", "^") in GENERIC_IDS
        or not any(c.isalnum() for c in text)
        or set(text) <= {"0", "-", " ", "."}
    )


def _name_key(name: str) -> str:
    """A person name compared loosely: case, accents, separators and empty components ignored."""
    text = unicodedata.normalize("NFKD", name.split("=")[0]).casefold()
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(w for w in re.split(r"[\^\s,]+", text) if w)


def refuse_generic_ids(sessions: tuple[Session, ...], mapping: dict[str, str]) -> None:
    """Refuse to merge several sessions under a placeholder PatientID without a subject map.

    A session is covered when the map names its study (StudyInstanceUID) or its PatientID (the
    data owner says: these studies are one person).

    Raises
    ------
    ConfigError
        One line naming the first such session and how to fix it.
    """
    by_id: dict[str, list[Session]] = defaultdict(list)
    for session in sessions:
        if is_generic_id(session.patient_id) and session.study_uid not in mapping:
            by_id[session.patient_id].append(session)
    for patient_id, items in by_id.items():
        if len(items) > 1 and patient_id not in mapping:
            first = min(s.index for s in items)
            raise ConfigError(
                f"session {first + 1}: {len(items)} sessions share an empty or placeholder PatientID "
                f"and would become one subject: {SUBJECT_MAP_HOWTO}"
            )


def integrity_warnings(sessions: tuple[Session, ...], mapping: dict[str, str] | None = None) -> tuple[str, ...]:
    """Value-free warnings: one PatientID with different names or birth dates, different
    PatientIDs with the same name and birth date, a placeholder PatientID (single session).

    Parameters
    ----------
    sessions : tuple of Session
    mapping : dict, optional
        The subject map: sessions it assigns by study are not compared by PatientID.

    Returns
    -------
    tuple of str
        Messages naming sessions by number (1-based), in session order.
    """
    mapping = mapping or {}
    warnings: list[str] = []
    by_id: dict[str, list[Session]] = defaultdict(list)
    for session in sessions:
        if session.study_uid not in mapping:
            by_id[session.patient_id].append(session)
    for patient_id, items in by_id.items():
        numbers = ", ".join(str(s.index + 1) for s in items)
        if is_generic_id(patient_id):
            if patient_id not in mapping:
                warnings.append(
                    f"session(s) {numbers}: empty or placeholder PatientID: its pseudonym is the "
                    "same for anyone else released with that ID; a subject map gives it a label of its own"
                )
            continue
        names = {_name_key(s.patient_name) for s in items} - {""}
        births = {s.birth_date.strip() for s in items} - {""}
        if len(names) > 1:
            warnings.append(f"sessions {numbers}: one PatientID, different patient names (two people under one ID?)")
        if len(births) > 1:
            warnings.append(f"sessions {numbers}: one PatientID, different birth dates (two people under one ID?)")
    people: dict[tuple[str, str], set[str]] = defaultdict(set)
    first_session: dict[tuple[str, str], list[int]] = defaultdict(list)
    for patient_id, items in by_id.items():
        if is_generic_id(patient_id):
            continue
        for s in items:
            key = (_name_key(s.patient_name), s.birth_date.strip())
            if key[0] and key[1]:
                people[key].add(patient_id)
                first_session[key].append(s.index + 1)
    for key, ids in people.items():
        if len(ids) > 1:
            numbers = ", ".join(str(n) for n in sorted(first_session[key]))
            warnings.append(
                f"sessions {numbers}: {len(ids)} PatientIDs, same patient name and birth date (one person under "
                "several IDs? a subject map can give them one label)"
            )
    return tuple(warnings)
