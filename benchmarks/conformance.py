"""Conformance harness: our index + convert against dcm2niix reference NIfTI files.

Usage::

    python benchmarks/conformance.py DATASET_DIR... [--tsv FILE]

Each DATASET_DIR holds ``In/`` (DICOM as published) and ``Ref/`` (what dcm2niix made of it:
``*.nii.gz`` with ``.json``/``.bval``/``.bvec`` siblings). Every image series of ``In/`` is
indexed and converted with dcmpack's own API (policy exclusions such as localizers, derived or
colour images are ignored here: only non-image objects are left out), written through
``to_nifti_bytes`` and read back, then matched to the references by geometry and content, never
by name (reference names follow dcm2niix's patterns). Both sides are compared in nibabel's
closest-canonical (RAS+) frame:

- shape (trailing singleton axes dropped; RGB as a trailing channel axis),
- voxel values after scl_slope/scl_inter, relative tolerance 1e-4 of the reference peak, or,
  for a reference stored as integers with a scale, less than half its stored step everywhere
  (our values stored with the reference's own scaling are the reference's integers: dcm2niix
  computes some Philips slopes in float32, 7e-5 off the exact value, ``PhilipsPrecise``),
- affine: 0.01 mm translation, 1e-4 on direction cosines and relative voxel size,
- DWI: bvals, and b-vectors in world space (each side's FSL voxel-frame vectors rotated by its
  own affine, x negated first when the affine's determinant is positive, the FSL convention).

Each reference gets one status (match, affine-, data- or shape-mismatch, our-error,
unmatched-reference); our outputs that explain no reference are ``extra``, series we refused
that no reference claims are ``refused``, non-image series ``non-image``. The last line printed
is ``pass rate: MATCHED/TOTAL`` (references matched / references).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from packager import config as pconfig  # noqa: E402
from packager import index as pindex  # noqa: E402
from packager import sources as psources  # noqa: E402
from packager.convert import volume as pconvert  # noqa: E402
from packager.convert.diffusion import diffusion_tables  # noqa: E402
from packager.convert.nifti import to_nifti_bytes  # noqa: E402
from packager.errors import DcmpackError  # noqa: E402
from packager.model import ExclusionReason, Series  # noqa: E402

MATCH = "match"
AFFINE = "affine-mismatch"
DATA = "data-mismatch"
SHAPE = "shape-mismatch"
OUR_ERROR = "our-error"
UNMATCHED = "unmatched-reference"
EXTRA = "extra"  # an output of ours that explains no reference
REFUSED = "refused"  # a series we refused that no reference claims
NON_IMAGE_SKIPPED = "non-image"  # a non-image series, left out (Phoenix reports, SR, ...)
STATUSES = (MATCH, AFFINE, DATA, SHAPE, OUR_ERROR, UNMATCHED, EXTRA, REFUSED, NON_IMAGE_SKIPPED)

DATA_RTOL = 1e-4
TRANSLATION_MM = 0.01
ROTATION_TOL = 1e-4
ZOOM_RTOL = 1e-4
BVAL_TOL = 0.5
BVEC_TOL = 1e-3  # references print six decimals; our vectors are renormalised
B0_THRESHOLD = 1.0

# Policy exclusions are ignored (every image is converted); these mean "not an image volume".
NON_IMAGE = {
    ExclusionReason.NOT_IMAGE,
    ExclusionReason.SECONDARY_CAPTURE,
    ExclusionReason.SPECTROSCOPY,
    ExclusionReason.PHOENIX,
    ExclusionReason.UNSUPPORTED_SOP,
}


@dataclass
class Image:
    """One NIfTI (ours or a reference) in the canonical frame, ready to compare."""

    label: str
    data: np.ndarray  # float64, canonical voxel order, trailing singleton axes dropped
    affine: np.ndarray  # canonical affine
    native_affine: np.ndarray
    rgb: bool
    bvals: np.ndarray | None = None
    world_bvecs: np.ndarray | None = None  # (n, 3), world (RAS) unit vectors
    series_number: int | None = None
    step: float | None = None  # a reference's scl_slope when it stores integers with a scale
    _sorted: np.ndarray | None = field(default=None, repr=False)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[:3])

    def sorted_values(self) -> np.ndarray:
        """Voxel values sorted: a fingerprint that ignores axis order and flips."""
        if self._sorted is None:
            self._sorted = np.sort(self.data, axis=None)
        return self._sorted


@dataclass
class Failure:
    """A series we did not turn into an output, with the reason we gave."""

    label: str
    series: Series
    detail: str
    non_image: bool


@dataclass
class Row:
    """One line of the result table."""

    dataset: str
    reference: str
    status: str
    series: str = ""
    detail: str = ""


def _squeeze_trailing(data: np.ndarray) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _as_float(image: nib.Nifti1Image) -> tuple[np.ndarray, bool]:
    """Scaled voxel values as float64; RGB24 becomes a trailing axis of three channels."""
    dtype = image.get_data_dtype()
    if dtype.fields:
        raw = np.asanyarray(image.dataobj)
        data = np.stack([raw[name].astype(np.float64) for name in dtype.names], axis=-1)
        return data, True
    return np.asarray(image.get_fdata(dtype=np.float64)), False


def _fsl_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL voxel-frame b-vectors (3, n) -> world RAS unit vectors (n, 3) for ``affine``."""
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    voxel = np.array(bvecs, dtype=float).copy()
    if np.linalg.det(affine[:3, :3]) > 0:
        # FSL's b-vectors live in a radiological (x-flipped) voxel frame when det > 0.
        voxel[0] = -voxel[0]
    world = (columns @ voxel).T
    norms = np.linalg.norm(world, axis=1, keepdims=True)
    return np.where(norms > 0, world / np.where(norms > 0, norms, 1), 0.0)


