#!/usr/bin/env python3
"""Generate the committed synthetic DICOM sample used by dcmpack's tests.

Usage::

    python sample_data/make_sample.py [--out DIR]

The default output directory is ``sample_data/dicom`` next to this script. It is
deleted and rewritten on every run. The output is fully deterministic: fixed
identities, fixed times, UIDs derived from fixed strings (``2.25.<int>``),
seeded numpy generators and no reference to the current time, so two runs
produce byte-identical files.

Every identity in here is synthetic. Every header field that a real scanner
fills with protected health information (PHI) holds a distinct, grep-able
marker (most start with ``ZZPHI``). ``CANARIES`` / ``canaries()`` list every
string that must never appear in anything dcmpack outputs. Importing this
module only computes those lists; nothing is written unless it runs as a script.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import sys
from pathlib import Path

# ---------------------------------------------------------------------------
# Synthetic identities (patient level) and sessions (study level)
# ---------------------------------------------------------------------------

SUBJECTS = {
    "A": {
        "PatientName": "ZZPHIDOE^ZZPHIJANE",
        "PathName": "ZZPHIDOE_JANE",  # PHI in folder names
        "PatientID": "SYNPT0001",
        "PatientBirthDate": "19580214",
        "PatientSex": "F",
        "PatientWeight": "61.5",
        "PatientSize": "1.63",
        "PlainName": "Jane Doe",  # free-text form used inside private/SR text
    },
    "B": {
        "PatientName": "ZZPHIROE^ZZPHIRICHARD",
        "PathName": "ZZPHIROE_RICHARD",
        "PatientID": "SYNPT0002",
        "PatientBirthDate": "19321107",
        "PatientSex": "M",
        "PatientWeight": "78.2",
        "PatientSize": "1.77",
        "PlainName": "Richard Roe",
    },
}

# (subject, study key, StudyDate, StudyTime, PatientAge)
STUDIES = [
    ("A", "A1", "20240312", "091427.312000", "066Y"),
    ("A", "A2", "20240619", "143752.804000", "066Y"),
    ("B", "B1", "20240405", "104809.517000", "091Y"),
]

# Site level (one scanner for everybody, as in real life).
SITE = {
    "InstitutionName": "ZZPHIINSTITUTION Synthetic General Hospital",
    "InstitutionAddress": "ZZPHIINSTADDRESS 1 Imaging Way Nowhere",
    "InstitutionalDepartmentName": "ZZPHIDEPARTMENT Radiology",
    "StationName": "ZZPHISTATION",
    "DeviceSerialNumber": "ZZPHISERIAL000MR750",
    "SoftwareVersions": ["27", "LX", "ZZPHISOFTWARE_DV26.0"],
    "SourceApplicationEntityTitle": "ZZPHIAETITLE",
}


def subject_markers(s: str) -> dict:
    """Patient-level PHI markers for subject key ``s`` ("A" or "B")."""
    plain = SUBJECTS[s]["PlainName"]
    return {
        "OtherPatientIDs": f"ZZPHIOTHERID{s}",
        "OtherPatientIDsSequence": f"ZZPHIOTHERIDSEQ{s}",
        "IssuerOfPatientID": f"ZZPHIISSUER{s}",
        "PatientBirthName": f"ZZPHIBIRTHNAME{s}^ZZPHIMAIDEN{s}",
        "PatientMotherBirthName": f"ZZPHIMOTHER{s}^ZZPHIMOM{s}",
        "PatientAddress": f"ZZPHIADDRESS{s} 12 Fake Street Springfield",
        "PatientTelephoneNumbers": f"ZZPHIPHONE{s}",
        "PatientComments": f"ZZPHIPATCOMMENT{s} prefers morning slots",
        "AdditionalPatientHistory": f"ZZPHIHISTORY{s} history of headaches",
        "EthnicGroup": f"ZZPHIETHNIC{s}",
        "Occupation": f"ZZPHIOCCUP{s}",
        "ReferringPhysicianName": f"ZZPHIREFDOC{s}^ZZPHIALICE{s}",
        "RequestingPhysician": f"ZZPHIREQDOC{s}^ZZPHICAROL{s}",
        "NameOfPhysiciansReadingStudy": f"ZZPHIREADER{s}^ZZPHIDAVE{s}",
        "PerformingPhysicianName": f"ZZPHIPERFDOC{s}^ZZPHIEVE{s}",
        "OperatorsName": f"ZZPHIOPERATOR{s}^ZZPHIBOB{s}",
        "ImageComments": f"ZZPHIIMGCOMMENT{s} subject was anxious",
        "PrivateText": f"ZZPHIPRIVATENOTE{s} patient {plain}",
        "PrivateOB": f"ZZPHIPRIVATEBLOB{s}",
    }


def study_markers(k: str) -> dict:
    """Study-level PHI markers for study key ``k`` ("A1", "A2", "B1")."""
    return {
        "AccessionNumber": f"ZZPHIACCESSION{k}",
        "StudyID": f"ZZPHISTUDYID{k}",
        "StudyDescription": f"ZZPHISTUDYDESC{k} BRAIN RESEARCH",
        "RequestedProcedureDescription": f"ZZPHIREQPROCDESC{k} MRI BRAIN",
        "PerformedProcedureStepDescription": f"ZZPHIPPSDESC{k} MRI BRAIN",
        "PerformedProcedureStepID": f"ZZPHIPPSID{k}",
        "RequestedProcedureID": f"ZZPHIREQPROC{k}",
        "ScheduledProcedureStepID": f"ZZPHISPSID{k}",
        "ScheduledProcedureStepDescription": f"ZZPHISPSDESC{k} MRI",
        "ReportText": f"ZZPHIREPORTTEXT{k}",
    }


# ---------------------------------------------------------------------------
# Series list and timing
# ---------------------------------------------------------------------------

# SeriesNumber -> (ReproIn name, start offset from StudyTime in seconds)
SERIES = [
    (1, "localizer", 41.0),
    (2, "anat-T1w", 163.25),
    (3, "fmap-epi_dir-AP", 517.5),
    (4, "fmap-epi_dir-PA", 559.75),
    (5, "func-bold_task-rest", 611.125),
    (6, "dwi-dwi_acq-6dir", 1056.625),
    (7, "screenshot", 1444.875),
    (8, "report", 1903.5),
]

N_EPI_SLICES = 12
BOLD_TR_S = 2.0
BOLD_VOLUMES = 10
DWI_TR_S = 8.0
# interleaved ascending: 1,3,5,...,11,2,4,...,12 (0-based spatial indices)
INTERLEAVED_ORDER = list(range(0, N_EPI_SLICES, 2)) + list(range(1, N_EPI_SLICES, 2))

DWI_B = 1000
_r2 = 1.0 / math.sqrt(2.0)
DWI_DIRECTIONS = [
    (0.0, 0.0, 0.0),
    (_r2, 0.0, _r2),
    (-_r2, 0.0, _r2),
    (0.0, _r2, _r2),
    (0.0, _r2, -_r2),
    (_r2, _r2, 0.0),
    (-_r2, _r2, 0.0),
]


def _time_to_seconds(t: str) -> float:
    return int(t[0:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:])


def _seconds_to_time(sec: float) -> str:
    us = int(round(sec * 1_000_000))
    h, rem = divmod(us, 3600 * 1_000_000)
    m, rem = divmod(rem, 60 * 1_000_000)
    s, us = divmod(rem, 1_000_000)
    return f"{h:02d}{m:02d}{s:02d}.{us:06d}"


def series_time(study_time: str, offset: float) -> str:
    return _seconds_to_time(_time_to_seconds(study_time) + offset)


# The T1w is a whole head (face included) so that dcmpack's defacing has something to do: 68
# sagittal slices of 84 x 90 pixels, 2.5 mm isotropic, from x = -85 (right) to +82.5 (left).
T1_SLICE = 2.5
T1_SLICES = 68
T1_ROWS, T1_COLS = 84, 90
#: Per study: (scale, pitch and yaw in degrees, shift in mm) of the known affine that places the
#: template head in the scanner: two subjects with different heads, repositioned between sessions.
T1_POSE = {
    "A1": (0.95, 6.0, -3.0, (0.0, 0.0, 0.0)),
    "A2": (0.95, 4.0, -1.0, (2.0, -3.0, 2.5)),
    "B1": (1.02, -3.0, 2.0, (-1.0, 2.0, -4.0)),
}


def acquisition_offsets(name: str) -> list[float]:
    """Per-file acquisition time offsets (seconds from series start), in
    InstanceNumber order. Empty list for non-image objects (report)."""
    if name == "localizer":
        return [0.0, 0.0, 0.0]
    if name == "anat-T1w":
        return [0.0] * T1_SLICES
    if name.startswith("fmap-"):
        return [0.0] * N_EPI_SLICES
    if name.startswith("func-"):
        tr = BOLD_TR_S
        return [
            v * tr + INTERLEAVED_ORDER.index(k) * tr / N_EPI_SLICES
            for v in range(BOLD_VOLUMES)
            for k in range(N_EPI_SLICES)
        ]
    if name.startswith("dwi-"):
        return [
            v * DWI_TR_S + INTERLEAVED_ORDER.index(k) * DWI_TR_S / N_EPI_SLICES
            for v in range(len(DWI_DIRECTIONS))
            for k in range(N_EPI_SLICES)
        ]
    if name == "screenshot":
        return [0.0]
    return []


def _iso_date(d: str) -> str:
    return f"{d[0:4]}-{d[4:6]}-{d[6:8]}"


def _colon_time(t: str) -> str:
    return f"{t[0:2]}:{t[2:4]}:{t[4:6]}"


# ---------------------------------------------------------------------------
# CANARIES: every string that must never appear in any dcmpack output
# ---------------------------------------------------------------------------


def _build_canaries() -> dict[str, list[str]]:
    c: dict[str, list[str]] = {}

    def add(field: str, *values: str) -> None:
        lst = c.setdefault(field, [])
        for v in values:
            if v and v not in lst:
                lst.append(v)

    for s, subj in SUBJECTS.items():
        name = subj["PatientName"]
        add("PatientName", name, *name.split("^"))
        add("PathName", subj["PathName"])
        add("PatientID", subj["PatientID"])
        add("PatientBirthDate", subj["PatientBirthDate"], _iso_date(subj["PatientBirthDate"]))
        add("PlainName", subj["PlainName"])
        for field, value in subject_markers(s).items():
            if "^" in value:
                add(field, value, *value.split("^"))
            else:
                add(field, value)
    for field, value in SITE.items():
        if isinstance(value, list):
            add(field, *[v for v in value if v.startswith("ZZPHI")])
        else:
            add(field, value)
    for _s, k, date, stime, _age in STUDIES:
        for field, value in study_markers(k).items():
            add(field, value)
        add("StudyDate", date, _iso_date(date))
        # StudyTime: full DICOM value, bare HHMMSS and HH:MM:SS
        add("StudyTime", stime, stime[:6], _colon_time(stime))
        for _num, sname, off in SERIES:
            st = series_time(stime, off)
            # SeriesTime == first AcquisitionTime of the series
            add("SeriesTime", st, st[:6], _colon_time(st))
            for o in acquisition_offsets(sname):
                # per-file Acquisition/Content times: full value only (bare
                # 6-digit strings are too collision-prone to use in bulk)
                add("AcquisitionTime", series_time(stime, off + o))
            add("AcquisitionDateTime", date + st)
    return c


CANARIES: dict[str, list[str]] = _build_canaries()


def canaries() -> set[str]:
    """Every string (from all subjects/sessions) that must never appear in an
    output: names and their '^' components, IDs, addresses, institution,
    station, serial, operator, comments, private text, accession, StudyID,
    study descriptions, dates (YYYYMMDD and YYYY-MM-DD), times (HHMMSS for
    study/series start, HH:MM:SS, full HHMMSS.ffffff per file)."""
    return {v for values in CANARIES.values() for v in values}


# Non-string PHI (not in canaries(): short numbers would false-positive).
NUMERIC_PHI = {s: {"PatientWeight": v["PatientWeight"], "PatientSize": v["PatientSize"]} for s, v in SUBJECTS.items()}


# ---------------------------------------------------------------------------
# Deterministic UIDs
# ---------------------------------------------------------------------------


def make_uid(*parts: object) -> str:
    """Deterministic ``2.25.<128-bit int>`` UID from fixed strings."""
    key = "dcmpack-synthetic-sample|" + "|".join(str(p) for p in parts)
    return "2.25." + str(int(hashlib.sha256(key.encode()).hexdigest()[:32], 16))


def series_file_count(name: str) -> int:
    if name == "report":
        return 1
    return len(acquisition_offsets(name))


def uid_canaries() -> set[str]:
    """Original Study/Series/SOP Instance/FrameOfReference UIDs. Kept apart from
    canaries() because whether UIDs may survive is a policy decision."""
    out = set()
    for _s, k, *_ in STUDIES:
        out.add(make_uid(k, "study"))
        out.add(make_uid(k, "for"))
        for num, name, _off in SERIES:
            out.add(make_uid(k, "series", num))
            for i in range(1, series_file_count(name) + 1):
                out.add(make_uid(k, "sop", num, i))
    return out


# ---------------------------------------------------------------------------
# Everything below is only used when generating
# ---------------------------------------------------------------------------

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
IMPLEMENTATION_CLASS_UID = make_uid("implementation-class")


def _seed(*parts: object) -> int:
    key = "|".join(str(p) for p in parts)
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)


def ds_str(v: float) -> str:
    """Format a number as a short, valid DS string."""
    v = round(float(v), 6)
    if v == 0:
        v = 0.0  # no "-0"
    s = repr(v)
    if s.endswith(".0"):
        s = s[:-2]
    if len(s) > 16:
        s = f"{v:.10g}"
    assert len(s) <= 16, s
    return s


def phantom(x, y, z, contrast: str = "T1", shift=(0.0, 0.0, 0.0)):
    """Smooth, left/right/anterior/posterior/superior-inferior asymmetric
    head-like phantom sampled at patient (LPS, mm) coordinates."""
    import numpy as np

    x = x - shift[0]
    y = y - shift[1]
    z = z - shift[2]
    cx, cy, cz = 0.0, -14.0, -2.0
    ax, ay, az = 24.0, 30.0, 27.0

    def sig(t):
        return 1.0 / (1.0 + np.exp(-t))

    def gauss(px, py, pz, sx, sy, sz):
        return np.exp(-0.5 * (((x - px) / sx) ** 2 + ((y - py) / sy) ** 2 + ((z - pz) / sz) ** 2))

    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)
    head = sig((1.0 - r) * 14.0)
    brain = sig((0.86 - r) * 16.0)
    scalp = np.clip(head - brain, 0, None)
    sup = 1.0 + 0.18 * (z - cz) / az  # brighter superiorly
    vent = gauss(cx + 3.0, cy + 2.0, cz + 5.0, 3.0, 8.0, 4.0)  # slightly left
    blob_la = gauss(cx + 12.0, cy - 18.0, cz + 2.0, 4.5, 4.5, 5.0)  # left-anterior
    blob_rp = gauss(cx - 11.0, cy + 15.0, cz + 8.0, 3.5, 3.5, 4.0)  # right-posterior-superior
    if contrast == "T1":
        img = 350 * scalp + 700 * brain * sup - 420 * vent * brain + 380 * blob_la + 220 * blob_rp
    else:  # T2*-ish EPI contrast: CSF bright
        img = 120 * scalp + 600 * brain * sup + 500 * vent * brain + 300 * blob_la - 150 * blob_rp * brain
    return np.clip(img, 0, None)


def slice_grid(ipp, iop, spacing, rows, cols):
    """Patient coordinates of every pixel centre of one slice, each (rows, cols)."""
    import numpy as np

    ipp = np.asarray(ipp, float)
    rowvec = np.asarray(iop[:3], float)  # direction of increasing column index
    colvec = np.asarray(iop[3:], float)  # direction of increasing row index
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    pts = [ipp[i] + c * spacing[1] * rowvec[i] + r * spacing[0] * colvec[i] for i in range(3)]
    return [np.broadcast_to(p, (rows, cols)) for p in pts]


def _normal(iop):
    import numpy as np

    return np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))


# Geometry per series kind ---------------------------------------------------

AXIAL_IOP = [1, 0, 0, 0, 1, 0]
CORONAL_IOP = [1, 0, 0, 0, 0, -1]
SAGITTAL_IOP = [0, 1, 0, 0, 0, -1]
EPI_ORIGIN = (-48.0, -60.0, -20.0)
EPI_VOX = 3.0
T1_FIRST_IPP = (-85.0, -125.0, 90.0)


def t1_to_template(points, study: str):
    """Scanner (LPS, mm) points, shape (3, n) -> the template's (LPS, mm) points they show in
    study ``study``: the known affine of ``T1_POSE``. The head centre (0, -12, -15) lands on the
    template's (8.5, -13.9, -20.1); the head is ``scale`` times the template's size."""
    import numpy as np

    scale, pitch, yaw, shift = T1_POSE[study]
    p, w = np.radians(pitch), np.radians(yaw)
    pitch_m = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    yaw_m = np.array([[np.cos(w), -np.sin(w), 0], [np.sin(w), np.cos(w), 0], [0, 0, 1]])
    centre, target = np.array([0.0, -12.0, -15.0]) + np.array(shift), np.array([8.5, -13.9, -20.1])
    return (pitch_m @ yaw_m / scale) @ (np.asarray(points, float) - centre[:, None]) + target[:, None]


def template_file(name: str = "template_2mm.nii.gz") -> Path:
    """A file of dcmpack's vendored defacing template (pydeface's, MIT): the package's data, found
    the same way from the repository (``sample_data/``) and from an install (``packager/sample_data``)."""
    from importlib.resources import as_file, files

    with as_file(files("packager.deface").joinpath("data", name)) as path:
        return Path(path)


def head_t1(x, y, z, study: str, slice_index: int):
    """The sample's T1w head at patient (LPS, mm) coordinates: dcmpack's vendored whole-head
    template seen through the study's known affine (``t1_to_template``), linearly interpolated,
    plus Gaussian noise inside the head from a generator seeded by study and slice (deterministic)."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    template = nib.load(template_file())
    points = np.stack([np.asarray(v, float).ravel() for v in (x, y, z)])
    ras = t1_to_template(points, study) * np.array([[-1.0], [-1.0], [1.0]])
    voxels = np.linalg.inv(template.affine) @ np.vstack([ras, np.ones(ras.shape[1])])
    values = ndimage.map_coordinates(np.asarray(template.dataobj, np.float32), voxels[:3], order=1, cval=0.0)
    rng = np.random.default_rng(int(hashlib.sha256(f"t1|{study}|{slice_index}".encode()).hexdigest()[:8], 16))
    noisy = values * 3.0 + rng.normal(0.0, 6.0, values.shape) * (values > 2.0)
    return np.clip(noisy, 0, None).reshape(np.shape(x))


