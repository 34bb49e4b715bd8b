"""What the command line shows: the build summary and the plan table (stderr and a terminal),
and the same as plain data for ``--json`` on stdout. No header value is written to a file or a
pipe: series descriptions appear only in the terminal table."""

from __future__ import annotations

from dataclasses import replace

import typer

from packager.phi.logmask import mask_message


def err(message: str) -> None:
    """One line on stderr; identifying parts of the paths in it masked (``phi.logmask``): a
    damaged file's folder can be named after the patient."""
    typer.echo(mask_message(message), err=True)


def mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 or size == 0 else f"{size / 1e3:.0f} kB"


def series_label(item: dict) -> str:
    if item["series"] < 1:  # a damaged file no series could be named for (the detail names it)
        return "a file"
    number = item.get("number")
    return f"series {item['series']}" + (f" (no. {number})" if number is not None else "")


def _advised(text: str, advice: str) -> str:
    """A failure's text and its next step (``ExclusionReason.advice``; "" for none)."""
    return f"{text} (what to do: {advice})" if advice else text


def summarize(result) -> dict:
    """The build result as plain data (what ``--json`` prints; the text summary renders it)."""
    return {
        "bundle": str(result.bundle),
        "sha256": result.sha256,
        "size": result.size,
        "unchanged": result.unchanged,
        "up_to_date": result.up_to_date,
        "report": str(result.report) if result.report else None,
        **result.counts(),
        "failed": [
            {
                "series": e.series_index + 1,
                "number": e.series_number,
                "reason": e.reason.value,
                "detail": mask_message(_advised(e.detail or e.reason.value, e.reason.advice)),
            }
            for e in result.excluded
            if e.reason.is_error
        ],
        "validator": result.validator,
        "seconds": round(result.seconds, 2),
        "timings": dict(result.timings),
        "exit_code": result.exit_code,
    }


def print_summary(summary: dict) -> None:
    runs = sum(summary["runs"].values())
    excluded = sum(summary["excluded"].values())
    rows = [
        ("size", mb(summary["size"])),
        ("sha256", summary["sha256"]),
        ("subjects", f"{summary['subjects']}   sessions: {summary['sessions']}"),
        ("runs", f"{runs}" + (": " + ", ".join(f"{n} {k}" for k, n in summary["runs"].items()) if runs else "")),
        (
            "excluded",
            f"{excluded}"
            + (
                ": " + ", ".join(f"{n} {summary['excluded_labels'][k]}" for k, n in summary["excluded"].items())
                if excluded
                else ""
            ),
        ),
    ]
    rows += [("", f"{series_label(item)}: not converted: {item['detail']}") for item in summary["failed"]]
    if summary["skipped_files"]:
        rows.append(("skipped", f"{summary['skipped_files']} non-DICOM file(s)"))
    if summary["labels_neutralised"]:
        rows.append(("labels", f"{summary['labels_neutralised']} not approved, published as neutral placeholders"))
    if summary.get("non_image_files"):
        rows.append(("skipped", f"{summary['non_image_files']} non-image DICOM object(s) (DICOMDIR, ...)"))
    validator = summary["validator"]
    if validator.get("errors") is not None:
        rows.append(("validator", f"{validator['errors']} error(s), {validator['warnings']} warning(s)"))
    else:
        rows.append(("validator", "bids-validator-deno not installed: dataset not validated"))
    if summary["report"]:
        rows.append(("report", f"{summary['report']}  (PRIVATE: do not share)"))
    rows.append(("time", f"{summary['seconds']:.1f} s"))
    if summary.get("up_to_date"):
        err(f"up to date: {summary['bundle']} (nothing changed since the build that published it)")
    elif summary.get("unchanged"):
        err(f"built {summary['bundle']}: unchanged since the last build (checked and left in place)")
    else:
        err(f"built {summary['bundle']}")
    for key, value in rows:
        err(f"  {key:<10} {value}")


