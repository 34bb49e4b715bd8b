"""Stage unit test, layout: a BIDS name + de-identified labels -> the run's dataset path (``bids_relpath``)."""

from __future__ import annotations

import pytest

from packager.model import BidsName
from packager.naming.layout import bids_relpath


@pytest.mark.parametrize(
    "name, session, extension, expected",
    [
        (BidsName("anat", "T1w"), "01", ".nii.gz", "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"),
        (BidsName("anat", "T1w"), None, ".json", "sub-01/anat/sub-01_T1w.json"),
        # entities come in the spec's order, whatever order the heuristic gave them in
        (
            BidsName("func", "bold", (("run", "2"), ("task", "rest"), ("acq", "mb4"))),
            "01",
            ".nii.gz",
            "sub-01/ses-01/func/sub-01_ses-01_task-rest_acq-mb4_run-2_bold.nii.gz",
        ),
        (
            BidsName("fmap", "epi", (("dir", "AP"), ("acq", "se"), ("run", "1"))),
            None,
            ".nii.gz",
            "sub-01/fmap/sub-01_acq-se_dir-AP_run-1_epi.nii.gz",
        ),
        # a ses entity from the heuristic never overrides the session from deid
        (BidsName("dwi", "dwi", (("ses", "99"),)), "02", ".bval", "sub-01/ses-02/dwi/sub-01_ses-02_dwi.bval"),
        # direct field mapping's plain _magnitude (pybids only knows magnitude1/2)
        (BidsName("fmap", "magnitude"), None, ".nii.gz", "sub-01/fmap/sub-01_magnitude.nii.gz"),
        (BidsName("fmap", "magnitude1"), None, ".nii.gz", "sub-01/fmap/sub-01_magnitude1.nii.gz"),
    ],
)
def test_bids_relpath(name, session, extension, expected):
    assert bids_relpath(name, "01", session, extension) == expected


@pytest.mark.parametrize(
    "name",
    [
        BidsName("anat", "T1w", (("bogus", "x"),)),  # an entity BIDS does not have
        BidsName("anat", "nonsense"),  # a suffix with no place in its datatype
        BidsName("func", "bold"),  # bold without its required task
    ],
)
def test_names_pybids_cannot_place_are_refused(name):
    assert bids_relpath(name, "01", None) is None
