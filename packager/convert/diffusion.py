"""Diffusion tables for convert: the heads of a series' volumes + the final affine -> BIDS .bval/.bvec text.

b-values and gradient directions are read from the MR Diffusion macro (PS3.3 C.8.13.5.9, top
level or in a one-item MRDiffusionSequence; enhanced frames are flattened by
``frames.frame_view``) or Siemens classic private tags, turned from world (LPS) gradients into
the FSL voxel convention of the NIfTI's affine (BIDS). Returns None, never a guess, when a
weighted volume has no direction (e.g. one kept only in private tags we do not read).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from packager.dicom import header
from packager.dicom.reader import reading_settings


def _vector(values) -> np.ndarray | None:
    found = header.as_numbers(values, 3)
    return None if found is None else np.array(found)


def _standard_diffusion(ds: Dataset) -> tuple[float, np.ndarray | None] | None:
    """MR Diffusion macro (PS3.3 C.8.13.5.9) at top level or in a one-item MRDiffusionSequence.

    Canon/Toshiba classic files carry it inside MRDiffusionSequence; enhanced frames are
    flattened by ``frames.frame_view``.
    """
    holders = [ds]
    sequence = ds.get("MRDiffusionSequence")
    if sequence:
        holders.append(sequence[0])
    for holder in holders:
        if "DiffusionBValue" not in holder:
            continue
        bval = header.as_number(holder.DiffusionBValue)
        if bval is None:
            return None
        gradient = None
        if "DiffusionGradientOrientation" in holder:
            gradient = _vector(holder.DiffusionGradientOrientation)
        else:
            inner = holder.get("DiffusionGradientDirectionSequence")
            if inner and "DiffusionGradientOrientation" in inner[0]:
                gradient = _vector(inner[0].DiffusionGradientOrientation)
        return bval, gradient
    return None


def _world_gradient(ds: Dataset) -> tuple[float, np.ndarray | None] | None:
    """(b-value, unit gradient in DICOM LPS) from standard or Siemens tags.

    The gradient is a zero vector for b = 0 and None when a weighted volume has none (e.g. a
    gradient kept only in private tags we do not read): that must not become "0 0 0".
    """
    from dicom2nifti import common

    found = _standard_diffusion(ds)
    if found is None and (0x0019, 0x100C) in ds:  # Siemens classic: B_value, DiffusionGradientDirection (LPS)
        gradient = None
        if (0x0019, 0x100E) in ds:
            gradient = _vector(common.get_fd_array_value(ds[(0x0019, 0x100E)], 3))
        found = (float(common.get_is_value(ds[(0x0019, 0x100C)])), gradient)
    if found is None:
        return None
    bval, gradient = found
    if bval == 0:
        return bval, np.zeros(3)
    if gradient is None:
        return bval, None
    if np.linalg.norm(gradient) == 0:
        return bval, np.zeros(3)  # weighted but undirected: a trace image, stated as such
    return bval, gradient / np.linalg.norm(gradient)


@reading_settings()
def diffusion_tables(
    heads: tuple[Dataset, ...], affine: np.ndarray, fallback: dict | None = None
) -> tuple[str, str] | None:
    """BIDS .bval/.bvec text for the volumes, b-vectors in the FSL voxel frame of ``affine``."""
    pairs = [_world_gradient(ds) for ds in heads]
    rotation = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if all(p is not None and p[1] is not None for p in pairs) and len(pairs) > 1:
        bvals = np.array([p[0] for p in pairs])
        vectors = []
        for _, g in pairs:
            ras = g * np.array([-1.0, -1.0, 1.0])
            v = rotation.T @ ras
            if np.linalg.det(rotation) > 0:
                v[0] = -v[0]
            vectors.append(v)
        bvecs = np.array(vectors).T
    elif fallback is not None and fallback.get("BVAL") is not None and fallback.get("BVEC") is not None:
        # dicom2nifti's vectors are already in the DICOM image frame (read, phase, slice),
        # i.e. our voxel axes, since we do not reorient; only the FSL x flip is ours to add.
        bvals = np.asarray(fallback["BVAL"], dtype=float)
        bvecs = np.asarray(fallback["BVEC"], dtype=float).T.copy()
        if np.linalg.det(rotation) > 0:
            bvecs[0] = -bvecs[0]
    else:
        return None
    bvecs = np.where(np.abs(bvecs) < 5e-7, 0.0, bvecs)
    bval_text = " ".join(format_number(b) for b in bvals) + "\n"
    bvec_text = "".join(" ".join(format_number(v) for v in row) + "\n" for row in bvecs)
    return bval_text, bvec_text


def format_number(value: float) -> str:
    """A b-table number: six decimals at most, trailing zeros dropped, never "-0"."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
