"""Conformance harness (benchmarks/conformance.py): the whole corpus, and the harness itself.

The slow test runs every corpus dataset through our index + convert and holds the pass rate at
``tests/conformance_threshold.txt`` (``MATCHED/TOTAL``): raise it when a fix lands; lowering it
is a reviewed decision, never a side effect. The fast tests check that the harness itself can
tell a match from each kind of mismatch, and that its world-space b-vector comparison is the
inverse of what ``diffusion.diffusion_tables`` writes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO
from pydicom.dataset import Dataset

from benchmarks import conformance
from packager.convert import diffusion

THRESHOLD_FILE = REPO / "tests" / "conformance_threshold.txt"


def _threshold() -> tuple[int, int]:
    matched, total = THRESHOLD_FILE.read_text().strip().split("/")
    return int(matched), int(total)


@pytest.mark.slow
def test_whole_corpus_meets_the_stored_pass_rate(corpus, tmp_path):
    datasets = sorted(p for p in corpus.iterdir() if (p / "In").is_dir() and (p / "Ref").is_dir())
    assert len(datasets) >= 5
    tsv = tmp_path / "conformance.tsv"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert conformance.main([str(p) for p in datasets] + ["--tsv", str(tsv)]) == 0
    last = stdout.getvalue().rstrip("\n").splitlines()[-1]
    found = re.fullmatch(r"pass rate: (\d+)/(\d+)", last)
    assert found, last
    matched, total = int(found.group(1)), int(found.group(2))
    # every reference NIfTI listed in the corpus index is counted, none skipped
    index_rows = (corpus / "INDEX.tsv").read_text().strip().splitlines()[1:]
    assert total == len(index_rows)
    want_matched, want_total = _threshold()
    assert matched * want_total >= want_matched * total, stdout.getvalue()
    assert matched >= want_matched, stdout.getvalue()
    with open(tsv, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert sum(bool(row["reference"]) for row in rows) == total
    assert sum(row["status"] == conformance.MATCH for row in rows) == matched


# ---------------------------------------------------------------- the harness itself


def _scene(shape=(6, 7, 5), affine=None, seed=0) -> nib.Nifti1Image:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 1000, size=shape).astype(np.int16)
    if affine is None:
        affine = np.array([[-2.0, 0, 0, 30], [0, 2.0, 0, -20], [0, 0, 3.0, -10], [0, 0, 0, 1]])
    return nib.Nifti1Image(data, affine)


def _compare(ours: nib.Nifti1Image, ref: nib.Nifti1Image):
    return conformance.compare(conformance._image("ours", ours, None, None), conformance._image("ref", ref, None, None))


def test_harness_matches_the_same_image_in_another_voxel_order():
    ref = _scene()
    # the same volume stored with x reversed: a different file, the same image in the world
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = ref.shape[0] - 1
    ours = nib.Nifti1Image(np.asanyarray(ref.dataobj)[::-1], ref.affine @ flip)
    assert _compare(ours, ref)[1] == conformance.MATCH


@pytest.mark.parametrize(
    "spoil, status",
    [
        ("reversed slices, same affine", conformance.DATA),
        ("shifted 0.5 mm", conformance.AFFINE),
        ("an extra volume", conformance.SHAPE),
        ("scaled values", conformance.DATA),
    ],
)
def test_harness_names_each_kind_of_mismatch(spoil, status):
    ref = _scene()
    data = np.asanyarray(ref.dataobj)
    affine = ref.affine.copy()
    if spoil == "reversed slices, same affine":
        data = data[:, :, ::-1]
    elif spoil == "shifted 0.5 mm":
        affine[1, 3] += 0.5
    elif spoil == "an extra volume":
        data = np.stack([data, data], axis=-1)
    else:
        data = (data * 1.001).astype(np.float32)
    assert _compare(nib.Nifti1Image(data, affine), ref)[1] == status


@pytest.mark.parametrize("offset, status", [(0.3, conformance.MATCH), (0.6, conformance.DATA)])
def test_harness_accepts_scale_errors_below_half_a_stored_step_of_the_reference(offset, status):
    """An integer reference with scl_slope: ours matches when it would store the same integers."""
    stored = _scene()
    stored.header.set_slope_inter(0.01, -3.0)
    ref = nib.Nifti1Image.from_bytes(stored.to_bytes())  # as read from a file: int16 and a scale
    scaled = np.asanyarray(stored.dataobj).astype(np.float64) * 0.01 - 3.0
    ours = nib.Nifti1Image((scaled + offset * 0.01).astype(np.float64), ref.affine)
    assert _compare(ours, ref)[1] == status


def test_harness_leaves_unrelated_images_unpaired():
    assert _compare(_scene(seed=1, shape=(5, 5, 5)), _scene(seed=2)) is None


@pytest.mark.parametrize(
    "affine",
    [
        np.array([[-2.0, 0, 0, 1], [0, 2, 0, 2], [0, 0, 2, 3], [0, 0, 0, 1]]),  # LAS, det < 0
        np.array([[2.0, 0, 0, 1], [0, 2, 0, 2], [0, 0, 2, 3], [0, 0, 0, 1]]),  # RAS, det > 0
        np.array([[0, 0, -2.0, 1], [1.9, 0.62, 0, 2], [-0.62, 1.9, 0, 3], [0, 0, 0, 1]]),  # oblique sagittal
    ],
)
def test_world_bvecs_invert_what_convert_writes(affine):
    gradients_lps = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.6, -0.64, 0.48]])
    heads = []
    for number, gradient in enumerate(gradients_lps):
        head = Dataset()
        head.DiffusionBValue = 0 if number == 0 else 1000
        head.DiffusionGradientOrientation = [float(v) for v in gradient]
        heads.append(head)
    bval, bvec = diffusion.diffusion_tables(tuple(heads), affine)
    world = conformance._fsl_to_world(conformance._parse_table(bvec, 3), affine)
    expected = gradients_lps * np.array([-1.0, -1.0, 1.0])
    norms = np.linalg.norm(expected, axis=1, keepdims=True)
    expected = np.divide(expected, norms, out=np.zeros_like(expected), where=norms > 0)
    np.testing.assert_allclose(world, expected, atol=2e-6)
    assert conformance._parse_table(bval, 1).tolist() == [[0, 1000, 1000, 1000]]
