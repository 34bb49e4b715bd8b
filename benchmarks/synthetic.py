#!/usr/bin/env python3
"""Generate a large synthetic, ReproIn-named DICOM session for benchmarks (deterministic).

Usage::

    python benchmarks/synthetic.py OUT [--series 20] [--images 300] [--matrix 256] [--subjects 1]

``--series`` series of ``--images`` single-frame MR images of ``--matrix``² int16 pixels each,
named by the ReproIn convention so ``dcmpack build OUT --key-file KEY`` needs no heuristic:
even series are ``anat-T1w_acq-sNN`` (one 3D volume of ``images`` slices), odd series are
``func-bold_task-bench_run-NN`` (4D: volumes of ``FUNC_SLICES`` slices, TR 2 s). Pixels are a
smooth ellipsoid phantom plus seeded noise (compresses about like real MR data, unlike zeros
or white noise). Identities are synthetic; UIDs derive from fixed strings, so two runs with
the same arguments write byte-identical files (``OUT.complete.json`` records the arguments and
lets callers reuse a finished tree). Sizes: the defaults make ~0.8 GB (6,000 files);
``--series 40 --images 500 --matrix 512`` makes ~10.5 GB (20,000 files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
FUNC_SLICES = 30
TR_MS = 2000.0


def uid(*parts) -> str:
    """A deterministic ``2.25.<int>`` UID from fixed strings."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))


def _phantom(matrix: int, depth: int, rng: np.random.Generator) -> np.ndarray:
    """A (depth, matrix, matrix) int16 ellipsoid with a gradient, a few blobs and noise."""
    z, y, x = np.ogrid[-1 : 1 : depth * 1j, -1 : 1 : matrix * 1j, -1 : 1 : matrix * 1j]
    inside = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.95) ** 2 <= 1.0
    base = np.where(inside, 900.0 + 300.0 * y + 200.0 * np.cos(3 * x) * np.sin(2 * z), 0.0)
    for cx, cy, cz, radius, value in ((0.3, 0.2, 0.1, 0.2, 500), (-0.3, -0.1, -0.2, 0.15, -400)):
        base = base + value * (((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) <= radius**2)
    noise = rng.normal(0.0, 12.0, size=(depth, matrix, matrix))
    return np.clip(base + noise, 0, 4095).astype(np.int16)


def _header(session: dict, series: int, name: str, matrix: int, n_images: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MR_IMAGE
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = session["date"]
    ds.StudyTime = session["time"]
    ds.SeriesTime = f"{10 + series // 60:02d}{series % 60:02d}00.000000"
    ds.Modality = "MR"
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = "ZZBENCH Synthetic Imaging Centre"
    ds.ReferringPhysicianName = "ZZBENCH^REFERRER"
    ds.StationName = "ZZBENCHSTATION"
    ds.StudyDescription = "BENCH^synthetic"
    ds.SeriesDescription = name
    ds.ProtocolName = name
    ds.ManufacturerModelName = "SynthScan 3T"
    ds.PatientName = session["name"]
    ds.PatientID = session["id"]
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "055Y"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.MRAcquisitionType = "3D" if name.startswith("anat") else "2D"
    ds.SliceThickness = "1.0"
    ds.RepetitionTime = str(TR_MS) if name.startswith("func") else "2300.0"
    ds.EchoTime = "30.0" if name.startswith("func") else "2.98"
    ds.MagneticFieldStrength = "3.0"
    ds.FlipAngle = "77.0" if name.startswith("func") else "9.0"
    ds.EchoNumbers = "1"
    ds.StudyInstanceUID = uid("study", session["id"])
    ds.SeriesInstanceUID = uid("series", session["id"], series)
    ds.StudyID = "1"
    ds.SeriesNumber = str(series + 1)
    ds.FrameOfReferenceUID = uid("for", session["id"])
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = matrix
    ds.PixelSpacing = [f"{256.0 / matrix:.4f}", f"{256.0 / matrix:.4f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1
    ds.BurnedInAnnotation = "NO"
    ds.ImagesInAcquisition = str(n_images)
    return ds


def make_session(
    out: Path,
    *,
    series: int = 20,
    images: int = 300,
    matrix: int = 256,
    subjects: int = 1,
    seed: int = 0,
    quiet: bool = True,
) -> Path:
    """Write the session under ``out`` (reused when ``OUT.complete.json`` matches); returns ``out``."""
    params = {"series": series, "images": images, "matrix": matrix, "subjects": subjects, "seed": seed, "version": 3}
    marker = out.with_name(out.name + ".complete.json")
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return out
    marker.unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for subject in range(subjects):
        session = {
            "name": f"ZZBENCH^SUBJECT{subject:03d}",
            "id": f"BENCH{subject:05d}",
            "date": "20250102",
            "time": "100000.000000",
        }
        for number in range(series):
            func = number % 2 == 1
            name = f"func-bold_task-bench_run-{number // 2 + 1:02d}" if func else f"anat-T1w_acq-s{number // 2 + 1:02d}"
            depth = FUNC_SLICES if func else images
            volumes = max(images // FUNC_SLICES, 1) if func else 1
            header = _header(session, number, name, matrix, images)
            folder = out / f"sub{subject:03d}" / f"{number + 1:03d}_{name}"
            folder.mkdir(parents=True)
            volume = _phantom(matrix, depth, rng)
            for image in range(depth * volumes):
                vol, slice_ = divmod(image, depth)
                pixels = volume[slice_]
                if func:  # a little signal change over time, so volumes differ
                    pixels = (pixels + vol).astype(np.int16)
                _write(
                    folder / f"IM{image + 1:05d}.dcm", header, session, number, image, vol, slice_, pixels, matrix, func
                )
            if not quiet:
                print(f"synthetic: series {number + 1}/{series} of subject {subject + 1}", file=sys.stderr)
    marker.write_text(json.dumps(params))
    return out


def _write(
    path: Path,
    header: Dataset,
    session: dict,
    series: int,
    image: int,
    volume: int,
    slice_: int,
    pixels: np.ndarray,
    matrix: int,
    func: bool,
) -> None:
    ds = Dataset()
    ds.update(header)
    ds.SOPInstanceUID = uid("image", session["id"], series, image)
    ds.InstanceNumber = str(image + 1)
    ds.AcquisitionNumber = str(volume + 1)
    seconds = 36000 + series * 600 + (volume * TR_MS / 1000.0 if func else 0)
    ds.AcquisitionTime = f"{int(seconds // 3600):02d}{int(seconds % 3600 // 60):02d}{seconds % 60:09.6f}"
    ds.ContentTime = ds.AcquisitionTime
    ds.ImagePositionPatient = [f"{-128.0:.4f}", f"{-128.0:.4f}", f"{-75.0 + slice_ * (1.0 if not func else 4.0):.4f}"]
    ds.SliceLocation = ds.ImagePositionPatient[2]
    ds.SpacingBetweenSlices = "1.0" if not func else "4.0"
    ds.SliceThickness = ds.SpacingBetweenSlices
    if func:
        ds.TriggerTime = str(round((slice_ * 2 % FUNC_SLICES + slice_ * 2 // FUNC_SLICES) * TR_MS / FUNC_SLICES, 2))
    ds.WindowCenter = "1000"
    ds.WindowWidth = "2000"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid("dcmpack-bench-implementation")
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--subjects", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_session(
        args.out,
        series=args.series,
        images=args.images,
        matrix=args.matrix,
        subjects=args.subjects,
        seed=args.seed,
        quiet=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