#: What a plan row says instead of a reason a heuristic *file* wrote: its text may quote a
#: description, so it stays on the user's terminal (the shipped heuristics' reasons are value-free).
WITHHELD_REASON = "reason written by the heuristic file (shown on a terminal only)"


def plan_rows(result, withhold_reasons: bool = False, mask_paths: bool = False) -> list[tuple[dict, object]]:
    """One dict per series (what ``plan --json`` prints), with the Series for terminal-only columns;
    ``withhold_reasons``: the heuristic's own reasons replaced by ``WITHHELD_REASON``;
    ``mask_paths``: labels holding a source value masked (``phi.logmask.mask_labels``)."""
    from packager.model import ExclusionReason
    from packager.phi.logmask import mask_labels

    planned = {p.series.index: p for p in result.planned}
    excluded = {e.series_index: e for e in result.excluded}
    rows = []
    for item in result.series:
        row = {
            "series": item.index + 1,
            "number": item.series_number,
            "matrix": f"{item.columns}x{item.rows}x{item.n_slices}",
            "slices": item.n_slices,
            "volumes": item.n_volumes,
            "files": item.n_files,
        }
        if item.index in planned:
            why = WITHHELD_REASON if withhold_reasons else planned[item.index].name.reason
            if planned[item.index].fallback:  # value-free: what our engine found, not the heuristic's words
                why = f"{why}; by dcm2niix (--engine auto): {planned[item.index].fallback}"
            path = planned[item.index].image
            row.update(decision="convert", path=mask_labels(path) if mask_paths else path, why=why, error=False)
            held = [u.entity for u in result.unapproved if u.series_index == item.index]
            if held:  # the path shows neutral placeholders for these entities
                row["unapproved"] = held
        else:
            e = excluded[item.index]
            if withhold_reasons and e.reason is ExclusionReason.HEURISTIC_SKIP:
                e = replace(e, detail=WITHHELD_REASON)
            row.update(
                decision="exclude",
                path="",
                reason=e.reason.name.lower(),
                error=e.reason.is_error,
                why=mask_message(
                    _advised(
                        f"{e.reason.value}: {e.detail}" if e.detail and e.detail != e.reason.value else e.reason.value,
                        e.reason.advice if e.reason.is_error else "",
                    )
                ),
            )
        rows.append((row, item))
    return rows


def print_plan(result, rows) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    probe = Console()
    # Descriptions may hold PHI: shown only on the user's own terminal, never into a file or pipe.
    show_description = probe.is_terminal
    console = probe if probe.is_terminal else Console(width=200, no_color=True)
    table = Table(
        title=f"{len(result.planned)} to convert, {len(result.excluded)} excluded, "
        f"{result.skipped_files} non-DICOM file(s) skipped"
        + (f", {result.non_image_files} non-image DICOM object(s) skipped" if result.non_image_files else ""),
        title_justify="left",
        header_style="bold",
    )
    table.add_column("#", justify="right")
    table.add_column("no.", justify="right")
    if show_description:
        table.add_column("description (this terminal only)", overflow="fold", max_width=32)
    table.add_column("matrix")
    table.add_column("vols", justify="right")
    table.add_column("decision")
    table.add_column("BIDS path / reason", overflow="fold")
    for row, item in rows:
        cells = [str(row["series"]), "" if row["number"] is None else str(row["number"])]
        if show_description:
            cells.append(item.series_description or item.protocol_name)
        style = "green" if row["decision"] == "convert" else "red" if row["error"] else "dim"
        cells += [row["matrix"], str(row["volumes"]), row["decision"], escape(row["path"] or row["why"])]
        table.add_row(*cells, style="yellow" if row.get("unapproved") else style)
    console.print(table)
    for item in result.excluded:
        if item.series_index < 0 and item.reason.is_error:  # damaged files outside any series
            console.print(mask_message(f"damaged: {_advised(item.detail, item.reason.advice)}"), style="red")
    import sys

    # the proposed labels go to stderr: only when it, too, is the user's terminal
    print_unapproved(result, show_labels=probe.is_terminal and sys.stderr.isatty())


