"""What the command line shows: the build summary and the plan table (stderr and a terminal),
and the same as plain data for ``--json`` on stdout. No header value is written to a file or a
pipe: series descriptions appear only in the terminal table."""

from __future__ import annotations

from collections import Counter

import typer


def err(message: str) -> None:
    """One line on stderr."""
    typer.echo(message, err=True)


def mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 or size == 0 else f"{size / 1e3:.0f} kB"


def series_label(item: dict) -> str:
    if item["series"] < 1:  # a damaged file no series could be named for (the detail names it)
        return "a file"
    number = item.get("number")
    return f"series {item['series']}" + (f" (no. {number})" if number is not None else "")


def _advised(text: str, advice: str) -> str:
    """A failure's text and, when there is one, the next step (``ExclusionReason.advice``)."""
    return f"{text} (what to do: {advice})" if advice else text


def summarize(result) -> dict:
    """The build result as plain data (what ``--json`` prints; the text summary renders it)."""
    planned = {p.relpath: p for p in result.plan.planned}
    done = [planned[r] for r in result.runs if r in planned]
    datatypes = Counter(r.split("/")[-2] for r in result.runs)
    reasons = Counter(e.reason.name.lower() for e in result.excluded)
    labels = {e.reason.name.lower(): e.reason.value for e in result.excluded}
    return {
        "bundle": str(result.bundle),
        "sha256": result.sha256,
        "size": result.size,
        "report": str(result.report) if result.report else None,
        "subjects": len({p.subject for p in done}),
        "sessions": len({p.series.session for p in done}),
        "runs": dict(sorted(datatypes.items())),
        "excluded": dict(sorted(reasons.items())),
        "excluded_labels": dict(sorted(labels.items())),
        "skipped_files": result.plan.skipped_files,
        "non_image_files": result.plan.non_image_files,
        "failed": [
            {
                "series": e.series_index + 1,
                "number": e.series_number,
                "reason": e.reason.value,
                "detail": _advised(e.detail or e.reason.value, e.reason.advice),
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
    err(f"built {summary['bundle']}")
    for key, value in rows:
        err(f"  {key:<10} {value}")


def plan_rows(result) -> list[tuple[dict, object]]:
    """One dict per series (what ``plan --json`` prints), with the Series for terminal-only columns."""
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
            row.update(
                decision="convert", path=planned[item.index].image, why=planned[item.index].name.reason, error=False
            )
        else:
            e = excluded[item.index]
            row.update(
                decision="exclude",
                path="",
                reason=e.reason.name.lower(),
                error=e.reason.is_error,
                why=_advised(
                    f"{e.reason.value}: {e.detail}" if e.detail and e.detail != e.reason.value else e.reason.value,
                    e.reason.advice,
                ),
            )
        rows.append((row, item))
    return rows


def print_plan(result, rows) -> None:
    from rich.console import Console
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
        cells += [row["matrix"], str(row["volumes"]), row["decision"], row["path"] or row["why"]]
        table.add_row(*cells, style=style)
    console.print(table)
    for item in result.excluded:
        if item.series_index < 0 and item.reason.is_error:  # damaged files outside any series
            console.print(f"damaged: {_advised(item.detail, item.reason.advice)}", style="red")
