"""Deface, the face cut: one head volume (voxels + RAS affine) -> the volume with its face zeroed,
or a refusal.

pydeface's whole-head template is registered to the image (``register``), its face mask is
carried to the image's own grid (nearest neighbour; outside the template means keep) and the
voxels under the face are set to 0 in their own dtype: nothing else in the array changes.

Refuses (``Outcome.refusal`` set, nothing returned) when the result could remove brain or
leave a face: an implausible transform (per-axis scale outside 0.80-1.25, anisotropy over
1.20, shear over 0.10, rotation over 30 degrees), a head outline that does not match the
template's (Dice under 0.80), a brain that is not inside the field of view (under 97 %), a
template brain voxel inside the removed region or closer to it than 4 mm, or a second,
differently started and sampled registration that disagrees with the first by more than
``MAX_DISAGREEMENT_MM`` anywhere on the brain or the removed region. That last check is the
independent one: the others carry the first registration's own error.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from packager.deface import register

#: The two registrations: the one that cuts, and the one that checks it (other sampling, seed and
#: start). On the corpus' heads they agree within ~2 mm; on a cartoon head that the first one
#: misplaced by ~1.5 cm they differ by ~10 mm (docs/deface.md).
PRIMARY = register.Settings()
CHECK = register.Settings(sampling=0.3, seed=7, geometry_start=True)

SCALE_MIN, SCALE_MAX = 0.80, 1.25
MAX_ANISOTROPY = 1.20
MAX_SHEAR = 0.10
MAX_ROTATION = 30.0  # degrees
MIN_HEAD_DICE = 0.80
MIN_BRAIN_IN_VIEW = 0.97
MIN_MARGIN_MM = 4.0
MAX_DISAGREEMENT_MM = 4.0
#: The face region that is cut is pydeface's grown by this much (``make_data``): two registrations
#: differ by 1-2 mm, so pydeface's own border leaves a rim of face (1-2 % of it) to whichever is
#: right; it also takes more of the brows and cheeks. The brain stays ~14 mm away.
GROW_MM = 3


@dataclass(frozen=True, slots=True)
class Outcome:
    """What defacing one volume gave: the cut volume, or the reason it was refused."""

    data: np.ndarray | None  # same shape and dtype as the input; None when refused
    refusal: str = ""  # value-free, one line
    removed: int = 0  # voxels set to 0 (per volume)
    checks: tuple[tuple[str, float], ...] = ()  # the measured gate values
    cut: np.ndarray | None = None  # the zeroed voxels (3D, the input's own voxel order) when defaced


@functools.cache  # the vendored files are read once per process, not once per run
def _templates() -> tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image]:
    """Template (0..1), pydeface's face mask, the brain mask, and the face mask that cuts (its
    face grown by ``GROW_MM``; ``make_data``)."""
    folder = resources.files("packager.deface") / "data"
    images = []
    for name in ("template_2mm.nii.gz", "facemask.nii.gz", "brainmask_2mm.nii.gz", "facemask_grown.nii.gz"):
        with resources.as_file(folder / name) as path:
            images.append(sitk.ReadImage(str(path)))
    template = sitk.Cast(sitk.Cast(images[0], sitk.sitkFloat32) / 255.0, sitk.sitkFloat32)
    return template, images[1], images[2], images[3]


@functools.cache
def _template_on(grid: float) -> sitk.Image:
    """The template on a working grid (made once per process and grid)."""
    return register.to_grid(_templates()[0], grid)


@functools.cache
def _template_head(grid: float) -> sitk.Image:
    """The template's head outline on a working grid (made once per process and grid)."""
    moving = _template_on(grid)
    head = sitk.GetImageFromArray(register.head_mask(moving).astype(np.uint8))
    head.CopyInformation(moving)
    return head


def sitk_image(volume: np.ndarray, affine: np.ndarray) -> sitk.Image | None:
    """A 3D array in NIfTI (i, j, k) order with its RAS affine as a SimpleITK image (LPS), or
    None when the voxel grid is sheared (SimpleITK grids are orthogonal)."""
    matrix = np.asarray(affine, float)[:3, :3]
    spacing = np.sqrt((matrix**2).sum(axis=0))
    direction = np.diag([-1.0, -1.0, 1.0]) @ (matrix / spacing)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        return None
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0), dtype=np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, float)[:3, 3]).tolist())
    return image


