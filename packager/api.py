"""The Python API: the one place where pipeline stages meet.

``plan`` runs sources -> index -> heuristics -> deid -> layout paths (no conversion);
``build`` continues with convert -> sidecar (in a process pool, one series per task) ->
layout files -> bundle -> audit -> verify, all inside a private 0700 staging folder on the
output's filesystem, and publishes with one atomic rename only when the audit is clean and
verification passed. Per-series failures become ``Excluded`` entries (exit 1); they never
stop other series and are never silent.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from packager import __version__
from packager.sidecar import allowlist
from packager.release import audit as audit_stage
from packager.release import bundle as bundle_stage
from packager.convert import volume as convert_stage
from packager.convert.diffusion import diffusion_tables
from packager.convert.nifti import write_nifti
from packager.naming import deid as deid_stage
from packager.convert import dcm2niix as engines
from packager import executors
from packager.naming import fieldmaps
from packager.naming import heuristic as heuristics_stage
from packager import index as index_stage
from packager.naming import layout as layout_stage
from packager import phi as phi_stage
from packager.release import report as report_stage
from packager.sidecar import fields as sidecar_stage
from packager import sources as sources_stage
from packager.release import verify as verify_stage
from packager.config import ReleaseConfig, load_config, read_key, starter_config
from packager.errors import ConfigError, DcmpackError, InputError, OutputError, PhiAuditError, VerifyError
from packager.model import (BidsName, BuildResult, Excluded, ExclusionReason, Plan, Planned, Skip,
                    SourceSet)

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int | None], None]

SAMPLE_DIR_NAME = "sample_data"
REPORT_NAME = "report.html"  # private QC page, next to (never inside) the bundle


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
    from packager.config import merge_flags

    root = sample_root()
    config = load_config(root / "release.toml")
    flags = dict(flags)
    flags["sources"] = (str(root / "dicom"),)
    return merge_flags(config, **flags)


# ---------------------------------------------------------------- staging

# Write failures that mean "the output filesystem", not "a bug": errno -> what to tell the user.
_OUTPUT_ERRNOS = {errno.ENOSPC: "disk full (no space left on device)", errno.EDQUOT: "disk quota exceeded",
                  errno.EFBIG: "file too large for the output filesystem", errno.EROFS: "read-only filesystem",
                  errno.EIO: "input/output error on the output disk"}
# Signals that end a build like Ctrl-C does: staging removed, nothing published, exit 130.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _stop(signum, frame):
    """SIGTERM/SIGHUP -> KeyboardInterrupt, so every ``finally`` (staging cleanup) runs."""
    raise KeyboardInterrupt


@contextmanager
def _staging(output: Path) -> Iterator[Path]:
    """A private (0700) folder on the output's filesystem, removed on exit, signal or crash.

    SIGTERM and SIGHUP are turned into KeyboardInterrupt while it exists (SIGINT already is),
    and write failures of the output filesystem (disk full, quota, read-only) become one
    ``OutputError`` naming the output folder instead of a stack trace.
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output: {output}: cannot create folder ({_os_reason(exc)})") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise OutputError(f"output: {output}: folder not writable (choose another with -o)")
    try:
        folder = Path(tempfile.mkdtemp(prefix=".dcmpack-staging-", dir=output))
    except OSError as exc:
        raise OutputError(f"output: {output}: cannot create staging folder ({_os_reason(exc)})") from None
    os.chmod(folder, 0o700)
    previous: dict[int, object] = {}
    try:
        for number in _STOP_SIGNALS:
            previous[number] = signal.signal(number, _stop)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
        pass
    try:
        yield folder
    except OSError as exc:
        if exc.errno in _OUTPUT_ERRNOS:
            raise OutputError(f"output: {output}: {_OUTPUT_ERRNOS[exc.errno]} while building; "
                              "nothing published, staging removed") from exc
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for number, handler in previous.items():
            signal.signal(number, handler)


def _os_reason(exc: OSError) -> str:
    """A value-free reason for an OSError (its errno name, never its message text)."""
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


# ---------------------------------------------------------------- plan

