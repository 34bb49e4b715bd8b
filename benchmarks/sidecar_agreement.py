"""Sidecar agreement with dcm2niix: per key and corpus dataset, how many runs agree.

Builds each corpus dataset with its ``tests/rules/<dataset>.toml`` (which allows
``SeriesNumber`` so runs can be matched), reads the bundle's NIfTI + JSON pairs and compares
them with the dcm2niix reference JSONs in ``../shared/corpus/<dataset>/Ref``:

- runs are matched by SeriesNumber, spatial shape and image kind (magnitude / phase / field
  map), then echo number when that is still ambiguous (names differ between the two tools),
  then EchoTime when the echoes were named apart by another entity (the test heuristic's
  ``acq-s<N>``: dcm_qa_philips_enh's field map), so those runs' EchoTime agrees by construction;
- numbers agree within rounding (dcm2niix prints 6 significant digits): relative 1e-5 for
  times in seconds, 1e-4 for EffectiveEchoSpacing and TotalReadoutTime;
- SliceTiming agrees when every slice is within 2.5 ms, after putting both lists in the same
  slice order (our k axis and dcm2niix's may point opposite ways in world space);
- PhaseEncodingDirection agrees when both codes name the same world-space direction, each
  through its own NIfTI's affine (dcm2niix flips the row axis, we keep DICOM row order, so
  "j" in one file can be "j-" in the other and mean the same thing).

Prints a key x dataset table of agree/total (total = matched runs whose reference has the
key) and, with ``--details``, every disagreement. ``EchoTime`` on phasediff runs is not
compared: BIDS gives phasediff EchoTime1/EchoTime2 instead and we write only those.

Usage::

    python benchmarks/sidecar_agreement.py [--corpus DIR] [--details] [--json] [DATASET ...]
    python benchmarks/sidecar_agreement.py --from-dir dcm_qa=/path/to/extracted/dataset dcm_qa
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATASETS = (
    "dcm_qa",
    "dcm_qa_nih",
    "dcm_qa_fmap",
    "dcm_qa_mosaic",
    "dcm_qa_xa30",
    "dcm_qa_enh",
    "dcm_qa_ge",
    "dcm_qa_philips",
    "dcm_qa_philips_enh",
    "dcm_qa_stc",
    "dcm_qa_uih",
)
KEYS = (
    "RepetitionTime",
    "EchoTime",
    "EchoTime1",
    "EchoTime2",
    "FlipAngle",
    "InversionTime",
    "SliceTiming",
    "PhaseEncodingDirection",
    "EffectiveEchoSpacing",
    "TotalReadoutTime",
    "ReconMatrixPE",
    "MultibandAccelerationFactor",
    "ParallelReductionFactorInPlane",
    "MagneticFieldStrength",
    "Manufacturer",
    "ManufacturersModelName",
    "Units",
    "DwellTime",
    "NonlinearGradientCorrection",
)
SLICE_TIMING_TOLERANCE_S = 0.0025
_RELATIVE = {"EffectiveEchoSpacing": 1e-4, "TotalReadoutTime": 1e-4, "DwellTime": 1e-4}
_BY_DESIGN = {("EchoTime", "phasediff")}  # (key, our suffix) pairs we deliberately do not write
_CODE = {"i": (0, 1), "i-": (0, -1), "j": (1, 1), "j-": (1, -1), "k": (2, 1), "k-": (2, -1)}


@dataclass
class Run:
    """One NIfTI with its sidecar, as needed for matching and comparing."""

    name: str
    meta: dict
    affine: np.ndarray
    shape: tuple[int, ...]
    kind: str  # mag | phase | fieldmap
    echo: int | None
    suffix: str = ""

    @property
    def series_number(self) -> int | None:
        value = self.meta.get("SeriesNumber")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(sorted(self.shape[:3]))


def _load(nifti: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    image = nib.load(str(nifti))
    return np.asarray(image.affine, dtype=float), tuple(int(x) for x in image.shape)


def _entities(stem: str) -> dict[str, str]:
    return dict(part.split("-", 1) for part in stem.split("_")[:-1] if "-" in part)


def our_runs(dataset_dir: Path) -> list[Run]:
    """Every run of a built BIDS dataset (NIfTI + JSON sidecar)."""
    runs = []
    for nifti in sorted(Path(dataset_dir).glob("sub-*/**/*.nii.gz")):
        sidecar = nifti.with_name(nifti.name[: -len(".nii.gz")] + ".json")
        if not sidecar.is_file():
            continue
        stem = nifti.name[: -len(".nii.gz")]
        suffix = stem.rsplit("_", 1)[-1]
        entities = _entities(stem)
        kind = "mag"
        if suffix in ("phasediff", "phase1", "phase2") or entities.get("part") == "phase":
            kind = "phase"
        elif suffix == "fieldmap":
            kind = "fieldmap"
        echo = None
        for prefix in ("magnitude", "phase"):
            if suffix.startswith(prefix) and suffix[len(prefix) :].isdigit():
                echo = int(suffix[len(prefix) :])
        if "echo" in entities and entities["echo"].isdigit():
            echo = int(entities["echo"])
        affine, shape = _load(nifti)
        runs.append(
            Run(str(nifti.relative_to(dataset_dir)), json.loads(sidecar.read_text()), affine, shape, kind, echo, suffix)
        )
    return runs


def reference_runs(corpus: Path, dataset: str) -> list[Run]:
    """dcm2niix's reference NIfTI + JSON pairs of one corpus dataset."""
    runs = []
    for sidecar in sorted((Path(corpus) / dataset / "Ref").glob("*.json")):
        nifti = sidecar.with_suffix(".nii.gz")
        if not nifti.is_file():
            continue
        meta = json.loads(sidecar.read_text())
        image_type = [str(t).upper() for t in meta.get("ImageType", [])]
        kind = "fieldmap" if "FIELDMAPHZ" in image_type else "phase" if {"P", "PHASE"} & set(image_type) else "mag"
        echo = meta.get("EchoNumber")
        affine, shape = _load(nifti)
        runs.append(Run(sidecar.stem, meta, affine, shape, kind, int(echo) if echo else None))
    return runs