def deface(data: np.ndarray, affine: np.ndarray) -> Outcome:
    """Zero the face of a head volume, or refuse.

    Parameters
    ----------
    data : numpy.ndarray
        3D, or 4D with the volumes on the last axis (every volume gets the cut of the first).
    affine : numpy.ndarray
        4x4 voxel-to-RAS+ affine.

    Returns
    -------
    Outcome
        ``data`` set and ``refusal`` empty when defaced.
    """
    register.pin_threads()
    try:
        return _deface(data, affine)
    except RuntimeError as exc:  # SimpleITK's errors (an image it cannot process): value-free
        return Outcome(None, f"registration failed ({type(exc).__name__})")


def _deface(data: np.ndarray, affine: np.ndarray) -> Outcome:
    # Registered in the closest-to-RAS voxel order with the affine rounded to 0.1 um: the same
    # head gives the same cut whichever engine stored it (dcm2niix flips rows, float32 sforms).
    ornt = nib.orientations.io_orientation(affine)
    first = nib.orientations.apply_orientation(data[..., 0] if data.ndim == 4 else data, ornt)
    affine = np.round(np.asarray(affine, float) @ nib.orientations.inv_ornt_aff(ornt, data.shape[:3]), 4)
    image = sitk_image(first, affine)
    if image is None:
        return Outcome(None, "sheared voxel grid")
    brainmask, facemask = _templates()[2], _templates()[3]
    checks: dict[str, float] = {}
    fixed = register.normalise(register.to_grid(image, PRIMARY.grid))
    moving = _template_on(PRIMARY.grid)
    transform = register.affine(fixed, moving, None, PRIMARY)
    problems = _plausible(transform, fixed, moving, checks)
    remove = _removed_on(fixed, facemask, transform)
    brain = sitk.GetArrayFromImage(sitk.Resample(brainmask, fixed, transform, sitk.sitkNearestNeighbor, 0)) > 0
    problems += _brain_clear(remove, brain, fixed.GetSpacing()[0], "", checks)
    checks["brain_in_view"] = _brain_in_view(brainmask, transform, image)
    if checks["brain_in_view"] < MIN_BRAIN_IN_VIEW:
        problems.append(f"only {checks['brain_in_view']:.0%} of the brain inside the field of view")
    if not problems:  # the independent check costs a registration: only when the first passed
        problems += _second_opinion(image, fixed, brainmask, transform, remove, brain, checks)
    measured = tuple(sorted((k, round(float(v), 4)) for k, v in checks.items()))
    if problems:
        return Outcome(None, "; ".join(problems), checks=measured)
    face = sitk.Resample(facemask, image, transform, sitk.sitkNearestNeighbor, 1, sitk.sitkUInt8)
    canonical_cut = sitk.GetArrayViewFromImage(face).transpose(2, 1, 0) == 0
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    cut = nib.orientations.apply_orientation(canonical_cut, back)  # in ``data``'s own voxel order
    return Outcome(zeroed(data, cut), "", int(np.count_nonzero(cut)), measured, cut)


