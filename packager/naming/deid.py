"""Naming, deid: PatientID -> subject label, study -> session label, dates -> shifted dates.

Labels come from an explicit mapping TSV (PatientID or StudyInstanceUID -> label) or from HMAC-SHA256 of the
PatientID under the release key, encoded as 8 lowercase base32 characters (40 bits; a
collision within one build is detected and refused). Dates are shifted back by a per-subject
whole number of days derived from the key (the same for all of a subject's sessions, so
intervals are kept), landing before 1925 as BIDS recommends; or removed. Ages come from birth
date at the study date (or PatientAge) and are capped at ``max_age``.
Refuses: building non-sample data without a key or mapping, several sessions under an empty or
placeholder PatientID without a mapping (``integrity``) (ConfigError). Never shows a
PatientID, date or the key in a message: sessions are named by their plan index.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import hmac
import re
from pathlib import Path

from packager.config import DeidConfig
from packager.errors import ConfigError
from packager.model import Identity, Session
from packager.naming import integrity

#: Shifted dates land between about 1890 and 1910 for real dates up to ~2030.
SHIFT_BASE_DAYS = 43_000
SHIFT_SPAN_DAYS = 3_650
#: BIDS recommends shifted dates at or before 1925; ours land about 1890-1910.
#: No real age reaches this: ``_age`` with it returns the age as computed.
UNCAPPED = 10_000
LATEST_SHIFTED = dt.date(1925, 1, 1)
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def _digest(key: bytes, purpose: str, value: str) -> bytes:
    return hmac.new(key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()


def hashed_label(key: bytes, patient_id: str) -> str:
    """8-character BIDS-safe label from the keyed hash of a PatientID."""
    return base64.b32encode(_digest(key, "subject", patient_id)).decode().lower()[:8]


def shift_days(key: bytes, patient_id: str) -> int:
    """Per-subject date shift in days (always positive: dates move back)."""
    number = int.from_bytes(_digest(key, "dateshift", patient_id)[:8], "big")
    return SHIFT_BASE_DAYS + number % SHIFT_SPAN_DAYS


def read_subject_map(path: Path) -> dict[str, str]:
    """PatientID -> label from a two-column TSV (header line optional, '#' comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"subject map unreadable: {path} ({type(exc).__name__})") from None
    mapping: dict[str, str] = {}
    for number, row in enumerate(csv.reader(text.splitlines(), delimiter="\t"), 1):
        if not row or row[0].startswith("#"):
            continue
        if len(row) < 2:
            raise ConfigError(f"subject map {path.name}:{number}: expected PatientID<TAB>label")
        source, label = row[0].strip(), row[1].strip()
        if number == 1 and source.lower() in ("patientid", "patient_id", "source"):
            continue
        label = label.removeprefix("sub-")
        if not _LABEL.match(label):
            raise ConfigError(f"subject map {path.name}:{number}: label must be letters and digits only")
        mapping[source] = label
    if len(set(mapping.values())) != len(mapping):
        raise ConfigError(f"subject map {path.name}: two PatientIDs map to the same label")
    return mapping


