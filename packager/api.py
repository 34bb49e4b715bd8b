"""The Python API: the one place where pipeline stages meet (orchestration only).

``plan`` runs sources -> index -> naming (heuristic, deid, layout paths; converts nothing);
``build`` continues with the per-series task (``convert.task``, on the configured executor) ->
one allowlist pass and the dataset files (``release.dataset``) -> manifest -> bundle -> audit
and verify (``release.review``), all inside a private 0700 staging folder on the output's
filesystem (``release.staging``), and publishes with one atomic rename only when the audit is
clean and verification passed. Per-series failures become ``Excluded`` entries (exit 1); they
never stop other series and are never silent.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from packager import executors
from packager import index as index_stage
from packager import phi as phi_stage
from packager import sources as sources_stage
from packager.config import Engine, ReleaseConfig, parse_executor, read_key
from packager.errors import ConfigError, DcmpackError, InputError, OutputError, VerifyError
from packager.model import BuildResult, Index, Plan, SourceSet
from packager.naming import heuristic as heuristic_stage
from packager.phi import logmask
from packager.progress import Clock, Progress, step, zip_bytes
from packager.release import bundle as bundle_stage
from packager.release import uptodate as uptodate_stage
from packager.release.staging import (
    bundle_name,
    check_replace,
    destination,
    private_folder,
    publish,
    staging,
    worker_signals,
)
from packager.sample import init_config, sample_config

if TYPE_CHECKING:  # imported where used (see build)
    from packager.inspection import Inspection
    from packager.release import audit as audit_stage
    from packager.release import diff as diff_stage
    from packager.release import verify as verify_stage

REPORT_NAME = "report.html"  # private QC page, next to (never inside) the bundle


def _check_heuristic(config: ReleaseConfig) -> None:
    """Rules (match fields, BIDS names) are checked before any file is read: a mistake is exit 2
    at once, with the file and line. A Python heuristic's names are checked per series."""
    if config.heuristic.path is None:
        heuristic_stage.load_heuristic(config.heuristic)


def _gather(config: ReleaseConfig, folder: Path, progress: Progress | None = None) -> list[SourceSet]:
    if not config.sources:
        raise ConfigError("no SOURCE given (a folder, a .zip or a dicomweb+/dimse:/xnat: URL)")
    return [
        sources_stage.open_source(
            spec,
            folder,
            ca_bundle=config.ca_bundle,
            move_dest=config.move_dest,
            retrieve=config.retrieve,
            progress=step(progress, "fetch"),
        )
        for spec in config.sources
    ]


def _plan_from(
    config: ReleaseConfig,
    sets: list[SourceSet],
    progress: Progress | None = None,
    clock: Clock | None = None,
    workers: executors.Workers | None = None,
    collect_phi: bool = False,
) -> tuple[Plan, Index, set, phi_stage.Matcher]:
    clock = clock or Clock()
    with clock("scan"):
        index = index_stage.index_files(
            [f for s in sets for f in s.files],
            config.exclude,
            jobs=config.jobs,
            progress=step(progress, "scan"),
            collect_phi=collect_phi,
            workers=workers,
            cache=config.cache,
            strict=config.strict,
        )
    from packager.naming import planner  # see build
    from packager.release import review as review_stage

    # the source's PHI values (build only): the label policy checks labels against them, the
    # sidecar scrub, the audit and the report's scrubber search for them
    values = review_stage.source_phi(sets, index.phi_values, index.public_values) if collect_phi else set()
    with clock("matcher"):
        # reviewed exceptions ([audit] accept) left out; paths in later messages are checked against these terms
        matcher = phi_stage.Matcher(values, accept=frozenset(config.audit.accept), key=config.key)
        logmask.remember(matcher)
    with clock("plan"):
        the_plan = planner.plan_series(config, index, sum(s.not_fetched for s in sets), matcher)
    return the_plan, index, values, matcher


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
    _check_heuristic(config)
    with tempfile.TemporaryDirectory(prefix="dcmpack-plan-") as tmp:
        os.chmod(tmp, 0o700)
        # PHI values too: the label policy checks labels against them, as the build will
        the_plan = _plan_from(config, _gather(config, Path(tmp), progress), progress, collect_phi=True)[0]
        if config.convert.engine == Engine.DCM2NIIX:
            return the_plan
        # what our engine would refuse without decoding pixels (geometry, b-tables, decoders);
        # imported here: it reads headers with pydicom, which a fully reused build never needs
        from packager.convert import preflight
        from packager.naming import planner

        refusals = preflight.preflight_all(the_plan.planned, config.jobs)
        if config.convert.engine == Engine.AUTO:
            return planner.fall_back(the_plan, refusals)
        return planner.refuse(the_plan, refusals)


