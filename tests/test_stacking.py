"""Stage unit test, stacking (convert): 2D images -> volumes and the NIfTI affine (``build_stack``)."""

from __future__ import annotations

import numpy as np
import pytest
import synthetic_dicom as dicom

from packager.convert.stacking import GeometryError, build_stack, classic_images

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def _images(positions, **fields):
    return classic_images([dicom.mr_image(instance=k + 1, position=p, **fields) for k, p in enumerate(positions)])


def _axial(n, step=2.5, origin=(-10.0, 20.0, 5.0)):
    return [(origin[0], origin[1], origin[2] + k * step) for k in range(n)]


def test_slices_are_sorted_along_the_normal_and_the_affine_is_ras():
    positions = _axial(4)
    images = _images(positions[::-1], spacing=(2.0, 3.0))  # given head-to-foot: sorted foot-to-head
    stack = build_stack(images)
    assert stack.n_slices == 4 and len(stack.volumes) == 1
    assert [tuple(image.position) for image in stack.volumes[0]] == positions
    # columns: row direction * column spacing, column direction * row spacing, slice step; LPS -> RAS
    expected = np.array([[-3.0, 0.0, 0.0, 10.0], [0.0, -2.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(stack.affine, expected)


def test_oblique_stack_steps_along_its_own_normal():
    positions = [(0.0, 0.0, 0.0), (1.5, 0.0, 0.0), (3.0, 0.0, 0.0)]
    stack = build_stack(_images(positions, orientation=SAGITTAL))
    # normal = row x column = (0, 1, 0) x (0, 0, -1) = (-1, 0, 0): slices run from x = 3 to x = 0 (LPS)
    assert [tuple(image.position) for image in stack.volumes[0]] == positions[::-1]
    np.testing.assert_allclose(stack.affine[:3, 2], [1.5, 0.0, 0.0])  # -x in LPS is +x in RAS
    np.testing.assert_allclose(stack.affine[:3, 0], [0.0, -1.0, 0.0])
    np.testing.assert_allclose(stack.affine[:3, 1], [0.0, 0.0, -1.0])
    np.testing.assert_allclose(stack.affine[:3, 3], [-3.0, 0.0, 0.0])


def test_repeated_positions_form_volumes_in_instance_order():
    positions = _axial(3) * 2  # instances 1-3 then 4-6 at the same three positions
    stack = build_stack(_images(positions))
    assert len(stack.volumes) == 2 and stack.n_slices == 3
    assert [[image.header.InstanceNumber for image in volume] for volume in stack.volumes] == [[1, 2, 3], [4, 5, 6]]


def test_single_slice_uses_its_thickness():
    stack = build_stack(_images([(0.0, 0.0, 7.0)]))
    np.testing.assert_allclose(stack.affine[:3, 2], [0.0, 0.0, 1.0])  # SliceThickness 1.0


@pytest.mark.parametrize(
    "positions, detail",
    [
        ([(0.0, 0.0, z) for z in (0.0, 1.0, 2.0, 4.0, 5.0)], "uneven slice spacing"),  # a missing slice
        ([(0.0, 0.0, z) for z in (0.0, 1.0, 2.0)] + [(0.0, 0.0, 0.0)], "unequal numbers of times"),
        ([(0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (5.0, 0.0, 0.0)], "different in-plane positions"),
        ([(0.0, 0.2 * z, z) for z in range(4)], "drift sideways"),  # gantry tilt
    ],
)
def test_stacks_no_single_affine_describes(positions, detail):
    with pytest.raises(GeometryError, match=detail) as info:
        build_stack(_images(positions))
    assert info.value.detail == str(info.value)


def test_mixed_images_are_refused():
    axial = _images(_axial(2))
    with pytest.raises(GeometryError, match="different matrix sizes"):
        build_stack(axial + classic_images([dicom.mr_image(matrix=(4, 6), position=(0, 0, 9))]))
    with pytest.raises(GeometryError, match="different orientations"):
        build_stack(axial + classic_images([dicom.mr_image(orientation=SAGITTAL, position=(0, 0, 9))]))
    with pytest.raises(GeometryError, match="different pixel spacing"):
        build_stack(axial + classic_images([dicom.mr_image(spacing=(1.0, 1.5), position=(0, 0, 9))]))
    with pytest.raises(GeometryError, match="no images"):
        build_stack([])


def test_images_without_usable_geometry_are_refused():
    missing = dicom.mr_image()
    del missing.ImagePositionPatient
    with pytest.raises(GeometryError, match="no usable ImagePositionPatient"):
        classic_images([missing])
    with pytest.raises(GeometryError, match="not two orthonormal vectors"):
        classic_images([dicom.mr_image(orientation=(1.0, 0.0, 0.0, 1.0, 0.0, 0.0))])
    with pytest.raises(GeometryError, match="no usable PixelSpacing"):
        classic_images([dicom.mr_image(spacing=(0.0, 1.0))])
