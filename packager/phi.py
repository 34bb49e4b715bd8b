"""PHI-class attributes (spec table) and collection of their values from a dataset.

Used by the sidecar scrub (drop any emitted string that contains a source PHI value) and by
the audit (search every output byte stream for them). The keyword list follows DICOM PS3.15
Annex E (Basic Application Level Confidentiality Profile): identities, dates, times,
institution and device, free text; plus every UID, every private text element and every
person name (VR PN), whatever its keyword. ``data/annex_e.tsv`` (when present) extends it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

#: Annex E keywords we always treat as PHI (the data file adds the rest of the table).
CORE_KEYWORDS = frozenset("""
AccessionNumber AcquisitionComments AcquisitionContextSequence AcquisitionDate AcquisitionDateTime
AcquisitionDeviceProcessingDescription AcquisitionTime ActualHumanPerformersSequence AdditionalPatientHistory
AdmissionID AdmittingDate AdmittingDiagnosesDescription AdmittingTime AffectedSOPInstanceUID Allergies
Arbitrary AuthorObserverSequence BranchOfService CassetteID CommentsOnThePerformedProcedureStep
ConfidentialityConstraintOnPatientDataDescription ContentCreatorName ContentDate ContentTime ContrastBolusAgent
ContributionDescription CountryOfResidence CurrentPatientLocation CurveDate CurveTime CustodialOrganizationSequence
DataSetTrailingPadding DerivationDescription DetectorID DeviceSerialNumber DeviceUID DigitalSignaturesSequence
DischargeDiagnosisDescription DistributionAddress DistributionName DoseReferenceUID EthnicGroup
FailedSOPInstanceUIDList FillerOrderNumberImagingServiceRequest FrameComments GantryID GeneratorID
HumanPerformerName HumanPerformerOrganization IconImageSequence IdentifyingComments ImageComments
ImagePresentationComments ImagingServiceRequestComments Impressions InstanceCreationDate InstanceCreationTime
InstanceCreatorUID InstitutionAddress InstitutionCodeSequence InstitutionName InstitutionalDepartmentName
InsurancePlanIdentification IntendedRecipientsOfResultsIdentificationSequence InterpretationApproverSequence
InterpretationAuthor InterpretationDiagnosisDescription InterpretationIDIssuer InterpretationRecorder
InterpretationText InterpretationTranscriber IssuerOfAdmissionID IssuerOfPatientID IssuerOfServiceEpisodeID
LastMenstrualDate MedicalAlerts MedicalRecordLocator MilitaryRank ModifiedAttributesSequence
ModifyingDeviceID ModifyingDeviceManufacturer NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults
Occupation OperatorIdentificationSequence OperatorsName OrderCallbackPhoneNumber OrderEnteredBy
OrderEntererLocation OriginalAttributesSequence OtherPatientIDs OtherPatientIDsSequence OtherPatientNames
OverlayComments OverlayDate OverlayTime ParticipantSequence PatientAddress PatientAge PatientBirthDate
PatientBirthName PatientBirthTime PatientComments PatientID PatientInsurancePlanCodeSequence
PatientMotherBirthName PatientName PatientPrimaryLanguageCodeSequence PatientReligiousPreference
PatientSexNeutered PatientSize PatientState PatientTelephoneNumbers PatientTransportArrangements PatientWeight
PerformedLocation PerformedProcedureStepDescription PerformedProcedureStepEndDate PerformedProcedureStepEndTime
PerformedProcedureStepID PerformedProcedureStepStartDate PerformedProcedureStepStartTime
PerformedStationAETitle PerformedStationGeographicLocationCodeSequence PerformedStationName
PerformedStationNameCodeSequence PerformingPhysicianIdentificationSequence PerformingPhysicianName
PersonAddress PersonIdentificationCodeSequence PersonName PersonTelephoneNumbers PhysicianApprovingInterpretation
PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence
PlacerOrderNumberImagingServiceRequest PlateID PreMedication PregnancyStatus ProtocolName ReasonForImagingServiceRequest
ReasonForStudy ReferencedDigitalSignatureSequence ReferencedPatientAliasSequence ReferencedPatientSequence
ReferencedSOPInstanceMACSequence ReferringPhysicianAddress ReferringPhysicianIdentificationSequence
ReferringPhysicianName ReferringPhysicianTelephoneNumbers RegionOfResidence RequestAttributesSequence
RequestedContrastAgent RequestedProcedureComments RequestedProcedureDescription RequestedProcedureID
RequestedProcedureLocation RequestingPhysician RequestingService ResponsibleOrganization ResponsiblePerson
ResultsComments ResultsDistributionListSequence ResultsIDIssuer ScheduledHumanPerformersSequence
ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
ScheduledPerformingPhysicianName ScheduledProcedureStepDescription ScheduledProcedureStepEndDate
ScheduledProcedureStepEndTime ScheduledProcedureStepID ScheduledProcedureStepLocation
ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime ScheduledStationAETitle
ScheduledStationGeographicLocationCodeSequence ScheduledStationName ScheduledStationNameCodeSequence
ScheduledStudyLocation ScheduledStudyLocationAETitle SeriesDate SeriesDescription SeriesTime ServiceEpisodeDescription
ServiceEpisodeID SmokingStatus SoftwareVersions SourceImageSequence SpecialNeeds StationName StudyComments StudyDate
StudyDescription StudyID StudyIDIssuer StudyTime TextComments TextString TextValue TimezoneOffsetFromUTC TopicAuthor
TopicKeywords TopicSubject TopicTitle VerifyingObserverIdentificationCodeSequence VerifyingObserverName
VerifyingObserverSequence VerifyingOrganization VisitComments AcquisitionDeviceProcessingCode PatientSex
""".split())

#: Values of these keywords are searched as dates (several output formats).
_DATE_VRS = {"DA"}
_TIME_VRS = {"TM"}
_DATETIME_VRS = {"DT"}
_TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "PN", "CS", "AE", "UC", "DS", "IS", "AS"}
#: Values too short or too generic to search for without drowning in false hits.
MIN_TEXT = 4


@dataclass(frozen=True, slots=True)
class PhiValue:
    """One value to look for: a class (name, id, date, time, uid, text), the tag, the text."""

    kind: str
    tag: str
    value: str


def _extra_keywords() -> frozenset[str]:
    try:
        text = resources.files("packager").joinpath("data/annex_e.tsv").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return frozenset()
    words = set()
    for line in text.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) > 1 and parts[1].strip():
            words.add(parts[1].strip())
    return frozenset(words)


PHI_KEYWORDS = CORE_KEYWORDS | _extra_keywords()
#: Free-text descriptions a heuristic reads; their *whole* value is what must not leak.
DESCRIPTION_KEYWORDS = frozenset({"SeriesDescription", "ProtocolName", "StudyDescription",
                                  "PerformedProcedureStepDescription", "RequestedProcedureDescription"})
#: Numeric or coded PHI-class values that are too generic to search for as text.
_NOT_SEARCHED = frozenset({"PatientSex", "PatientSize", "PatientWeight", "PregnancyStatus",
                           "SmokingStatus", "PatientSexNeutered", "TimezoneOffsetFromUTC"})


def _strings(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        out: list[str] = []
        for item in value:
            out.extend(_strings(item))
        return out
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
        value = "".join(c if c.isprintable() else " " for c in value)
    return [str(value).strip().strip("\x00").strip()]


def _kind(keyword: str, vr: str, private: bool) -> str:
    if vr == "UI":
        return "uid"
    if vr in _DATE_VRS:
        return "date"
    if vr in _TIME_VRS:
        return "time"
    if vr in _DATETIME_VRS:
        return "datetime"
    if vr == "PN":
        return "name"
    if private:
        return "private"
    if keyword in DESCRIPTION_KEYWORDS:
        return "description"
    if keyword.endswith(("ID", "IDs", "Number")):
        return "id"
    return "text"


def collect(ds: Dataset, found: set[PhiValue] | None = None) -> set[PhiValue]:
    """Every PHI-class value in ``ds`` (recursing into sequences), as PhiValue records."""
    found = set() if found is None else found
    for element in ds.iterall() if False else ds:
        _visit(element, found)
    return found


def _visit(element, found: set[PhiValue]) -> None:
    vr = element.VR
    if vr == "SQ":
        for item in element.value or []:
            for child in item:
                _visit(child, found)
        return
    if element.tag == 0x7FE00010 or vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") and not element.tag.is_private:
        return
    keyword = element.keyword or ""
    private = element.tag.is_private
    if not (keyword in PHI_KEYWORDS or private or vr in ("PN", "UI", "DA", "DT")):
        return
    if keyword in _NOT_SEARCHED:
        return
    if private and vr not in _TEXT_VRS and vr not in ("UN", "OB"):
        return
    if private and element.tag.element < 0x0100:
        return  # private creator: a vendor name, not PHI
    kind = _kind(keyword, vr, private)
    try:
        values = _strings(element.value)
    except Exception:  # an undecodable value cannot be searched; skip it
        return
    tag = keyword or f"({element.tag.group:04X},{element.tag.element:04X})"
    for text in values:
        if kind == "private":
            for piece in re.split(r"[\\^\x00]+", text):
                piece = piece.strip()
                if len(piece) >= 6 and re.search(r"[A-Za-z]", piece) and not _is_number(piece):
                    found.add(PhiValue(kind, tag, piece))
            continue
        if not text:
            continue
        found.add(PhiValue(kind, tag, text))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


#: Words that say nothing about a person: BIDS vocabulary, our own exclusion reasons and common
#: protocol words. A description made only of these (and numbers) is not searched, because it
#: appears legitimately in outputs (e.g. a series described "localizer" is excluded as such).
GENERIC_WORDS = frozenset("""
anat func dwi fmap perf beh task acq ce rec dir run echo part mag phase real imag flip inv mt mod
t1w t2w flair pdw t2starw bold sbref epi asl m0scan magnitude magnitude1 magnitude2 phasediff
phase1 phase2 fieldmap dwi localizer localiser scout survey screenshot report secondary capture
structured not image derived config excluded unsupported sop phoenix rgb duplicate conversion
failed inconsistent heuristic skip unnamed spectroscopy burned in annotation t1 t2 pd mprage
tfl gre se ep2d epi2d cmrr mb rest ap pa lr rl si is axial sagittal coronal tra sag cor
""".split())


def is_generic(text: str) -> bool:
    """True when every word of ``text`` is generic vocabulary, a number or one/two characters."""
    words = [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]
    return bool(words) and all(w in GENERIC_WORDS or w.isdigit() or len(w) <= 2 for w in words)


def search_terms(value: PhiValue) -> list[str]:
    """Lower-case strings to search for in output text for one PHI value (may be empty)."""
    text = value.value.strip()
    terms: list[str] = []
    if value.kind == "date":
        digits = re.sub(r"\D", "", text)
        if len(digits) == 8 and digits != "00000000":
            y, m, d = digits[:4], digits[4:6], digits[6:]
            terms += [digits, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{y}/{m}/{d}", f"{m}/{d}/{y}"]
    elif value.kind == "time":
        digits = re.sub(r"\D", "", text.split(".")[0])
        if len(digits) >= 6 and digits[:6] != "000000":
            hh, mm, ss = digits[:2], digits[2:4], digits[4:6]
            terms += [f"{hh}{mm}{ss}", f"{hh}:{mm}:{ss}"]
    elif value.kind == "datetime":
        digits = re.sub(r"\D", "", text)
        if len(digits) >= 8:
            terms += search_terms(PhiValue("date", value.tag, digits[:8]))
        if len(digits) >= 14:
            terms += search_terms(PhiValue("time", value.tag, digits[8:14]))
    elif value.kind == "name":
        parts = [p.strip() for p in re.split(r"[\^=]", text) if p.strip()]
        terms += [p for p in parts if len(p) >= 3]
        if len(parts) > 1:
            terms.append(" ".join(parts))
    elif value.kind == "uid":
        if len(text) >= 8:
            terms.append(text)
    elif value.kind in ("description", "path"):
        if len(text) >= 8 and not is_generic(text):
            terms.append(text)
    else:
        if len(text) >= MIN_TEXT and not _is_number(text):
            terms.append(text)
    return [t.lower() for t in dict.fromkeys(terms)]
