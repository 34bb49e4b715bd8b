"""Make the vendored template files of ``packager/deface/data`` (run once, at development time).

Usage::

    pip download --no-deps pydeface==2.1.0 nilearn==0.14.1   # their wheels: data only, not installed
    unzip pydeface-2.1.0-py3-none-any.whl 'pydeface/data/*'
    MNI=nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
    unzip nilearn-0.14.1-py3-none-any.whl "$MNI"
    python -m packager.deface.make_data pydeface/data "$MNI"

Inputs: pydeface's whole-head template ``mean_reg2mean.nii.gz`` and ``facemask.nii.gz`` (MIT,
see ``data/LICENSE-pydeface.txt``) and nilearn's packaged MNI152 2009 T1 (skull-stripped; see
``data/NOTICE-mni152.txt``). Outputs, all on pydeface's template grid or a coarser copy of it:

``template_2mm.nii.gz``
    the template smoothed (sigma 1 mm), resampled to 2 mm and scaled to 0..255 (uint8): the
    registration runs on a 2-4 mm grid, so the 8 MB 1 mm original is not shipped;
``facemask.nii.gz``
    pydeface's face mask as uint8 (0 = face; the original is float64): what the benchmark scores;
``facemask_grown.nii.gz``
    the same with its face grown by ``face.GROW_MM`` (a ball): what the step cuts;
``brainmask_2mm.nii.gz``
    the MNI152 brain (``t1 > 0.2 max``, as nilearn's ``load_mni152_brain_mask``) carried into
    template space by an affine registration (template fixed, MNI moving, a dilated MNI brain
    as the moving mask), so no run needs nilearn.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from packager.deface import face as face_stage
from packager.deface import register

DATA = Path(__file__).parent / "data"


def main(source: Path, mni_path: Path) -> None:
    """Write the three files from pydeface's data folder and nilearn's MNI152 T1."""
    register.pin_threads()
    template = sitk.ReadImage(str(source / "mean_reg2mean.nii.gz"), sitk.sitkFloat32)
    coarse = register.normalise(register.to_grid(template, 2.0))
    sitk.WriteImage(sitk.Cast(sitk.Round(coarse * 255.0), sitk.sitkUInt8), str(DATA / "template_2mm.nii.gz"), True)
    face = sitk.ReadImage(str(source / "facemask.nii.gz"), sitk.sitkFloat32)
    keep = sitk.Cast(face > 0.5, sitk.sitkUInt8)
    sitk.WriteImage(keep, str(DATA / "facemask.nii.gz"), True)
    grown = sitk.BinaryErode(keep, [face_stage.GROW_MM] * 3, sitk.sitkBall, 0, 1)  # 1 mm voxels
    sitk.WriteImage(grown, str(DATA / "facemask_grown.nii.gz"), True)

    mni = sitk.ReadImage(str(mni_path), sitk.sitkFloat32)
    moving = register.normalise(register.to_grid(mni, 2.0))
    moving_mask = sitk.BinaryDilate(sitk.Cast(moving > 0.05, sitk.sitkUInt8), [3, 3, 3])
    start = sitk.CenteredTransformInitializer(
        coarse, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    fine = register.Settings(grid=2.0, sampling=0.25, levels=(4, 2, 1), sigmas=(2.0, 1.0, 0.0), iterations=200)
    to_mni = register.affine(coarse, moving, start, fine, moving_mask=moving_mask)
    brain = sitk.Cast(mni > 0.2 * float(sitk.GetArrayViewFromImage(mni).max()), sitk.sitkUInt8)
    in_template = sitk.Resample(brain, coarse, to_mni, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    sitk.WriteImage(in_template, str(DATA / "brainmask_2mm.nii.gz"), True)
    print(to_mni, int(np.count_nonzero(sitk.GetArrayViewFromImage(in_template))), os.listdir(DATA))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
