"""The Python API: the one place where pipeline stages meet.

``plan`` runs sources -> index -> heuristics -> deid -> layout paths (no conversion);
``build`` continues with convert -> sidecar (in a process pool, one series per task) ->
layout files -> bundle -> audit -> verify, all inside a private 0700 staging folder on the
output's filesystem, and publishes with one atomic rename only when the audit is clean and
verification passed. Per-series failures become ``Excluded`` entries (exit 1); they never
stop other series and are never silent.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from . import __version__
from . import allowlist
from . import audit as audit_stage
from . import bundle as bundle_stage
from . import convert as convert_stage
from . import deid as deid_stage
from . import heuristics as heuristics_stage
from . import index as index_stage
from . import layout as layout_stage
from . import phi as phi_stage
from . import sidecar as sidecar_stage
from . import sources as sources_stage
from . import verify as verify_stage
from .config import ReleaseConfig, load_config, read_key, starter_config
from .errors import ConfigError, DcmpackError, InputError, OutputError, PhiAuditError, VerifyError
from .model import (BidsName, BuildResult, Excluded, ExclusionReason, Plan, Planned, Skip,
                    SourceSet)

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int | None], None]

SAMPLE_DIR_NAME = "sample_data"


# ---------------------------------------------------------------- sample data

def sample_root() -> Path:
    """The embedded sample session (``sample_data/`` in the working dir or beside the package)."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = base / SAMPLE_DIR_NAME
        if (candidate / "release.toml").is_file() and (candidate / "dicom").is_dir():
            return candidate
    raise ConfigError("sample_data/ not found: run from the dcmpack repository root, or give a SOURCE")


def sample_config(**flags) -> ReleaseConfig:
    """The shipped sample config (with its own sample key) for ``dcmpack build`` with no SOURCE."""
    from .config import merge_flags

    root = sample_root()
    config = load_config(root / "release.toml")
    flags = dict(flags)
    flags["sources"] = (str(root / "dicom"),)
    return merge_flags(config, **flags)


# ---------------------------------------------------------------- staging

