"""Tiny synthetic MR images for the stage unit tests (test_index, test_sources, test_stacking).

Every identity is made up (``ZZUNIT`` names and IDs, ``2.25`` UIDs hashed from fixed strings);
images are a few pixels wide so a whole series is written and read in milliseconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def uid(*parts: object) -> str:
    """A deterministic ``2.25.<int>`` UID from fixed strings."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))


def mr_image(
    *,
    patient_id: str = "ZZUNIT001",
    study: str = "study-1",
    series: int = 1,
    description: str = "anat-T1w",
    instance: int = 1,
    position=(0.0, 0.0, 0.0),
    orientation=AXIAL,
    matrix: tuple[int, int] = (4, 4),
    spacing=(1.0, 1.0),
    echo: int = 1,
    echo_time: float = 3.0,
    image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
) -> Dataset:
    """One classic single-frame MR image (``matrix`` = (rows, columns)) with pixel data."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MR_IMAGE
    ds.SOPInstanceUID = uid(patient_id, study, series, echo, instance)
    ds.ImageType = list(image_type)
    ds.Modality = "MR"
    ds.Manufacturer = "SYNTHETIC"
    ds.ManufacturerModelName = "UnitScan"
    ds.PatientName = f"ZZUNIT^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = "20240102"
    ds.StudyTime = "100000"
    ds.SeriesTime = ds.AcquisitionTime = f"10{series:02d}00"
    ds.StudyInstanceUID = uid("study", patient_id, study)
    ds.SeriesInstanceUID = uid("series", patient_id, study, series)
    ds.FrameOfReferenceUID = uid("frame", patient_id, study)
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    ds.SeriesDescription = ds.ProtocolName = description
    ds.EchoNumbers = echo
    ds.EchoTime = echo_time
    ds.RepetitionTime = 2000.0
    ds.FlipAngle = 9.0
    ds.SliceThickness = 1.0
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = matrix
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1
    ds.PixelData = (np.arange(matrix[0] * matrix[1], dtype=np.int16) + instance).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """``ds`` as a DICOM Part 10 file (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, slices: int = 3, *, step: float = 1.0, **fields) -> list[Path]:
    """``slices`` axial images ``step`` mm apart (instance numbers 1..n) as ``folder/IM000k.dcm``."""
    return [
        write(mr_image(instance=k + 1, position=(0.0, 0.0, k * step), **fields), folder / f"IM{k + 1:04d}.dcm")
        for k in range(slices)
    ]
