"""ReproIn heuristic: parsing of protocol names (odd but legal ones included) and decisions."""

from __future__ import annotations

import dataclasses

import pytest

from heuristics import reproin
from packager.model import BidsName, Series, Skip


def make_series(protocol: str = "", description: str = "", **changes) -> Series:
    base = Series(
        index=0,
        session=0,
        series_number=1,
        series_description=description,
        protocol_name=protocol,
        sequence_name="",
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        modality="MR",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        manufacturer="SIEMENS",
        model="Prisma",
        rows=64,
        columns=64,
        n_files=1,
        n_frames=1,
        n_slices=30,
        n_volumes=1,
        echo_number=1,
        echo_time=30.0,
        repetition_time=2000.0,
        flip_angle=90.0,
        inversion_time=None,
        orientation="axial",
        part="mag",
        is_derived=False,
        is_localizer=False,
        is_multiframe=False,
        is_mosaic=False,
        has_diffusion=False,
        uid="1.2.3",
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "name, datatype, suffix, entities",
    [
        ("anat-T1w", "anat", "T1w", {}),
        ("anat_T1w", "anat", "T1w", {}),  # suffix after an underscore
        ("anat-t1w", "anat", "T1w", {}),  # BIDS spelling restored
        ("dwi_b1000", "dwi", "dwi", {}),  # a bare non-suffix token is ignored
        ("func_task-rest", "func", "bold", {"task": "rest"}),  # func defaults to bold
        ("func-bold_task-rest_run-02", "func", "bold", {"task": "rest", "run": "2"}),
        (
            "func-bold_task-faces_acq-mb4_dir-PA_run+",
            "func",
            "bold",
            {"task": "faces", "acq": "mb4", "dir": "PA", "run": "+"},
        ),
        ("func-bold_task-rest_run=", "func", "bold", {"task": "rest", "run": "+"}),
        ("fmap-epi_dir-AP", "fmap", "epi", {"dir": "AP"}),
        ("fmap_acq-3mm", "fmap", "auto", {"acq": "3mm"}),  # GRE field map: parts decided later
        ("dwi_dir-AP", "dwi", "dwi", {"dir": "AP"}),
        ("dwi-dwi_acq-b1000", "dwi", "dwi", {"acq": "b1000"}),
        ("WIP anat-T1w", "anat", "T1w", {}),  # Philips work-in-progress prefix
        ("PU:anat-T1w", "anat", "T1w", {}),  # scanner prefix "XYZ:"
        ("anat-T1w__dup-01", "anat", "T1w", {}),  # heudiconv duplicate marker
        ("anat-T1w_acq-MPRAGE__my comment_with_underscores", "anat", "T1w", {"acq": "MPRAGE"}),
        ("func-bold_task-rest-state_acq-p2-s4-3.5mm", "func", "bold", {"task": "reststate", "acq": "p2s435mm"}),
        ("anat-T1w_ses-pre", "anat", "T1w", {"ses": "pre"}),
        ("func-bold_task-rest_echo-1_part-PHASE", "func", "bold", {"task": "rest", "echo": "1", "part": "phase"}),
        ("func-bold task-rest", "func", "bold", {"task": "rest"}),  # a space counts as "_"
        ("bids_anat-T1w", "anat", "T1w", {}),
    ],
)
def test_parse(name, datatype, suffix, entities):
    parsed = reproin.parse(name)
    assert parsed is not None
    assert (parsed.datatype, parsed.suffix, parsed.entities) == (datatype, suffix, entities)


@pytest.mark.parametrize(
    "name",
    [
        "MPRAGE",
        "t1_mprage_sag",
        "anatomy",
        "functional_rest",
        "fmapping",
        "dwi2",
        "func-bold-rest",
        "",
        "   ",
        "localizer",
        "perfusion",
        "DWI_dir80_PA",
        "ANAT-T1w",
    ],
)  # vendor defaults, upper-case datatypes
def test_not_reproin(name):
    assert reproin.parse(name) is None


def test_invalid_labels_are_dropped_and_counted():
    parsed = reproin.parse("func-bold_task-rest_run-a_foo-bar_baz")
    assert parsed.entities == {"task": "rest"}  # run must be a number; foo is not an entity
    assert len(parsed.ignored) == 3


def test_protocol_name_wins_over_description():
    decision = reproin.classify(make_series("anat-T2w", "anat-T1w"))
    assert decision == BidsName("anat", "T2w", (), "ReproIn name in ProtocolName")


def test_description_used_when_protocol_is_not_reproin():
    decision = reproin.classify(make_series("MPRAGE_sag", "anat-T1w_acq-mprage"))
    assert isinstance(decision, BidsName)
    assert decision.entities == (("acq", "mprage"),)
    assert decision.reason == "ReproIn name in SeriesDescription"


def test_siemens_sbref_description_gives_sbref():
    decision = reproin.classify(make_series("func-bold_task-rest", "func-bold_task-rest_SBRef"))
    assert (decision.datatype, decision.suffix) == ("func", "sbref")
    decision = reproin.classify(make_series("dwi_dir-AP_SBRef", ""))
    assert (decision.datatype, decision.suffix) == ("dwi", "sbref")


@pytest.mark.parametrize(
    "protocol, reason",
    [
        ("t1_mprage", "not a ReproIn name"),
        ("func-bold_acq-mb", "without task-"),
        ("anat-scout", "scout"),
        ("anat-mprage", "not a BIDS anat suffix"),
        ("perf-asl", "not supported yet"),
    ],
)
def test_skips_say_why(protocol, reason):
    decision = reproin.classify(make_series(protocol))
    assert isinstance(decision, Skip)
    assert reason in decision.reason


def test_reasons_never_echo_header_text():
    decision = reproin.classify(make_series("anat-T1w_JohnSmith_x-Doe"))
    assert isinstance(decision, BidsName)
    assert "John" not in decision.reason and "Doe" not in decision.reason
    assert "2 unknown part(s) ignored" in decision.reason
    skip = reproin.classify(make_series("anat-JaneDoe"))
    assert isinstance(skip, Skip) and "Jane" not in skip.reason


def test_fmap_without_suffix_is_left_to_entity_resolution():
    decision = reproin.classify(make_series("fmap_acq-3mm_run+", part="phase"))
    assert (decision.datatype, decision.suffix) == ("fmap", "auto")
    assert dict(decision.entities) == {"acq": "3mm", "run": "+"}