def zeroed(data: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """A copy of ``data`` with the voxels under ``cut`` (3D, ``data``'s voxel order) set to 0."""
    out = data.copy()
    out[cut] = 0  # a 4D array: every volume, by broadcasting over the first three axes
    return out


def _plausible(transform: sitk.AffineTransform, fixed, moving, checks: dict[str, float]) -> list[str]:
    """The gates on the transform itself and on the head outlines it aligns."""
    scales, shears, angle = register.decompose(transform.GetMatrix())
    checks.update(scale_min=scales.min(), scale_max=scales.max(), shear=np.abs(shears).max(), rotation=angle)
    problems = []
    if scales.min() < SCALE_MIN or scales.max() > SCALE_MAX:
        problems.append(f"template scale {scales.min():.2f}-{scales.max():.2f} outside {SCALE_MIN}-{SCALE_MAX}")
    if scales.max() / scales.min() > MAX_ANISOTROPY:
        problems.append(f"anisotropic scale {scales.max() / scales.min():.2f} > {MAX_ANISOTROPY}")
    if np.abs(shears).max() > MAX_SHEAR:
        problems.append(f"shear {np.abs(shears).max():.2f} > {MAX_SHEAR}")
    if angle > MAX_ROTATION:
        problems.append(f"rotation {angle:.0f} degrees > {MAX_ROTATION:.0f}")
    head = register.head_mask(fixed)
    template_head = sitk.GetArrayFromImage(
        sitk.Resample(_template_head(moving.GetSpacing()[0]), fixed, transform, sitk.sitkNearestNeighbor, 0)
    )
    overlap, total = int(np.count_nonzero(head & (template_head > 0))), int(head.sum() + (template_head > 0).sum())
    dice = 2 * overlap / max(1, total)
    checks["head_dice"] = dice
    if dice < MIN_HEAD_DICE:
        problems.append(f"head outline overlap {dice:.2f} < {MIN_HEAD_DICE}")
    return problems


def _removed_on(grid: sitk.Image, facemask: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """Where the face mask removes voxels, on ``grid`` (array order z, y, x)."""
    return sitk.GetArrayFromImage(sitk.Resample(facemask, grid, transform, sitk.sitkNearestNeighbor, 1)) == 0


def _brain_clear(remove: np.ndarray, brain: np.ndarray, spacing: float, tag: str, checks: dict) -> list[str]:
    """No brain voxel removed, and the removed region at least ``MIN_MARGIN_MM`` from the brain
    (the working grid's own voxel added: both masks are rounded to it)."""
    overlap = int(np.count_nonzero(remove & brain))
    margin = float(ndimage.distance_transform_edt(~remove, sampling=spacing)[brain].min()) if remove.any() else 1e3
    checks[f"brain_removed{tag}"] = overlap
    checks[f"margin_mm{tag}"] = min(margin, 1e3)
    if overlap:
        return [f"{overlap} brain voxel(s) inside the face region{tag and ' (' + tag.strip('_') + ')'}"]
    if margin < MIN_MARGIN_MM + spacing:
        return [f"face region {margin:.0f} mm from the brain{tag and ' (' + tag.strip('_') + ')'}"]
    return []


def _brain_in_view(brainmask: sitk.Image, transform: sitk.AffineTransform, image: sitk.Image) -> float:
    """Fraction of the template brain's voxels that land inside the image's field of view."""
    indices = np.argwhere(sitk.GetArrayViewFromImage(brainmask)[::2, ::2, ::2] > 0)[:, ::-1] * 2  # every 8th: 17k
    points = _points(brainmask, indices.astype(float))
    where = _mapped(sitk.AffineTransform(transform.GetInverse()), points)
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    continuous = (where - np.array(image.GetOrigin())) @ np.linalg.inv(direction).T
    inside = np.all((continuous >= -0.5) & (continuous <= np.array(image.GetSize()) - 0.5), axis=1)
    return float(inside.mean()) if len(inside) else 0.0


def _points(image: sitk.Image, indices: np.ndarray) -> np.ndarray:
    """Physical (LPS) points of (x, y, z) voxel indices of ``image``."""
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    return indices @ direction.T + np.array(image.GetOrigin())


def _mapped(transform: sitk.AffineTransform, points: np.ndarray) -> np.ndarray:
    """``transform`` applied to many points at once (an affine: matrix about a centre)."""
    matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    centre = np.array(transform.GetCenter())
    return (points - centre) @ matrix.T + centre + np.array(transform.GetTranslation())


def _second_opinion(image, grid, brainmask, first, remove, brain, checks: dict) -> list[str]:
    """A second registration (other grid, sampling, seed, start) must agree with the first on the
    brain and the removed region (``grid``: the first's working grid), and its own brain must
    stay clear of the first's cut."""
    fixed = register.normalise(register.to_grid(image, CHECK.grid))
    moving = _template_on(CHECK.grid)
    second = register.affine(fixed, moving, None, CHECK)
    points = _points(grid, np.argwhere(remove | brain)[:, ::-1].astype(float))
    shift = float(np.linalg.norm(_mapped(first, points) - _mapped(second, points), axis=1).max(initial=0.0))
    checks["disagreement_mm"] = shift
    problems = []
    if shift > MAX_DISAGREEMENT_MM:
        problems.append(f"two registrations disagree by {shift:.1f} mm (> {MAX_DISAGREEMENT_MM:.0f})")
    brain2 = sitk.GetArrayFromImage(sitk.Resample(brainmask, grid, second, sitk.sitkNearestNeighbor, 0)) > 0
    return problems + _brain_clear(remove, brain2, grid.GetSpacing()[0], "_check", checks)
