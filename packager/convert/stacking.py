"""Slice geometry for convert: 2D images (classic files, enhanced frames, mosaic tiles) -> volumes.

A helper of the convert stage (not a stage itself). Every image is reduced to the same facts:
where it is (ImagePositionPatient of its first pixel, LPS mm), how it is oriented
(ImageOrientationPatient), its pixel spacing, its kind (``frames.ImageKind``) and a key giving
its place in time. ``build_stack`` then sorts images along the slice normal, forms volumes and
derives the NIfTI affine from the positions themselves (PS3.3 C.7.6.2.1.1), refusing anything a
single affine cannot state: mixed kinds, orientations or matrices, uneven or sheared slice
spacing, incomplete volumes, or duplicate images. Refusals are ``GeometryError`` with a
value-free detail.

Siemens mosaics are unpacked here because dicom2nifti 2.6.2 gets them wrong outside axial
foot-to-head storage (FIELD-NOTES.md, dcm_qa/dcm_qa_mosaic): tiles are stored along the CSA
``SliceNormalVector``, which is opposite to row x column for head-to-foot ("H>>F") storage, and
the mosaic's ImagePositionPatient is the corner of the whole mosaic, not of the first tile
(nibabel "dicom_mosaic" documentation). United Imaging "grid" images (UIH's slice-by-slice
"SaveBySlc" DTI exports among them) are mosaics too, each tile with its own position in UIH's
private block (``dicom.vendor.uih_grid_positions``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from packager.dicom import frames as frame_model
from packager.dicom import header, vendor

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SAME_SLICE_MM = 0.01  # images closer than this along the normal are one slice position
SAME_POINT_MM = 0.05  # ... and must coincide in-plane within this
ORIENTATION_TOL = 1e-4  # direction-cosine difference allowed between images of one volume
SPACING_RTOL = 1e-4
UNEVEN_SPACING = (0.02, 0.01)  # refuse a slice off its affine position by more than max(mm, fraction of step)
#: A voxel edge longer than this (pixel spacing, slice thickness) is a corrupt value, not a
#: scanner's: 1e200 made the affine infinite. Positions farther than MAX_POSITION_MM from the
#: scanner's origin likewise.
MAX_VOXEL_MM = 1000.0
MAX_POSITION_MM = 1e6
MAX_SHEAR = 1e-3  # lateral drift of the slice stack per mm along the normal (gantry tilt)


class GeometryError(Exception):
    """Images that no single NIfTI affine describes; ``detail`` is value-free."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True, eq=False)
class SliceImage:
    """One 2D image of a series, reduced to what stacking needs."""

    source: int  # position of its dataset in the series
    frame: int | None  # frame of an enhanced object, None for classic and mosaic
    tile: int | None  # tile of a Siemens mosaic
    header: Dataset  # the classic dataset, or the flattened frame view
    position: np.ndarray  # LPS mm of the first pixel's centre
    row_cosine: np.ndarray  # direction of increasing column index
    column_cosine: np.ndarray  # direction of increasing row index
    spacing: tuple[float, float]  # (between rows, between columns) mm
    rows: int
    columns: int
    kind: frame_model.ImageKind
    order: tuple = field(default=())  # place in time among images at the same position
    thickness: float | None = None  # slice spacing hint for single-slice volumes


@dataclass(frozen=True, slots=True)
class Stack:
    """Images arranged as volumes[t][k] (k along the slice axis) and the RAS affine."""

    volumes: tuple[tuple[SliceImage, ...], ...]
    affine: np.ndarray

    @property
    def n_slices(self) -> int:
        return len(self.volumes[0])


def _vector(found: tuple[float, ...] | None) -> np.ndarray | None:
    return None if found is None else np.array(found)


