"""Release, review: the checks of the staged bundle before it is published, and the QC report's data.

``source_phi`` is what the audit searches for: the PHI values of every source header (collected
by the index's header pass, or read again by ``collect_source_phi`` for ``dcmpack audit``) plus
the source's path names, minus text a source states in a public attribute. ``audit_and_verify``
searches the staged zip for the source's PHI values and verifies it (checksums, manifest,
allowlist, and the BIDS validator that ``validation`` started on the staged dataset); either
failure is an exception and nothing is published. ``write_report`` renders the private QC report:
the collected runs with value-free warnings and the exclusions, any text holding a source PHI
term withheld (``scrubber``). Refuses: PhiAuditError (an audit hit), VerifyError (a rejected
bundle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from packager import __version__, executors
from packager import phi as phi_stage
from packager.config import ReleaseConfig
from packager.convert.task import engine_version
from packager.errors import InputError, PhiAuditError, VerifyError
from packager.index.header import read_header
from packager.model import Excluded, Plan, SourceSet
from packager.release import audit as audit_stage
from packager.release import report as report_stage
from packager.release import verify as verify_stage
from packager.release.dataset import Collected, ConvertedRun

_DROPPED = {
    "phi": "sidecar value(s) dropped: they contained a source PHI value",
    "invalid": "sidecar value(s) dropped: failed validation",
    "denied": "sidecar key(s) dropped: on the hard denylist",
}


def collect_source_phi(sets: list[SourceSet]) -> set:
    """PHI values of every source header plus source path names (what a build's header pass
    collects: the same reader, the same values)."""
    values: set = set()
    public: set[str] = set()
    seen: set = set()
    for source_set in sets:
        for item in source_set.files:
            try:
                read_header(item, phi=values, public=public, seen=seen)
            except InputError:  # unreadable files were refused by the build's index
                continue
    return source_phi(sets, values, public)


def source_phi(sets: list[SourceSet], values: set | frozenset, public: set | frozenset) -> set:
    """Header PHI values (collected with ``public``) plus source path names, minus public text."""
    values = set(values)
    for source_set in sets:
        values |= audit_stage.path_values(f.relpath for f in source_set.files)
        values |= audit_stage.path_values([source_set.label])
    return phi_stage.without_public(values, set(public))


@contextmanager
def validation(dataset_dir: Path) -> Iterator[verify_stage.Validation | None]:
    """bids-validator-deno started on the staged dataset (None when not installed), stopped on exit."""
    running = verify_stage.start_validation(dataset_dir) if verify_stage.find_validator() else None
    try:
        yield running
    finally:
        if running is not None:
            running.cancel()


def audit_and_verify(
    zip_path: Path,
    running: verify_stage.Validation | None,
    values: set,
    matcher: phi_stage.Matcher,
    progress: Callable[[str, int, int | None], None] | None,
    clock: Callable[[str], AbstractContextManager],
) -> dict:
    """PHI audit and verify of the staged zip.

    Parameters
    ----------
    zip_path : Path
        The staged bundle.
    running : Validation or None
        The BIDS validator started by ``validation`` (None: not installed).
    values : set of PhiValue
        The source's PHI values; ``matcher`` is made of them.
    matcher : phi.Matcher
    progress : callable, optional
        ``progress(step, 0, None)`` as the audit and the verification start.
    clock : callable
        ``with clock(stage):`` times each step.

    Returns
    -------
    dict
        The validator's counts (errors, warnings, codes) for the report and the build result.

    Raises
    ------
    PhiAuditError
        A source PHI value in the bundle (named by class and member, never by its text).
    VerifyError
        The bundle failed verification or the BIDS validator.
    """
    if progress:
        progress("audit", 0, None)
    with clock("audit"):
        result_audit = audit_stage.audit_bundle(zip_path, values, matcher=matcher)
    if not result_audit.clean:
        first = result_audit.hits[0]
        raise PhiAuditError(
            f"audit: {len(result_audit.hits)} PHI hit(s), nothing published; first: "
            f"{first.kind} ({first.tag}) in {first.stream} of {first.member}"
        )
    if progress:
        progress("verify", 0, None)
    with clock("verify"):
        report = verify_stage.verify(zip_path, validation=running)
    if not report.ok:
        what = report.problems[0] if report.problems else f"{report.validator_errors} BIDS validator error(s)"
        codes = ", ".join(sorted({c for s, c, _ in report.validator_codes if s == "error"}))
        raise VerifyError(f"verify: bundle rejected, nothing published: {what}" + (f" ({codes})" if codes else ""))
    return {
        "errors": report.validator_errors,
        "warnings": report.validator_warnings,
        "codes": [list(c) for c in report.validator_codes],
    }


def write_report(
    target: Path,
    config: ReleaseConfig,
    bundle: str,
    sha256: str,
    size: int,
    the_plan: Plan,
    collected: Collected,
    validator: dict,
    dataset_dir: Path,
    matcher: phi_stage.Matcher,
    progress: Callable[[int, int], None] | None,
    workers: executors.Workers | None,
) -> Path:
    """The private QC report of a build, rendered from the staged dataset (``report.write_report``).

    Runs come with value-free warnings, exclusions with their reasons; any text holding a source
    PHI term is withheld (``scrubber``); the pictures the tasks made are used, the rest are read
    from the staged NIfTI files.
    """
    data = report_stage.ReportData(
        dataset=config.dataset.name,
        bundle=bundle,
        sha256=sha256,
        size=size,
        tool=f"dcmpack {__version__}, {engine_version(config.convert.engine)}",
        runs=tuple(_report_run(run) for run in collected.runs),
        excluded=tuple(_report_exclusion(e) for e in collected.excluded),
        skipped_files=the_plan.skipped_files,
        validator=validator,
        deface="on" if config.deface.enabled else f"off: {config.deface.reason}",
    )
    return report_stage.write_report(
        target,
        data,
        dataset_dir,
        scrub=scrubber(matcher),
        progress=progress,
        jobs=config.jobs,
        workers=workers,
        made=_pictures(collected),
    )


def _pictures(collected: Collected) -> dict[str, report_stage.Pictures | None]:
    """QC pictures the tasks made from the voxels in memory, by run relpath."""
    return {run.result.relpath: run.result.pictures for run in collected.runs}


def _report_run(run: ConvertedRun) -> report_stage.Run:
    item, result = run.planned, run.result
    tr = run.sidecar.get("RepetitionTime")
    warnings = [f"{count} {_DROPPED[kind]}" for kind, count in run.dropped if count and kind in _DROPPED]
    if item.name.datatype == "func" and len(result.shape) == 4 and result.shape[3] < 5:
        warnings.append(f"only {result.shape[3]} volume(s) in a functional run")
    if item.name.datatype == "func" and not tr:
        warnings.append("no RepetitionTime: the run cannot be used for timing")
    if item.series.duplicates_left_out:
        warnings.append(f"{item.series.duplicates_left_out} identical copy/copies of files already read left out")
    return report_stage.Run(
        relpath=result.relpath,
        series=item.series.index + 1,
        series_number=item.series.series_number,
        datatype=item.name.datatype,
        suffix=item.name.suffix,
        shape=tuple(result.shape),
        zooms=tuple(result.zooms),
        repetition_time=float(tr) if isinstance(tr, (int, float)) else None,
        warnings=tuple(warnings),
        deface=_deface_line(result.deface),
        renders=tuple((label, png) for label, png in result.deface.views if isinstance(png, bytes))
        if result.deface is not None
        else (),
    )


def _deface_line(record) -> str:
    """A run's defacing status for the report, with the measured margins when defaced."""
    if record is None:
        return ""
    checks = dict(record.checks)
    if not record.defaced or "disagreement_mm" not in checks:
        return record.status
    return (
        f"{record.status}: {record.removed} voxels zeroed; brain \u2265 {checks['margin_mm']:.0f} mm from the cut; "
        f"a second registration agrees within {checks['disagreement_mm']:.1f} mm"
    )


def _report_exclusion(item: Excluded) -> report_stage.Exclusion:
    return report_stage.Exclusion(
        series=item.series_index + 1,
        series_number=item.series_number,
        reason=item.reason.value,
        detail=item.detail,
        is_error=item.reason.is_error,
    )


def scrubber(matcher: phi_stage.Matcher) -> Callable[[str], str]:
    """Second line of defence for the report: a text holding a source PHI term is withheld
    (``matcher``: the audit's, same terms, same word/number rules)."""

    def scrub(text: str) -> str:
        return "[withheld: contains a source value]" if matcher.find_text(str(text)) else str(text)

    return scrub