def _parse_table(text: str | None, rows: int) -> np.ndarray | None:
    if text is None:
        return None
    try:
        values = np.array(
            [[float(v) for v in line.split()] for line in text.strip().splitlines() if line.strip()], dtype=float
        )
    except ValueError:
        return None
    if values.ndim != 2 or values.shape[0] != rows:
        return None
    return values


def _image(
    label: str, nifti: nib.Nifti1Image, bval: str | None, bvec: str | None, series_number: int | None = None
) -> Image:
    data, rgb = _as_float(nifti)
    native = np.asarray(nifti.affine, dtype=float)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, native))
    bvals = _parse_table(bval, 1)
    bvecs = _parse_table(bvec, 3)
    world = None
    if bvals is not None and bvecs is not None and bvecs.shape[1] == bvals.shape[1]:
        world = _fsl_to_world(bvecs, native)
    return Image(
        label=label,
        data=_squeeze_trailing(np.asarray(canonical.dataobj)),
        affine=np.asarray(canonical.affine, dtype=float),
        native_affine=native,
        rgb=rgb,
        bvals=None if bvals is None else bvals[0],
        world_bvecs=world,
        series_number=series_number,
        step=_stored_step(nifti),
    )


def _stored_step(nifti: nib.Nifti1Image) -> float | None:
    """The value of one stored step of an integer NIfTI with a scale (None otherwise)."""
    slope = getattr(nifti.dataobj, "slope", 1.0)  # an in-memory image has an array: no scale
    if nifti.get_data_dtype().kind not in "iu" or not np.isfinite(slope) or slope in (0, 1):
        return None
    return abs(float(slope))


def load_reference(path: Path) -> Image:
    """One reference NIfTI with its .bval/.bvec (and the SeriesNumber of its .json)."""
    name = path.name
    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4]
    siblings = {ext: path.with_name(stem + ext) for ext in (".bval", ".bvec", ".json")}
    bval = siblings[".bval"].read_text() if siblings[".bval"].exists() else None
    bvec = siblings[".bvec"].read_text() if siblings[".bvec"].exists() else None
    number = None
    if siblings[".json"].exists():
        try:
            value = json.loads(siblings[".json"].read_text()).get("SeriesNumber")
            number = int(value) if value is not None else None
        except (ValueError, TypeError):
            number = None
    return _image(stem, nib.load(path), bval, bvec, number)