def _geometry(image_header: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    position = _vector(header.numbers(image_header, "ImagePositionPatient", 3))
    orientation = _vector(header.numbers(image_header, "ImageOrientationPatient", 6))
    spacing = _vector(header.numbers(image_header, "PixelSpacing", 2))
    if position is None or orientation is None:
        raise GeometryError("an image has no usable ImagePositionPatient/ImageOrientationPatient")
    if spacing is None or np.any(spacing <= 0) or np.any(spacing > MAX_VOXEL_MM):
        raise GeometryError("an image has no usable PixelSpacing")
    if np.any(np.abs(position) > MAX_POSITION_MM):
        raise GeometryError("an image has no usable ImagePositionPatient/ImageOrientationPatient")
    row, column = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise GeometryError("ImageOrientationPatient is not two orthonormal vectors")
    return position, row, column, (float(spacing[0]), float(spacing[1]))


def _thickness(image_header: Dataset) -> float | None:
    """The z step of a lone slice: SpacingBetweenSlices, else SliceThickness.

    dcm2niix takes SpacingBetweenSlices wherever it is stated (a thickness may or may not
    include the gap, depending on the vendor); checked on pydicom's single-slice CT and
    Philips MR files, whose spacing (20 mm, 6.6 mm) differs from their thickness (5 mm, 6 mm).
    """
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        found = header.number(image_header, keyword)
        if found is not None and 0 < found <= MAX_VOXEL_MM:
            return found
    return None


def classic_images(datasets: list[Dataset]) -> list[SliceImage]:
    """One image per classic single-frame dataset."""
    images = []
    for index, ds in enumerate(datasets):
        position, row, column, spacing = _geometry(ds)
        # Place in time: instance order at each position (acquisition order for every vendor
        # we have seen, slice-major or volume-major numbering alike); ties keep file order.
        order = (header.integer(ds, "InstanceNumber") or 0, header.integer(ds, "AcquisitionNumber") or 0, index)
        images.append(
            SliceImage(
                index,
                None,
                None,
                ds,
                position,
                row,
                column,
                spacing,
                header.integer(ds, "Rows") or 0,
                header.integer(ds, "Columns") or 0,
                frame_model.classic_kind(ds, frame_model.ge_private_image_type(ds)),
                order,
                _thickness(ds),
            )
        )
    return images


def _csa_mosaic(ds: Dataset) -> tuple[int, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader

        try:
            csa = csareader.get_csa_header(ds, "image")
            count = csareader.get_n_mosaic(csa) if csa else None
            normal = csareader.get_slice_normal(csa) if csa else None
        except (csareader.CSAReadError, ValueError, KeyError, TypeError, IndexError):
            count, normal = None, None
    normal_vector = _vector(header.as_numbers(normal, 3)) if normal is not None else None
    if not count or normal_vector is None or np.linalg.norm(normal_vector) == 0:
        raise GeometryError("mosaic without Siemens CSA slice count or slice normal")
    return int(count), normal_vector / np.linalg.norm(normal_vector)


def mosaic_images(datasets: list[Dataset]) -> list[SliceImage]:
    """The tiles of Siemens mosaics, each placed at its own position (one mosaic = one volume)."""
    images = []
    for index, ds in enumerate(datasets):
        corner, row, column, spacing = _geometry(ds)
        count, normal = _csa_mosaic(ds)
        if abs(abs(normal @ np.cross(row, column)) - 1) > 1e-3:
            raise GeometryError("mosaic slice normal is not perpendicular to the image plane")
        per_side = math.ceil(math.sqrt(count))
        mosaic_rows, mosaic_columns = header.integer(ds, "Rows") or 0, header.integer(ds, "Columns") or 0
        rows, columns = mosaic_rows // per_side, mosaic_columns // per_side
        if rows * per_side != mosaic_rows or columns * per_side != mosaic_columns:
            raise GeometryError("mosaic matrix is not a whole number of tiles")
        step = _thickness(ds)
        if step is None:
            raise GeometryError("mosaic without SpacingBetweenSlices or SliceThickness")
        # ImagePositionPatient is the corner of the whole mosaic: move to the first tile's centre.
        first = (
            corner + row * spacing[1] * (mosaic_columns - columns) / 2 + column * spacing[0] * (mosaic_rows - rows) / 2
        )
        kind = frame_model.classic_kind(ds)
        order = (header.integer(ds, "AcquisitionNumber") or 0, header.integer(ds, "InstanceNumber") or 0, index)
        for tile in range(count):
            images.append(
                SliceImage(
                    index,
                    None,
                    tile,
                    ds,
                    first + normal * step * tile,
                    row,
                    column,
                    spacing,
                    rows,
                    columns,
                    kind,
                    order,
                    step,
                )
            )
    return images


def frame_images(datasets: list[Dataset], selection: tuple[tuple[int, int], ...] = ()) -> list[SliceImage]:
    """Images of enhanced objects: every frame, or the (dataset, frame) pairs selected."""
    wanted: dict[int, set[int]] | None = None
    if selection:
        wanted = {}
        for source, frame in selection:
            wanted.setdefault(source, set()).add(frame)
    images = []
    for index, ds in enumerate(datasets):
        if wanted is not None and index not in wanted:
            continue
        views = frame_model.frame_views(ds)
        if len(views) != frame_model.frame_count(ds):
            raise GeometryError("enhanced object whose per-frame groups do not match its frame count")
        rows, columns = header.integer(ds, "Rows") or 0, header.integer(ds, "Columns") or 0
        for frame, view in enumerate(views):
            if wanted is not None and frame not in wanted[index]:
                continue
            position, row, column, spacing = _geometry(view)
            # Place in time: the order frames are stored in (file, then frame), as dcm2niix
            # stacks them; Temporal Position Index first put a Philips pCASL's label/control
            # dimension inside its time dimension (dcm_qa_philips_enh 1903), and on every
            # other enhanced series of the corpus both orders agree.
            order = (index, frame)
            images.append(
                SliceImage(
                    index,
                    frame,
                    None,
                    view,
                    position,
                    row,
                    column,
                    spacing,
                    rows,
                    columns,
                    frame_model.frame_kind(view),
                    order,
                    _thickness(view),
                )
            )
    if selection and len(images) != len(set(selection)):
        raise GeometryError("selected frames are missing from the series files")
    return images


def build_stack(images: list[SliceImage]) -> Stack:
    """Sort images into volumes along the slice normal; derive the RAS affine."""
    if not images:
        raise GeometryError("no images")
    first = images[0]
    for image in images[1:]:
        if (image.rows, image.columns) != (first.rows, first.columns):
            raise GeometryError("images of different matrix sizes")
        if (
            np.max(np.abs(image.row_cosine - first.row_cosine)) > ORIENTATION_TOL
            or np.max(np.abs(image.column_cosine - first.column_cosine)) > ORIENTATION_TOL
        ):
            raise GeometryError("images of different orientations")
        if any(abs(a - b) > SPACING_RTOL * b for a, b in zip(image.spacing, first.spacing, strict=True)):
            raise GeometryError("images of different pixel spacing")
    if len({image.kind for image in images}) > 1:
        raise GeometryError(
            "images of different echoes or image parts (magnitude/phase/field map) "
            "or derived isotropic diffusion images in one series"
        )
    normal = np.cross(first.row_cosine, first.column_cosine)
    depths = np.array([image.position @ normal for image in images])
    ranked = np.argsort(depths, kind="stable")
    clusters: list[list[int]] = []
    for index in ranked:
        if clusters and depths[index] - depths[clusters[-1][0]] <= SAME_SLICE_MM:
            clusters[-1].append(int(index))
        else:
            clusters.append([int(index)])
    for cluster in clusters:
        points = np.array([images[i].position for i in cluster])
        if np.max(np.linalg.norm(points - points[0], axis=1)) > SAME_POINT_MM:
            raise GeometryError("images at the same slice depth with different in-plane positions")
    counts = {len(cluster) for cluster in clusters}
    if len(counts) != 1:
        raise GeometryError("slice positions occur unequal numbers of times (incomplete volumes)")
    ordered = [sorted(cluster, key=lambda i: images[i].order) for cluster in clusters]
    n_volumes = counts.pop()
    volumes = tuple(tuple(images[cluster[t]] for cluster in ordered) for t in range(n_volumes))
    return Stack(volumes=volumes, affine=_affine(volumes[0], normal))


def _affine(slices: tuple[SliceImage, ...], normal: np.ndarray) -> np.ndarray:
    first = slices[0]
    if len(slices) > 1:
        span = slices[-1].position - first.position
        along = float(span @ normal)
        step = span / (len(slices) - 1)
        lateral = np.linalg.norm(span - along * normal)
        if lateral > MAX_SHEAR * abs(along):
            raise GeometryError("slice positions drift sideways (gantry tilt or sheared stack)")
        # Every slice must lie where the affine will put it (catches gaps, extra slices and
        # zig-zag stacks that the end points alone would hide).
        tolerance = max(UNEVEN_SPACING[0], UNEVEN_SPACING[1] * float(np.linalg.norm(step)))
        for k, image in enumerate(slices):
            if np.linalg.norm(image.position - (first.position + k * step)) > tolerance:
                raise GeometryError("uneven slice spacing (missing or extra slices?)")
    else:
        step = normal * (first.thickness or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = first.row_cosine * first.spacing[1]
    lps[:3, 1] = first.column_cosine * first.spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    return LPS_TO_RAS @ lps


def uih_grid_images(datasets: list[Dataset]) -> list[SliceImage]:
    """The tiles of United Imaging grid images (one file = one volume), each at the position its
    private item states. Tiles fill rows of ceil(sqrt(n)) tiles, as many rows as needed (a
    20-slice volume is 4 rows of 5: checked against dcm2niix on dcm_qa_uih)."""
    images = []
    for index, ds in enumerate(datasets):
        positions = vendor.uih_grid_positions(ds)
        orientation = _vector(header.numbers(ds, "ImageOrientationPatient", 6))
        spacing = _vector(header.numbers(ds, "PixelSpacing", 2))
        if positions is None or orientation is None or spacing is None or np.any(spacing <= 0):
            raise GeometryError("United Imaging grid image without per-slice positions, orientation or spacing")
        per_row = math.ceil(math.sqrt(len(positions)))
        grid_rows = math.ceil(len(positions) / per_row)
        all_rows, all_columns = header.integer(ds, "Rows") or 0, header.integer(ds, "Columns") or 0
        rows, columns = all_rows // grid_rows, all_columns // per_row
        if rows * grid_rows != all_rows or columns * per_row != all_columns:
            raise GeometryError("United Imaging grid matrix is not a whole number of tiles")
        row, column = orientation[:3], orientation[3:]
        kind = frame_model.classic_kind(ds)
        order = (header.integer(ds, "InstanceNumber") or 0, header.integer(ds, "AcquisitionNumber") or 0, index)
        for tile, position in enumerate(positions):
            images.append(
                SliceImage(
                    index,
                    None,
                    tile,
                    ds,
                    np.array(position),
                    row,
                    column,
                    (float(spacing[0]), float(spacing[1])),
                    rows,
                    columns,
                    kind,
                    order,
                    _thickness(ds),
                )
            )
    return images