def epi_positions():
    return [(EPI_ORIGIN[0], EPI_ORIGIN[1], round(EPI_ORIGIN[2] + EPI_VOX * k, 4)) for k in range(N_EPI_SLICES)]


def t1_positions():
    # IOP normal is -x; slices ordered by increasing x (R -> L)
    return [(round(T1_FIRST_IPP[0] + T1_SLICE * k, 4), T1_FIRST_IPP[1], T1_FIRST_IPP[2]) for k in range(T1_SLICES)]


# Dataset building -------------------------------------------------------------


def _seq_item(**kw):
    from pydicom.dataset import Dataset

    item = Dataset()
    for k, v in kw.items():
        setattr(item, k, v)
    return item


def _code(value, scheme, meaning):
    return _seq_item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def base_dataset(subj_key, study, sop_class, sop_uid, series_num, series_name, modality, instance_number, acq_time):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    s, k, date, stime, age = study
    subj = SUBJECTS[s]
    pm = subject_markers(s)
    sm = study_markers(k)
    off = dict((n, o) for n, _name, o in SERIES)[series_num]
    ser_time = series_time(stime, off)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "DCMPACK_SYNTH_1"
    meta.SourceApplicationEntityTitle = SITE["SourceApplicationEntityTitle"]

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = acq_time
    # dates / times
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.AcquisitionDate = date
    ds.ContentDate = date
    ds.StudyTime = stime
    ds.SeriesTime = ser_time
    ds.AcquisitionTime = acq_time
    ds.ContentTime = acq_time
    ds.AcquisitionDateTime = date + acq_time
    ds.AccessionNumber = sm["AccessionNumber"]
    ds.Modality = modality
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.InstitutionName = SITE["InstitutionName"]
    ds.InstitutionAddress = SITE["InstitutionAddress"]
    ds.ReferringPhysicianName = pm["ReferringPhysicianName"]
    ds.StationName = SITE["StationName"]
    ds.StudyDescription = sm["StudyDescription"]
    ds.SeriesDescription = series_name
    ds.InstitutionalDepartmentName = SITE["InstitutionalDepartmentName"]
    ds.PerformingPhysicianName = pm["PerformingPhysicianName"]
    ds.NameOfPhysiciansReadingStudy = pm["NameOfPhysiciansReadingStudy"]
    ds.OperatorsName = pm["OperatorsName"]
    ds.ManufacturerModelName = "DISCOVERY MR750"
    # patient
    ds.PatientName = subj["PatientName"]
    ds.PatientID = subj["PatientID"]
    ds.IssuerOfPatientID = pm["IssuerOfPatientID"]
    ds.PatientBirthDate = subj["PatientBirthDate"]
    ds.PatientSex = subj["PatientSex"]
    ds.OtherPatientIDs = pm["OtherPatientIDs"]
    ds.OtherPatientIDsSequence = Sequence(
        [
            _seq_item(
                PatientID=pm["OtherPatientIDsSequence"],
                IssuerOfPatientID=pm["IssuerOfPatientID"],
                TypeOfPatientID="TEXT",
            )
        ]
    )
    ds.PatientBirthName = pm["PatientBirthName"]
    ds.PatientAge = age
    ds.PatientSize = subj["PatientSize"]
    ds.PatientWeight = subj["PatientWeight"]
    ds.PatientAddress = pm["PatientAddress"]
    ds.PatientMotherBirthName = pm["PatientMotherBirthName"]
    ds.PatientTelephoneNumbers = pm["PatientTelephoneNumbers"]
    ds.EthnicGroup = pm["EthnicGroup"]
    ds.Occupation = pm["Occupation"]
    ds.AdditionalPatientHistory = pm["AdditionalPatientHistory"]
    ds.PatientComments = pm["PatientComments"]
    ds.ImageComments = pm["ImageComments"]
    # equipment
    ds.DeviceSerialNumber = SITE["DeviceSerialNumber"]
    ds.SoftwareVersions = SITE["SoftwareVersions"]
    ds.ProtocolName = series_name
    # study / series
    ds.StudyInstanceUID = make_uid(k, "study")
    ds.SeriesInstanceUID = make_uid(k, "series", series_num)
    ds.StudyID = sm["StudyID"]
    ds.SeriesNumber = series_num
    ds.InstanceNumber = instance_number
    ds.RequestingPhysician = pm["RequestingPhysician"]
    ds.RequestedProcedureDescription = sm["RequestedProcedureDescription"]
    ds.PerformedProcedureStepStartDate = date
    ds.PerformedProcedureStepStartTime = stime
    ds.PerformedProcedureStepID = sm["PerformedProcedureStepID"]
    ds.PerformedProcedureStepDescription = sm["PerformedProcedureStepDescription"]
    ds.RequestAttributesSequence = Sequence(
        [
            _seq_item(
                AccessionNumber=sm["AccessionNumber"],
                RequestedProcedureID=sm["RequestedProcedureID"],
                ScheduledProcedureStepID=sm["ScheduledProcedureStepID"],
                ScheduledProcedureStepDescription=sm["ScheduledProcedureStepDescription"],
            )
        ]
    )
    # private block with free-text PHI
    blk = ds.private_block(0x0029, "ZZSYNTH_PRIVATE", create=True)
    blk.add_new(0x01, "LO", pm["PrivateText"])
    blk.add_new(0x02, "OB", (pm["PrivateOB"] + "|" + subj["PatientID"] + "|").encode("ascii"))
    return ds


