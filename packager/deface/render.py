"""Deface, renders: a head volume -> depth-shaded surface views (front and side) for the QC report.

Hand-written with numpy and scipy because no maintained library renders a NIfTI surface offline
without an OpenGL context (nilearn and matplotlib plot slices; VTK/PyVista need a display): the
volume is resampled onto a 2 mm RAS grid, the head is what lies above 12 % of the robust
maximum, and each pixel shows how far the ray travelled to the first head voxel, shaded by the
surface's slope, as a person would see a face.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

VOXEL = 2.0  # mm, the render grid


def views(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(front, side) uint8 images of the head surface, superior up; front as seen facing the
    subject, side from the subject's right."""
    grid = _ras_grid(volume, affine)
    grid = ndimage.gaussian_filter(grid, 1.0)
    positive = grid[grid > 0]
    if not positive.size:
        blank = np.zeros((8, 8), np.uint8)
        return blank, blank
    head = grid > 0.12 * float(np.percentile(positive, 99))
    # front: rays along -y (from anterior), image axes (x, z); side: rays along -x (from the right)
    front = np.ascontiguousarray(_shade(np.flip(head, 1), 1)[:, ::-1])  # subject's right on the viewer's left
    side = _shade(np.flip(head, 0), 0)  # seen from the right: anterior on the viewer's right
    return front, side


def _ras_grid(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume`` resampled (linear) onto an axis-aligned RAS grid of ``VOXEL`` mm covering it."""
    shape = np.array(volume.shape[:3])
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = (np.asarray(affine, float) @ corners.T)[:3]
    low, high = world.min(axis=1), world.max(axis=1)
    out_shape = tuple(int(v) for v in np.ceil((high - low) / VOXEL) + 1)
    to_grid = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    to_grid[:3, 3] = low
    step = np.linalg.inv(np.asarray(affine, float)) @ to_grid
    return ndimage.affine_transform(
        volume, step[:3, :3], step[:3, 3], output_shape=out_shape, order=1, output=np.float32, cval=0.0
    )


def _shade(mask: np.ndarray, axis: int) -> np.ndarray:
    """First-hit depth along ``axis`` -> an image: rows are z (superior up), columns the other axis."""
    hit = mask.any(axis=axis)
    depth = np.argmax(mask, axis=axis).astype(np.float32)
    far = float(depth[hit].max()) if hit.any() else 0.0
    depth[~hit] = far
    slope_a, slope_b = np.gradient(depth)
    light = 1.0 / np.sqrt(1.0 + slope_a**2 + slope_b**2)
    near = 1.0 - (depth - (depth[hit].min() if hit.any() else 0.0)) / max(1.0, far)
    image = np.clip((0.75 * light + 0.25 * near) * 255, 0, 255)
    image[~hit] = 0
    return np.ascontiguousarray(image.astype(np.uint8).T[::-1])