def _remote_options(config: ReleaseConfig, progress: Progress | None) -> dict:
    return {"ca_bundle": config.ca_bundle, "move_dest": config.move_dest, "retrieve": config.retrieve,
            "progress": _step(progress, "fetch")}


def _gather(config: ReleaseConfig, staging: Path, progress: Progress | None = None) -> list[SourceSet]:
    if not config.sources:
        raise ConfigError("no SOURCE given (a folder, a .zip or a dicomweb+/dimse:/xnat: URL)")
    return [sources_stage.open_source(spec, staging, **_remote_options(config, progress))
            for spec in config.sources]


def _step(progress: Progress | None, step: str) -> Callable[[int, int], None] | None:
    """``progress(step, done, total)`` as the ``(done, total)`` callback a stage takes."""
    if progress is None:
        return None
    return lambda done, total: progress(step, done, total)


def _plan_from(config: ReleaseConfig, sets: list[SourceSet], progress: Progress | None = None,
               phi: tuple[set, set] | None = None, clock: "_Clock | None" = None,
               workers: executors.Workers | None = None) -> Plan:
    clock = clock or _Clock()
    files = [f for s in sets for f in s.files]
    found, public = phi if phi is not None else (None, None)
    # pybids takes ~1 s to import (SQLAlchemy and more); it is loaded here while the workers read
    # headers. Only once they run: forking while a thread imports can deadlock the child.
    preload = None
    if workers is not None and workers.size > 1:
        workers.start()
        preload = threading.Thread(target=layout_stage.preload, name="dcmpack-preload", daemon=True)
        preload.start()
    with clock("scan"):
        sessions, series, skipped = index_stage.index_files(files, config.exclude, progress=_step(progress, "scan"),
                                                            jobs=config.jobs, phi=found, public=public,
                                                            workers=workers)
    with clock("plan"):
        if preload is not None:
            preload.join()
        return _name_series(config, sets, sessions, series, skipped)


def _name_series(config: ReleaseConfig, sets: list[SourceSet], sessions, series, skipped) -> Plan:
    """Heuristic names, entities, identities and BIDS paths for indexed series."""
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
    # Non-image series a remote source left at the archive are excluded like local ones.
    for _ in range(sum(s.not_fetched for s in sets)):
        excluded.append(Excluded(-1, None, ExclusionReason.NOT_IMAGE, "non-image series not fetched"))
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
                                     f"same BIDS name as series {taken[relpath] + 1}"))
            continue
        taken[relpath] = item.index
        planned.append(Planned(item, decision, who.subject, who.session, relpath))
    labels = tuple((s.index, identities[s.index]) for s in sessions)
    return Plan(sessions, series, tuple(planned), tuple(excluded), skipped, labels)


def plan(config: ReleaseConfig, progress: Progress | None = None) -> Plan:
    """Dry run: which series go where, and which are left out and why (converts nothing).

    Parameters
    ----------
    config : ReleaseConfig
    progress : callable, optional
        ``progress(step, done, total)``; step ``scan`` counts files whose header was read.

    Raises
    ------
    ConfigError, InputError
    """
    with tempfile.TemporaryDirectory(prefix="dcmpack-plan-") as tmp:
        os.chmod(tmp, 0o700)
        return _plan_from(config, _gather(config, Path(tmp), progress), progress)


# ---------------------------------------------------------------- per-series task

@dataclasses.dataclass(frozen=True, slots=True)
class TaskResult:
    """What one conversion task returns (small: the NIfTI itself is already staged).

    ``fields`` are the derived sidecar fields before the allowlist, which the build applies
    with the PHI terms of the whole source (``_collect``): a task sees no PHI value.
    """

    series_index: int
    relpath: str
    staged: tuple[bundle_stage.Staged, ...] = ()
    fields: tuple[tuple[str, object], ...] = ()
    shape: tuple[int, ...] = ()
    zooms: tuple[float, ...] = ()
    error: str = ""
    pictures: report_stage.Pictures | None = None  # QC thumbnails made from the voxels in memory