@contextmanager
def _staging(output: Path) -> Iterator[Path]:
    """A private (0700) folder on the output's filesystem, removed on exit, signal or crash."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output: {output}: cannot create folder ({type(exc).__name__})") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise OutputError(f"output: {output}: folder not writable")
    try:
        folder = Path(tempfile.mkdtemp(prefix=".dcmpack-staging-", dir=output))
    except OSError as exc:
        raise OutputError(f"output: {output}: cannot create staging folder ({type(exc).__name__})") from None
    os.chmod(folder, 0o700)
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum, frame):  # turn SIGTERM into an exception so cleanup runs
        raise KeyboardInterrupt

    in_main = True
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        in_main = False
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if in_main:
            signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- plan

def _gather(config: ReleaseConfig, staging: Path) -> list[SourceSet]:
    if not config.sources:
        raise ConfigError("no SOURCE given (a folder, a .zip or a dicomweb+/dimse:/xnat: URL)")
    return [sources_stage.open_source(spec, staging) for spec in config.sources]


def _plan_from(config: ReleaseConfig, sets: list[SourceSet]) -> Plan:
    files = [f for s in sets for f in s.files]
    sessions, series, skipped = index_stage.index_files(files, config.exclude)
    classify = heuristics_stage.load_heuristic(config.heuristic)
    decisions = heuristics_stage.classify_all(series, classify)
    decisions = heuristics_stage.resolve_entities(series, decisions)
    session_labels = {}
    for item in series:
        decision = decisions.get(item.index)
        if isinstance(decision, BidsName) and decision.get("ses"):
            session_labels.setdefault(item.session, decision.get("ses"))
    identities = deid_stage.identify(sessions, config.deid, config.key, session_labels, config.dataset.sessions)

    excluded: list[Excluded] = []
    planned: list[Planned] = []
    taken: dict[str, int] = {}
    for item in series:
        if item.exclusion is not None:
            excluded.append(Excluded(item.index, item.series_number, item.exclusion, item.exclusion_detail))
            continue
        decision = decisions[item.index]
        if isinstance(decision, Skip):
            excluded.append(Excluded(item.index, item.series_number, ExclusionReason.HEURISTIC_SKIP, decision.reason))
            continue
        who = identities[item.session]
        relpath = layout_stage.bids_relpath(decision, who.subject, who.session, extension=".nii.gz")
        if relpath is not None:
            relpath = relpath[: -len(".nii.gz")]
        if relpath is None:
            excluded.append(Excluded(item.index, item.series_number, ExclusionReason.UNNAMED,
                                     f"no BIDS path for {decision.datatype}/{decision.suffix} with these entities"))
            continue
        if relpath in taken:
            excluded.append(Excluded(item.index, item.series_number, ExclusionReason.DUPLICATE,
                                     f"same BIDS name as series {taken[relpath]}"))
            continue
        taken[relpath] = item.index
        planned.append(Planned(item, decision, who.subject, who.session, relpath))
    labels = tuple((s.index, identities[s.index].subject, identities[s.index].session) for s in sessions)
    return Plan(sessions, series, tuple(planned), tuple(excluded), skipped, labels)


def plan(config: ReleaseConfig) -> Plan:
    """Dry run: which series go where, and which are left out and why (converts nothing).

    Raises
    ------
    ConfigError, InputError
    """
    with tempfile.TemporaryDirectory(prefix="dcmpack-plan-") as tmp:
        os.chmod(tmp, 0o700)
        return _plan_from(config, _gather(config, Path(tmp)))


# ---------------------------------------------------------------- per-series task

@dataclasses.dataclass(frozen=True, slots=True)
class TaskResult:
    """What one conversion task returns (small: the NIfTI itself is already staged)."""

    series_index: int
    relpath: str
    staged: tuple[bundle_stage.Staged, ...] = ()
    fields: tuple[tuple[str, object], ...] = ()
    shape: tuple[int, ...] = ()
    zooms: tuple[float, ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()
    error: str = ""


def convert_task(item: Planned, dataset_dir: str, allow: tuple[str, ...], allow_free_text: tuple[str, ...],
                 tool: str) -> TaskResult:
    """Convert one planned series, derive and filter its sidecar, stage its files.

    A pure function of its arguments (runs in a worker process or on a Dask worker).
    """
    series, name = item.series, item.name
    try:
        datasets = convert_stage.read_series_datasets(series.files)
        volume = convert_stage.convert_datasets(datasets)
    except convert_stage.ConversionFailed as exc:
        return TaskResult(series.index, item.relpath, error=exc.detail)
    data = volume.data
    if name.datatype == "func" and data.ndim == 3 and name.suffix in ("bold", "cbv", "phase"):
        data = data[..., None]
    entities = dict(name.entities)
    fields = sidecar_stage.derive_fields(volume.heads, volume.slice_datasets, volume.affine, data.shape,
                                         entities, name.datatype, name.suffix)
    phi_values: set = set()
    for ds in datasets[:1] + datasets[-1:]:
        phi_stage.collect(ds, phi_values)
    terms = frozenset(t for v in phi_values for t in phi_stage.search_terms(v))
    fields["ConversionSoftware"] = "dcmpack"
    fields["ConversionSoftwareVersion"] = tool
    filtered = allowlist.apply_allowlist(fields, allow=allow, allow_free_text=allow_free_text, phi_terms=terms)
    tr = filtered.fields.get("RepetitionTime") if data.ndim == 4 else None
    nifti = convert_stage.to_nifti_bytes(data, volume.affine, tr)
    folder = Path(dataset_dir)
    staged = [bundle_stage.stage_bytes(folder, item.relpath + ".nii.gz", nifti)]
    if name.datatype == "dwi":
        tables = convert_stage.diffusion_tables(volume.heads, volume.affine)
        if tables is None:
            (folder / (item.relpath + ".nii.gz")).unlink()
            return TaskResult(series.index, item.relpath, error="no diffusion b-values/vectors in the headers")
        staged.append(bundle_stage.stage_bytes(folder, item.relpath + ".bval", tables[0].encode()))
        staged.append(bundle_stage.stage_bytes(folder, item.relpath + ".bvec", tables[1].encode()))
    shape, zooms = convert_stage.nifti_summary(nifti)
    dropped = (("unknown", filtered.dropped_unknown), ("invalid", filtered.dropped_invalid),
               ("phi", filtered.dropped_phi), ("denied", filtered.dropped_denied))
    return TaskResult(series.index, item.relpath, tuple(staged), tuple(sorted(filtered.fields.items())),
                      shape, zooms, dropped)


def _run_tasks(items: list[Planned], dataset_dir: Path, config: ReleaseConfig, progress: Progress | None) -> list[TaskResult]:
    tool = f"dcmpack {__version__}; {_engine_version(config.convert.engine)}"
    args = (str(dataset_dir), config.sidecar.allow, config.sidecar.allow_free_text, tool)
    jobs = config.jobs or os.cpu_count() or 1
    results: list[TaskResult] = []
    total = len(items)
    if jobs <= 1 or total <= 1:
        for done, item in enumerate(items, 1):
            results.append(convert_task(item, *args))
            if progress:
                progress("convert", done, total)
        return results
    import multiprocessing

    context = multiprocessing.get_context("spawn" if os.environ.get("DCMPACK_SPAWN") else "fork")
    with cf.ProcessPoolExecutor(max_workers=min(jobs, total), mp_context=context) as pool:
        futures = [pool.submit(convert_task, item, *args) for item in items]
        for done, future in enumerate(cf.as_completed(futures), 1):
            if progress:
                progress("convert", done, total)
        results = [f.result() for f in futures]
    return results


def _engine_version(engine: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{engine} {version(engine)}"
    except PackageNotFoundError:
        return engine


# ---------------------------------------------------------------- fieldmaps

def _pair_fieldmaps(planned: list[Planned], fields: dict[str, dict]) -> None:
    """B0FieldIdentifier/B0FieldSource and IntendedFor: a field map serves the func/dwi/perf
    runs acquired after it in the same session, until the next field map of the same kind."""
    by_session: dict[tuple, list[Planned]] = defaultdict(list)
    for item in planned:
        by_session[(item.subject, item.session)].append(item)
    for (subject, session), items in by_session.items():
        items.sort(key=lambda p: (p.series.acquisition_order, p.series.series_number or 0, p.series.index))
        groups: list[tuple[str, list[Planned], list[Planned]]] = []
        current: tuple[str, list[Planned], list[Planned]] | None = None
        for item in items:
            if item.name.datatype == "fmap" and item.relpath + ".nii.gz" in fields:
                kind = "epi" if item.name.suffix == "epi" else "gre"
                key = f"{kind}{item.name.get('acq') or ''}"
                if current is None or current[0] != key or current[2]:
                    current = (key, [], [])
                    groups.append(current)
                current[1].append(item)
            elif item.name.datatype in ("func", "dwi", "perf") and current is not None and item.relpath + ".nii.gz" in fields:
                for group in groups:
                    if group is current or (group[2] == [] and group[0] != current[0]):
                        group[2].append(item)
        for number, (_, fmaps, targets) in enumerate(groups, 1):
            if not targets:
                continue
            identifier = f"fmap{number}" + (f"ses{session}" if session else "")
            uris = sorted(f"bids::sub-{subject}/" + t.relpath.split("/", 1)[1] + ".nii.gz" for t in targets)
            for fmap in fmaps:
                meta = fields[fmap.relpath + ".nii.gz"]
                meta["B0FieldIdentifier"] = identifier
                meta["IntendedFor"] = uris
            for target in targets:
                fields[target.relpath + ".nii.gz"]["B0FieldSource"] = identifier


def _phasediff_echo_times(planned: list[Planned], fields: dict[str, dict]) -> None:
    """EchoTime1/EchoTime2 on phasediff sidecars from their magnitude twins (same acquisition)."""
    for item in planned:
        if item.name.suffix != "phasediff":
            continue
        meta = fields.get(item.relpath + ".nii.gz")
        if meta is None:
            continue
        echoes = sorted({p.series.echo_time for p in planned if p.series.uid == item.series.uid
                         or (p.name.datatype == "fmap" and p.name.suffix.startswith("magnitude")
                             and p.subject == item.subject and p.session == item.session
                             and p.series.series_number is not None and item.series.series_number is not None
                             and abs(p.series.series_number - item.series.series_number) <= 1)
                         if p.series.echo_time})
        if len(echoes) >= 2:
            meta["EchoTime1"] = round(echoes[0] / 1000.0, 6)
            meta["EchoTime2"] = round(echoes[-1] / 1000.0, 6)
            meta.pop("EchoTime", None)


# ---------------------------------------------------------------- build

def bundle_name(config: ReleaseConfig) -> str:
    """``<name>-<version>.zip`` (or the [bundle] name pattern)."""
    try:
        stem = config.bundle.name.format(name=config.dataset.name, version=config.dataset.version)
    except (KeyError, IndexError, ValueError):
        raise ConfigError("[bundle] name: use only {name} and {version}") from None
    if "/" in stem or stem.startswith("."):
        raise ConfigError("[bundle] name must be a plain file name")
    return stem + ".zip"


def build(config: ReleaseConfig, progress: Progress | None = None) -> BuildResult:
    """Build, audit, verify and publish the bundle.

    Parameters
    ----------
    config : ReleaseConfig
        From ``load_config`` + ``merge_flags`` (or ``sample_config``).
    progress : callable, optional
        ``progress(step, done, total)`` for progress bars.

    Returns
    -------
    BuildResult
        ``exit_code`` is 1 when some series failed to convert (listed in ``excluded``).

    Raises
    ------
    ConfigError, InputError, OutputError, PhiAuditError, VerifyError
        Nothing is published in any of these cases.
    """
    started = time.monotonic()
    output = Path(config.output)
    target = output / bundle_name(config)
    if target.exists() and not config.force:
        raise OutputError(f"output: {target} exists (use --force to replace it)")
    with _staging(output) as staging:
        downloads = staging / "sources"
        downloads.mkdir(mode=0o700)
        sets = _gather(config, downloads)
        the_plan = _plan_from(config, sets)
        if not the_plan.planned:
            raise InputError(f"input: nothing to release: all {len(the_plan.series)} series were excluded "
                             "(see: dcmpack plan)")
        dataset_dir = staging / "dataset"
        dataset_dir.mkdir(mode=0o700)
        results = _run_tasks(list(the_plan.planned), dataset_dir, config, progress)
        excluded = list(the_plan.excluded)
        by_index = {p.series.index: p for p in the_plan.planned}
        fields: dict[str, dict] = {}
        staged: list[bundle_stage.Staged] = []
        done: list[Planned] = []
        dropped: Counter = Counter()
        run_info: list[dict] = []
        for result in sorted(results, key=lambda r: r.series_index):
            item = by_index[result.series_index]
            if result.error:
                excluded.append(Excluded(item.series.index, item.series.series_number,
                                         ExclusionReason.CONVERSION_FAILED, result.error))
                continue
            done.append(item)
            staged.extend(result.staged)
            fields[result.relpath + ".nii.gz"] = dict(result.fields)
            dropped.update(dict(result.dropped))
            run_info.append({"path": result.relpath + ".nii.gz", "datatype": item.name.datatype,
                             "suffix": item.name.suffix, "shape": list(result.shape),
                             "voxel_size": [round(z, 4) for z in result.zooms[:3]],
                             "engine": config.convert.engine})
        if not done:
            raise InputError(f"input: nothing to release: no series could be converted "
                             f"({len(excluded)} excluded; see: dcmpack plan)")
        _pair_fieldmaps(done, fields)
        _phasediff_echo_times(done, fields)
        identities = _identities(config, the_plan)
        staged.extend(_dataset_files(config, dataset_dir, done, fields, identities))
        manifest = _manifest(config, staged, run_info, excluded, dropped)
        zip_path = staging / target.name
        sha, size = bundle_stage.write_bundle(zip_path, config.dataset.name, sorted(staged, key=lambda s: s.relpath),
                                              manifest)
        if progress:
            progress("audit", 0, None)
        values = collect_source_phi(sets)
        result_audit = audit_stage.audit_bundle(zip_path, values)
        if not result_audit.clean:
            first = result_audit.hits[0]
            raise PhiAuditError(f"audit: {len(result_audit.hits)} PHI hit(s), nothing published; first: "
                                f"{first.kind} ({first.tag}) in {first.stream} of {first.member}")
        if progress:
            progress("verify", 0, None)
        report = verify_stage.verify(zip_path)
        if not report.ok:
            what = report.problems[0] if report.problems else f"{report.validator_errors} BIDS validator error(s)"
            codes = ", ".join(sorted({c for s, c, _ in report.validator_codes if s == "error"}))
            raise VerifyError(f"verify: bundle rejected, nothing published: {what}" + (f" ({codes})" if codes else ""))
        try:
            os.replace(zip_path, target)
        except OSError as exc:
            raise OutputError(f"output: cannot publish {target.name} ({type(exc).__name__})") from None
    validator = {"errors": report.validator_errors, "warnings": report.validator_warnings,
                 "codes": [list(c) for c in report.validator_codes]}
    return BuildResult(bundle=target, sha256=sha, size=size, plan=the_plan,
                       runs=tuple(sorted(p.relpath for p in done)), excluded=tuple(excluded),
                       seconds=time.monotonic() - started, validator=validator)


def _identities(config: ReleaseConfig, the_plan: Plan):
    labels = {index: ses for index, _, ses in the_plan.subject_labels if ses}
    return deid_stage.identify(the_plan.sessions, config.deid, config.key, labels, config.dataset.sessions)


def _dataset_files(config: ReleaseConfig, folder: Path, done: list[Planned], fields: dict[str, dict],
                   identities) -> list[bundle_stage.Staged]:
    staged = []
    for relpath, meta in sorted(fields.items()):
        staged.append(bundle_stage.stage_bytes(folder, relpath[: -len(".nii.gz")] + ".json",
                                               layout_stage.canonical_json(meta)))
    ds = config.dataset
    staged.append(bundle_stage.stage_bytes(folder, "dataset_description.json", layout_stage.dataset_description(
        name=ds.name, license_=ds.license, authors=ds.authors, version=ds.version, tool_version=__version__,
        dates=config.deid.dates, engine=config.convert.engine)))
    subjects: dict[str, dict] = {}
    sessions_of: dict[str, list] = defaultdict(list)
    rows: dict[tuple, list] = defaultdict(list)
    used_sessions = {p.series.session for p in done}
    for index in sorted(used_sessions):
        who = identities[index]
        info = subjects.setdefault(who.subject, {"age": who.age, "sex": who.sex})
        if info["age"] is None:
            info["age"] = who.age
        if who.session:
            sessions_of[who.subject].append((who.session, who.shifted_date, who.age))
    for item in done:
        who = identities[item.series.session]
        rows[(who.subject, who.session)].append(layout_stage.Row(who.subject, who.session, item.relpath + ".nii.gz",
                                                                 who.shifted_date))
    tsv, js = layout_stage.participants(subjects)
    staged.append(bundle_stage.stage_bytes(folder, "participants.tsv", tsv))
    staged.append(bundle_stage.stage_bytes(folder, "participants.json", js))
    for subject, items in sessions_of.items():
        tsv, js = layout_stage.sessions_table(sorted(set(items)))
        staged.append(bundle_stage.stage_bytes(folder, f"sub-{subject}/sub-{subject}_sessions.tsv", tsv))
        staged.append(bundle_stage.stage_bytes(folder, f"sub-{subject}/sub-{subject}_sessions.json", js))
    for (subject, session), items in rows.items():
        prefix = f"sub-{subject}/" + (f"ses-{session}/" if session else "")
        stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        tsv, js = layout_stage.scans_table(items, prefix)
        staged.append(bundle_stage.stage_bytes(folder, f"{prefix}{stem}_scans.tsv", tsv))
        staged.append(bundle_stage.stage_bytes(folder, f"{prefix}{stem}_scans.json", js))
    staged.append(bundle_stage.stage_bytes(folder, "README.md", layout_stage.readme(
        ds.name, ds.description, len(subjects), len(done), config.deid.dates)))
    staged.append(bundle_stage.stage_bytes(folder, "CHANGES", layout_stage.changes(ds.version)))
    return staged


def _manifest(config: ReleaseConfig, staged: list[bundle_stage.Staged], runs: list[dict],
              excluded: list[Excluded], dropped: Counter) -> bytes:
    reasons = Counter(e.reason.name.lower() for e in excluded)
    view = config.digest_view()
    data = {
        "tool": {"name": "dcmpack", "version": __version__, "engine": _engine_version(config.convert.engine)},
        "dataset": config.dataset.name,
        "config": view,
        "config_sha256": hashlib.sha256(layout_stage.canonical_json(view)).hexdigest(),
        "key_fingerprint": deid_stage.key_fingerprint(config.key),
        "files": [{"path": s.relpath, "size": s.size, "sha256": s.sha256} for s in sorted(staged, key=lambda s: s.relpath)],
        "runs": sorted(runs, key=lambda r: r["path"]),
        "excluded": dict(sorted(reasons.items())),
        "sidecar_dropped": dict(sorted(dropped.items())),
    }
    return layout_stage.canonical_json(data)


# ---------------------------------------------------------------- audit / verify / init

def collect_source_phi(sets: list[SourceSet]) -> set:
    """PHI values of every source header plus source path names."""
    from .dicomio import looks_like_dicom, read_dataset

    values: set = set()
    for source_set in sets:
        for item in source_set.files:
            if not looks_like_dicom(item.path):
                continue
            try:
                ds = read_dataset(item.path, headers_only=True)
            except Exception:  # unreadable files were already refused by the index
                continue
            phi_stage.collect(ds, values)
            phi_stage.collect(ds.file_meta, values)
        values |= audit_stage.path_values(f.relpath for f in source_set.files)
        values |= audit_stage.path_values([source_set.label])
    return values


def audit(bundle: Path, sources: tuple[str, ...], *, show_values: bool = False) -> audit_stage.AuditResult:
    """Search a bundle for the PHI values of its sources (see ``packager.audit``)."""
    if not Path(bundle).is_file():
        raise InputError(f"audit: {bundle}: no such bundle")
    with tempfile.TemporaryDirectory(prefix="dcmpack-audit-") as tmp:
        os.chmod(tmp, 0o700)
        sets = [sources_stage.open_source(s, Path(tmp)) for s in sources]
        values = collect_source_phi(sets)
        return audit_stage.audit_bundle(Path(bundle), values, show_values=show_values)


def verify(bundle: Path, *, validate: bool = True) -> verify_stage.Report:
    """Verify a published bundle (see ``packager.verify``)."""
    if not Path(bundle).is_file():
        raise VerifyError(f"verify: {bundle}: no such bundle")
    return verify_stage.verify(Path(bundle), validate=validate)


def init_config(path: Path, *, force: bool = False) -> Path:
    """Write the commented starter release.toml."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputError(f"{path} exists (use --force to overwrite)")
    path.write_text(starter_config(), encoding="utf-8")
    return path


__all__ = ["build", "plan", "verify", "audit", "init_config", "sample_config", "sample_root",
           "bundle_name", "convert_task", "DcmpackError", "read_key"]