def inspect(config: ReleaseConfig, tsv: Path | None = None, progress: Progress | None = None) -> Inspection:
    """Every series (as ``plan`` groups them) with the fields rules match on, into a private TSV.

    Parameters
    ----------
    config : ReleaseConfig
        Sources, exclusion policy and output folder (no key needed: nothing is named).
    tsv : Path, optional
        Where to write; default ``series.tsv`` beside the config, else the key file, else here.
    progress : callable, optional
        ``progress(step, done, total)``; step ``scan`` counts files whose header was read.

    Returns
    -------
    Inspection

    Raises
    ------
    ConfigError, InputError, OutputError
        A path inside the output folder is a ConfigError.
    """
    from packager import inspection

    path = inspection.check_path(
        tsv or inspection.default_path(config.config_path, config.deid.key_file), config.output
    )
    with tempfile.TemporaryDirectory(prefix="dcmpack-inspect-") as tmp:
        os.chmod(tmp, 0o700)
        sets = _gather(config, Path(tmp), progress)
        index = index_stage.index_files(
            [f for s in sets for f in s.files], config.exclude, jobs=config.jobs, progress=step(progress, "scan")
        )
        return inspection.inspect(index, sets, path)


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
    clock = Clock()
    _check_heuristic(config)
    output, name = destination(config)
    target = output / name
    try:
        check_replace(target, config)
        refused = None
    except OutputError as exc:
        if not uptodate_stage.recordable(config):
            raise
        refused = exc  # unless nothing changed since it was built: then there is nothing to replace
    with staging(output) as staging_dir, ExitStack() as stack:
        (staging_dir / "sources").mkdir(mode=0o700)  # remote sources download here
        with clock("sources"):
            sets = _gather(config, staging_dir / "sources", progress)
        with clock("up to date"):
            record = uptodate_stage.record(config, sets, staging_dir, target, output / REPORT_NAME)
            done = record.result()  # nothing changed since the build that published the bundle
        if done is not None:
            return dataclasses.replace(done, seconds=clock.total(), timings=tuple(clock.laps))
        if refused is not None:
            raise refused
        workers = (
            stack.enter_context(executors.Workers(config.jobs, initializer=worker_signals))
            if parse_executor(config.executor) is None
            else None
        )
        the_plan, index, values, matcher = _plan_from(config, sets, progress, clock, workers, collect_phi=True)
        # imported once the headers are read: the header pass starts sooner without the
        # conversion task (and what it imports) in front of it (tests/test_startup.py)
        from packager.convert import task as task_stage
        from packager.naming import labels as labels_stage
        from packager.release import dataset as dataset_stage
        from packager.release import diff as diff_stage
        from packager.release import provenance as provenance_stage
        from packager.release import reuse as reuse_stage
        from packager.release import review as review_stage
        from packager.release.manifest import manifest as make_manifest

        stack.enter_context(review_stage.report_on_failure(output / REPORT_NAME, config, the_plan, sets, index))
        labels_stage.refuse_unapproved(the_plan, labels_stage.LabelPolicy.of(config))
        if not the_plan.planned:
            raise InputError(
                f"input: nothing to release: all {len(the_plan.series)} series were excluded"
                f"{dataset_stage.first_failure(the_plan.excluded)} (see: dcmpack plan)"
            )
        dataset_dir = staging_dir / "dataset"
        dataset_dir.mkdir(mode=0o700)
        with clock("convert"):
            results = task_stage.run_tasks(
                list(the_plan.planned), dataset_dir, config, step(progress, "convert"), worker_signals, workers
            )
        with clock("sidecars"):
            collected = dataset_stage.collect(the_plan, results, config, values)
        with clock("bundle"):
            staged = [
                *collected.staged,
                *dataset_stage.dataset_files(config, dataset_dir, collected, dict(the_plan.identities)),
                *provenance_stage.stage_records(config, dataset_dir, collected),
            ]
            staged = diff_stage.with_changes(config, staged, (run.planned.relpath for run in collected.runs))
            manifest = make_manifest(config, staged, collected)
            # The validator reads the staged dataset (the zip's bytes, see ``verify``) from now on,
            # while the zip is written and audited.
            validation = stack.enter_context(reuse_stage.validation(dataset_dir, staged, config.cache))
            published = reuse_stage.published(config.cache, config.dataset.name, staged, manifest)
            kept = published.unchanged(target)  # the target is this very zip already: audited where it is
            zip_path = target if kept is not None else staging_dir / target.name
            if kept is None:
                bundle_stage.write_bundle(
                    zip_path,
                    config.dataset.name,
                    sorted(staged, key=lambda s: s.relpath),
                    manifest,
                    progress=zip_bytes(progress, staged, manifest),
                    digest=False,
                )
                # read back once while it is audited: its own digest (for the result and the
                # report) and every member's CRC-32, which verify checks
                readback = stack.enter_context(ThreadPoolExecutor(max_workers=1)).submit(
                    bundle_stage.read_back, zip_path
                )
            checked = readback.result if kept is None else lambda: kept
        verdicts = reuse_stage.verdicts(config.cache)  # build cache: audit verdicts of unchanged members
        validator = review_stage.audit_and_verify(
            zip_path, validation, values, matcher, progress, clock, verdicts, checked
        )
        back = checked()
        sha, size = back.sha256, back.size
        # The QC report is rendered while the staged NIfTI files still exist, published after the bundle.
        with clock("report"):
            review_stage.write_report(
                staging_dir / REPORT_NAME,
                config,
                target.name,
                sha,
                size,
                the_plan,
                collected,
                validator,
                dataset_dir,
                matcher,
                step(progress, "report"),
                workers,
            )
        report = (staging_dir / REPORT_NAME, output / REPORT_NAME)
        publish(((zip_path, target), report) if kept is None else (report,))
        published.remember(sha, size)
        result = BuildResult(
            bundle=target,
            sha256=sha,
            size=size,
            plan=the_plan,
            runs=tuple(sorted(run.planned.relpath for run in collected.runs)),
            excluded=collected.excluded,
            report=output / REPORT_NAME,
            seconds=clock.total(),
            validator=validator,
            timings=tuple(clock.laps),
            unchanged=kept is not None,
        )
        record.remember(result)
    return result


