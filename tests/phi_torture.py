"""PHI torture generator: synthetic DICOM with a distinct marker in every PHI-capable place.

``make_torture(root)`` writes two subjects (A: two sessions 64 days apart; B: one session,
born 1919, PatientAge 103Y) as ReproIn-named MR series that build (anat T1w with overlays,
func bold), plus objects that must never leave: a burned-in secondary capture, an MR image with
BurnedInAnnotation YES, a Basic Text SR and a grayscale presentation state. Every PHI-capable
field carries its own marker (``QQT`` + a number + the field), in plain elements, nested
sequences (two levels), private elements (LO, LT, SH, UN, OB with UTF-16LE text), overlay
text, file and folder names; UIDs are distinct ``2.25.`` values; dates appear as DA, DT and in
private text as ``DD.MM.YYYY`` and ``YYYY-MM-DD``; times as TM with fractions.

The anat series stores 12 bits in 16 with an overlay plane embedded in bit 15 of PixelData
(and a separate 60xx,3000 overlay): converted voxels must equal ``pixel & 0x0FFF``.

Nothing here is a real identity. Run as a script to write a tree: ``python tests/phi_torture.py DIR``.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
ROWS = COLS = 16
BOLD_SLICES, BOLD_VOLUMES, ANAT_SLICES = 4, 3, 6

#: (subject, session key, StudyDate, StudyTime, PatientAge)
STUDIES = (
    ("A", "A1", "20230115", "101530.123456", "045Y"),
    ("A", "A2", "20230320", "141245.654321", "045Y"),
    ("B", "B1", "20221130", "083112.500000", "103Y"),
)
BIRTH = {"A": "19771002", "B": "19190203"}
SEX = {"A": "F", "B": "M"}
#: Series: (number, ReproIn ProtocolName, kind)
SERIES = (
    (1, "anat-T1w", "anat"),
    (2, "func-bold_task-rest", "bold"),
    (3, "anat-T2w", "sc"),
    (4, "anat-FLAIR", "burned"),
    (5, "anat-PDw", "sr"),
    (6, "anat-T2starw", "gsps"),
)


def marker(field_name: str, owner: str) -> str:
    """A distinct, grep-able marker (fits SH): QQT + 3 digits + field initials + owner."""
    number = int(hashlib.sha256(f"{field_name}{owner}".encode()).hexdigest()[:6], 16) % 900 + 100
    initials = "".join(c for c in field_name if c.isupper() or c.isdigit())[:5] or field_name[:3].upper()
    return f"QQT{number}{initials}{owner}"


def uid(*parts: object) -> str:
    """Deterministic, distinct 2.25 UID."""
    return "2.25." + str(int(hashlib.sha256("|".join(map(str, ("torture",) + parts)).encode()).hexdigest()[:30], 16))


PATIENT_FIELDS = (
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientComments",
    "AdditionalPatientHistory",
    "EthnicGroup",
    "Occupation",
    "MedicalRecordLocator",
    "CountryOfResidence",
    "MilitaryRank",
    "BranchOfService",
    "PatientReligiousPreference",
)
STUDY_FIELDS = (
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "PerformedProcedureStepID",
    "PerformedProcedureStepDescription",
    "ImageComments",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "PerformedStationName",
    "PerformedLocation",
    "ReasonForStudy",
    "RequestingService",
    "AcquisitionComments",
    "DerivationDescription",
    "SoftwareVersions",
)
PERSON_FIELDS = (
    "PatientName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "PatientMotherBirthName",
    "PatientBirthName",
    "PhysiciansOfRecord",
    "OtherPatientNames",
)


@dataclass
class Torture:
    """What was written: the root, every marker by field, UIDs, dates and times."""

    root: Path
    markers: dict[str, str] = field(default_factory=dict)
    uids: set[str] = field(default_factory=set)
    dates: dict[str, list[str]] = field(default_factory=dict)
    times: set[str] = field(default_factory=set)
    patient_ids: dict[str, str] = field(default_factory=dict)

    def canaries(self) -> set[str]:
        """Every string that must never appear in any output byte stream."""
        out = set()
        for value in self.markers.values():
            out.add(value)
            out.update(p for p in value.replace("=", "^").split("^") if len(p) >= 6)
        for dates in self.dates.values():
            for d in dates:
                out.update({d, f"{d[:4]}-{d[4:6]}-{d[6:]}", f"{d[6:]}.{d[4:6]}.{d[:4]}"})
        for birth in BIRTH.values():
            out.update({birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"})
        for t in self.times:
            out.update({t, f"{t[:2]}:{t[2:4]}:{t[4:6]}"})
        return out | self.uids


def _person(field_name: str, owner: str) -> str:
    family, given = marker(field_name + "FAM", owner), marker(field_name + "GIV", owner)
    return f"{family}^{given}^^DR"


def _base(
    t: Torture,
    subject: str,
    key: str,
    date: str,
    study_time: str,
    age: str,
    sop_class: str,
    series_number: int,
    protocol: str,
    instance: int,
    acq_time: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid(key, series_number, instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid("implementation")
    meta.SourceApplicationEntityTitle = marker("AET", key)[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid(key, "study")
    ds.SeriesInstanceUID = uid(key, "series", series_number)
    ds.FrameOfReferenceUID = uid(key, "frame")
    ds.InstanceCreatorUID = uid(key, "creator")
    t.uids.update(
        {
            ds.SOPInstanceUID,
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.FrameOfReferenceUID,
            ds.InstanceCreatorUID,
            meta.ImplementationClassUID,
        }
    )
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"):
        setattr(ds, keyword, date)
    ds.StudyTime = study_time
    ds.SeriesTime = acq_time
    ds.AcquisitionTime = ds.ContentTime = ds.InstanceCreationTime = acq_time
    ds.AcquisitionDateTime = date + acq_time
    t.times.update({study_time[:6]})
    ds.Modality = "MR"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    # a PHI value typed into a public field: must be dropped by the per-series PHI check
    ds.ManufacturerModelName = "DISCOVERY " + marker("StationName", key)
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.ProtocolName = protocol
    ds.SeriesDescription = f"{protocol} {marker('SeriesDescription', key)}"
    ds.PatientSex = SEX[subject]
    ds.PatientAge = age
    ds.PatientBirthDate = BIRTH[subject]
    ds.PatientBirthTime = "071500"
    ds.PatientWeight = "70"
    for keyword in PATIENT_FIELDS:
        setattr(ds, keyword, marker(keyword, subject)[:64])
    ds.PatientID = t.patient_ids[subject]
    for keyword in STUDY_FIELDS:
        value = marker(keyword, key)
        setattr(
            ds,
            keyword,
            value[:16]
            if keyword
            in (
                "AccessionNumber",
                "StudyID",
                "StationName",
                "RequestedProcedureID",
                "PerformedProcedureStepID",
                "ScheduledProcedureStepID",
                "PerformedStationName",
            )
            else value,
        )
    # a non-ASCII person name (UTF-8), with an ideographic group after '='
    ds.PatientName = f"{marker('PatientNameFAM', subject)}^Jürgen{subject}ÄÖÜ^^^={marker('PatientNameIDEO', subject)}"
    t.markers[f"PatientNameGiven:{subject}"] = f"Jürgen{subject}ÄÖÜ"
    for keyword in PERSON_FIELDS[1:]:
        setattr(ds, keyword, _person(keyword, subject))
    ds.OtherPatientIDsSequence = Sequence(
        [_item(PatientID=marker("OtherPatientIDsSequence", subject), TypeOfPatientID="TEXT")]
    )
    nested = _item(ReferencedSOPClassUID=MR, ReferencedSOPInstanceUID=uid(key, "referenced"))
    t.uids.add(nested.ReferencedSOPInstanceUID)
    ds.RequestAttributesSequence = Sequence(
        [
            _item(
                RequestedProcedureID=marker("ReqAttrProcID", key)[:16],
                ScheduledProcedureStepDescription=marker("ReqAttrSPSDesc", key),
                ReasonForTheRequestedProcedure=marker("ReqAttrReason", key),
                ReferencedStudySequence=Sequence([nested]),
                ScheduledPerformingPhysicianName=_person("ReqAttrPerfDoc", key),
            )
        ]
    )
    ds.ReferringPhysicianIdentificationSequence = Sequence(
        [
            _item(
                InstitutionName=marker("RefDocInstitution", key),
                PersonIdentificationCodeSequence=Sequence(
                    [_item(CodeValue=marker("RefDocCode", key)[:16], CodingSchemeDesignator="L", CodeMeaning="id")]
                ),
            )
        ]
    )
    block = ds.private_block(0x0011, "QQT TORTURE VENDOR", create=True)
    block.add_new(0x10, "LO", f"{marker('PrivateLO', key)} patient note")
    block.add_new(
        0x11,
        "LT",
        f"{marker('PrivateLT', key)} seen {date[6:]}.{date[4:6]}.{date[:4]} and {date[:4]}-{date[4:6]}-{date[6:]}",
    )
    block.add_new(0x12, "SH", marker("PrivateSH", key)[:16])
    block.add_new(0x13, "UN", (marker("PrivateUN", key) + "\x00").encode("ascii"))
    block.add_new(0x14, "OB", marker("PrivateOB16", key).encode("utf-16-le"))
    block.add_new(0x15, "UR", f"https://pacs.example.invalid/viewer?case={marker('PrivateUR', key)}")
    block.add_new(0x16, "UI", uid("private", key))
    block.add_new(0x17, "DA", date)
    block.add_new(0x18, "TM", study_time)
    t.uids.add(uid("private", key))
    for name in ("PrivateLO", "PrivateLT", "PrivateUN", "PrivateOB16", "PrivateUR"):
        t.markers[f"{name}:{key}"] = marker(name, key)
    t.markers[f"PrivateSH:{key}"] = marker("PrivateSH", key)[:16]
    return ds


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _mr_geometry(ds: Dataset, z: float, tr_ms: float, te_ms: float) -> None:
    # a PHI value (the accession number) inside a sequence name: dropped by the PHI check
    ds.SequenceName = "fg_" + str(ds.AccessionNumber)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = "3"
    ds.SpacingBetweenSlices = "3"
    ds.RepetitionTime = str(tr_ms)
    ds.EchoTime = str(te_ms)
    ds.FlipAngle = "20"
    ds.MagneticFieldStrength = "3"
    ds.EchoNumbers = "1"
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.ImagePositionPatient = ["-24", "-24", str(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["3", "3"]
    ds.SliceLocation = str(z)
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1


def _pixels(ds: Dataset, data: np.ndarray, *, bits_stored: int = 16) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = data.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(data.astype("<u2")).tobytes()
    ds["PixelData"].VR = "OW"


def anat_values(z_index: int) -> np.ndarray:
    """The 12-bit image of one anat slice (what the NIfTI must hold)."""
    rows, cols = np.mgrid[0:ROWS, 0:COLS]
    return ((rows * 37 + cols * 11 + z_index * 101) % 4000 + 20).astype(np.uint16)


def _add_overlays(ds: Dataset, key: str) -> None:
    """A 60xx,3000 overlay plane with text, and an overlay in the unused high bit 15."""
    plane = np.zeros((ROWS, COLS), dtype=np.uint8)
    plane[2:6, 2:12] = 1
    ds.add_new(0x60000010, "US", ROWS)
    ds.add_new(0x60000011, "US", COLS)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60000022, "LO", marker("OverlayDescription", key))
    ds.add_new(0x60004000, "LT", marker("OverlayComments", key))
    ds.add_new(0x60003000, "OW", np.packbits(plane.ravel(), bitorder="little").tobytes())
    ds.add_new(0x60020010, "US", ROWS)
    ds.add_new(0x60020011, "US", COLS)
    ds.add_new(0x60020040, "CS", "G")
    ds.add_new(0x60020050, "SS", [1, 1])
    ds.add_new(0x60020100, "US", 16)
    ds.add_new(0x60020102, "US", 15)  # overlay bit embedded in PixelData's bit 15


def _write(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_torture(root: Path) -> Torture:
    """Write the torture tree under ``root`` and return what it holds."""
    with warnings.catch_warnings():  # the malformed values are on purpose
        warnings.simplefilter("ignore", UserWarning)
        return _make(Torture(root=Path(root)))


def _make(t: Torture) -> Torture:
    for subject in ("A", "B"):
        t.patient_ids[subject] = marker("PatientID", subject)[:16]
        t.markers[f"PatientID:{subject}"] = t.patient_ids[subject]
        t.markers[f"PatientName:{subject}"] = marker("PatientNameFAM", subject)
        t.markers[f"PatientNameIdeographic:{subject}"] = marker("PatientNameIDEO", subject)
        for keyword in PATIENT_FIELDS[1:] + ("OtherPatientIDsSequence",):
            t.markers[f"{keyword}:{subject}"] = marker(keyword, subject)[:64]
        for keyword in PERSON_FIELDS[1:]:
            t.markers[f"{keyword}:{subject}"] = _person(keyword, subject)
        t.markers[f"PathFolder:{subject}"] = marker("PathFolder", subject)
        t.markers[f"PathFile:{subject}"] = marker("PathFile", subject)
    for subject, key, date, study_time, age in STUDIES:
        t.dates.setdefault(subject, []).append(date)
        for keyword in STUDY_FIELDS:
            t.markers[f"{keyword}:{key}"] = marker(keyword, key)
        t.markers[f"AET:{key}"] = marker("AET", key)[:16]
        for name in (
            "SeriesDescription",
            "ReqAttrProcID",
            "ReqAttrSPSDesc",
            "ReqAttrReason",
            "RefDocInstitution",
            "RefDocCode",
            "OverlayDescription",
            "OverlayComments",
            "SRText",
            "SRName",
            "GSPSLabel",
            "BadDate",
        ):
            t.markers[f"{name}:{key}"] = marker(name, key)
        t.markers[f"ReqAttrPerfDoc:{key}"] = _person("ReqAttrPerfDoc", key)
        session = t.root / f"{marker('PathFolder', subject)}_{date}" / key
        for number, protocol, kind in SERIES:
            folder = session / f"{number:02d}_{protocol}"
            seconds = int(study_time[:2]) * 3600 + int(study_time[2:4]) * 60 + int(study_time[4:6]) + number * 300

            def clock(offset: float, seconds: int = seconds) -> str:
                total = seconds + offset
                return f"{int(total // 3600):02d}{int(total % 3600 // 60):02d}{total % 60:09.6f}"

            files: list[Dataset] = []
            if kind == "anat":
                for z in range(ANAT_SLICES):
                    ds = _base(t, subject, key, date, study_time, age, MR, number, protocol, z + 1, clock(0))
                    _mr_geometry(ds, z * 3.0, 500, 10)
                    _add_overlays(ds, key)
                    if z == 0:  # malformed DA: pydicom's validation would quote it in a warning
                        ds.add_new(0x00400250, "DA", marker("BadDate", key))
                    data = anat_values(z).copy()
                    data[8:12, 8:12] |= 1 << 15  # the embedded overlay bit
                    _pixels(ds, data, bits_stored=12)
                    files.append(ds)
            elif kind == "bold":
                instance = 0
                for volume in range(BOLD_VOLUMES):
                    for z in range(BOLD_SLICES):
                        instance += 1
                        ds = _base(
                            t,
                            subject,
                            key,
                            date,
                            study_time,
                            age,
                            MR,
                            number,
                            protocol,
                            instance,
                            clock(volume * 2.0 + z * 0.5),
                        )
                        _mr_geometry(ds, z * 3.0, 2000, 30)
                        ds.ImageType = ["ORIGINAL", "PRIMARY", "EPI", "NONE"]
                        ds.ScanningSequence = ["EP", "GR"]
                        ds.SequenceVariant = "NONE"
                        ds.TemporalPositionIdentifier = volume + 1
                        ds.NumberOfTemporalPositions = BOLD_VOLUMES
                        ds.ImagesInAcquisition = BOLD_SLICES * BOLD_VOLUMES
                        rows, cols = np.mgrid[0:ROWS, 0:COLS]
                        _pixels(ds, (rows * 5 + cols * 3 + z * 50 + volume * 7 + 100) % 1000)
                        files.append(ds)
            elif kind in ("sc", "burned"):
                ds = _base(
                    t, subject, key, date, study_time, age, SC if kind == "sc" else MR, number, protocol, 1, clock(0)
                )
                _mr_geometry(ds, 0.0, 500, 10)
                ds.BurnedInAnnotation = "YES"
                if kind == "sc":
                    ds.ConversionType = "WSD"
                _pixels(ds, np.full((ROWS, COLS), 4000))
                files.append(ds)
            elif kind == "sr":
                ds = _base(t, subject, key, date, study_time, age, SR, number, protocol, 1, clock(0))
                ds.Modality = "SR"
                ds.ValueType = "CONTAINER"
                ds.ContentSequence = Sequence(
                    [
                        _item(RelationshipType="CONTAINS", ValueType="TEXT", TextValue=marker("SRText", key)),
                        _item(RelationshipType="CONTAINS", ValueType="PNAME", PersonName=marker("SRName", key) + "^X"),
                    ]
                )
                files.append(ds)
            else:  # grayscale softcopy presentation state
                ds = _base(t, subject, key, date, study_time, age, GSPS, number, protocol, 1, clock(0))
                ds.Modality = "PR"
                ds.ContentLabel = marker("GSPSLabel", key)[:16].upper()
                ds.ContentCreatorName = _person("GSPSCreator", key)
                files.append(ds)
            for index, ds in enumerate(files, 1):
                _write(ds, folder / f"{marker('PathFile', subject)}_{index:04d}.dcm")
    return t


if __name__ == "__main__":
    made = make_torture(Path(sys.argv[1] if len(sys.argv) > 1 else "torture"))
    print(f"{made.root}: {len(made.markers)} markers, {len(made.uids)} UIDs")