def _parse_date(text: str) -> dt.date | None:
    text = text.strip()[:8]
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def _age(session: Session, max_age: int) -> float | None:
    born, seen = _parse_date(session.birth_date), _parse_date(session.study_date)
    age: float | None = None
    if born and seen and seen >= born:
        years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
        age = float(years)
    else:
        match = re.fullmatch(r"(\d{1,3})([DWMY])", session.patient_age.strip().upper())
        if match:
            value, unit = int(match.group(1)), match.group(2)
            age = float({"Y": value, "M": value // 12, "W": value // 52, "D": value // 365}[unit])
    if age is None:
        return None
    return float(min(age, max_age))


def identify(
    sessions: tuple[Session, ...],
    config: DeidConfig,
    key: bytes,
    session_labels: dict[int, str] | None = None,
    sessions_mode: str = "auto",
) -> dict[int, Identity]:
    """De-identified subject/session labels, shifted dates and ages for every session.

    Parameters
    ----------
    sessions : tuple of Session
    config : DeidConfig
    key : bytes
        The release secret; may be empty only when a subject map covers every PatientID.
    session_labels : dict, optional
        Session labels a heuristic named explicitly (session index -> label).
    sessions_mode : {"auto", "always", "never"}

    Raises
    ------
    ConfigError
        No key and no (complete) subject map; label collision.
    """
    mapping = read_subject_map(config.subject_map) if config.subject_map else {}
    integrity.refuse_generic_ids(sessions, mapping)
    # A subject-map row may name a study (StudyInstanceUID) instead of a PatientID: that session is
    # its own subject key (for sources whose PatientID is a placeholder shared by several people).
    subject_key = {s.index: f"study\x00{s.study_uid}" if s.study_uid in mapping else s.patient_id for s in sessions}
    mapping = {
        **mapping,
        **{f"study\x00{s.study_uid}": mapping[s.study_uid] for s in sessions if s.study_uid in mapping},
    }
    subjects: dict[str, str] = {}
    for session in sessions:
        subject = subject_key[session.index]
        if subject in subjects:
            continue
        if subject in mapping:
            subjects[subject] = mapping[subject]
        elif key:
            subjects[subject] = hashed_label(key, session.patient_id)
        elif mapping:
            raise ConfigError(
                f"subject map has no entry for the patient of session {session.index + 1} "
                "and no key is set (--key-file or DCMPACK_KEY)"
            )
        else:
            raise ConfigError(
                "no pseudonym key: give --key-file KEY, set DCMPACK_KEY, "
                "or a --subject-map TSV (refusing to build without one)"
            )
    if len(set(subjects.values())) != len(subjects):
        raise ConfigError("two patients got the same subject label (use a subject map)")
    if config.dates == "shift" and not key:
        raise ConfigError('[deid] dates = "shift" needs the pseudonym key (or use dates = "remove")')

    per_subject: dict[str, list[Session]] = {}
    for session in sessions:
        per_subject.setdefault(subject_key[session.index], []).append(session)
    use_sessions = sessions_mode == "always" or (
        sessions_mode == "auto" and (any(len(v) > 1 for v in per_subject.values()) or bool(session_labels))
    )
    if sessions_mode == "never" and any(len(v) > 1 for v in per_subject.values()):
        raise ConfigError('[dataset] sessions = "never" but a subject has several sessions')

    identities: dict[int, Identity] = {}
    for subject, items in per_subject.items():
        items.sort(key=lambda s: (s.study_date, s.index))
        # Capped ages plus the intervals between sessions would still show an age over the cap
        # (88 at one session, 89+ four years later: at least 92). For a subject older than the
        # cap at any session, every age is the cap and no session date is published.
        ages = [_age(session, UNCAPPED) for session in items]
        over_cap = len(items) > 1 and any(age is not None and age > config.max_age for age in ages)
        for number, session in enumerate(items, 1):
            label = None
            if use_sessions:
                label = (session_labels or {}).get(session.index) or f"{number:02d}"
            shifted = None
            date = _parse_date(session.study_date)
            if config.dates == "shift" and date is not None:
                moved = date - dt.timedelta(days=shift_days(key, subject))
                if moved >= LATEST_SHIFTED:  # only for scans after ~2042; BIDS asks for <= 1925
                    raise ConfigError(
                        f"session {session.index + 1}: a shifted date would not land before 1925 "
                        '(use [deid] dates = "remove")'
                    )
                shifted = moved.isoformat()
            age = _age(session, config.max_age)
            if over_cap:
                shifted, age = None, float(config.max_age)
            sex = session.patient_sex if config.sex and session.patient_sex in ("M", "F", "O") else None
            identities[session.index] = Identity(
                subject=subjects[subject], session=label, shifted_date=shifted, age=age, sex=sex
            )
    return identities


def key_fingerprint(key: bytes) -> str:
    """A short, non-reversible fingerprint so two releases can be checked for the same key.

    HMAC of a fixed message under the key, truncated to 8 hex digits: it cannot be used to
    recompute pseudonyms, and tells a data manager whether a rebuild used the same secret.
    """
    return hmac.new(key, b"dcmpack key fingerprint", hashlib.sha256).hexdigest()[:8] if key else ""
