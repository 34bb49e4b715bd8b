"""The Python API: the one place where pipeline stages meet (orchestration only).

``plan`` runs sources -> index -> heuristics -> deid -> layout paths (no conversion);
``build`` continues with the per-series conversion task (``convert.task``, on the configured
executor) -> one allowlist pass over the sidecars (``release.dataset``) -> dataset files and
manifest -> bundle -> audit -> verify (``release.review``), all inside a private 0700 staging
folder on the output's filesystem (``release.staging``), and publishes with one atomic rename
only when the audit is clean and verification passed. Per-series failures become ``Excluded``
entries (exit 1); they never stop other series and are never silent.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

from packager import executors
from packager import index as index_stage
from packager import sources as sources_stage
from packager.config import ReleaseConfig, read_key, starter_config
from packager.convert import task as task_stage
from packager.convert.task import convert_task
from packager.errors import ConfigError, DcmpackError, InputError, OutputError, VerifyError
from packager.model import BuildResult, Index, Plan, SourceSet
from packager.naming import layout as layout_stage
from packager.naming import planner
from packager.phi import collect as phi_stage
from packager.release import audit as audit_stage
from packager.release import bundle as bundle_stage
from packager.release import dataset as dataset_stage
from packager.release import report as report_stage
from packager.release import review as review_stage
from packager.release import verify as verify_stage
from packager.release.manifest import manifest as make_manifest
from packager.release.staging import private_folder, publish, staging, worker_signals
from packager.sample import sample_config, sample_root

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int | None], None]

REPORT_NAME = "report.html"  # private QC page, next to (never inside) the bundle


def _step(progress: Progress | None, step: str) -> Callable[[int, int], None] | None:
    """``progress(step, done, total)`` as the ``(done, total)`` callback a stage takes."""
    return None if progress is None else (lambda done, total: progress(step, done, total))


def _gather(config: ReleaseConfig, staging_dir: Path, progress: Progress | None = None) -> list[SourceSet]:
    if not config.sources:
        raise ConfigError("no SOURCE given (a folder, a .zip or a dicomweb+/dimse:/xnat: URL)")
    return [sources_stage.open_source(spec, staging_dir, ca_bundle=config.ca_bundle, move_dest=config.move_dest,
                                      retrieve=config.retrieve, progress=_step(progress, "fetch"))
            for spec in config.sources]


def _plan_from(config: ReleaseConfig, sets: list[SourceSet], progress: Progress | None = None,
               clock: _Clock | None = None, workers: executors.Workers | None = None,
               collect_phi: bool = False) -> tuple[Plan, Index]:
    clock = clock or _Clock()
    files = [f for s in sets for f in s.files]
    # pybids takes ~1 s to import (SQLAlchemy and more); it is loaded here while the workers read
    # headers. Only once they run: forking while a thread imports can deadlock the child.
    preload = None
    if workers is not None and workers.size > 1:
        workers.start()
        preload = threading.Thread(target=layout_stage.preload, name="dcmpack-preload", daemon=True)
        preload.start()
    with clock("scan"):
        index = index_stage.index_files(files, config.exclude, progress=_step(progress, "scan"), jobs=config.jobs,
                                        collect_phi=collect_phi, workers=workers)
    with clock("plan"):
        if preload is not None:
            preload.join()
        return planner.plan_series(config, index, sum(s.not_fetched for s in sets)), index


def plan(config: ReleaseConfig, progress: Progress | None = None) -> Plan:
    """Dry run: which series go where, and which are left out and why (converts nothing).

    Parameters
    ----------
    config : ReleaseConfig
        From ``load_config`` + ``merge_flags`` (or ``sample_config``).
    progress : callable, optional
        ``progress(step, done, total)``; step ``scan`` counts files whose header was read.

    Returns
    -------
    Plan

    Raises
    ------
    ConfigError, InputError
    """
    with tempfile.TemporaryDirectory(prefix="dcmpack-plan-") as tmp:
        os.chmod(tmp, 0o700)
        return _plan_from(config, _gather(config, Path(tmp), progress), progress)[0]


def bundle_name(config: ReleaseConfig) -> str:
    """``<name>-<version>.zip`` (or the [bundle] name pattern).

    Raises
    ------
    ConfigError
        A pattern with other fields than {name} and {version}, or not a plain file name.
    """
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
    with staging(output) as staging_dir, ExitStack() as stack:
        downloads = staging_dir / "sources"
        downloads.mkdir(mode=0o700)
        with clock("sources"):
            sets = _gather(config, downloads, progress)
        workers = stack.enter_context(executors.Workers(config.jobs, initializer=worker_signals)) \
            if executors.parse(config.executor) is None else None
        the_plan, index = _plan_from(config, sets, progress, clock, workers, collect_phi=True)
        if not the_plan.planned:
            raise InputError(f"input: nothing to release: all {len(the_plan.series)} series were excluded"
                             f"{dataset_stage.first_failure(the_plan.excluded)} (see: dcmpack plan)")
        dataset_dir = staging_dir / "dataset"
        dataset_dir.mkdir(mode=0o700)
        with clock("convert"):
            results = task_stage.run_tasks(list(the_plan.planned), dataset_dir, config, _step(progress, "convert"),
                                           worker_signals, workers)
        values = review_stage.source_phi(sets, index.phi_values, index.public_values)
        with clock("sidecars"):
            collected = dataset_stage.collect(the_plan, results, config, values)
        with clock("bundle"):
            staged = [*collected.staged, *dataset_stage.dataset_files(config, dataset_dir, collected,
                                                                      dict(the_plan.identities))]
            manifest = make_manifest(config, staged, collected)
            # The validator reads the staged dataset (the zip's bytes, see ``verify``) from now on,
            # while the zip is written and audited.
            validation = stack.enter_context(review_stage.validation(dataset_dir))
            zip_path = staging_dir / target.name
            _, size = bundle_stage.write_bundle(zip_path, config.dataset.name,
                                                sorted(staged, key=lambda s: s.relpath), manifest,
                                                progress=_bytes_progress(progress, staged, manifest), digest=False)
            # the bundle's own digest (for the result and the report) is taken while it is audited
            digest = stack.enter_context(ThreadPoolExecutor(max_workers=1)).submit(bundle_stage.file_sha256, zip_path)
        with clock("matcher"):
            matcher = phi_stage.Matcher(values)  # for the audit and the report's scrubber
        validator = review_stage.audit_and_verify(zip_path, validation, values, matcher, progress, clock)
        sha = digest.result()
        # The QC report is rendered while the staged NIfTI files still exist, published after the bundle.
        staged_report = staging_dir / REPORT_NAME
        with clock("report"):
            report_stage.write_report(
                staged_report, review_stage.report_data(config, target.name, sha, size, the_plan.skipped_files,
                                                        collected, validator),
                dataset_dir, scrub=review_stage.scrubber(matcher), progress=_step(progress, "report"),
                jobs=config.jobs, workers=workers, made=review_stage.pictures(collected))
        publish(((zip_path, target), (staged_report, output / REPORT_NAME)))
    return BuildResult(bundle=target, sha256=sha, size=size, plan=the_plan,
                       runs=tuple(sorted(run.planned.relpath for run in collected.runs)),
                       excluded=collected.excluded, report=output / REPORT_NAME, seconds=clock.total(),
                       validator=validator, timings=tuple(clock.laps))


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


# ---------------------------------------------------------------- audit / verify / init

def audit(bundle: Path, sources: tuple[str, ...], *, show_values: bool = False) -> audit_stage.AuditResult:
    """Search a bundle for the PHI values of its sources (see ``packager.release.audit``).

    Parameters
    ----------
    bundle : Path
        A bundle zip.
    sources : tuple of str
        The SOURCEs it was built from (folders, zips or remote URLs).
    show_values : bool
        Put the matched values in the result (for the data owner's eyes only).

    Returns
    -------
    AuditResult

    Raises
    ------
    InputError
        No such bundle, or an unreadable source.
    """
    if not Path(bundle).is_file():
        raise InputError(f"audit: {bundle}: no such bundle")
    with tempfile.TemporaryDirectory(prefix="dcmpack-audit-") as tmp:
        os.chmod(tmp, 0o700)
        sets = [sources_stage.open_source(s, Path(tmp)) for s in sources]
        values = review_stage.collect_source_phi(sets)
        return audit_stage.audit_bundle(Path(bundle), values, show_values=show_values)


def pull(spec: str, output: Path, *, ca_bundle: str | None = None, move_dest: str | None = None,
         retrieve: str | None = None, progress: Progress | None = None) -> SourceSet:
    """Fetch a remote session into a private (0700) folder, resumable: rerun to continue.

    Parameters
    ----------
    spec : str
        A ``dicomweb+http(s)://``, ``dimse://`` or ``xnat://`` URL.
    output : Path
        The folder to fetch into (created private).
    ca_bundle, move_dest, retrieve : str, optional
        TLS CA bundle, C-MOVE destination AE title, retrieve method (see ``dcmpack pull --help``).
    progress : callable, optional
        ``progress("fetch", done, total)``.

    Returns
    -------
    SourceSet
        The fetched files.

    Raises
    ------
    ConfigError
        Not a remote URL, or a bad one.
    InputError
        Authentication, no matching study, network failure after retries.
    OutputError
        The output folder cannot be made private.
    """
    if not sources_stage.is_remote(spec):
        raise ConfigError(f"pull: {spec}: not a dicomweb+http(s)://, dimse:// or xnat:// URL")
    return sources_stage.open_source(spec, private_folder(Path(output)), ca_bundle=ca_bundle, move_dest=move_dest, retrieve=retrieve,
                                     progress=_step(progress, "fetch"))


def verify(bundle: Path, *, validate: bool = True) -> verify_stage.Report:
    """Verify a published bundle (see ``packager.release.verify``).

    Parameters
    ----------
    bundle : Path
    validate : bool
        Also run the BIDS validator when it is installed.

    Returns
    -------
    Report

    Raises
    ------
    VerifyError
        No such bundle.
    """
    if not Path(bundle).is_file():
        raise VerifyError(f"verify: {bundle}: no such bundle")
    return verify_stage.verify(Path(bundle), validate=validate)


def init_config(path: Path, *, force: bool = False) -> Path:
    """Write the commented starter release.toml.

    Parameters
    ----------
    path : Path
    force : bool
        Overwrite an existing file.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputError
        The file exists and ``force`` is not set.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputError(f"{path} exists (use --force to overwrite)")
    path.write_text(starter_config(), encoding="utf-8")
    return path


__all__ = ["build", "plan", "pull", "verify", "audit", "init_config", "sample_config", "sample_root",
           "bundle_name", "convert_task", "DcmpackError", "read_key"]
