"""Diffusion tables for convert: the heads of a series' volumes + the final affine -> BIDS .bval/.bvec text.

b-values and gradient directions are read from the MR Diffusion macro (PS3.3 C.8.13.5.9, top
level or in a one-item MRDiffusionSequence; enhanced frames are flattened by
``frames.frame_view``) or Siemens classic private tags, turned from world (LPS) gradients into
the FSL voxel convention of the NIfTI's affine (BIDS). Returns None, never a guess, when a
weighted volume has no direction (e.g. one kept only in private tags we do not read).
"""

from __future__ import annotations

from typing import cast

import numpy as np
from pydicom.dataset import Dataset

from packager.dicom import header, vendor
from packager.dicom.reader import reading_settings

#: Why a DWI series is refused when its headers give no usable table (plan and build alike).
MISSING_TABLES = "no diffusion b-values/vectors in the headers"


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
    if found is None and (0x0019, 0x100C) in ds and _siemens_private(ds):
        # Siemens classic: B_value, DiffusionGradientDirection (LPS); GE uses (0019,100C) for
        # something else, so the private creator is checked
        gradient = None
        if (0x0019, 0x100E) in ds:
            gradient = _vector(common.get_fd_array_value(ds[(0x0019, 0x100E)], 3))
        found = (float(common.get_is_value(ds[(0x0019, 0x100C)])), gradient)
    if found is None:
        # United Imaging: b-value and gradient (image frame, turned into LPS there) in its
        # private block
        found = vendor.uih_diffusion(ds)
    if (found is None or found[1] is None) and _GE_BVALUE in ds:
        # GE states DiffusionBValue in public tags on some lines, the gradient only privately
        found = _ge_diffusion(ds) or found
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


#: Elements that state diffusion (public macro, Siemens, GE, Philips private): the index's list.
_DIFFUSION_ELEMENTS = ((0x0018, 0x9087), (0x0018, 0x9117), (0x0043, 0x1039), (0x0019, 0x100C), (0x2001, 0x1003))


def _states_diffusion(ds: Dataset) -> bool:
    """True when a head holds any diffusion element (even one we cannot read)."""
    return any(tag in ds for tag in _DIFFUSION_ELEMENTS) or vendor.uih_diffusion(ds) is not None


def _siemens_private(ds: Dataset) -> bool:
    """Group 0019 is Siemens' ("SIEMENS MR HEADER" private creator)."""
    creator = ds.get((0x0019, 0x0010))
    return creator is not None and "SIEMENS" in str(creator.value).upper()


#: GE private diffusion tags: (0043,1039) "Slop_int_6..9" starts with the b-value (GE adds
#: 1,000,000,000 multiples on some software lines, dcm2niix: "GE b-values"); (0019,10BB..BD)
#: hold the gradient in the image's own frame (row, column, slice normal).
_GE_BVALUE = (0x0043, 0x1039)
_GE_GRADIENT = ((0x0019, 0x10BB), (0x0019, 0x10BC), (0x0019, 0x10BD))


def _ge_diffusion(ds: Dataset) -> tuple[float, np.ndarray | None] | None:
    """(b-value, LPS gradient) from GE private tags; None when they are not there or not numbers.

    Only column phase encoding is taken: dcm2niix documents that GE's frame swaps the row and
    column axes with row phase encoding, which no data here shows, so such series are left
    without b-vectors (refused) rather than given vectors we could not check.
    """
    values = header.as_numbers(ds[_GE_BVALUE].value) if _GE_BVALUE in ds else None
    if not values:
        return None
    bval = float(values[0]) % 1_000_000_000
    if bval == 0:
        return bval, None
    if str(ds.get("InPlanePhaseEncodingDirection", "")).strip().upper() != "COL":
        return bval, None
    parts = [header.as_number(ds[tag].value) if tag in ds else None for tag in _GE_GRADIENT]
    orientation = header.numbers(ds, "ImageOrientationPatient", 6)
    if any(p is None for p in parts) or orientation is None:
        return bval, None
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    gx, gy, gz = (float(p) for p in parts)  # type: ignore[arg-type]
    # GE's frame has the row and column axes pointing the other way (as RAS does to LPS):
    # checked against dcm2niix's tables for the three GE DTI series of the corpus
    return bval, -gx * row - gy * column + gz * normal


@reading_settings()
def diffusion_tables(
    heads: tuple[Dataset, ...], affine: np.ndarray, fallback: dict | None = None
) -> tuple[str, str] | None:
    """BIDS .bval/.bvec text for the volumes, b-vectors in the FSL voxel frame of ``affine``."""
    pairs = [_world_gradient(ds) for ds in heads]
    if any(p is not None and p[0] > 0 for p in pairs):
        # Canon/Toshiba write no diffusion element at all on the b=0 images of a DWI series
        # (dcm2niix reads them as b=0): such a volume, among weighted ones, is b=0. A volume
        # with any diffusion element we could not read stays unknown (refused, never a guess).
        pairs = [
            (0.0, np.zeros(3)) if p is None and not _states_diffusion(ds) else p
            for p, ds in zip(pairs, heads, strict=True)
        ]
    rotation = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if all(p is not None and p[1] is not None for p in pairs) and len(pairs) > 1:
        # every pair and its gradient were checked just above
        known = cast(list[tuple[float, np.ndarray]], pairs)
        bvals = np.array([p[0] for p in known])
        vectors = []
        for _, g in known:
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


def b_value(ds: Dataset) -> float | None:
    """One image's b-value from the tags ``diffusion_tables`` reads (None when it states none).

    For ``dcmpack inspect``: which b-values a series holds, before any rule names it.
    """
    found = _world_gradient(ds)
    return None if found is None else found[0]
