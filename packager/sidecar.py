"""Stage 5, sidecar: headers of one series -> BIDS JSON fields (before the allowlist).

``derive_fields`` computes BIDS metadata from the datasets already in memory (Siemens CSA via
``nibabel.nicom.csareader``, GE private tags, standard tags). What may leave is decided by
``packager.allowlist.apply_allowlist``; nothing here is written out directly.
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from .allowlist import VENDORS

def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        value = value[0] if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, (str, bytes)) else value
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _vendor(ds: Dataset) -> str | None:
    text = str(ds.get("Manufacturer", "")).upper()
    for vendor in VENDORS:
        if vendor.upper() in text:
            return vendor
    if "MEDICAL SYSTEMS" in text and "GE" in text.split():
        return "GE"
    return None


def _csa(ds: Dataset, which: str) -> dict:
    try:
        from nibabel.nicom import csareader

        header = csareader.get_csa_header(ds, which)
    except Exception:  # malformed CSA: treat as absent
        return {}
    if not header:
        return {}
    out = {}
    for name, item in header.get("tags", {}).items():
        items = item.get("items") or []
        if items:
            out[name] = items if len(items) > 1 else items[0]
    return out


def _pe_axis_world(ds: Dataset) -> np.ndarray | None:
    """Unit vector (LPS) of the phase-encoding axis in DICOM terms (+ = increasing index)."""
    direction = str(ds.get("InPlanePhaseEncodingDirection", "")).strip().upper()
    iop = ds.get("ImageOrientationPatient")
    if direction not in ("ROW", "COL") or iop is None or len(iop) != 6:
        return None
    vector = np.array([float(v) for v in (iop[:3] if direction == "ROW" else iop[3:])])
    return vector / np.linalg.norm(vector)


def _pe_sign(ds: Dataset, csa_image: dict, dir_label: str | None, axis_world: np.ndarray) -> int | None:
    """+1 if phase encoding runs along increasing DICOM index, -1 if against, None if unknown."""
    positive = csa_image.get("PhaseEncodingDirectionPositive")
    if positive in (0, 1, 0.0, 1.0):
        return 1 if int(positive) == 1 else -1
    if dir_label:
        # A dir- label names where the encoding starts and ends: AP = anterior -> posterior.
        letters = {"R": (-1, 0, 0), "L": (1, 0, 0), "A": (0, -1, 0), "P": (0, 1, 0), "I": (0, 0, -1), "S": (0, 0, 1)}
        label = dir_label.upper()
        if len(label) == 2 and label[0] in letters and label[1] in letters:
            towards = np.array(letters[label[1]], dtype=float) - np.array(letters[label[0]], dtype=float)
            dot = float(towards @ axis_world)
            if abs(dot) > 0.5:
                return 1 if dot > 0 else -1
    return None


def _axis_code(world: np.ndarray, affine: np.ndarray) -> str | None:
    """BIDS axis code (i/j/k with sign) of an LPS world direction in the NIfTI voxel frame."""
    ras = world * np.array([-1.0, -1.0, 1.0])
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    dots = columns.T @ ras
    axis = int(np.argmax(np.abs(dots)))
    if abs(dots[axis]) < 0.8:
        return None
    return "ijk"[axis] + ("" if dots[axis] > 0 else "-")


def _slice_timing(slice_datasets, affine: np.ndarray, n_slices: int, tr: float | None,
                  csa_image: dict, head: Dataset) -> list[float] | None:
    """Slice acquisition onsets (s) in NIfTI k order."""
    times = csa_image.get("MosaicRefAcqTimes")
    if times is None and (0x0019, 0x1029) in head:
        try:
            times = [float(v) for v in head[(0x0019, 0x1029)].value]
        except (TypeError, ValueError):
            times = None
    if isinstance(times, (list, tuple)) and len(times) == n_slices:
        onsets = [float(t) / 1000.0 for t in times]
        # Mosaic times are in acquisition-slice order along the mosaic's own slice axis, which
        # dicom2nifti keeps; if our k axis runs opposite to the CSA slice normal, reverse.
        normal = csa_image.get("SliceNormalVector")
        if isinstance(normal, (list, tuple)) and len(normal) == 3:
            ras = np.array([float(v) for v in normal]) * np.array([-1.0, -1.0, 1.0])
            if float(ras @ affine[:3, 2]) < 0:
                onsets = onsets[::-1]
        return _clean_timing(onsets, tr)
    # Classic single-slice files: AcquisitionTime (or TriggerTime) of the first volume's slices.
    origin = affine[:3, 3]
    step = affine[:3, 2]
    norm2 = float(step @ step)
    if norm2 == 0:
        return None
    by_k: dict[int, float] = {}
    for ds in slice_datasets:
        position = ds.get("ImagePositionPatient")
        stamp = _seconds(str(ds.get("AcquisitionTime", "")))
        if position is None or stamp is None:
            continue
        ras = np.array([float(v) for v in position]) * np.array([-1.0, -1.0, 1.0])
        k = int(round(float((ras - origin) @ step) / norm2))
        if 0 <= k < n_slices:
            by_k[k] = min(by_k.get(k, stamp), stamp)
    if len(by_k) != n_slices:
        return None
    start = min(by_k.values())
    onsets = [by_k[k] - start for k in range(n_slices)]
    if max(onsets) == 0:
        return None
    return _clean_timing(onsets, tr)


def _clean_timing(onsets: list[float], tr: float | None) -> list[float] | None:
    if tr and (max(onsets) >= tr or min(onsets) < 0):
        return None
    return [round(t, 5) for t in onsets]


def _seconds(text: str) -> float | None:
    match = re.fullmatch(r"(\d{2})(\d{2})(\d{2})(\.\d+)?", text.strip())
    if not match:
        return None
    return int(match.group(1)) * 3600 + int(match.group(2)) * 60 + int(match.group(3)) + float(match.group(4) or 0)


def derive_fields(heads, slice_datasets, affine: np.ndarray, shape: tuple[int, ...],
                  entities: dict[str, str], datatype: str, suffix: str) -> dict[str, Any]:
    """BIDS metadata for one converted series, before the allowlist."""
    head = heads[0]
    fields: dict[str, Any] = {}
    vendor = _vendor(head)
    csa_image = _csa(head, "image") if vendor == "Siemens" else {}
    modality = str(head.get("Modality", "")).upper()
    if modality:
        fields["Modality"] = modality
    if vendor:
        fields["Manufacturer"] = vendor
    model = str(head.get("ManufacturerModelName", "")).strip().replace(" ", "_")
    if model:
        fields["ManufacturersModelName"] = model
    for key, keyword, scale in (("MagneticFieldStrength", "MagneticFieldStrength", 1.0),
                                ("RepetitionTime", "RepetitionTime", 1e-3), ("EchoTime", "EchoTime", 1e-3),
                                ("InversionTime", "InversionTime", 1e-3), ("FlipAngle", "FlipAngle", 1.0),
                                ("SliceThickness", "SliceThickness", 1.0), ("PixelBandwidth", "PixelBandwidth", 1.0),
                                ("PercentPhaseFOV", "PercentPhaseFieldOfView", 1.0)):
        value = _float(head, keyword)
        if value is not None:
            fields[key] = round(value * scale, 6)
    if "MagneticFieldStrength" in fields and fields["MagneticFieldStrength"] > 100:
        fields["MagneticFieldStrength"] = round(fields["MagneticFieldStrength"] / 10000.0, 4)  # gauss
    image_type = [t.strip().upper() for t in str("\\".join(head.get("ImageType", []) or [])).split("\\") if t.strip()]
    if image_type:
        fields["ImageType"] = image_type
    for key in ("ScanningSequence", "SequenceVariant", "MRAcquisitionType", "SequenceName"):
        value = head.get(key)
        if value:
            fields[key] = "_".join(str(v) for v in value) if not isinstance(value, str) else str(value).strip()
    if datatype == "func" and entities.get("task"):
        fields["TaskName"] = entities["task"]
    tr = fields.get("RepetitionTime")
    n_slices = shape[2] if len(shape) >= 3 else 1
    if len(shape) == 4 or datatype in ("func", "dwi", "perf") or suffix in ("epi", "sbref"):
        timing = _slice_timing(slice_datasets, affine, n_slices, tr, csa_image, head)
        if timing is not None and len(shape) >= 3:
            fields["SliceTiming"] = timing
    axis_world = _pe_axis_world(head)
    if axis_world is not None:
        sign = _pe_sign(head, csa_image, entities.get("dir"), axis_world)
        if sign is not None:
            code = _axis_code(axis_world * sign, affine)
            if code:
                fields["PhaseEncodingDirection"] = code
        code = _axis_code(axis_world, affine)
        recon_pe = shape["ijk".index(code[0])] if code else None
        if recon_pe:
            fields["ReconMatrixPE"] = int(recon_pe)
        spacing = _echo_spacing(head, vendor, recon_pe)
        if spacing:
            fields["EffectiveEchoSpacing"] = round(spacing, 8)
            if recon_pe and recon_pe > 1:
                fields["TotalReadoutTime"] = round(spacing * (recon_pe - 1), 7)
    accel = _parallel_factor(head, csa_image, vendor)
    if accel:
        fields["ParallelReductionFactorInPlane"] = accel
    band = _multiband(head, vendor)
    if band:
        fields["MultibandAccelerationFactor"] = band
    return fields


def _echo_spacing(head: Dataset, vendor: str | None, recon_pe: int | None) -> float | None:
    if vendor == "Siemens" and (0x0019, 0x1028) in head and recon_pe:
        try:
            bandwidth_pe = float(head[(0x0019, 0x1028)].value if not isinstance(head[(0x0019, 0x1028)].value, bytes)
                                 else np.frombuffer(head[(0x0019, 0x1028)].value[:8], "<f8")[0])
        except (TypeError, ValueError):
            return None
        return 1.0 / (bandwidth_pe * recon_pe) if bandwidth_pe > 0 else None
    if vendor == "GE" and (0x0043, 0x102C) in head:
        try:
            microseconds = float(head[(0x0043, 0x102C)].value)
        except (TypeError, ValueError):
            return None
        asset = 1.0
        if (0x0043, 0x1083) in head:
            try:
                value = head[(0x0043, 0x1083)].value
                asset = float(value[0] if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else value)
            except (TypeError, ValueError, IndexError):
                asset = 1.0
        return microseconds * 1e-6 * (asset if 0 < asset <= 1 else 1.0) if microseconds > 0 else None
    return None


def _parallel_factor(head: Dataset, csa_image: dict, vendor: str | None) -> float | None:
    value = csa_image.get("AcceleratorFactorPE") if vendor == "Siemens" else None
    if value is None and "ParallelReductionFactorInPlane" in head:
        value = head.ParallelReductionFactorInPlane
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return number if number and number > 1 else None


def _multiband(head: Dataset, vendor: str | None) -> int | None:
    if vendor == "Siemens":
        text = str(head.get("ImageComments", ""))
        match = re.search(r"\bMB\s*(\d+)", text)  # CMRR sequences note "Unaliased MB3/PE3"
        if match:
            return int(match.group(1))
    return None