def add_image_pixel(ds, arr):
    import numpy as np

    arr = np.ascontiguousarray(np.clip(np.rint(arr), -32768, 32767).astype("<i2"))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW"


def add_mr_common(
    ds,
    *,
    ipp,
    iop,
    spacing,
    thickness,
    between,
    k_for,
    image_type,
    tr,
    te,
    flip,
    scanning_seq,
    seq_variant,
    acq_type,
    phase_dir,
    acq_matrix,
    echo_train=1,
    bandwidth=None,
    extra=None,
):
    import numpy as np

    ds.ImageType = image_type
    ds.ScanningSequence = scanning_seq
    ds.SequenceVariant = seq_variant
    ds.ScanOptions = ""
    ds.MRAcquisitionType = acq_type
    ds.SliceThickness = ds_str(thickness)
    if between is not None:
        ds.SpacingBetweenSlices = ds_str(between)
    ds.RepetitionTime = ds_str(tr)
    ds.EchoTime = ds_str(te)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "127.771"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "3"
    ds.EchoTrainLength = str(echo_train)
    if bandwidth is not None:
        ds.PixelBandwidth = ds_str(bandwidth)
    ds.ReceiveCoilName = "32Ch Head"
    ds.AcquisitionMatrix = acq_matrix
    ds.InPlanePhaseEncodingDirection = phase_dir
    ds.FlipAngle = ds_str(flip)
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "BRAIN"
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [ds_str(v) for v in ipp]
    ds.ImageOrientationPatient = [ds_str(v) for v in iop]
    ds.FrameOfReferenceUID = k_for
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = ds_str(float(np.dot(np.asarray(ipp, float), _normal(iop))))
    ds.PixelSpacing = [ds_str(spacing[0]), ds_str(spacing[1])]
    for key, value in (extra or {}).items():
        setattr(ds, key, value)


