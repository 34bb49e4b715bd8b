"""Heuristic loading and the entities resolved across series (run, echo, part, sbref, dir, fmap)."""

from __future__ import annotations

import pytest
from test_reproin import make_series

from packager.config import HeuristicConfig
from packager.errors import ConfigError
from packager.model import BidsName, Skip
from packager.naming.heuristic import classify_all, load_heuristic, resolve_entities


def resolve(*items):
    """items: (series, decision) pairs -> {index: decision} after resolution."""
    series = tuple(s for s, _ in items)
    return resolve_entities(series, {s.index: d for s, d in items})


def name(datatype, suffix, **entities) -> BidsName:
    return BidsName(datatype, suffix, tuple(sorted(entities.items())), "test")


def full(decision) -> str:
    if isinstance(decision, Skip):
        return "skip"
    return "_".join(f"{k}-{v}" for k, v in decision.entities) + f"_{decision.suffix}"


def s(index, uid=None, time=None, **fields):
    return make_series(
        index=index,
        uid=uid or f"uid{index}",
        acquisition_order=time or f"1000{index:02d}",
        series_number=index + 1,
        **fields,
    )


def test_runs_numbered_in_acquisition_order():
    # index order differs from acquisition order: numbering follows the clock
    out = resolve(
        (s(0, time="120000"), name("func", "bold", task="rest")),
        (s(1, time="110000"), name("func", "bold", task="rest")),
        (s(2, time="130000"), name("anat", "T1w")),
    )
    assert [full(out[i]) for i in range(3)] == ["run-2_task-rest_bold", "run-1_task-rest_bold", "_T1w"]


def test_run_plus_always_numbers_and_keeps_explicit_runs_free():
    out = resolve((s(0), name("func", "bold", task="a", run="+")))
    assert full(out[0]) == "run-1_task-a_bold"
    out = resolve((s(0), name("func", "bold", task="a", run="1")), (s(1), name("func", "bold", task="a", run="+")))
    assert [full(out[0]), full(out[1])] == ["run-1_task-a_bold", "run-2_task-a_bold"]


def test_one_acquisition_split_in_several_series_is_one_run():
    # two series of one SeriesInstanceUID (e.g. split by index) share the run number
    out = resolve(
        (s(0, uid="A", echo_number=1), name("anat", "MEGRE")),
        (s(1, uid="A", echo_number=2), name("anat", "MEGRE")),
        (s(2, uid="B", echo_number=1), name("anat", "MEGRE")),
        (s(3, uid="B", echo_number=2), name("anat", "MEGRE")),
    )
    assert [full(out[i]) for i in range(4)] == [
        "echo-1_run-1_MEGRE",
        "echo-2_run-1_MEGRE",
        "echo-1_run-2_MEGRE",
        "echo-2_run-2_MEGRE",
    ]


def test_repeated_explicit_run_keeps_the_last_acquisition():
    out = resolve(
        (s(0), name("func", "bold", task="rest", run="1")), (s(1), name("func", "bold", task="rest", run="1"))
    )
    assert isinstance(out[0], Skip) and "superseded" in out[0].reason
    assert full(out[1]) == "run-1_task-rest_bold"


def test_part_phase_and_part_mag():
    out = resolve(
        (s(0, part="mag"), name("func", "bold", task="rest")), (s(1, part="phase"), name("func", "bold", task="rest"))
    )
    assert [full(out[0]), full(out[1])] == ["part-mag_task-rest_bold", "part-phase_task-rest_bold"]


def test_sbref_from_siemens_description():
    out = resolve(
        (s(0, description="rfMRI_REST_AP_SBRef"), name("func", "bold", task="rest")),
        (s(1, description="rfMRI_REST_AP"), name("func", "bold", task="rest")),
    )
    assert [out[0].suffix, out[1].suffix] == ["sbref", "bold"]
    assert [full(out[0]), full(out[1])] == ["task-rest_sbref", "task-rest_bold"]


def test_dir_for_epi_fieldmaps_and_for_names_differing_in_phase_encoding():
    out = resolve(
        (s(0, phase_encoding="AP"), name("fmap", "epi")),
        (s(1, phase_encoding="PA"), name("fmap", "epi")),
        (s(2, phase_encoding="AP"), name("dwi", "dwi")),
        (s(3, phase_encoding="PA"), name("dwi", "dwi")),
        (s(4, phase_encoding="AP"), name("func", "bold", task="rest")),
        (s(5, phase_encoding="AP"), name("func", "bold", task="rest")),
    )
    assert [full(out[i]) for i in range(6)] == [
        "dir-AP_epi",
        "dir-PA_epi",
        "dir-AP_dwi",
        "dir-PA_dwi",
        "run-1_task-rest_bold",
        "run-2_task-rest_bold",
    ]


def test_dir_given_by_the_heuristic_wins_and_unknown_direction_adds_nothing():
    out = resolve(
        (s(0, phase_encoding="AP"), name("fmap", "epi", dir="x1")),
        (s(1, phase_encoding=""), name("dwi", "dwi")),
        (s(2, phase_encoding="PA"), name("dwi", "dwi")),
    )
    assert [full(out[i]) for i in range(3)] == ["dir-x1_epi", "run-1_dwi", "run-2_dwi"]


