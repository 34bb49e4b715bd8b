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
from packager.errors import DcmpackError, InputError, PhiAuditError, VerifyError
from packager.model import Excluded, Index, Plan, Series, SourceSet
from packager.release import audit as audit_stage
from packager.release import report as report_stage
from packager.release import verify as verify_stage
from packager.release.bundle import ReadBack
from packager.release.dataset import Collected, ConvertedRun
from packager.release.reuse import Verdicts

_DROPPED_KEY = {
    "phi": "dropped: its value contained a source PHI value",
    "invalid": "dropped: its value failed the allowlist's validation (type, range or vocabulary)",
    "denied": "dropped: on the hard denylist (identifying)",
}


def collect_source_phi(sets: list[SourceSet]) -> set:
    """PHI values of every source header plus source path names (what a build's header pass
    collects: the same reader, the same values)."""
    from packager.index.header import read_header  # pydicom: only ``dcmpack audit`` reads the headers again

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
    verdicts: Verdicts | None = None,
    checked: Callable[[], ReadBack] | None = None,
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
    verdicts : release.reuse.Verdicts, optional
        The build cache's audit verdicts (``audit_bundle``).
    checked : callable, optional
        Returns the build's read-back of the zip (``bundle.read_back``, running beside the
        audit); verify then checks members by it (see ``verify.verify``).

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
        result_audit = audit_stage.audit_bundle(zip_path, values, matcher=matcher, verdicts=verdicts)
    if not result_audit.clean:
        raise _refusal(zip_path, values, matcher, result_audit)
    if progress:
        progress("verify", 0, None)
    with clock("verify"):
        report = verify_stage.verify(zip_path, validation=running, checked=checked() if checked else None)
    if not report.ok:
        what = report.problems[0] if report.problems else f"{report.validator_errors} BIDS validator error(s)"
        codes = ", ".join(sorted({c for s, c, _ in report.validator_codes if s == "error"}))
        raise VerifyError(f"verify: bundle rejected, nothing published: {what}" + (f" ({codes})" if codes else ""))
    return {
        "errors": report.validator_errors,
        "warnings": report.validator_warnings,
        "codes": [list(c) for c in report.validator_codes],
        "files": {code: list(paths) for code, paths in report.extra.get("files", {}).items()},
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
    series = {s.index: s for s in the_plan.series}
    data = report_stage.ReportData(
        dataset=config.dataset.name,
        bundle=bundle,
        sha256=sha256,
        size=size,
        tool=f"dcmpack {__version__}, {engine_version(config.convert.engine)}",
        runs=tuple(_report_run(run) for run in collected.runs),
        excluded=tuple(_report_exclusion(e, series.get(e.series_index)) for e in collected.excluded),
        skipped_files=the_plan.skipped_files,
        validator=validator,
        notes=_notes(the_plan, collected, config, matcher),
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


def _notes(the_plan: Plan, collected: Collected, config: ReleaseConfig, matcher: phi_stage.Matcher) -> tuple[str, ...]:
    """The report's value-free notes: identity warnings, labels replaced by neutral ones, and the
    reviewed audit exceptions ([audit] accept) in use (counts only: never which values)."""
    notes = tuple(f"identity: {w}" for w in the_plan.warnings)
    if config.audit.accept:
        notes += (
            f"audit: {len(config.audit.accept)} reviewed exception(s) in [audit] accept; "
            f"{matcher.accepted} search term(s) of this source left out because of them",
        )
    if collected.neutral_labels:
        notes += (
            f"labels: {collected.neutral_labels} label(s) from protocol text were not approved and were "
            'published as neutral placeholders ([labels] unapproved = "neutral")',
        )
    return notes


def _pictures(collected: Collected) -> dict[str, report_stage.Pictures | None]:
    """QC pictures the tasks made from the voxels in memory, by run relpath."""
    return {run.result.relpath: run.result.pictures for run in collected.runs}


def _report_run(run: ConvertedRun) -> report_stage.Run:
    item, result = run.planned, run.result
    tr = run.sidecar.get("RepetitionTime")
    warnings = [f"sidecar key {key} {_DROPPED_KEY[why]}" for key, why in run.dropped_keys if why in _DROPPED_KEY]
    if result.fallback:
        warnings.append(f"converted by dcm2niix (--engine auto): dcmpack's engine refused it: {result.fallback}")
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
        folder=item.series.folder,
        description=item.series.series_description or item.series.protocol_name,
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
    if record.cut_from:  # a part of an acquisition: its magnitude's (or another part's) cut
        return f"{record.status}: {record.removed} voxels zeroed, the cut of {record.cut_from} (same voxel grid)"
    return (
        f"{record.status}: {record.removed} voxels zeroed; brain \u2265 {checks['margin_mm']:.0f} mm from the cut; "
        f"a second registration agrees within {checks['disagreement_mm']:.1f} mm"
    )


def _report_exclusion(item: Excluded, series: Series | None) -> report_stage.Exclusion:
    return report_stage.Exclusion(
        series=item.series_index + 1,
        series_number=item.series_number,
        reason=item.reason.value,
        detail=item.detail,
        is_error=item.reason.is_error,
        folder=series.folder if series is not None else "",
        description=(series.series_description or series.protocol_name) if series is not None else "",
        advice=item.reason.advice,
    )


@contextmanager
def report_on_failure(
    target: Path, config: ReleaseConfig, the_plan: Plan, sets: list[SourceSet], index: Index
) -> Iterator[None]:
    """A build that fails after planning still leaves its private report (0600): the error, the
    series it had planned (not converted) and the exclusions with what to do; then the error goes on.
    """
    try:
        yield
    except DcmpackError as exc:
        try:
            scrub = scrubber(phi_stage.Matcher(source_phi(sets, index.phi_values, index.public_values)))
            series = {s.index: s for s in the_plan.series}
            planned = tuple(
                report_stage.Run(
                    relpath=p.relpath,
                    series=p.series.index + 1,
                    series_number=p.series.series_number,
                    datatype=p.name.datatype,
                    suffix=p.name.suffix,
                    shape=(),
                    zooms=(),
                    warnings=("not converted: the build stopped first",),
                    folder=p.series.folder,
                    description=p.series.series_description or p.series.protocol_name,
                )
                for p in the_plan.planned
            )
            data = report_stage.ReportData(
                dataset=config.dataset.name,
                bundle=f"{target.parent / '(not published)'}",
                sha256="",
                size=0,
                tool=f"dcmpack {__version__}",
                runs=planned,
                excluded=tuple(_report_exclusion(e, series.get(e.series_index)) for e in the_plan.excluded),
                skipped_files=the_plan.skipped_files,
                failure=str(exc),
            )
            report_stage.write_private(target, report_stage.render(data, ((r, None) for r in planned), scrub))
        except (OSError, DcmpackError):  # the report helps; it never replaces the build's own error
            pass
        raise


def scrubber(matcher: phi_stage.Matcher) -> Callable[[str], str]:
    """Second line of defence for the report: a text holding a source PHI term is withheld
    (``matcher``: the audit's, same terms, same word/number rules)."""

    def scrub(text: str) -> str:
        return "[withheld: contains a source value]" if matcher.find_text(str(text)) else str(text)

    return scrub


def _refusal(zip_path: Path, values: set, matcher: phi_stage.Matcher, result) -> PhiAuditError:
    """The audit's refusal, with the way past it: the message (logged) names class and member
    only and says where the review is; ``review`` holds, for the data owner's own terminal
    (``cli`` prints it there only), each hit's matched text and the ``[audit] accept`` line that
    lets it through, as ``dcmpack audit --explain`` shows them. A refused build leaves no bundle
    to run that command on, so the staged one is searched again here, before it is removed."""
    first = result.hits[0]
    error = PhiAuditError(
        f"audit: {len(result.hits)} PHI hit(s), nothing published; first: "
        f"{first.kind} ({first.tag}) in {first.stream} of {first.member}; a false alarm can be let through "
        "after review: run the build on a terminal to see each hit and its [audit] accept line "
        "(docs/phi.md, Reviewed exceptions)"
    )
    key = matcher.exceptions[1]
    shown = audit_stage.audit_bundle(zip_path, values, matcher=matcher, show_values=True)
    places: dict[tuple[str, str, str], list[str]] = {}
    for hit in shown.hits:
        if hit.kind != "structure":
            places.setdefault((hit.kind, hit.tag, hit.term or hit.value), []).append(f"{hit.member} ({hit.stream})")
    error.review = tuple(
        (
            f"{kind} ({tag}) matched {term!r} in {len(where)} place(s), first {where[0]}",
            phi_stage.accept_hmac(key, term) if key and term else "",
        )
        for (kind, tag, term), where in places.items()
    )
    return error