def add_ge_epi_private(ds, pulse_seq, b_value=None, grad=None):
    """GE private tags used by converters for EPI / diffusion."""
    acq = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    acq.add_new(0x9C, "LO", pulse_seq)  # (0019,109C) pulse sequence name
    if grad is not None:
        acq.add_new(0xBB, "DS", ds_str(grad[0]))  # (0019,10BB) gradient x
        acq.add_new(0xBC, "DS", ds_str(grad[1]))  # (0019,10BC) gradient y
        acq.add_new(0xBD, "DS", ds_str(grad[2]))  # (0019,10BD) gradient z
    parm = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    parm.add_new(0x2C, "SS", 528)  # (0043,102C) effective echo spacing [us]
    if b_value is not None:
        parm.add_new(0x39, "IS", [str(b_value), "8", "0", "0"])  # (0043,1039) b-value
    parm.add_new(0x83, "DS", ["1", "1"])  # (0043,1083) ASSET R factors


def write(ds, path: Path):
    import pydicom

    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def build_session(out: Path, study):
    import numpy as np
    from pydicom.sequence import Sequence

    s, k, date, stime, _age = study
    session_dir = out / f"{SUBJECTS[s]['PathName']}_{date}"
    for_uid = make_uid(k, "for")

    for num, name, off in SERIES:
        sdir = session_dir / f"{num:02d}_{name}"
        offs = acquisition_offsets(name)
        files = []

        # The series' loop values are bound as defaults (the names a closure would read late).
        def new(i, sop_class=MR_IMAGE_STORAGE, modality="MR", *, num=num, name=name, off=off, offs=offs):
            t = series_time(stime, off + (offs[i - 1] if offs else 0.0))
            return base_dataset(s, study, sop_class, make_uid(k, "sop", num, i), num, name, modality, i, t)

        if name == "localizer":
            geoms = [
                (AXIAL_IOP, (-116.25, -130.25, 0.0)),
                (CORONAL_IOP, (-116.25, -14.0, 116.25)),
                (SAGITTAL_IOP, (0.0, -130.25, 116.25)),
            ]
            for i, (iop, ipp) in enumerate(geoms, start=1):
                ds = new(i)
                x, y, z = slice_grid(ipp, iop, (7.5, 7.5), 32, 32)
                add_mr_common(
                    ds,
                    ipp=ipp,
                    iop=iop,
                    spacing=(7.5, 7.5),
                    thickness=10.0,
                    between=None,
                    k_for=for_uid,
                    image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                    tr=5.5,
                    te=1.6,
                    flip=25,
                    scanning_seq="GR",
                    seq_variant="SS",
                    acq_type="2D",
                    phase_dir="ROW",
                    acq_matrix=[32, 0, 0, 32],
                    bandwidth=244.1,
                )
                add_image_pixel(ds, phantom(x, y, z, "T1"))
                files.append(ds)

        elif name == "anat-T1w":
            for i, ipp in enumerate(t1_positions(), start=1):
                ds = new(i)
                x, y, z = slice_grid(ipp, SAGITTAL_IOP, (T1_SLICE, T1_SLICE), T1_ROWS, T1_COLS)
                add_mr_common(
                    ds,
                    ipp=ipp,
                    iop=SAGITTAL_IOP,
                    spacing=(T1_SLICE, T1_SLICE),
                    thickness=T1_SLICE,
                    between=T1_SLICE,
                    k_for=for_uid,
                    image_type=["ORIGINAL", "PRIMARY", "M", "ND"],
                    tr=2300,
                    te=2.98,
                    flip=9,
                    scanning_seq="GR",
                    seq_variant=["SS", "SP"],
                    acq_type="3D",
                    phase_dir="ROW",
                    acq_matrix=[T1_COLS, 0, 0, T1_ROWS],
                    bandwidth=244.141,
                    extra={"InversionTime": "900"},
                )
                ds.ImagesInAcquisition = T1_SLICES
                add_image_pixel(ds, head_t1(x, y, z, k, i))
                files.append(ds)

        elif name.startswith("fmap-"):
            shift = (0.0, -2.0, 0.0) if name.endswith("AP") else (0.0, 2.0, 0.0)
            for i, ipp in enumerate(epi_positions(), start=1):
                ds = new(i)
                x, y, z = slice_grid(ipp, AXIAL_IOP, (EPI_VOX, EPI_VOX), 32, 32)
                add_mr_common(
                    ds,
                    ipp=ipp,
                    iop=AXIAL_IOP,
                    spacing=(EPI_VOX, EPI_VOX),
                    thickness=EPI_VOX,
                    between=EPI_VOX,
                    k_for=for_uid,
                    image_type=["ORIGINAL", "PRIMARY", "EPI", "NONE"],
                    tr=8000,
                    te=60,
                    flip=90,
                    scanning_seq=["EP", "SE"],
                    seq_variant="NONE",
                    acq_type="2D",
                    phase_dir="COL",
                    acq_matrix=[0, 32, 32, 0],
                    echo_train=1,
                    bandwidth=3906.25,
                )
                ds.ImagesInAcquisition = N_EPI_SLICES
                add_ge_epi_private(ds, "epi2")
                add_image_pixel(ds, phantom(x, y, z, "EPI", shift=shift))
                files.append(ds)

        elif name.startswith("func-"):
            rng = np.random.default_rng(_seed("bold", k))
            positions = epi_positions()
            i = 0
            for v in range(BOLD_VOLUMES):
                for sl, ipp in enumerate(positions):
                    i += 1
                    ds = new(i)
                    x, y, z = slice_grid(ipp, AXIAL_IOP, (EPI_VOX, EPI_VOX), 32, 32)
                    add_mr_common(
                        ds,
                        ipp=ipp,
                        iop=AXIAL_IOP,
                        spacing=(EPI_VOX, EPI_VOX),
                        thickness=EPI_VOX,
                        between=EPI_VOX,
                        k_for=for_uid,
                        image_type=["ORIGINAL", "PRIMARY", "EPI", "NONE"],
                        tr=BOLD_TR_S * 1000,
                        te=30,
                        flip=77,
                        scanning_seq=["EP", "GR"],
                        seq_variant="NONE",
                        acq_type="2D",
                        phase_dir="COL",
                        acq_matrix=[0, 32, 32, 0],
                        echo_train=1,
                        bandwidth=7812.5,
                    )
                    ds.ImagesInAcquisition = N_EPI_SLICES * BOLD_VOLUMES
                    ds.TemporalPositionIdentifier = v + 1
                    ds.NumberOfTemporalPositions = BOLD_VOLUMES
                    rank = INTERLEAVED_ORDER.index(sl)
                    ds.TriggerTime = ds_str(round(rank * BOLD_TR_S * 1000 / N_EPI_SLICES, 3))
                    add_ge_epi_private(ds, "epiRT")
                    base = phantom(x, y, z, "EPI")
                    t = v * BOLD_TR_S + rank * BOLD_TR_S / N_EPI_SLICES
                    act = np.exp(-0.5 * (((x - 10) / 8) ** 2 + ((y + 30) / 8) ** 2 + ((z + 2) / 6) ** 2))
                    drift = 1.0 + 0.004 * v
                    data = base * drift + 40.0 * act * math.sin(2 * math.pi * t / 10.0)
                    data = data + rng.normal(0.0, 3.0, size=data.shape)
                    add_image_pixel(ds, np.clip(data, 0, None))
                    files.append(ds)

        elif name.startswith("dwi-"):
            rng = np.random.default_rng(_seed("dwi", k))
            positions = epi_positions()
            i = 0
            for v, g in enumerate(DWI_DIRECTIONS):
                b = 0 if v == 0 else DWI_B
                for sl, ipp in enumerate(positions):
                    i += 1
                    ds = new(i)
                    x, y, z = slice_grid(ipp, AXIAL_IOP, (EPI_VOX, EPI_VOX), 32, 32)
                    add_mr_common(
                        ds,
                        ipp=ipp,
                        iop=AXIAL_IOP,
                        spacing=(EPI_VOX, EPI_VOX),
                        thickness=EPI_VOX,
                        between=EPI_VOX,
                        k_for=for_uid,
                        image_type=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"],
                        tr=DWI_TR_S * 1000,
                        te=82.4,
                        flip=90,
                        scanning_seq=["EP", "SE"],
                        seq_variant="NONE",
                        acq_type="2D",
                        phase_dir="COL",
                        acq_matrix=[0, 32, 32, 0],
                        echo_train=1,
                        bandwidth=3906.25,
                    )
                    ds.ImagesInAcquisition = N_EPI_SLICES * len(DWI_DIRECTIONS)
                    rank = INTERLEAVED_ORDER.index(sl)
                    ds.TriggerTime = ds_str(round(rank * DWI_TR_S * 1000 / N_EPI_SLICES, 3))
                    ds.DiffusionBValue = float(b)
                    ds.DiffusionGradientOrientation = [float(ds_str(c)) for c in g]
                    ds.DiffusionDirectionality = "NONE" if b == 0 else "DIRECTIONAL"
                    add_ge_epi_private(ds, "epi2", b_value=b, grad=g)
                    s0 = phantom(x, y, z, "EPI")
                    if b:
                        # anisotropic "tract" running along x in the left hemisphere
                        tract = np.exp(-0.5 * (((y + 14) / 6) ** 2 + ((z + 2) / 5) ** 2))
                        adc = 0.0008 + 0.0012 * (1.0 - tract * g[0] ** 2)
                        adc = adc + 0.0015 * np.exp(
                            -0.5 * (((x - 3) / 3) ** 2 + ((y + 12) / 8) ** 2 + ((z - 3) / 4) ** 2)
                        )
                        data = s0 * np.exp(-b * adc)
                    else:
                        data = s0
                    data = data + rng.normal(0.0, 2.0, size=data.shape)
                    add_image_pixel(ds, np.clip(data, 0, None))
                    files.append(ds)

        elif name == "screenshot":
            ds = new(1, SC_IMAGE_STORAGE, "OT")
            ds.ConversionType = "WSD"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.BurnedInAnnotation = "YES"
            yy, xx = np.mgrid[0:64, 0:64]
            rgb = np.zeros((64, 64, 3), np.uint8)
            rgb[..., 0] = (xx * 4).astype(np.uint8)
            rgb[..., 1] = (yy * 4).astype(np.uint8)
            rgb[..., 2] = 96
            rgb[2:10, 2:62] = 255  # "burned-in text" banner
            rgb[4:8, 4:60:3] = 0
            rgb[54:62, 2:40] = (255, 255, 0)
            ds.SamplesPerPixel = 3
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
            ds.Rows, ds.Columns = 64, 64
            ds.BitsAllocated = 8
            ds.BitsStored = 8
            ds.HighBit = 7
            ds.PixelRepresentation = 0
            ds.PixelData = rgb.tobytes()
            ds["PixelData"].VR = "OB"
            files.append(ds)

        elif name == "report":
            ds = new(1, BASIC_TEXT_SR, "SR")
            del ds.ImageComments  # not part of the SR IOD
            subj = SUBJECTS[s]
            sm = study_markers(k)
            ds.CompletionFlag = "COMPLETE"
            ds.VerificationFlag = "UNVERIFIED"
            ds.ReferencedPerformedProcedureStepSequence = Sequence([])
            ds.PerformedProcedureCodeSequence = Sequence([])
            ds.ValueType = "CONTAINER"
            ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
            ds.ContinuityOfContent = "SEPARATE"
            ds.ContentTemplateSequence = Sequence([_seq_item(MappingResource="DCMR", TemplateIdentifier="2000")])
            text = (
                f"{sm['ReportText']} Report for {subj['PatientName']} ({subj['PatientID']}, "
                f"{subj['PlainName']}, born {subj['PatientBirthDate']}): synthetic examination, "
                f"no acute abnormality."
            )
            ds.ContentSequence = Sequence(
                [
                    _seq_item(
                        RelationshipType="CONTAINS",
                        ValueType="TEXT",
                        ConceptNameCodeSequence=Sequence([_code("121071", "DCM", "Finding")]),
                        TextValue=text,
                    )
                ]
            )
            files.append(ds)

        for ds in files:
            write(ds, sdir / f"IM{int(ds.InstanceNumber):04d}.dcm")


def _safe_to_delete(out: Path) -> bool:
    if not out.exists():
        return True
    for p in out.rglob("*"):
        if p.is_file() and p.suffix != ".dcm":
            return False
    return True


def generate(out: Path) -> None:
    from pydicom import config

    config.settings.writing_validation_mode = config.RAISE
    out = out.resolve()
    if out.exists():
        if not _safe_to_delete(out):
            sys.exit(f"refusing to delete {out}: it holds files other than *.dcm")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for study in STUDIES:
        build_session(out, study)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "dicom",
        help="output directory (deleted and rewritten); default: sample_data/dicom",
    )
    args = ap.parse_args(argv)
    generate(args.out)
    n = sum(1 for _ in args.out.rglob("*.dcm"))
    print(f"wrote {n} files to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
