"""Field-map pairing: B0FieldIdentifier/B0FieldSource, IntendedFor URIs, EchoTime1/2 fallback."""

from __future__ import annotations

from test_reproin import make_series

from packager.model import BidsName, Planned, Sidecar
from packager.sidecar.fieldmaps import link_fieldmaps


def planned(index, datatype, suffix, relname, time, session="01", **entities):
    series = make_series(index=index, uid=f"uid{index}", acquisition_order=time, series_number=index + 1)
    stem = f"sub-x_ses-{session}_{relname}" if session else f"sub-x_{relname}"
    folder = f"sub-x/ses-{session}/{datatype}" if session else f"sub-x/{datatype}"
    return Planned(
        series, BidsName(datatype, suffix, tuple(sorted(entities.items())), "test"), "x", session, f"{folder}/{stem}"
    )


def linked(items, echo_times=None):
    """``link_fieldmaps`` over sidecars holding only the given echo times: image path -> fields."""
    sidecars = [
        Sidecar.of(
            p.relpath, {"EchoTime": echo_times[p.series.index]} if echo_times and p.series.index in echo_times else {}
        )
        for p in items
    ]
    return {sidecar.image: dict(sidecar.fields) for sidecar in link_fieldmaps(items, sidecars)}


def test_epi_pair_serves_following_runs_until_the_next_pair():
    items = [
        planned(0, "fmap", "epi", "dir-AP_epi", "100000", dir="AP"),
        planned(1, "fmap", "epi", "dir-PA_epi", "100100", dir="PA"),
        planned(2, "func", "bold", "task-a_bold", "100200", task="a"),
        planned(3, "dwi", "dwi", "dwi", "100300"),
        planned(4, "fmap", "epi", "acq-2_dir-AP_epi", "100400", dir="AP"),
        planned(5, "fmap", "epi", "acq-2_dir-PA_epi", "100500", dir="PA"),
        planned(6, "func", "bold", "task-b_bold", "100600", task="b"),
        planned(7, "anat", "T1w", "T1w", "100700"),
    ]
    fields = linked(items)
    meta = [fields[p.relpath + ".nii.gz"] for p in items]
    assert meta[0]["B0FieldIdentifier"] == meta[1]["B0FieldIdentifier"] == "ses01pepolar1"
    assert meta[0]["IntendedFor"] == [
        "bids::sub-x/ses-01/dwi/sub-x_ses-01_dwi.nii.gz",
        "bids::sub-x/ses-01/func/sub-x_ses-01_task-a_bold.nii.gz",
    ]
    assert meta[2]["B0FieldSource"] == meta[3]["B0FieldSource"] == "ses01pepolar1"
    # an acq- label other than a datatype does not restrict; the second pair is a new group
    assert meta[4]["B0FieldIdentifier"] == "ses01pepolar2"
    assert meta[6]["B0FieldSource"] == "ses01pepolar2"
    assert "B0FieldSource" not in meta[7]


def test_runs_before_any_field_map_stay_unpaired_and_acq_label_restricts_targets():
    items = [
        planned(0, "func", "bold", "task-a_bold", "090000", task="a"),
        planned(1, "fmap", "epi", "acq-dwi_dir-AP_epi", "100000", acq="dwi", dir="AP"),
        planned(2, "func", "bold", "task-b_bold", "100100", task="b"),
        planned(3, "dwi", "dwi", "dwi", "100200"),
    ]
    fields = linked(items)
    assert "B0FieldSource" not in fields[items[0].relpath + ".nii.gz"]
    assert "B0FieldSource" not in fields[items[2].relpath + ".nii.gz"]  # acq-dwi serves dwi only
    assert fields[items[3].relpath + ".nii.gz"]["B0FieldSource"] == "ses01pepolar1"
    assert fields[items[1].relpath + ".nii.gz"]["IntendedFor"] == ["bids::sub-x/ses-01/dwi/sub-x_ses-01_dwi.nii.gz"]


def test_phasediff_group_gets_echo_times_from_magnitudes_when_headers_lacked_them():
    items = [
        planned(0, "fmap", "magnitude1", "magnitude1", "100000"),
        planned(1, "fmap", "magnitude2", "magnitude2", "100001"),
        planned(2, "fmap", "phasediff", "phasediff", "100002"),
        planned(3, "func", "bold", "task-a_bold", "100100", task="a"),
    ]
    fields = linked(items, {0: 0.00492, 1: 0.00738, 2: 0.00738})
    phasediff = fields[items[2].relpath + ".nii.gz"]
    assert (phasediff["EchoTime1"], phasediff["EchoTime2"]) == (0.00492, 0.00738)
    assert "EchoTime" not in phasediff
    assert {fields[p.relpath + ".nii.gz"]["B0FieldIdentifier"] for p in items[:3]} == {"ses01phasediff1"}
    assert fields[items[3].relpath + ".nii.gz"]["B0FieldSource"] == "ses01phasediff1"


def test_magnitude_only_and_unused_field_maps():
    items = [
        planned(0, "fmap", "magnitude1", "magnitude1", "100000", session=None),
        planned(1, "func", "bold", "task-a_bold", "100100", session=None, task="a"),
        planned(2, "fmap", "fieldmap", "fieldmap", "100200", session=None),
        planned(3, "fmap", "magnitude", "magnitude", "100201", session=None),
    ]
    fields = linked(items)
    assert "B0FieldIdentifier" not in fields[items[0].relpath + ".nii.gz"]  # nothing to estimate from
    assert "B0FieldSource" not in fields[items[1].relpath + ".nii.gz"]
    # a complete field map with no run after it still identifies itself, without IntendedFor
    assert fields[items[2].relpath + ".nii.gz"] == {"B0FieldIdentifier": "fieldmap1"}
    assert fields[items[3].relpath + ".nii.gz"] == {"B0FieldIdentifier": "fieldmap1"}
