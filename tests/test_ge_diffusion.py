"""GE diffusion from private tags (issue 20): b-value (0043,1039), gradient (0019,10BB..BD) in
GE's image frame. Column phase encoding matches dcm2niix on the corpus (tests/test_conformance.py);
row phase encoding, which swaps GE's axes and has no data here, gets no vectors (refused)."""

from __future__ import annotations

import numpy as np
import pydicom

from packager.convert import diffusion

SERIES = "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2"


def _weighted(corpus):
    return pydicom.dcmread(sorted((corpus / SERIES).iterdir())[2])


def test_column_phase_encoding_gives_a_unit_lps_gradient(corpus):
    bval, gradient = diffusion._world_gradient(_weighted(corpus))
    assert bval == 1000 and gradient is not None
    assert abs(np.linalg.norm(gradient) - 1) < 1e-6


def test_row_phase_encoding_gives_no_vector(corpus):
    ds = _weighted(corpus)
    ds.InPlanePhaseEncodingDirection = "ROW"
    assert diffusion._world_gradient(ds) == (1000.0, None)


def test_ge_group_0019_is_not_read_as_siemens(corpus):
    ds = _weighted(corpus)
    ds.add_new((0x0019, 0x100C), "IS", "1000")  # a GE element (GEMS_ACQU_01) where Siemens keeps B_value
    del ds[(0x0043, 0x1039)]
    del ds.DiffusionBValue  # no b-value left but the GE element, which must not pass for Siemens'
    assert diffusion._world_gradient(ds) is None