def audit(
    bundle: Path,
    sources: tuple[str, ...],
    *,
    show_values: bool = False,
    accept: tuple[str, ...] = (),
    key: bytes = b"",
) -> audit_stage.AuditResult:
    """Search a bundle for the PHI values of its sources (see ``packager.release.audit``).

    Parameters
    ----------
    bundle : Path
    sources : tuple of str
        The SOURCEs it was built from (folders, zips or remote URLs).
    show_values : bool
        Put the matched values in the result (for the data owner's eyes only).
    accept, key : optional
        ``[audit] accept`` HMACs and the release key: reviewed terms are not hits.

    Returns
    -------
    AuditResult

    Raises
    ------
    ConfigError, InputError
        No such bundle, or a source that cannot be opened or read.
    """
    from packager.release import audit as audit_stage
    from packager.release import review as review_stage

    if not Path(bundle).is_file():
        raise InputError(f"audit: {bundle}: no such bundle")
    with tempfile.TemporaryDirectory(prefix="dcmpack-audit-") as tmp:
        os.chmod(tmp, 0o700)
        values = review_stage.collect_source_phi([sources_stage.open_source(s, Path(tmp)) for s in sources])
        return audit_stage.audit_bundle(Path(bundle), values, show_values=show_values, accept=accept, key=key)


def pull(
    spec: str,
    output: Path,
    *,
    ca_bundle: str | None = None,
    move_dest: str | None = None,
    retrieve: str | None = None,
    progress: Progress | None = None,
) -> SourceSet:
    """Fetch a remote session into a private (0700) folder, resumable: rerun to continue.

    Parameters
    ----------
    spec : str
        A ``dicomweb+http(s)://``, ``dimse://`` or ``xnat://`` URL.
    output : Path
        The folder to fetch into (created private).
    ca_bundle, move_dest, retrieve : str, optional
        TLS CA bundle, C-MOVE destination AE title, retrieve method (as ``dcmpack pull`` takes them).
    progress : callable, optional
        ``progress("fetch", done, total)``.

    Returns
    -------
    SourceSet

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
    return sources_stage.open_source(
        spec,
        private_folder(Path(output)),
        ca_bundle=ca_bundle,
        move_dest=move_dest,
        retrieve=retrieve,
        progress=step(progress, "fetch"),
    )


def diff(old: Path, new: Path) -> diff_stage.Changes:
    """What changed between two releases of a dataset (see ``packager.release.diff``).

    Parameters
    ----------
    old, new : Path
        Two published bundles.

    Returns
    -------
    Changes
        ``identical`` when both hold the same dataset files.

    Raises
    ------
    InputError
        A bundle that cannot be read.
    """
    from packager.release import diff as diff_stage

    return diff_stage.compare(diff_stage.read_bundle(Path(old)), diff_stage.read_bundle(Path(new)))


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
    from packager.release import verify as verify_stage

    if not Path(bundle).is_file():
        raise VerifyError(f"verify: {bundle}: no such bundle")
    return verify_stage.verify(Path(bundle), validate=validate)


__all__ = [
    "build",
    "inspect",
    "plan",
    "pull",
    "verify",
    "audit",
    "diff",
    "init_config",
    "sample_config",
    "bundle_name",
    "DcmpackError",
    "read_key",
]
