"""The ``dcmpack`` command line: parse -> one API call -> render on stderr -> exit code.

No DICOM, zip or BIDS logic lives here. Exit codes (README "Exit codes"): 0 ok; 1 built but
some series failed; 2 usage/config; 3 input unreadable; 4 PHI audit failed; 5 verify failed;
6 output not writable; 70 internal error (a bug: traceback only with --verbose); 130 interrupted.
"""
from __future__ import annotations

import json
import logging
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from . import __version__, api
from .config import load_config, merge_flags
from .errors import DcmpackError

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  pretty_exceptions_show_locals=False, help="DICOM sessions to a de-identified, verified BIDS zip bundle.")

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class _State:
    verbose = False


def _setup_logging(verbose: bool, quiet: bool) -> None:
    from rich.logging import RichHandler
    from rich.console import Console

    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False)
    root = logging.getLogger("packager")
    root.handlers[:] = [h for h in root.handlers if isinstance(h, logging.NullHandler)] + [handler]
    root.setLevel(level)
    root.propagate = False
    for noisy in ("dicom2nifti", "pydicom", "bids", "nibabel"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    _State.verbose = verbose


def _err(message: str) -> None:
    typer.echo(message, err=True)


class _Progress:
    """Rich progress bars on a TTY, plain lines otherwise, nothing with --quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bars = None
        self.tasks: dict[str, int] = {}
        self.last: dict[str, int] = {}

    def __enter__(self):
        if not self.quiet and self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bars is not None:
            self.bars.__exit__(*exc)

    def __call__(self, step: str, done: int, total: int | None) -> None:
        if self.quiet:
            return
        if self.bars is not None:
            if step not in self.tasks:
                self.tasks[step] = self.bars.add_task(step, total=total)
            self.bars.update(self.tasks[step], completed=done, total=total)
            return
        if total is None:
            _err(f"{step} ...")
        elif done == total or done - self.last.get(step, 0) >= max(total // 10, 1):
            self.last[step] = done
            _err(f"{step}: {done}/{total}")


def _config(sources, config_file, output, key_file, subject_map, heuristic, engine, jobs, executor, force):
    flags = dict(sources=tuple(sources or ()), output=output, key_file=key_file, subject_map=subject_map,
                 heuristic=heuristic, engine=engine, jobs=jobs, executor=executor, force=force)
    if not sources and config_file is None:
        return api.sample_config(**flags)
    return merge_flags(load_config(config_file), **flags)


_SOURCE = typer.Argument(None, help="DICOM folder(s), .zip, or dicomweb+http(s)://, dimse://, xnat:// URL")
_CONFIG = typer.Option(None, "--config", "-c", help="release.toml")
_KEY = typer.Option(None, "--key-file", help="secret for pseudonyms and date shifts (or env DCMPACK_KEY)")
_MAP = typer.Option(None, "--subject-map", help="TSV PatientID<TAB>label")
_HEUR = typer.Option(None, "--heuristic", help="reproin | rules | FILE.py")
_ENGINE = typer.Option(None, "--engine", help="dicom2nifti | dcm2niix")
_JOBS = typer.Option(0, "--jobs", "-j", help="worker processes (0 = all cores)")
_EXEC = typer.Option("local", "--executor", help="local")
_QUIET = typer.Option(False, "--quiet", "-q")
_VERBOSE = typer.Option(False, "--verbose", "-v")
_JSON = typer.Option(False, "--json", help="machine-readable result on stdout")


@app.command()
def build(sources: Optional[list[str]] = _SOURCE, config_file: Optional[Path] = _CONFIG,
          output: Path = typer.Option(Path("release"), "--output", "-o", help="output folder"),
          key_file: Optional[Path] = _KEY, subject_map: Optional[Path] = _MAP, heuristic: Optional[str] = _HEUR,
          engine: Optional[str] = _ENGINE, force: bool = typer.Option(False, "--force", help="replace an existing bundle"),
          jobs: int = _JOBS, executor: str = _EXEC, quiet: bool = _QUIET, verbose: bool = _VERBOSE,
          as_json: bool = _JSON) -> None:
    """Build the bundle (no SOURCE and no config: the embedded sample)."""
    _setup_logging(verbose, quiet)
    config = _config(sources, config_file, output, key_file, subject_map, heuristic, engine, jobs, executor, force)
    with _Progress(quiet) as progress:
        result = api.build(config, progress=progress)
    summary = _summary(result)
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
    elif not quiet:
        _print_summary(summary)
    if result.exit_code:
        _err(f"error: {sum(e.reason.is_error for e in result.excluded)} series failed to convert (listed above)")
    raise typer.Exit(result.exit_code)


def _summary(result) -> dict:
    subjects = {r.split("/")[0] for r in result.runs}
    sessions = {"/".join(r.split("/")[:2]) for r in result.runs if r.split("/")[1].startswith("ses-")}
    datatypes = Counter(r.split("/")[-2] for r in result.runs)
    reasons = Counter(e.reason.value for e in result.excluded)
    return {"bundle": str(result.bundle), "sha256": result.sha256, "size": result.size,
            "subjects": len(subjects), "sessions": len(sessions), "runs": dict(sorted(datatypes.items())),
            "excluded": dict(sorted(reasons.items())),
            "failed": [{"series": e.series_index + 1, "reason": e.reason.value, "detail": e.detail}
                       for e in result.excluded if e.reason.is_error],
            "validator": result.validator, "seconds": round(result.seconds, 2), "exit_code": result.exit_code}


def _print_summary(summary: dict) -> None:
    runs = ", ".join(f"{n} {k}" for k, n in summary["runs"].items())
    _err(f"subjects: {summary['subjects']}  sessions: {summary['sessions']}  runs: {runs}")
    if summary["excluded"]:
        _err("excluded: " + ", ".join(f"{n} {k}" for k, n in summary["excluded"].items()))
    for item in summary["failed"]:
        _err(f"  series {item['series']}: not converted: {item['detail']}")
    validator = summary["validator"]
    if validator.get("errors") is not None:
        _err(f"bids-validator: {validator['errors']} error(s), {validator['warnings']} warning(s)")
    else:
        _err("bids-validator-deno not installed: dataset not validated")
    _err(f"bundle: {summary['bundle']} ({summary['size'] / 1e6:.1f} MB, sha256 {summary['sha256'][:16]}...) "
         f"in {summary['seconds']:.1f} s")
    typer.echo(summary["bundle"])


@app.command()
def plan(sources: Optional[list[str]] = _SOURCE, config_file: Optional[Path] = _CONFIG,
         key_file: Optional[Path] = _KEY, subject_map: Optional[Path] = _MAP, heuristic: Optional[str] = _HEUR,
         quiet: bool = _QUIET, verbose: bool = _VERBOSE, as_json: bool = _JSON) -> None:
    """Dry run: every series with its BIDS path or the reason it is left out."""
    _setup_logging(verbose, quiet)
    config = _config(sources, config_file, Path("release"), key_file, subject_map, heuristic, None, 0, "local", False)
    result = api.plan(config)
    planned = {p.series.index: p for p in result.planned}
    excluded = {e.series_index: e for e in result.excluded}
    rows = []
    for item in result.series:
        row = {"series": item.index + 1, "number": item.series_number, "matrix": f"{item.columns}x{item.rows}",
               "slices": item.n_slices, "volumes": item.n_volumes, "files": item.n_files}
        if item.index in planned:
            row.update(decision="convert", path=planned[item.index].relpath + ".nii.gz",
                       why=planned[item.index].name.reason)
        else:
            e = excluded[item.index]
            row.update(decision="exclude", path="", why=f"{e.reason.value}: {e.detail}" if e.detail else e.reason.value)
        rows.append((row, item))
    if as_json:
        typer.echo(json.dumps([r for r, _ in rows], sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # Descriptions may hold PHI: shown only on the user's own terminal, never into a file or pipe.
    show_description = console.is_terminal
    table = Table(title=f"{len(result.planned)} to convert, {len(result.excluded)} excluded, "
                        f"{result.skipped_files} non-DICOM file(s) skipped")
    for column in ("#", "series no.") + (("description",) if show_description else ()) + (
            "matrix", "vols", "decision", "BIDS path / reason"):
        table.add_column(column)
    for row, item in rows:
        cells = [str(row["series"]), str(row["number"] if row["number"] is not None else "")]
        if show_description:
            cells.append(item.series_description or item.protocol_name)
        cells += [row["matrix"], str(row["volumes"]), row["decision"], row["path"] or row["why"]]
        table.add_row(*cells)
    console.print(table)


@app.command()
def verify(bundle: Path = typer.Argument(..., help="bundle .zip"), quiet: bool = _QUIET,
           verbose: bool = _VERBOSE, as_json: bool = _JSON) -> None:
    """Check checksums, manifest, allowlist, structure and run bids-validator-deno."""
    _setup_logging(verbose, quiet)
    report = api.verify(bundle)
    if as_json:
        typer.echo(json.dumps({"ok": report.ok, "members": report.members, "problems": list(report.problems),
                               "validator_errors": report.validator_errors,
                               "validator_warnings": report.validator_warnings,
                               "validator_codes": [list(c) for c in report.validator_codes]}, sort_keys=True))
    else:
        for problem in report.problems:
            _err(f"problem: {problem}")
        if report.validator_errors is None:
            _err("bids-validator-deno not installed: dataset not validated")
        else:
            _err(f"bids-validator: {report.validator_errors} error(s), {report.validator_warnings} warning(s)")
            for severity, code, count in report.validator_codes:
                _err(f"  {severity} {code} x{count}")
        if not quiet:
            _err(f"{'ok' if report.ok else 'FAILED'}: {report.members} member(s) checked")
    raise typer.Exit(0 if report.ok else 5)


@app.command()
def audit(bundle: Path = typer.Argument(..., help="bundle .zip"),
          source: list[str] = typer.Option(..., "--source", "-s", help="the DICOM source(s) it was built from"),
          show_values: bool = typer.Option(False, "--show-values", help="print matched values (your terminal only)"),
          quiet: bool = _QUIET, verbose: bool = _VERBOSE, as_json: bool = _JSON) -> None:
    """Search every byte stream of BUNDLE for PHI values found in SOURCE."""
    _setup_logging(verbose, quiet)
    result = api.audit(bundle, tuple(source), show_values=show_values)
    if as_json:
        typer.echo(json.dumps({"clean": result.clean, "values": result.values, "terms": result.terms,
                               "members": result.members,
                               "hits": [{"member": h.member, "stream": h.stream, "kind": h.kind, "tag": h.tag,
                                         **({"value": h.value} if show_values else {})} for h in result.hits]},
                              sort_keys=True))
    else:
        for hit in result.hits:
            extra = f" = {hit.value!r}" if show_values and hit.value else ""
            _err(f"hit: {hit.member}: {hit.stream}: {hit.kind} ({hit.tag}){extra}")
        if not quiet:
            _err(f"{'clean' if result.clean else 'LEAK'}: {len(result.hits)} hit(s); {result.values} source value(s), "
                 f"{result.terms} search term(s), {result.members} member(s)")
    raise typer.Exit(0 if result.clean else 4)


@app.command()
def init(path: Path = typer.Argument(Path("release.toml")), force: bool = typer.Option(False, "--force")) -> None:
    """Write a commented starter release.toml."""
    written = api.init_config(path, force=force)
    _err(f"wrote {written}")


@app.command()
def version() -> None:
    """Print the dcmpack version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point: one handler maps errors to exit codes."""
    try:
        app(standalone_mode=False)
    except DcmpackError as exc:
        _err(f"error: {exc}")
        if _State.verbose and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err("interrupted: staging removed, nothing published")
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit:
        raise
    except Exception as exc:  # a bug: one line, traceback only on request
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            _err("interrupted: staging removed, nothing published")
            sys.exit(EXIT_INTERRUPTED)
        _err(f"internal error: {type(exc).__name__} (a bug in dcmpack; rerun with --verbose for the traceback)")
        if _State.verbose:
            traceback.print_exception(exc, file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
