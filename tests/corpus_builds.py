"""Build each corpus dataset once per test session (shared by test_corpus_bids and
test_sidecar_agreement): ``packager.api.build`` with ``tests/rules/<dataset>.toml``."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

RULES = REPO / "tests" / "rules"
_BUILT: dict[str, Built] = {}


@dataclass(frozen=True)
class Built:
    """A corpus dataset built into a bundle and extracted."""

    dataset: str
    result: object  # packager.model.BuildResult
    root: Path  # the extracted BIDS dataset folder


def build(dataset: str, corpus: Path, key_file: Path, tmp_path_factory) -> Built:
    """The dataset's bundle, built on first use (a session-wide cache: builds are slow)."""
    if dataset not in _BUILT:
        from packager import api
        from packager.config import load_config, merge_flags

        out = tmp_path_factory.mktemp(f"corpus-{dataset}")
        config = merge_flags(
            load_config(RULES / f"{dataset}.toml"),
            sources=(str(corpus / dataset / "In"),),
            output=out,
            key_file=str(key_file),
        )
        result = api.build(config)
        extracted = out / "extracted"
        with zipfile.ZipFile(result.bundle) as archive:
            archive.extractall(extracted)
        root = next(p for p in extracted.iterdir() if p.is_dir())
        _BUILT[dataset] = Built(dataset, result, root)
    return _BUILT[dataset]