def convert_task(item: Planned, dataset_dir: str, allow: tuple[str, ...], allow_free_text: tuple[str, ...],
                 tool: str, engine: str = "dicom2nifti") -> TaskResult:
    """Convert one planned series, derive and filter its sidecar, stage its files.

    A pure function of its arguments (runs in a worker process or on a Dask worker).
    """
    if engine == "dcm2niix":
        return _convert_task_dcm2niix(item, dataset_dir, allow, allow_free_text, tool)
    series, name = item.series, item.name
    try:
        datasets = convert_stage.read_series_datasets(series.files)
        volume = convert_stage.convert_datasets(datasets, frames=series.frames, release=True)
    except convert_stage.ConversionFailed as exc:
        return TaskResult(series.index, item.relpath, error=exc.detail)
    data = _as_4d_if_func(volume.data, name)
    fields = sidecar_stage.derive_fields(volume.heads, volume.slice_datasets, volume.affine, data.shape,
                                         dict(name.entities), name.datatype, name.suffix,
                                         sources=tuple(datasets), frames=tuple(getattr(series, "frames", ()) or ()))
    tables = None
    if name.datatype == "dwi":
        tables = diffusion_tables(volume.heads, volume.affine)
        if tables is None:
            return TaskResult(series.index, item.relpath, error="no diffusion b-values/vectors in the headers")
    affine = volume.affine
    del datasets, volume  # the headers are done with; the voxels are in ``data``
    return _finish_task(item, dataset_dir, data, affine, fields, tables, allow, allow_free_text, tool)


def _convert_task_dcm2niix(item: Planned, dataset_dir: str, allow: tuple[str, ...],
                           allow_free_text: tuple[str, ...], tool: str) -> TaskResult:
    """``convert_task`` with the dcm2niix engine: its voxels, JSON and b-tables through our
    NIfTI hygiene, allowlist (with this series' PHI terms) and staging (see ``packager.engines``)."""
    series, name = item.series, item.name
    try:
        output = engines.run_dcm2niix(series.files, frames=tuple(series.frames or ()))
    except convert_stage.ConversionFailed as exc:
        return TaskResult(series.index, item.relpath, error=exc.detail)
    data = _as_4d_if_func(output.data, name)
    fields = engines.sidecar_fields(output, dict(name.entities), name.datatype, name.suffix)
    tables = None
    if name.datatype == "dwi":
        if output.bval is None or output.bvec is None:
            return TaskResult(series.index, item.relpath, error="dcm2niix wrote no b-values/vectors")
        tables = (output.bval, output.bvec)
    return _finish_task(item, dataset_dir, data, output.affine, fields, tables, allow, allow_free_text, tool)


def _as_4d_if_func(data, name: BidsName):
    """BOLD-like runs must be 4D even with one volume (BIDS validator rule)."""
    if name.datatype == "func" and data.ndim == 3 and name.suffix in ("bold", "cbv", "phase"):
        return data[..., None]
    return data


def _finish_task(item: Planned, dataset_dir: str, data, affine, fields: dict,
                 tables: tuple[str, str] | None, allow: tuple[str, ...], allow_free_text: tuple[str, ...],
                 tool: str) -> TaskResult:
    """The engine-independent tail: clean NIfTI (with the TR the sidecar will state), staging."""
    fields["ConversionSoftware"] = "dcmpack"
    fields["ConversionSoftwareVersion"] = tool
    # PHI terms never drop a number: the TR kept here is the one the build keeps (``_collect``).
    kept = allowlist.apply_allowlist(fields, allow=allow, allow_free_text=allow_free_text).fields
    tr = kept.get("RepetitionTime") if data.ndim == 4 else None
    folder = Path(dataset_dir)
    nifti, (shape, zooms) = bundle_stage.stage_stream(
        folder, item.relpath + ".nii.gz", lambda sink: write_nifti(sink, data, affine, tr))
    staged = [nifti]
    if tables is not None:
        staged.append(bundle_stage.stage_bytes(folder, item.relpath + ".bval", tables[0].encode()))
        staged.append(bundle_stage.stage_bytes(folder, item.relpath + ".bvec", tables[1].encode()))
    return TaskResult(item.series.index, item.relpath, tuple(staged), tuple(sorted(fields.items())),
                      shape, zooms, pictures=_pictures(data, affine, item.name))