def test_fmap_auto_siemens_magnitude_and_phase_series():
    out = resolve(
        (s(0, uid="M", echo_number=1, echo_time=4.92), name("fmap", "auto", acq="gre")),
        (s(1, uid="M", echo_number=2, echo_time=7.38), name("fmap", "auto", acq="gre")),
        (s(2, uid="P", echo_number=2, echo_time=7.38, part="phase"), name("fmap", "auto", acq="gre")),
    )
    assert [full(out[i]) for i in range(3)] == ["acq-gre_magnitude1", "acq-gre_magnitude2", "acq-gre_phasediff"]


def test_fmap_auto_two_phases_and_repeated_acquisition():
    items = []
    for repeat in range(2):
        base = repeat * 4
        items += [
            (s(base, uid=f"M{repeat}", echo_number=1), name("fmap", "auto")),
            (s(base + 1, uid=f"M{repeat}", echo_number=2), name("fmap", "auto")),
            (s(base + 2, uid=f"P{repeat}", echo_number=1, part="phase"), name("fmap", "auto")),
            (s(base + 3, uid=f"P{repeat}", echo_number=2, part="phase"), name("fmap", "auto")),
        ]
    out = resolve(*items)
    assert [full(out[i]) for i in range(8)] == [
        "run-1_magnitude1",
        "run-1_magnitude2",
        "run-1_phase1",
        "run-1_phase2",
        "run-2_magnitude1",
        "run-2_magnitude2",
        "run-2_phase1",
        "run-2_phase2",
    ]


def test_fmap_auto_direct_field_map():
    out = resolve(
        (s(0, uid="B", part="fieldmap"), name("fmap", "auto")),
        (s(1, uid="B", part="mag"), name("fmap", "auto")),
        (s(2, uid="C", part="real"), name("fmap", "auto")),
    )
    assert [full(out[0]), full(out[1])] == ["_fieldmap", "_magnitude"]
    assert isinstance(out[2], Skip) and "real/imaginary" in out[2].reason


def test_classify_all_skips_policy_exclusions_and_checks_decisions():
    from packager.model import ExclusionReason

    series = (s(0), s(1, exclusion=ExclusionReason.LOCALIZER))
    decisions = classify_all(series, lambda item: name("anat", "T1w"))
    assert list(decisions) == [0]
    with pytest.raises(ConfigError, match="expected BidsName or Skip"):
        classify_all(series[:1], lambda item: "anat/T1w")
    with pytest.raises(ConfigError, match='unknown datatype "anatomy"'):
        classify_all(series[:1], lambda item: name("anatomy", "T1w"))
    with pytest.raises(ConfigError, match="heuristic raised ZeroDivisionError on series 0"):
        classify_all(series[:1], lambda item: 1 / 0)


def test_user_heuristic_file(tmp_path):
    good = tmp_path / "mine.py"
    good.write_text(
        "from packager.model import BidsName\ndef classify(series):\n    return BidsName('anat', 'T2w', (), 'mine')\n"
    )
    classify_fn = load_heuristic(HeuristicConfig(name="file", path=good))
    assert classify_fn(make_series()).suffix == "T2w"
    bad = tmp_path / "nothing.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="has no classify"):
        load_heuristic(HeuristicConfig(name="file", path=bad))
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match="failed to import"):
        load_heuristic(HeuristicConfig(name="file", path=broken))
    with pytest.raises(ConfigError, match="not found"):
        load_heuristic(HeuristicConfig(name="file", path=tmp_path / "absent.py"))
    with pytest.raises(ConfigError, match="unknown heuristic"):
        load_heuristic(HeuristicConfig(name="heudiconv"))


def test_shipped_heuristics_load():
    assert load_heuristic(HeuristicConfig(name="reproin"))(make_series("anat-T1w")).suffix == "T1w"


def test_magnitude_and_phase_series_of_repeated_runs_share_run_numbers():
    items = []
    for repeat in range(2):
        items += [
            (s(2 * repeat, part="mag"), name("anat", "T2starw")),
            (s(2 * repeat + 1, part="phase"), name("anat", "T2starw")),
        ]
    out = resolve(*items)
    assert [full(out[i]) for i in range(4)] == [
        "part-mag_run-1_T2starw",
        "part-phase_run-1_T2starw",
        "part-mag_run-2_T2starw",
        "part-phase_run-2_T2starw",
    ]


def test_spec_tables_agree_with_the_bids_schema():
    """``naming.spec`` is data (see its docstring); every entry must be what the BIDS schema says."""
    from bidsschematools import schema

    from packager.naming import spec

    bids = schema.load_schema()
    assert set(spec.DATATYPES) <= set(bids.objects.datatypes.keys())
    short = {entity["name"]: key for key, entity in bids.objects.entities.items()}
    assert set(spec.ENTITY_KEYS) <= set(short)
    order = [short[key] for key in spec.ENTITY_KEYS]
    assert order == [name for name in bids.rules.entities if name in order]  # BIDS entity order
    for datatype, suffixes in spec.SUFFIXES.items():
        defined = {s for rule in bids.rules.files.raw[datatype].values() for s in rule.get("suffixes", [])}
        assert set(suffixes) <= defined, datatype
