"""Deface, registration: an image and the vendored whole-head template -> an affine transform.

SimpleITK's multi-resolution Mattes mutual information, rigid then affine, on a coarse
isotropic working grid. Everything that could change the bytes of the result is fixed here:
one ITK thread (two threads move the transform by ~0.01-0.05 mm and flip voxels at the mask's
border), regular sampling with a fixed seed, fixed iteration counts. Parallelism belongs to the
build's worker processes, one run each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage


@dataclass(frozen=True, slots=True)
class Settings:
    """One registration's knobs (two differently-set registrations check each other)."""

    grid: float = 4.0  # mm, isotropic working grid of both images
    sampling: float = 0.15  # fraction of the fixed image's voxels the metric samples
    seed: int = 20260601  # the sampler's seed (regular sampling with a random offset)
    levels: tuple[int, ...] = (2, 1)  # shrink factors
    sigmas: tuple[float, ...] = (2.0, 0.0)  # smoothing per level, mm
    iterations: int = 100  # at most, per level and stage
    geometry_start: bool = False  # start from the images' centres instead of their centres of mass


def pin_threads() -> None:
    """One ITK thread for this process (see module doc: determinism)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def to_grid(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` smoothed (sigma = spacing / 2) and resampled onto an isotropic grid with its origin
    and direction."""
    size = [max(int(round(n * s / spacing)), 1) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    smooth = sitk.SmoothingRecursiveGaussian(image, spacing / 2.0)
    return sitk.Resample(
        smooth,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [spacing] * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def normalise(image: sitk.Image) -> sitk.Image:
    """Intensities divided by the 99.5th percentile of the non-zero voxels, clamped to [0, 1]."""
    values = sitk.GetArrayViewFromImage(image)
    positive = values[values > 0]
    high = float(np.percentile(positive, 99.5)) if positive.size else 1.0
    return sitk.Clamp(image / max(high, 1e-6), sitk.sitkFloat32, 0.0, 1.0)


def affine(
    fixed: sitk.Image,
    moving: sitk.Image,
    start: sitk.Transform | None,
    settings: Settings,
    moving_mask: sitk.Image | None = None,
) -> sitk.AffineTransform:
    """Register ``moving`` to ``fixed``: rigid, then affine from the rigid result.

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        Normalised images on their working grids.
    start : SimpleITK.Transform or None
        A rigid start (None: centres of mass or geometry, as ``settings`` says).
    settings : Settings
    moving_mask : SimpleITK.Image, optional
        Where the metric samples the moving image.

    Returns
    -------
    SimpleITK.AffineTransform
        Maps ``fixed`` points to ``moving`` points.
    """
    if start is None:
        how = (
            sitk.CenteredTransformInitializerFilter.GEOMETRY
            if settings.geometry_start
            else sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        start = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), how)
    rigid = sitk.Euler3DTransform(start)
    _run(fixed, moving, rigid, settings, moving_mask)
    result = sitk.AffineTransform(3)
    result.SetMatrix(rigid.GetMatrix())
    result.SetTranslation(rigid.GetTranslation())
    result.SetCenter(rigid.GetCenter())
    _run(fixed, moving, result, settings, moving_mask)
    return result


def _run(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, settings: Settings, moving_mask) -> None:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(settings.sampling, settings.seed)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=settings.iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(settings.levels))
    method.SetSmoothingSigmasPerLevel(list(settings.sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)


def decompose(matrix: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, float]:
    """(per-axis scales, shears, rotation angle in degrees) of a 3x3 matrix (QR decomposition)."""
    m = np.asarray(matrix, float).reshape(3, 3)
    q, r = np.linalg.qr(m)
    signs = np.sign(np.diag(r))
    q, r = q * signs, (r.T * signs).T
    scales = np.abs(np.diag(r))
    unit = r / scales[:, None]
    shears = np.array([unit[0, 1], unit[0, 2], unit[1, 2]])
    angle = float(np.degrees(np.arccos(np.clip((np.trace(q) - 1) / 2, -1, 1))))
    return scales, shears, angle


def head_mask(image: sitk.Image, level: float = 0.10) -> np.ndarray:
    """The head in a normalised image (array order z, y, x): above ``level``, closed, the largest
    component, holes filled in 3D and slice by slice along every axis (sinuses, ventricles
    at low contrast)."""
    mask = sitk.GetArrayFromImage(image) > level
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3, 3)), iterations=2, border_value=0)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        for i in range(mask.shape[axis]):
            cut = [slice(None)] * 3
            cut[axis] = slice(i, i + 1)
            mask[tuple(cut)] = ndimage.binary_fill_holes(mask[tuple(cut)].squeeze(axis)).reshape(mask[tuple(cut)].shape)
    return mask
