"""Rules heuristic: release.toml [[heuristic.rules]] matching on Series fields."""

from __future__ import annotations

import textwrap

import pytest
from test_reproin import make_series

from heuristics import rules
from packager.config import Rule, load_config
from packager.errors import ConfigError
from packager.model import BidsName, Skip
from packager.naming.heuristic import load_heuristic


def rule(match: dict, datatype="anat", suffix="T1w", entities=None, skip=False) -> Rule:
    return Rule(
        match=tuple(sorted(match.items())),
        datatype=datatype,
        suffix=suffix,
        entities=tuple((entities or {}).items()),
        skip=skip,
    )


def classify(rule_list, **series_fields):
    return rules.classifier(rule_list)(make_series(**series_fields))


@pytest.mark.parametrize(
    "pattern, description, matches",
    [
        ("*MPRAGE*", "t1_mprage_sag", True),  # globs ignore case
        ("*MPRAGE*", "t1_flash", False),
        ("t1_mpr?ge_sag", "T1_MPRAGE_SAG", True),
        ("t1_[mf]*", "t1_flash", True),
        ("re:^t1_(mprage|flash)", "T1_flash_iso", True),  # regex: searched, case-insensitive
        ("re:^t1_(mprage|flash)$", "T1_flash_iso", False),
        (["*flair*", "*mprage*"], "t1_mprage", True),  # a list: any pattern
        (["*flair*", "*space*"], "t1_mprage", False),
    ],
)
def test_text_patterns(pattern, description, matches):
    decision = classify([rule({"SeriesDescription": pattern})], description=description)
    assert isinstance(decision, BidsName) is matches


@pytest.mark.parametrize(
    "pattern, matches",
    [
        ("P", True),  # one token
        ("ORIGINAL\\PRIMARY\\*", True),  # the joined value
        ("*\\M\\*", False),
        ("DERIVED", False),
        (["MOSAIC", "P"], True),
    ],
)
def test_image_type_tokens(pattern, matches):
    decision = classify([rule({"ImageType": pattern})], image_type=("ORIGINAL", "PRIMARY", "P", "ND"))
    assert isinstance(decision, BidsName) is matches


@pytest.mark.parametrize(
    "condition, matches",
    [
        ({"EchoTime": 30}, True),
        ({"EchoTime": 30.0000001}, True),  # equal within 1e-6 relative
        ({"EchoTime": 31}, False),
        ({"EchoTime": [20, 40]}, True),  # inclusive range
        ({"EchoTime": [30, 30]}, True),
        ({"EchoTime": [31, 40]}, False),
        ({"InversionTime": [0, 5000]}, False),  # absent (None) never matches
        ({"NumberOfVolumes": [100, 100000]}, True),
        ({"RepetitionTime": 2000, "FlipAngle": [80, 95], "Rows": 64}, True),
        ({"SeriesNumber": 1, "EchoNumber": 2}, False),
    ],
)
def test_numbers_and_ranges(condition, matches):
    decision = classify([rule(condition, "func", "bold", {"task": "rest"})], echo_time=30.0, n_volumes=200)
    assert isinstance(decision, BidsName) is matches


def test_flags_and_aliases():
    rule_list = [rule({"IsMosaic": True, "HasDiffusion": False, "ManufacturersModelName": "prisma"})]
    assert isinstance(classify(rule_list, is_mosaic=True), BidsName)
    assert isinstance(classify(rule_list, is_mosaic=False), Skip)


def test_phase_encoding_field():
    rule_list = [rule({"PhaseEncodingDirection": "PA"}, "fmap", "epi", {"dir": "PA"})]
    assert isinstance(classify(rule_list, phase_encoding="PA"), BidsName)
    assert isinstance(classify(rule_list, phase_encoding="AP"), Skip)