def _pictures(data, affine, name: BidsName) -> report_stage.Pictures | None:
    """The run's QC pictures while its voxels are in memory (the report reads the file otherwise)."""
    try:
        return report_stage.pictures_of(data, affine, report_stage.wants_carpet(name.datatype, name.suffix))
    except (ValueError, TypeError, IndexError, MemoryError):
        return None


def _run_tasks(items: list[Planned], dataset_dir: Path, config: ReleaseConfig, progress: Progress | None,
               workers: executors.Workers | None = None) -> list[TaskResult]:
    """``convert_task`` for every planned series, on the configured executor, in ``items`` order."""
    engines.require(config.convert.engine)  # ConfigError (exit 2) when the chosen engine is not installed
    tool = f"dcmpack {__version__}; {_engine_version(config.convert.engine)}"
    args = (config.sidecar.allow, config.sidecar.allow_free_text, tool, config.convert.engine)
    probe = tuple(dict.fromkeys(str(p.series.files[0]) for p in items[:1] + items[-1:] if p.series.files))
    results = executors.run(convert_task, items, dataset_dir, args, executor=config.executor, jobs=config.jobs,
                            cost=_series_cost, progress=_step(progress, "convert"),
                            initializer=_worker_signals, probe=probe, workers=workers)
    # A Dask worker staged its files in its own scratch folder: point at where they are now.
    return [dataclasses.replace(r, staged=tuple(dataclasses.replace(s, path=dataset_dir / s.relpath)
                                                for s in r.staged)) for r in results]


def _series_cost(item: Planned) -> int:
    """Relative work of a series (pixels), so the biggest start first."""
    series = item.series
    return max(series.n_frames, series.n_files, 1) * max(series.rows, 1) * max(series.columns, 1)


def _worker_signals() -> None:
    """Workers leave interrupts to the parent (which stops them): no second traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for number in _STOP_SIGNALS:
        signal.signal(number, signal.SIG_DFL)


def _engine_version(engine: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{engine} {version(engine)}"
    except PackageNotFoundError:
        return engine


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
    clock = _Clock()
    output = Path(config.output)
    target = output / bundle_name(config)
    if target.exists() and not config.force:
        raise OutputError(f"output: {target} exists (use --force to replace it)")
    with _staging(output) as staging, ExitStack() as stack:
        downloads = staging / "sources"
        downloads.mkdir(mode=0o700)
        with clock("sources"):
            sets = _gather(config, downloads, progress)
        source_phi: tuple[set, set] = (set(), set())  # filled by the header pass (one read per file)
        workers = stack.enter_context(executors.Workers(config.jobs, initializer=_worker_signals)) \
            if executors.parse(config.executor) is None else None
        the_plan = _plan_from(config, sets, progress, phi=source_phi, clock=clock, workers=workers)
        if not the_plan.planned:
            raise InputError(f"input: nothing to release: all {len(the_plan.series)} series were excluded"
                             f"{_first_failure(the_plan.excluded)} (see: dcmpack plan)")
        dataset_dir = staging / "dataset"
        dataset_dir.mkdir(mode=0o700)
        with clock("convert"):
            results = _run_tasks(list(the_plan.planned), dataset_dir, config, progress, workers)
        values = _source_phi(sets, *source_phi)
        with clock("sidecars"):
            converted = _collect(the_plan, results, config, values)
        with clock("bundle"):
            staged, manifest = _dataset(config, the_plan, converted, dataset_dir)
            # The validator reads the staged dataset (the zip's bytes, see ``verify``) from now on,
            # while the zip is written and audited.
            validation = stack.enter_context(_validation(dataset_dir))
            zip_path = staging / target.name
            _, size = bundle_stage.write_bundle(zip_path, config.dataset.name,
                                                sorted(staged, key=lambda s: s.relpath), manifest,
                                                progress=_bytes_progress(progress, staged, manifest), digest=False)
            # the bundle's own digest (for the result and the report) is taken while it is audited
            digest = stack.enter_context(ThreadPoolExecutor(max_workers=1)).submit(bundle_stage.file_sha256, zip_path)
        with clock("matcher"):
            matcher = phi_stage.Matcher(values)  # for the audit and the report's scrubber
        validator = _audit_and_verify(zip_path, validation, values, matcher, progress, clock)
        sha = digest.result()
        # The QC report is rendered while the staged NIfTI files still exist, published after the bundle.
        staged_report = staging / REPORT_NAME
        with clock("report"):
            report_stage.write_report(staged_report, report_stage.ReportData(
                dataset=config.dataset.name, bundle=target.name, sha256=sha, size=size,
                tool=f"dcmpack {__version__}, {_engine_version(config.convert.engine)}",
                runs=tuple(converted.report_runs), excluded=tuple(_report_exclusion(e) for e in converted.excluded),
                skipped_files=the_plan.skipped_files, validator=validator),
                dataset_dir, scrub=_scrubber(matcher), progress=_step(progress, "report"), jobs=config.jobs,
                workers=workers, made=converted.pictures)
        try:
            os.replace(zip_path, target)
            os.replace(staged_report, output / REPORT_NAME)
        except OSError as exc:
            raise OutputError(f"output: cannot publish {target.name} ({_os_reason(exc)})") from None
    return BuildResult(bundle=target, sha256=sha, size=size, plan=the_plan,
                       runs=tuple(sorted(p.relpath for p in converted.done)), excluded=tuple(converted.excluded),
                       report=output / REPORT_NAME, seconds=clock.total(), validator=validator,
                       timings=tuple(clock.laps))


class _Clock:
    """Wall time per build stage, logged as each one ends (``with clock("convert"): ...``)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.laps: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - began
            self.laps.append((stage, round(seconds, 3)))
            log.info("time: %s %.2f s", stage, seconds)

    def total(self) -> float:
        return time.monotonic() - self.started