def load_references(ref_dir: Path) -> list[Image]:
    """Every ``*.nii.gz``/``*.nii`` in Ref/."""
    return [load_reference(path) for path in sorted(ref_dir.iterdir()) if path.name.endswith((".nii.gz", ".nii"))]


def _series_label(series: Series) -> str:
    folder = str(Path(series.relpaths[0]).parent) if series.relpaths else "?"
    return f"#{series.index} s{series.series_number} {folder}"


def index_folder(in_dir: Path, staging: Path) -> tuple[Series, ...]:
    """dcmpack's series of a folder, with policy exclusions (localizers, derived) switched off."""
    source = psources.open_source(str(in_dir), staging)
    exclude = pconfig.ExcludeConfig(localizers=False, derived=False)
    return pindex.index_files(source.files, exclude).series


def convert_series(series: Series) -> Image | Failure:
    """Convert one series as the pipeline does, through to NIfTI bytes and back."""
    label = _series_label(series)
    if series.exclusion in NON_IMAGE:
        return Failure(label, series, f"excluded: {series.exclusion_detail}", True)
    try:
        datasets = pconvert.read_series_datasets(series.files)
        volume = pconvert.convert_datasets(datasets, frames=series.frames)
        tables = diffusion_tables(volume.heads, volume.affine)
        tr = series.repetition_time / 1000.0 if series.repetition_time else None
        blob = to_nifti_bytes(volume.data, volume.affine, tr)
    except pconvert.ConversionFailed as exc:
        return Failure(label, series, exc.detail, False)
    except Exception as exc:  # noqa: BLE001 - a crash is a finding, not a reason to stop
        return Failure(label, series, f"CRASH {type(exc).__name__}", False)
    nifti = nib.Nifti1Image.from_bytes(gzip.decompress(blob))
    bval, bvec = tables if tables else (None, None)
    return _image(label, nifti, bval, bvec, series.series_number)


def convert_ours(in_dir: Path, staging: Path) -> tuple[list[Image], list[Failure]]:
    """Index + convert every image series of ``in_dir`` with dcmpack's API."""
    outputs: list[Image] = []
    failures: list[Failure] = []
    for series in index_folder(in_dir, staging):
        result = convert_series(series)
        (failures if isinstance(result, Failure) else outputs).append(result)
    return outputs, failures


