"""PHI, public values: which collected values a source also states in a public attribute, or a
release publishes on purpose, and so are not searched for. Kept apart from ``phi.collect``
(which reads headers with pydicom) because every build applies them, also one whose headers
all come from the build cache."""

from __future__ import annotations

from packager.phi.terms import PhiValue

#: Direct identifiers: searched even when a public attribute states the same value (an MRN typed
#: into SequenceName or ReceiveCoilName is still the MRN; the sidecar scrub then drops that
#: public value). Names, dates, times and UIDs are never dropped as public either.
DIRECT_IDENTIFIERS = frozenset(
    {
        "PatientID",
        "OtherPatientIDs",
        "AccessionNumber",
        "MedicalRecordLocator",
        "AdmissionID",
        "ServiceEpisodeID",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PersonTelephoneNumbers",
        "PatientInsurancePlanIdentification",
    }
)


def _public_copy(kind: str, tag: str, text: str, public: set[str]) -> bool:
    """True for a text value a public attribute states too (then it is released legitimately),
    never for a direct identifier."""
    return kind in _TEXTUAL and tag not in DIRECT_IDENTIFIERS and text.lower() in public


_TEXTUAL = frozenset({"text", "description", "id", "private", "private-text", "private-word"})


def without_public(values: set[PhiValue], public: set[str]) -> set[PhiValue]:
    """Drop text values that some dataset of the source states in a public, non-PHI attribute.

    A Phoenix report's TextValue "MAGNETOM Prisma Fit" is the ManufacturerModelName of the
    images beside it; a name, date, time, UID or direct identifier is never dropped this way.
    """
    return {v for v in values if not _public_copy(v.kind, v.tag, v.value, public)}


def released(values: set[PhiValue], keys: tuple[str, ...] | frozenset[str]) -> set[PhiValue]:
    """``values`` minus the descriptions the release publishes on purpose (``[sidecar]
    allow_free_text``) and the non-identifying copies of them (a private header repeating the
    SeriesDescription): the published text is scrubbed of every other term, and is not itself one."""
    published = {v.value.lower() for v in values if v.kind == "description" and v.tag in keys}
    if not published:
        return set(values)
    return {
        v
        for v in values
        if not (v.kind == "description" and v.tag in keys) and not _public_copy(v.kind, v.tag, v.value, published)
    }