@dataclasses.dataclass(slots=True)
class _Converted:
    """The task results gathered in series order (what the bundle and the report are made of)."""

    done: list[Planned]
    excluded: list[Excluded]
    staged: list[bundle_stage.Staged]
    fields: dict[str, dict]
    dropped: Counter
    run_info: list[dict]
    report_runs: list[report_stage.Run]
    pictures: dict[str, report_stage.Pictures | None] = dataclasses.field(default_factory=dict)


def _collect(the_plan: Plan, results: list[TaskResult], config: ReleaseConfig, values: set) -> _Converted:
    """Results in series order; sidecar fields through the allowlist with the PHI terms of the
    whole source (every header's values and the source path names): a string holding any
    term a PHI audit of the bundle searches for is dropped before it is written."""
    engine = config.convert.engine
    terms = frozenset(t for v in values for t in phi_stage.search_terms(v))
    by_index = {p.series.index: p for p in the_plan.planned}
    out = _Converted([], list(the_plan.excluded), [], {}, Counter(), [], [])
    for result in sorted(results, key=lambda r: r.series_index):
        item = by_index[result.series_index]
        if result.error:
            out.excluded.append(Excluded(item.series.index, item.series.series_number,
                                         ExclusionReason.CONVERSION_FAILED, result.error))
            continue
        filtered = allowlist.apply_allowlist(dict(result.fields), allow=config.sidecar.allow,
                                             allow_free_text=config.sidecar.allow_free_text, phi_terms=terms)
        dropped = {"unknown": filtered.dropped_unknown, "invalid": filtered.dropped_invalid,
                   "phi": filtered.dropped_phi, "denied": filtered.dropped_denied}
        out.done.append(item)
        out.staged.extend(result.staged)
        out.fields[result.relpath + ".nii.gz"] = filtered.fields
        out.dropped.update(dropped)
        out.report_runs.append(_report_run(item, result, filtered.fields, dropped))
        out.pictures[result.relpath] = result.pictures
        out.run_info.append({"path": result.relpath + ".nii.gz", "datatype": item.name.datatype,
                             "suffix": item.name.suffix, "shape": list(result.shape),
                             "voxel_size": [round(z, 4) for z in result.zooms[:3]], "engine": engine})
    if not out.done:
        raise InputError(f"input: nothing to release: no series could be converted"
                         f"{_first_failure(out.excluded)} ({len(out.excluded)} excluded; see: dcmpack plan)")
    return out