def test_first_match_wins_and_reason_names_rule_and_fields():
    rule_list = [
        rule({"SeriesDescription": "*rest*"}, "func", "bold", {"task": "rest"}),
        rule({"SeriesDescription": "*"}, "anat", "T1w"),
        rule({"SeriesDescription": "*"}, skip=True),
    ]
    first = classify(rule_list, description="bold_rest")
    assert (first.datatype, first.suffix, first.entities) == ("func", "bold", (("task", "rest"),))
    assert first.reason == "rule 1 matched on SeriesDescription"
    assert classify(rule_list, description="t1").reason == "rule 2 matched on SeriesDescription"


def test_skip_rule_and_no_match():
    rule_list = [rule({"SeriesDescription": "*localizer*"}, skip=True)]
    skipped = classify(rule_list, description="AAHead_localizer")
    assert isinstance(skipped, Skip) and skipped.reason == "rule 1 (skip) matched on SeriesDescription"
    unmatched = classify(rule_list, description="t1_mprage")
    assert isinstance(unmatched, Skip) and unmatched.reason.startswith("no rule matched")


def test_entities_are_normalised():
    decision = classify([rule({"Rows": 64}, "func", "bold", {"task": "rest", "run": "03", "acq": "mb4"})])
    assert dict(decision.entities) == {"task": "rest", "run": "3", "acq": "mb4"}


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            rule({"SeriesDescriptoin": "*"}),
            'unknown match field "SeriesDescriptoin" (did you mean "SeriesDescription"?)',
        ),
        (rule({"EchoTime": "30"}), "EchoTime must be a number or a [min, max] range"),
        (rule({"EchoTime": [40, 30]}), "min > max"),
        (rule({"SeriesDescription": 3}), "must be a pattern string"),
        (rule({"IsMosaic": "yes"}), "IsMosaic must be true or false"),
        (rule({"SeriesDescription": "re:(unclosed"}), "invalid regular expression"),
        (rule({"Rows": 64}, "anatomy", "T1w"), 'datatype "anatomy"'),
        (rule({"Rows": 64}, "anat", "T1w-x"), "suffix must be alphanumeric"),
        (rule({"Rows": 64}, "anat", "T1w", {"aqc": "x"}), 'unknown entity "aqc" (did you mean "acq"?)'),
        (rule({"Rows": 64}, "anat", "T1w", {"acq": "a_b"}), "alphanumeric label"),
        (rule({"Rows": 64}, "anat", "T1w", {"run": "one"}), 'entity "run" must be a number'),
        (rule({"Rows": 64}, "func", "bold"), "entities.task"),
    ],
)
def test_mistakes_are_config_errors_naming_the_rule(bad, message):
    with pytest.raises(ConfigError) as caught:
        rules.classifier([rule({"Rows": 64}), bad])
    assert "rule 2" in str(caught.value)
    assert message in str(caught.value)


def test_rules_from_release_toml(tmp_path):
    config_file = tmp_path / "release.toml"
    config_file.write_text(
        textwrap.dedent("""
        [heuristic]
        name = "rules"

        [[heuristic.rules]]
        match = { SeriesDescription = "re:^ep2d_bold", NumberOfVolumes = [10, 10000] }
        datatype = "func"
        suffix = "bold"
        entities = { task = "rest", acq = "ep2d" }

        [[heuristic.rules]]
        match = { ImageType = "DERIVED" }
        skip = true
    """)
    )
    classify_fn = load_heuristic(load_config(config_file).heuristic)
    decision = classify_fn(make_series(description="ep2d_bold_moco", n_volumes=300))
    assert (decision.datatype, decision.suffix, dict(decision.entities)) == (
        "func",
        "bold",
        {"task": "rest", "acq": "ep2d"},
    )
    assert isinstance(classify_fn(make_series(image_type=("DERIVED", "PRIMARY"))), Skip)


def test_rules_name_without_rules_is_a_config_error(tmp_path):
    config_file = tmp_path / "release.toml"
    config_file.write_text('[heuristic]\nname = "rules"\n')
    with pytest.raises(ConfigError, match="at least one"):
        load_heuristic(load_config(config_file).heuristic)


def test_every_documented_field_exists_on_series():
    series = make_series()
    for name, (attribute, _) in rules.FIELDS.items():
        assert hasattr(series, attribute), name
