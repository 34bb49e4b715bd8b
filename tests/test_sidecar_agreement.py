"""Sidecar values agree with dcm2niix's reference JSONs (corpus Ref/ folders), per key.

Uses the bundles test_corpus_bids builds (tests/corpus_builds.py) and the comparison of
benchmarks/sidecar_agreement.py; the counts may not drop below
tests/sidecar_agreement_thresholds.json. Where dcm2niix is wrong the README's "Heuristics and
sidecars" section shows the header evidence; those pairs are the only disagreements allowed.
"""

from __future__ import annotations

import json

import corpus_builds
import numpy as np
import pytest
from conftest import REPO

from benchmarks import sidecar_agreement as benchmark

THRESHOLDS = json.loads((REPO / "tests" / "sidecar_agreement_thresholds.json").read_text())
DATASETS = [name for name in THRESHOLDS if not name.startswith("_")]
# Known dcm2niix errors (docs/sidecars.md): classic Siemens slice times parsed as float32 hhmmss,
# and the multiband factor it infers from those rounded times (the protocol says no multiband).
DOCUMENTED = {("dcm_qa_fmap", "SliceTiming"), ("dcm_qa_fmap", "MultibandAccelerationFactor")}
# Single runs, each explained in docs/sidecars.md: (dataset, key, reference stem).
UIH = "dti_tra_dir16_PA_rot_12"
DOCUMENTED_RUNS = {
    # dcm2niix error: UIH per-tile AcquisitionTime parsed as float32 hhmmss, as above
    ("dcm_qa_uih", "SliceTiming", f"{UIH}_132222"),
    ("dcm_qa_stc", "SliceTiming", f"UIH_{UIH}"),
    # left out: not derivable reliably from what the header says (UIH redefined its duration tag)
    ("dcm_qa_uih", "TotalReadoutTime", f"{UIH}_132222"),
    ("dcm_qa_stc", "TotalReadoutTime", f"UIH_{UIH}"),
    ("dcm_qa_uih", "ParallelReductionFactorInPlane", f"{UIH}_132222"),
    ("dcm_qa_stc", "ParallelReductionFactorInPlane", f"UIH_{UIH}"),
    # header TR 4.25 s; dcm2niix writes the ASL source's volume interval (AcquisitionDuration / volumes)
    ("dcm_qa_philips_enh", "RepetitionTime", "1903_WIP_SOURCE_-_3DpCASL_enh"),
}


@pytest.fixture(scope="module")
def built(corpus, key_file, tmp_path_factory):
    return lambda dataset: corpus_builds.build(dataset, corpus, key_file, tmp_path_factory)


@pytest.mark.parametrize("dataset", DATASETS)
def test_agreement_does_not_drop(built, corpus, dataset):
    result = benchmark.evaluate(corpus, dataset, built(dataset).root)
    floor = THRESHOLDS[dataset]
    assert result["matched"] >= floor["matched"]
    for key, (agree, _total) in result["keys"].items():
        assert agree >= floor.get(key, 0), (key, result["disagreements"])
    unexplained = [
        d
        for d in result["disagreements"]
        if (dataset, d[0]) not in DOCUMENTED and (dataset, d[0], d[2]) not in DOCUMENTED_RUNS
    ]
    assert not unexplained


def test_phase_encoding_is_compared_in_world_space():
    run = benchmark.Run  # "j" in a row-flipped file is "j-" in ours when both point the same way
    ours = run("ours", {"PhaseEncodingDirection": "j-"}, np.diag([-2.0, 2.0, 2.0, 1.0]), (4, 4, 4), "mag", None)
    theirs = run("ref", {"PhaseEncodingDirection": "j"}, np.diag([-2.0, -2.0, 2.0, 1.0]), (4, 4, 4), "mag", None)
    assert benchmark.compare_key("PhaseEncodingDirection", ours, theirs)[0]
    theirs.meta["PhaseEncodingDirection"] = "j-"
    assert not benchmark.compare_key("PhaseEncodingDirection", ours, theirs)[0]


def test_slice_timing_is_compared_in_one_slice_order():
    run = benchmark.Run
    ours = run("ours", {"SliceTiming": [0.0, 0.5, 1.0]}, np.diag([2.0, 2.0, -3.0, 1.0]), (4, 4, 3), "mag", None)
    theirs = run("ref", {"SliceTiming": [1.0, 0.5, 0.0025]}, np.diag([2.0, 2.0, 3.0, 1.0]), (4, 4, 3), "mag", None)
    assert benchmark.compare_key("SliceTiming", ours, theirs)[0]  # reversed k, within 2.5 ms
    theirs.meta["SliceTiming"] = [1.0, 0.5, 0.003]
    assert not benchmark.compare_key("SliceTiming", ours, theirs)[0]


def test_uih_slice_timing_difference_is_dcm2niix_float32(corpus):
    """The documented UIH SliceTiming disagreement: dcm2niix's list is the tiles' AcquisitionTime
    held in float32 (resolution 1/64 s at hhmmss ~ 133748), ours the exact header text."""
    import pydicom

    from packager.dicom import vendor

    series = next((corpus / "dcm_qa_uih" / "In").glob("*/dti_*SaveBySlc*"))
    tiles = vendor.uih_grid_times(pydicom.dcmread(sorted(series.iterdir())[1], stop_before_pixels=True))
    reference = json.loads(next((corpus / "dcm_qa_uih" / "Ref").glob("dti_*.json")).read_text())["SliceTiming"]

    def seconds(text: str, float32: bool) -> float:
        value = float(np.float32(float(text))) if float32 else float(text)
        hours, rest = divmod(value, 10000)
        minutes, secs = divmod(rest, 100)
        return hours * 3600 + minutes * 60 + secs

    def onsets(float32: bool) -> list[float]:
        # slices in ascending SliceLocation order are in the reference's order on this series
        times = [seconds(t, float32) for _, t in sorted(tiles, key=lambda tile: tile[0][2])]
        return [t - min(times) for t in times]

    assert tiles is not None and len(tiles) == len(reference)
    assert max(abs(a - b) for a, b in zip(onsets(True), reference, strict=True)) < 1e-5
    assert max(abs(a - b) for a, b in zip(onsets(False), reference, strict=True)) > benchmark.SLICE_TIMING_TOLERANCE_S