def _dataset(config: ReleaseConfig, the_plan: Plan, converted: _Converted,
             dataset_dir: Path) -> tuple[list[bundle_stage.Staged], bytes]:
    """Sidecars with field map links and the de-identification record, the dataset-level files,
    and the manifest (all staged files listed)."""
    fieldmaps.link_fieldmaps(converted.done, converted.fields)
    record = allowlist.apply_allowlist(layout_stage.deidentification_record(config.deid.dates)).fields
    for meta in converted.fields.values():
        meta.update(record)
    staged = list(converted.staged)
    staged.extend(_dataset_files(config, dataset_dir, converted.done, converted.fields, dict(the_plan.identities)))
    manifest = _manifest(config, staged, converted.run_info, converted.excluded, converted.dropped)
    return staged, manifest


@contextmanager
def _validation(dataset_dir: Path) -> Iterator[verify_stage.Validation | None]:
    """bids-validator-deno started on the staged dataset (None when not installed), stopped on exit."""
    validation = verify_stage.start_validation(dataset_dir) if verify_stage.find_validator() else None
    try:
        yield validation
    finally:
        if validation is not None:
            validation.cancel()


def _audit_and_verify(zip_path: Path, validation: verify_stage.Validation | None, values: set,
                      matcher: phi_stage.Matcher, progress: Progress | None, clock: _Clock) -> dict:
    """PHI audit and verify of the staged zip (PhiAuditError/VerifyError: nothing is published).

    Returns the validator's counts for the report and the result.
    """
    if progress:
        progress("audit", 0, None)
    with clock("audit"):
        result_audit = audit_stage.audit_bundle(zip_path, values, matcher=matcher)
    if not result_audit.clean:
        first = result_audit.hits[0]
        raise PhiAuditError(f"audit: {len(result_audit.hits)} PHI hit(s), nothing published; first: "
                            f"{first.kind} ({first.tag}) in {first.stream} of {first.member}")
    if progress:
        progress("verify", 0, None)
    with clock("verify"):
        report = verify_stage.verify(zip_path, validation=validation)
    if not report.ok:
        what = report.problems[0] if report.problems else f"{report.validator_errors} BIDS validator error(s)"
        codes = ", ".join(sorted({c for s, c, _ in report.validator_codes if s == "error"}))
        raise VerifyError(f"verify: bundle rejected, nothing published: {what}" + (f" ({codes})" if codes else ""))
    return {"errors": report.validator_errors, "warnings": report.validator_warnings,
            "codes": [list(c) for c in report.validator_codes]}


def _first_failure(excluded) -> str:
    """``; first: series N (no. M): detail`` for the one-line error when nothing converts."""
    failures = [e for e in excluded if e.reason.is_error] or list(excluded)
    if not failures:
        return ""
    first = failures[0]
    number = f" (no. {first.series_number})" if first.series_number is not None else ""
    return f"; first: series {first.series_index + 1}{number}: {first.detail or first.reason.value}"


def _bytes_progress(progress: Progress | None, staged, manifest: bytes):
    """``write_bundle``'s ``progress(nbytes)`` as ``progress("zip", done, total)``."""
    if progress is None:
        return None
    total = sum(s.size for s in staged) + len(manifest)
    done = 0

    def advance(nbytes: int) -> None:
        nonlocal done
        done = min(done + nbytes, total)
        progress("zip", done, total)

    progress("zip", 0, total)
    return advance


