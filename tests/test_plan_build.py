"""``plan`` predicts ``build`` (issue 20): on every corpus dataset, a series ``plan`` marks
"convert" converts, and one it refuses for a conversion reason is refused by the conversion with
the same detail. ``plan`` runs the header-only checks (``convert.preflight``); the conversion
here makes the build's refusals (``convert.task.convert_task``: the full read, the default
engine's stacking and decoding, the DWI b-table), every series named by the test heuristic that
names everything."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import REPO

from packager import api
from packager.config import ConvertConfig, merge_flags
from packager.convert import ConversionFailed
from packager.convert import volume as convert
from packager.convert.diffusion import MISSING_TABLES, diffusion_tables
from packager.model import ExclusionReason, Planned
from packager.sample import sample_config

NAME_EVERYTHING = REPO / "tests" / "heuristics" / "name_everything.py"


def _build_refusal(item: Planned) -> str | None:
    """What ``convert_task`` refuses ``item`` with (None: it converts), without writing files."""
    try:
        datasets = convert.read_series_datasets(item.series.files)
        volume = convert.convert_datasets(datasets, frames=item.series.frames, release=True)
    except ConversionFailed as exc:
        return exc.detail
    if item.name.datatype == "dwi" and diffusion_tables(volume.heads, volume.affine) is None:
        return MISSING_TABLES
    return None


@pytest.mark.slow
def test_plan_and_build_agree_on_every_corpus_dataset(corpus, key_file):
    converted = refused = 0
    for dataset in sorted(p for p in corpus.iterdir() if (p / "In").is_dir()):
        config = merge_flags(
            sample_config(key_file=str(key_file)),
            sources=(str(dataset / "In"),),
            heuristic=str(NAME_EVERYTHING),
            jobs=1,
        )
        the_plan = api.plan(config)
        predicted = {
            e.series_index: e.detail for e in the_plan.excluded if e.reason is ExclusionReason.CONVERSION_FAILED
        }
        # the same plan without the header checks (the dcm2niix engine skips ours): every named series
        unchecked = api.plan(dataclasses.replace(config, convert=ConvertConfig(engine="dcm2niix")))
        assert {p.series.index for p in unchecked.planned} == {p.series.index for p in the_plan.planned} | set(
            predicted
        )
        for item in unchecked.planned:
            outcome = _build_refusal(item)
            assert outcome == predicted.get(item.series.index), (dataset.name, item.series.index + 1)
            converted += outcome is None
            refused += outcome is not None
    assert converted > 90  # the corpus's image series, every one checked