def print_unapproved(result, *, show_labels: bool) -> None:
    """The labels the label policy held back, and how to approve them.

    The proposed labels are header text: listed only on the user's own terminal; into a file or
    a pipe only series, entity and the neutral placeholder the plan shows in their place.
    """
    from packager.naming.labels import approval_lines

    if not result.unapproved:
        return
    err(
        f"{len(result.unapproved)} label(s) from protocol text not approved "
        "(not protocol vocabulary, or digits shaped like a date, time or ID); the paths above show "
        "a neutral placeholder, and dcmpack build stops (exit 2) until you decide:"
    )
    for item in result.unapproved:
        proposed = f' "{item.proposed}"' if show_labels else ""
        err(
            f"  series {item.series_index + 1}: {item.entity}{proposed} -> {item.entity}-{item.neutral} ({item.reason})"
        )
    if show_labels:
        err("to publish them as they are, add to release.toml (after checking they name no one):")
        err("  [labels]")
        for line in approval_lines(result.unapproved):
            err(f"  {line}")
    else:
        err("run dcmpack plan on a terminal to see the proposed labels and the release.toml lines that approve them")
    err('or publish the placeholders instead: [labels] unapproved = "neutral"')


def inspection_counts(result) -> dict:
    """What ``inspect`` may say outside the terminal: the TSV's path and counts, no header value."""
    return {
        "tsv": str(result.path),
        "series": len(result.rows),
        "excluded": sum(1 for row in result.rows if row["excluded"]),
        "files": result.files,
        "sessions": result.sessions,
        "skipped_files": result.skipped_files,
    }


def print_inspection(result) -> None:
    """The main columns of the series table on the user's terminal (the TSV has them all)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(result.rows)} series (all columns: {result.path})", title_justify="left")
    columns = (
        ("#", "series"),
        ("no.", "SeriesNumber"),
        ("SeriesDescription", "SeriesDescription"),
        ("ImageType", "ImageType"),
        ("matrix", None),
        ("vols", "NumberOfVolumes"),
        ("TE", "EchoTime"),
        ("TR", "RepetitionTime"),
        ("orient.", "Orientation"),
        ("PE", "PhaseEncodingDirection"),
        ("b", "b_values"),
        ("folder", "folder"),
        ("excluded", "excluded"),
    )
    for title, key in columns:
        wide = key in ("SeriesDescription", "ImageType", "folder")
        table.add_column(title, overflow="fold", no_wrap=not wide, ratio=2 if wide else None)
    for row in result.rows:
        matrix = f"{row['Columns']}x{row['Rows']}x{row['NumberOfSlices']}"
        table.add_row(
            *(matrix if key is None else row[key] for _, key in columns), style="dim" if row["excluded"] else None
        )
    Console().print(table)


def diff_lines(changes) -> list[str]:
    """``dcmpack diff`` as text: pseudonymous paths and sidecar key names only (no values)."""
    lines = [f"release {changes.old_version} -> {changes.new_version}"]
    if not changes.same_key:
        lines.append("note: built with different pseudonym keys: participant labels do not carry over")
    for title, items, mark in (
        ("participants added", changes.participants_added, "+"),
        ("participants removed", changes.participants_removed, "-"),
        ("sessions added", changes.sessions_added, "+"),
        ("sessions removed", changes.sessions_removed, "-"),
        ("runs added", changes.runs_added, "+"),
        ("runs removed", changes.runs_removed, "-"),
        ("other files added", changes.files_added, "+"),
        ("other files removed", changes.files_removed, "-"),
        ("other files changed", changes.files_changed, "~"),
    ):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {mark} {item}" for item in items]
    if changes.runs_changed:
        lines.append(f"runs changed ({len(changes.runs_changed)}):")
        for change in changes.runs_changed:
            keys = f" (sidecar keys: {', '.join(change.sidecar_keys)})" if change.sidecar_keys else ""
            lines.append(f"  ~ {change.run}: {', '.join(change.parts)}{keys}")
    lines.append("identical" if changes.identical else "different")
    return lines