def match_runs(ours: list[Run], refs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs (ours, reference) by SeriesNumber + spatial shape + kind, then echo."""
    pairs = []
    for ref in refs:
        candidates = [
            o for o in ours if o.series_number == ref.series_number and o.spatial == ref.spatial and o.kind == ref.kind
        ]
        if len(candidates) > 1 and ref.echo is not None:
            by_echo = [o for o in candidates if o.echo == ref.echo]
            candidates = by_echo or [o for o in candidates if o.echo is None]
        if len(candidates) > 1 and "EchoTime" in ref.meta:  # echoes named apart by another entity
            echo_time = ref.meta["EchoTime"]
            candidates = [o for o in candidates if _same_number("EchoTime", o.meta.get("EchoTime"), echo_time)]
        if len(candidates) == 1:
            pairs.append((candidates[0], ref))
    return pairs


def _world(code: str, affine: np.ndarray) -> np.ndarray | None:
    if code not in _CODE:
        return None
    axis, sign = _CODE[code]
    column = affine[:3, axis]
    return sign * column / np.linalg.norm(column)


def _same_number(key: str, mine, theirs) -> bool:
    if (
        isinstance(mine, bool)
        or isinstance(theirs, bool)
        or not isinstance(mine, (int, float))
        or not isinstance(theirs, (int, float))
    ):
        return False
    return math.isclose(float(mine), float(theirs), rel_tol=_RELATIVE.get(key, 1e-5), abs_tol=1e-6)


def compare_key(key: str, mine: Run, ref: Run) -> tuple[bool, str]:
    """(agree, detail) for one key of one matched pair (the reference has the key)."""
    theirs = ref.meta[key]
    if key not in mine.meta:
        return False, "missing in ours"
    value = mine.meta[key]
    if key == "PhaseEncodingDirection":
        a, b = _world(value, mine.affine), _world(theirs, ref.affine)
        if a is None or b is None:
            return False, f"ours {value}, dcm2niix {theirs}"
        return bool(float(a @ b) > 0.9), f"ours {value}, dcm2niix {theirs} (world dot {float(a @ b):+.2f})"
    if key == "SliceTiming":
        if not isinstance(value, list) or len(value) != len(theirs):
            return False, f"length {len(value) if isinstance(value, list) else '-'} vs {len(theirs)}"
        ours_k, ref_k = mine.affine[:3, 2], ref.affine[:3, 2]
        if float(ours_k @ ref_k) < 0:
            value = value[::-1]
        worst = max(abs(float(a) - float(b)) for a, b in zip(value, theirs, strict=True))
        return worst <= SLICE_TIMING_TOLERANCE_S + 1e-9, f"max difference {worst * 1000:.1f} ms"
    if isinstance(theirs, (str, bool)) or isinstance(value, (str, bool)):
        return value == theirs, f"ours {value!r}, dcm2niix {theirs!r}"
    return _same_number(key, value, theirs), f"ours {value}, dcm2niix {theirs}"


@dataclass
class Cell:
    agree: int = 0
    total: int = 0


def agreement(pairs: list[tuple[Run, Run]]) -> tuple[dict[str, Cell], list[tuple[str, str, str, str]]]:
    """Per key: agree/total over pairs; and every disagreement (key, ours, reference, detail)."""
    cells = {key: Cell() for key in KEYS}
    disagreements = []
    for mine, ref in pairs:
        for key in KEYS:
            if key not in ref.meta or (key, mine.suffix) in _BY_DESIGN:
                continue
            ok, detail = compare_key(key, mine, ref)
            cells[key].total += 1
            if ok:
                cells[key].agree += 1
            else:
                disagreements.append((key, mine.name, ref.name, detail))
    return cells, disagreements


def build_dataset(corpus: Path, dataset: str, out: Path, key_file: Path) -> Path:
    """Build ``dataset`` with tests/rules/<dataset>.toml; return the extracted BIDS folder."""
    sys.path.insert(0, str(REPO))
    from packager import api
    from packager.config import load_config, merge_flags

    config = merge_flags(
        load_config(REPO / "tests" / "rules" / f"{dataset}.toml"),
        sources=(str(Path(corpus) / dataset / "In"),),
        output=out,
        key_file=str(key_file),
        force=True,
    )
    result = api.build(config)
    extracted = out / "extracted"
    with zipfile.ZipFile(result.bundle) as archive:
        archive.extractall(extracted)
    return next(p for p in extracted.iterdir() if p.is_dir())


def evaluate(corpus: Path, dataset: str, dataset_dir: Path) -> dict:
    """Agreement of one built dataset with its references."""
    refs = reference_runs(corpus, dataset)
    pairs = match_runs(our_runs(dataset_dir), refs)
    cells, disagreements = agreement(pairs)
    return {
        "matched": len(pairs),
        "references": len(refs),
        "keys": {k: [c.agree, c.total] for k, c in cells.items()},
        "disagreements": [list(d) for d in disagreements],
    }


def table(results: dict[str, dict]) -> str:
    """Key x dataset table of agree/total ("-" where no reference has the key)."""
    names = list(results)
    width = max(len(k) for k in KEYS) + 2
    lines = ["".ljust(width) + "".join(n.ljust(14) for n in names)]
    lines.append(
        "matched runs".ljust(width) + "".join(f"{r['matched']}/{r['references']}".ljust(14) for r in results.values())
    )
    for key in KEYS:
        row = []
        for name in names:
            agree, total = results[name]["keys"][key]
            row.append((f"{agree}/{total}" if total else "-").ljust(14))
        lines.append(key.ljust(width) + "".join(row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=list(DATASETS))
    parser.add_argument(
        "--corpus", type=Path, default=Path(os.environ.get("DCMPACK_CORPUS", REPO.parent / "shared" / "corpus"))
    )
    parser.add_argument("--key-file", type=Path, help="pseudonym key (default: a throwaway test key)")
    parser.add_argument(
        "--from-dir",
        action="append",
        default=[],
        metavar="DATASET=DIR",
        help="compare an already built (extracted) dataset folder instead of building",
    )
    parser.add_argument("--details", action="store_true", help="list every disagreement")
    parser.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    args = parser.parse_args(argv)
    given = dict(item.split("=", 1) for item in args.from_dir)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="dcmpack-agreement-") as tmp:
        key_file = args.key_file
        if key_file is None:
            key_file = Path(tmp) / "key"
            key_file.write_text("e0d71ef91b63152e733341307b1ebb39425cc7df8fc6a3eff6c2e31826c01097")
            key_file.chmod(0o600)
        for dataset in args.datasets:
            if dataset in given:
                folder = Path(given[dataset])
            else:
                folder = build_dataset(args.corpus, dataset, Path(tmp) / dataset, key_file)
            results[dataset] = evaluate(args.corpus, dataset, folder)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return 0
    print(table(results))
    if args.details:
        for dataset, result in results.items():
            for key, ours, ref, detail in result["disagreements"]:
                print(f"{dataset}\t{key}\t{ours}\t{ref}\t{detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