def _affine_close(a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    zooms_a, zooms_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    cos_a, cos_b = a[:3, :3] / zooms_a, b[:3, :3] / zooms_b
    rotation = float(np.max(np.abs(cos_a - cos_b)))
    zoom = float(np.max(np.abs(zooms_a - zooms_b) / zooms_b))
    shift = float(np.max(np.abs(a[:3, 3] - b[:3, 3])))
    ok = rotation <= ROTATION_TOL and zoom <= ZOOM_RTOL and shift <= TRANSLATION_MM
    return ok, f"rotation {rotation:.2g}, voxel size {zoom:.2g} rel, translation {shift:.3g} mm"


def _data_close(ours: np.ndarray, ref: np.ndarray, step: float | None = None) -> tuple[bool, str]:
    peak = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = np.abs(ours - ref)
    tolerance = DATA_RTOL * np.maximum(np.abs(ref), peak)
    if step is not None:
        tolerance = np.maximum(tolerance, 0.499 * step)
    bad = diff > tolerance
    if not bad.any():
        return True, ""
    return False, (f"{bad.mean():.1%} voxels differ, max |diff| {float(diff.max()):.4g} (ref peak {peak:.4g})")


def _content_equal(ours: Image, ref: Image) -> bool:
    """Same multiset of values: the same image up to axis order, flips or wrong geometry."""
    if ours.data.size != ref.data.size:
        return False
    return _data_close(ours.sorted_values(), ref.sorted_values(), ref.step)[0]


def _diffusion_close(ours: Image, ref: Image) -> tuple[bool, str]:
    if ref.bvals is None and ours.bvals is None:
        return True, ""
    if ref.bvals is None:
        return True, ""  # our extra b-table is not a conformance failure
    if ours.bvals is None:
        return False, "no bval/bvec from us"
    if ours.bvals.shape != ref.bvals.shape:
        return False, "bval count differs"
    if np.max(np.abs(ours.bvals - ref.bvals)) > BVAL_TOL * max(1.0, 1e-3 * float(ref.bvals.max())):
        return False, "bvals differ"
    if ref.world_bvecs is None or ours.world_bvecs is None:
        return False, "bvec missing or malformed"
    weighted = ref.bvals > B0_THRESHOLD
    error = np.abs(ours.world_bvecs[weighted] - ref.world_bvecs[weighted])
    if error.size and float(error.max()) > BVEC_TOL:
        return False, f"world b-vectors differ (max {float(error.max()):.3g})"
    return True, ""


def compare(ours: Image, ref: Image) -> tuple[int, str, str] | None:
    """(rank, status, detail) for a plausible pairing, lower rank = better; None if unrelated."""
    same_grid_shape = ours.spatial_shape == ref.spatial_shape
    affine_ok, affine_detail = _affine_close(ours.affine, ref.affine) if same_grid_shape else (False, "")
    if ours.rgb != ref.rgb and same_grid_shape and affine_ok:
        return 3, DATA, "RGB vs scalar image"
    if ours.data.shape == ref.data.shape and affine_ok:
        data_ok, data_detail = _data_close(ours.data, ref.data, ref.step)
        if data_ok:
            dwi_ok, dwi_detail = _diffusion_close(ours, ref)
            if dwi_ok:
                return 0, MATCH, ""
            return 1, DATA, dwi_detail
        if _content_equal(ours, ref):
            return 2, DATA, "same values, different voxel order: " + data_detail
        return 3, DATA, data_detail
    if _content_equal(ours, ref):
        if ours.data.shape != ref.data.shape:
            return 2, SHAPE, f"same values, shape {ours.data.shape} vs {ref.data.shape}"
        if not same_grid_shape or not affine_ok:
            detail = affine_detail or "axes differ"
            return 2, AFFINE, detail
    if same_grid_shape and affine_ok:
        return 3, SHAPE, f"same grid, shape {ours.data.shape} vs {ref.data.shape}"
    return None


def match_dataset(name: str, refs: list[Image], outputs: list[Image], failures: list[Failure]) -> list[Row]:
    """Assign outputs to references (best pairs first); then failures; then extras."""
    pairs = []
    for r, ref in enumerate(refs):
        for o, ours in enumerate(outputs):
            result = compare(ours, ref)
            if result is not None:
                other_number = ours.series_number != ref.series_number
                pairs.append((result[0], other_number, r, o, result[1], result[2]))
    pairs.sort(key=lambda p: p[:4])
    assigned: dict[int, Row] = {}
    matched_outputs: set[int] = set()
    used_outputs: set[int] = set()
    for _, _, r, o, status, detail in pairs:
        # An exact match claims its output; a mismatching output may explain several
        # references (e.g. two echoes merged into one volume).
        if r in assigned or o in matched_outputs:
            continue
        if status == MATCH:
            matched_outputs.add(o)
        used_outputs.add(o)
        assigned[r] = Row(name, refs[r].label, status, outputs[o].label, detail)

    rows = []
    for r, ref in enumerate(refs):
        if r in assigned:
            rows.append(assigned[r])
            continue
        rows.append(_unexplained(name, ref, failures, outputs))
    for o, ours in enumerate(outputs):
        if o not in used_outputs:
            rows.append(Row(name, "", EXTRA, ours.label, f"shape {ours.data.shape}"))
    claimed = {row.series for row in rows}
    for failure in failures:
        if failure.label not in claimed:
            rows.append(
                Row(name, "", NON_IMAGE_SKIPPED if failure.non_image else REFUSED, failure.label, failure.detail)
            )
    return rows


def _unexplained(name: str, ref: Image, failures: list[Failure], outputs: list[Image]) -> Row:
    """A reference no output explains: attribute it to a failed series of the same number."""
    in_plane = sorted(ref.spatial_shape[:2])
    candidates = [f for f in failures if f.series.series_number == ref.series_number]
    candidates.sort(key=lambda f: (sorted((f.series.rows, f.series.columns)) != in_plane, f.non_image))
    for failure in candidates:
        status = UNMATCHED if failure.non_image else OUR_ERROR
        return Row(name, ref.label, status, failure.label, failure.detail)
    siblings = [o.label for o in outputs if o.series_number == ref.series_number]
    if siblings:
        # e.g. a second echo dropped: its series converted, to something else.
        return Row(
            name,
            ref.label,
            UNMATCHED,
            siblings[0],
            "no output matched; this series number produced other output(s) only",
        )
    return Row(name, ref.label, UNMATCHED, "", "no output matched")


def run_dataset(dataset: Path) -> tuple[list[Row], float]:
    """Rows for one dataset folder and the seconds it took."""
    start = time.perf_counter()
    in_dir, ref_dir = dataset / "In", dataset / "Ref"
    if not in_dir.is_dir() or not ref_dir.is_dir():
        raise SystemExit(f"conformance: {dataset}: needs In/ and Ref/ folders")
    staging = Path(tempfile.mkdtemp(prefix="dcmpack-conformance-"))
    try:
        refs = load_references(ref_dir)
        try:
            outputs, failures = convert_ours(in_dir, staging)
        except DcmpackError as exc:
            rows = [Row(dataset.name, ref.label, OUR_ERROR, "", f"index failed: {exc}") for ref in refs]
            return rows, time.perf_counter() - start
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return match_dataset(dataset.name, refs, outputs, failures), time.perf_counter() - start


def run(datasets: list[Path]) -> tuple[list[Row], dict[str, float]]:
    """All rows and per-dataset seconds."""
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    for dataset in datasets:
        dataset_rows, elapsed = run_dataset(dataset)
        rows.extend(dataset_rows)
        seconds[dataset.name] = elapsed
    return rows, seconds


def pass_rate(rows: list[Row]) -> tuple[int, int]:
    """(matched, total references)."""
    refs = [row for row in rows if row.reference]
    return sum(row.status == MATCH for row in refs), len(refs)


def render(rows: list[Row], seconds: dict[str, float]) -> str:
    """Per-dataset tables, per-dataset counts, then the pass-rate line (last)."""
    out = io.StringIO()
    for dataset, elapsed in seconds.items():
        mine = [row for row in rows if row.dataset == dataset]
        matched, total = pass_rate(mine)
        out.write(f"\n== {dataset}: {matched}/{total} matched ({elapsed:.1f} s)\n")
        width = max([len(row.reference) for row in mine] + [9])
        for row in mine:
            out.write(f"  {row.status:<19} {row.reference:<{width}}  {row.series:<32} {row.detail}\n")
        counts = Counter(row.status for row in mine)
        out.write("  " + ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s]) + "\n")
    matched, total = pass_rate(rows)
    out.write(f"\ntotal {sum(seconds.values()):.1f} s\n")
    out.write(f"pass rate: {matched}/{total}\n")
    return out.getvalue()


def write_tsv(rows: list[Row], path: Path) -> None:
    """One row per reference (and per extra output)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["dataset", "reference", "status", "series", "detail"])
        for row in rows:
            writer.writerow([row.dataset, row.reference, row.status, row.series, row.detail])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path, metavar="DATASET_DIR")
    parser.add_argument("--tsv", type=Path, help="write one row per reference to this TSV file")
    args = parser.parse_args(argv)
    rows, seconds = run(args.datasets)
    if args.tsv:
        write_tsv(rows, args.tsv)
    sys.stdout.write(render(rows, seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