def _report_run(item: Planned, result: TaskResult, fields: dict, dropped: dict[str, int]) -> report_stage.Run:
    tr = fields.get("RepetitionTime")
    warnings = []
    labels = {"phi": "sidecar value(s) dropped: they contained a source PHI value",
              "invalid": "sidecar value(s) dropped: failed validation",
              "denied": "sidecar key(s) dropped: on the hard denylist"}
    for kind, count in dropped.items():
        if count and kind in labels:
            warnings.append(f"{count} {labels[kind]}")
    if item.name.datatype == "func" and len(result.shape) == 4 and result.shape[3] < 5:
        warnings.append(f"only {result.shape[3]} volume(s) in a functional run")
    if item.name.datatype == "func" and not tr:
        warnings.append("no RepetitionTime: the run cannot be used for timing")
    return report_stage.Run(relpath=result.relpath, series=item.series.index + 1,
                            series_number=item.series.series_number, datatype=item.name.datatype,
                            suffix=item.name.suffix, shape=tuple(result.shape), zooms=tuple(result.zooms),
                            repetition_time=float(tr) if isinstance(tr, (int, float)) else None,
                            warnings=tuple(warnings))


def _report_exclusion(item: Excluded) -> report_stage.Exclusion:
    return report_stage.Exclusion(series=item.series_index + 1, series_number=item.series_number,
                                  reason=item.reason.value, detail=item.detail, is_error=item.reason.is_error)


def _scrubber(matcher: phi_stage.Matcher) -> Callable[[str], str]:
    """Second line of defence for the report: a text holding a source PHI term is withheld
    (``matcher``: the audit's, same terms, same word/number rules)."""

    def scrub(text: str) -> str:
        return "[withheld: contains a source value]" if matcher.find_text(str(text)) else str(text)

    return scrub


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
    """PHI values of every source header plus source path names (what a build's header pass
    collects: the same reader, the same values)."""
    values: set = set()
    public: set[str] = set()
    seen: set = set()
    for source_set in sets:
        for item in source_set.files:
            try:
                index_stage.read_header(item, phi=values, public=public, seen=seen)
            except InputError:  # unreadable files were refused by the build's index
                continue
    return _source_phi(sets, values, public)


def _source_phi(sets: list[SourceSet], values: set, public: set) -> set:
    """Header PHI values (collected with ``public``) plus source path names, minus public text."""
    values = set(values)
    for source_set in sets:
        values |= audit_stage.path_values(f.relpath for f in source_set.files)
        values |= audit_stage.path_values([source_set.label])
    return phi_stage.without_public(values, public)


def audit(bundle: Path, sources: tuple[str, ...], *, show_values: bool = False) -> audit_stage.AuditResult:
    """Search a bundle for the PHI values of its sources (see ``packager.audit``)."""
    if not Path(bundle).is_file():
        raise InputError(f"audit: {bundle}: no such bundle")
    with tempfile.TemporaryDirectory(prefix="dcmpack-audit-") as tmp:
        os.chmod(tmp, 0o700)
        sets = [sources_stage.open_source(s, Path(tmp)) for s in sources]
        values = collect_source_phi(sets)
        return audit_stage.audit_bundle(Path(bundle), values, show_values=show_values)


def pull(spec: str, output: Path, *, ca_bundle: str | None = None, move_dest: str | None = None,
         retrieve: str | None = None, progress: Progress | None = None) -> SourceSet:
    """Fetch a remote session into a private (0700) folder, resumable: rerun to continue.

    Raises
    ------
    ConfigError
        Not a remote URL, or a bad one.
    InputError
        Authentication, no matching study, network failure after retries.
    """
    if not sources_stage.is_remote(spec):
        raise ConfigError(f"pull: {spec}: not a dicomweb+http(s)://, dimse:// or xnat:// URL")
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(output, 0o700)
    except OSError as exc:
        raise OutputError(f"output: {output}: cannot create a private folder ({_os_reason(exc)})") from None
    options = {"ca_bundle": ca_bundle, "move_dest": move_dest, "retrieve": retrieve,
               "progress": _step(progress, "fetch")}
    return sources_stage.open_source(spec, output, **options)


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


__all__ = ["build", "plan", "pull", "verify", "audit", "init_config", "sample_config", "sample_root",
           "bundle_name", "convert_task", "DcmpackError", "read_key"]
