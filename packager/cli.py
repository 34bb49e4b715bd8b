"""The ``dcmpack`` command line: parse -> one API call -> render on stderr -> exit code.

No DICOM, zip or BIDS logic lives here. Progress bars (rich) go to stderr on a terminal, plain
progress lines when stderr is not one, nothing with ``--quiet``; ``--json`` puts one JSON
object on stdout (also for errors: ``{"error": ..., "exit_code": ...}``). Exit codes are the
table in ``packager.errors`` (README "Exit codes"): 0 ok; 1 built but some series failed;
2 usage/config; 3 input unreadable; 4 PHI audit failed; 5 verify failed; 6 output problem;
70 internal error (a bug: traceback only with --verbose); 130 interrupted.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import typer

from packager import __version__, render
from packager.cache import CACHE_ENV, cache_dir, default_dir
from packager.cache import clear as clear_cache
from packager.cache import prune as prune_cache
from packager.config import Engine, load_config, merge_flags
from packager.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, DcmpackError, PhiAuditError
from packager.phi.logmask import mask_message
from packager.phi.logmask import remember as remember_phi
from packager.terminal import Bars as _Progress
from packager.terminal import State as _State
from packager.terminal import err as _err
from packager.terminal import setup_logging as _setup_logging

app = typer.Typer(
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    # plain help: flags without a "<bool>" type column, options with their value's kind
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="DICOM sessions to a de-identified, verified BIDS zip bundle.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """DICOM sessions to a de-identified, verified BIDS zip bundle."""


def _config(
    sources,
    config_file,
    output,
    key_file,
    subject_map,
    heuristic,
    engine,
    jobs,
    executor,
    force,
    remote: dict | None = None,
    strict: bool = False,
):
    flags = dict(
        strict=strict,
        sources=tuple(sources or ()),
        output=output,
        key_file=key_file,
        subject_map=subject_map,
        heuristic=heuristic,
        engine=engine,
        jobs=jobs,
        executor=executor,
        force=force,
        **(remote or {}),
    )
    if not sources and config_file is None:
        return _api().sample_config(**flags)
    return merge_flags(load_config(config_file), **flags)


_SOURCE = typer.Argument(None, help="DICOM folder(s), .zip, or dicomweb+http(s)://, dimse://, xnat:// URL")
_CONFIG = typer.Option(None, "--config", "-c", help="release.toml")
_KEY = typer.Option(None, "--key-file", help="secret for pseudonyms and date shifts (or env DCMPACK_KEY)")
_MAP = typer.Option(None, "--subject-map", help="TSV PatientID<TAB>label")
_HEUR = typer.Option(None, "--heuristic", help="reproin | rules | FILE.py")
_ENGINE = typer.Option(None, "--engine", help=" | ".join(Engine))
_JOBS = typer.Option(0, "--jobs", "-j", help="worker processes (0 = all cores)")
_EXEC = typer.Option(
    "local", "--executor", help="local, or dask://HOST:PORT (an existing Dask cluster; see README Performance)"
)
_QUIET = typer.Option(False, "--quiet", "-q", help="no progress, no summary (errors and the result path only)")
_VERBOSE = typer.Option(False, "--verbose", "-v", help="log each stage; tracebacks for errors")
_JSON = typer.Option(False, "--json", help="machine-readable result (or error) on stdout")
_CA = typer.Option(None, "--ca-bundle", help="CA certificates for HTTPS sources (TLS is always verified)")
_MOVE = typer.Option(None, "--move-dest", help="AET:PORT of a local storage SCP for C-MOVE (dimse://)")
_RETRIEVE = typer.Option(None, "--retrieve", help="dimse:// retrieval: get (default, falls back to move) | move")
_CACHE = typer.Option(None, "--cache", help=f"build cache folder (default: ${CACHE_ENV} or {default_dir()})")
_NO_CACHE = typer.Option(False, "--no-cache", help="convert everything, read and write no cache")
_STRICT = typer.Option(
    False, "--strict", help="a damaged DICOM file stops everything (exit 3) instead of leaving out its series"
)


def _api():
    """``packager.api``, imported when a command runs: ``--help`` and ``version`` need none of its
    imports (the conversion stack is imported where files are read: ``dicom.load_pydicom``)."""
    from packager import api

    return api


# ---------------------------------------------------------------- build


@app.command()
def build(
    sources: list[str] | None = _SOURCE,
    config_file: Path | None = _CONFIG,
    output: Path = typer.Option(Path("release"), "--output", "-o", help="output folder, or the bundle's NAME.zip"),
    key_file: Path | None = _KEY,
    subject_map: Path | None = _MAP,
    heuristic: str | None = _HEUR,
    engine: str | None = _ENGINE,
    force: bool = typer.Option(False, "--force", help="replace an existing bundle made with the same key"),
    new_key: bool = typer.Option(
        False, "--new-key", help="with --force: replace a bundle made with another key (new pseudonyms)"
    ),
    jobs: int = _JOBS,
    executor: str = _EXEC,
    ca_bundle: str | None = _CA,
    move_dest: str | None = _MOVE,
    retrieve: str | None = _RETRIEVE,
    cache: Path | None = _CACHE,
    no_cache: bool = _NO_CACHE,
    previous: Path | None = typer.Option(
        None, "--previous", help="the previous release's bundle: CHANGES says what changed"
    ),
    strict: bool = _STRICT,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
    as_json: bool = _JSON,
) -> None:
    """Build the bundle (no SOURCE and no config: the embedded sample)."""
    _setup_logging(verbose, quiet, as_json)
    config = _config(
        sources,
        config_file,
        output,
        key_file,
        subject_map,
        heuristic,
        engine,
        jobs,
        executor,
        force,
        dict(
            ca_bundle=ca_bundle,
            move_dest=move_dest,
            retrieve=retrieve,
            new_key=new_key,
            cache=cache_dir(cache, no_cache),
            previous=previous,
        ),
        strict,
    )
    with _Progress(quiet) as progress:
        result = _api().build(config, progress=progress)
    summary = render.summarize(result)
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
    else:
        if not quiet:
            render.print_summary(summary)
        typer.echo(summary["bundle"])
    if result.exit_code:
        failed = summary["failed"]
        more = f" (and {len(failed) - 1} more, listed above)" if len(failed) > 1 else ""
        _err(f"error: {render.series_label(failed[0])} not converted: {failed[0]['detail']}{more}")
    raise typer.Exit(result.exit_code)


# ---------------------------------------------------------------- plan


@app.command()
def plan(
    sources: list[str] | None = _SOURCE,
    config_file: Path | None = _CONFIG,
    key_file: Path | None = _KEY,
    subject_map: Path | None = _MAP,
    heuristic: str | None = _HEUR,
    ca_bundle: str | None = _CA,
    move_dest: str | None = _MOVE,
    retrieve: str | None = _RETRIEVE,
    strict: bool = _STRICT,
    engine: str | None = _ENGINE,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
    as_json: bool = _JSON,
) -> None:
    """Dry run: every series with its BIDS path or the reason it is left out."""
    _setup_logging(verbose, quiet, as_json)
    config = _config(
        sources,
        config_file,
        Path("release"),
        key_file,
        subject_map,
        heuristic,
        engine,
        0,
        "local",
        False,
        dict(ca_bundle=ca_bundle, move_dest=move_dest, retrieve=retrieve),
        strict,
    )
    with _Progress(quiet) as progress:
        result = _api().plan(config, progress=progress)
    # a heuristic file's reasons may quote header text: they reach a file or a pipe only as a placeholder
    rows = render.plan_rows(
        result,
        withhold_reasons=config.heuristic.path is not None and not sys.stdout.isatty(),
        mask_paths=not sys.stdout.isatty(),
    )
    if as_json:
        typer.echo(json.dumps([row for row, _ in rows], sort_keys=True))
        return
    render.print_plan(result, rows)


# ---------------------------------------------------------------- inspect


@app.command()
def inspect(
    sources: list[str] | None = _SOURCE,
    config_file: Path | None = _CONFIG,
    tsv: Path | None = typer.Option(
        None, "--output", "-o", help="the private series table (default: series.tsv beside the config, or here)"
    ),
    ca_bundle: str | None = _CA,
    move_dest: str | None = _MOVE,
    retrieve: str | None = _RETRIEVE,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
    as_json: bool = _JSON,
) -> None:
    """One row per series with every field rules match on, in a private TSV (0600); the table
    is shown on your terminal only, a pipe gets the TSV's path."""
    _setup_logging(verbose, quiet, as_json)
    config = _config(
        sources,
        config_file,
        None,
        None,
        None,
        None,
        None,
        0,
        "local",
        False,
        dict(ca_bundle=ca_bundle, move_dest=move_dest, retrieve=retrieve),
    )
    with _Progress(quiet) as progress:
        result = _api().inspect(config, tsv, progress=progress)
    counts = render.inspection_counts(result)
    if as_json:
        typer.echo(json.dumps(counts, sort_keys=True))
        return
    if sys.stdout.isatty():
        render.print_inspection(result)
    typer.echo(str(result.path))
    if not quiet:
        _err(
            f"{counts['series']} series ({counts['excluded']} excluded by policy) from {counts['files']} DICOM file(s) "
            f"in {counts['sessions']} session(s) -> {result.path} (PRIVATE, mode 0600: header text)"
        )


# ---------------------------------------------------------------- verify / audit / init


@app.command()
def pull(
    url: str = typer.Argument(..., help="dicomweb+http(s)://, dimse:// or xnat:// URL"),
    output: Path = typer.Option(..., "--output", "-o", help="private folder (0700) for the DICOM files"),
    ca_bundle: str | None = _CA,
    move_dest: str | None = _MOVE,
    retrieve: str | None = _RETRIEVE,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
    as_json: bool = _JSON,
) -> None:
    """Fetch DICOM from an archive into a private folder (rerun to resume); credentials from
    DCMPACK_USER/DCMPACK_PASSWORD (or DCMPACK_TOKEN) or ~/.netrc."""
    _setup_logging(verbose, quiet, as_json)
    with _Progress(quiet) as progress:
        fetched = _api().pull(
            url, output, ca_bundle=ca_bundle, move_dest=move_dest, retrieve=retrieve, progress=progress
        )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "folder": str(fetched.root),
                    "instances": len(fetched.files),
                    "not_fetched_series": fetched.not_fetched,
                },
                sort_keys=True,
            )
        )
    else:
        if not quiet:
            _err(
                f"{len(fetched.files)} instance(s) in {fetched.root}"
                + (f"; {fetched.not_fetched} non-image series left at the archive" if fetched.not_fetched else "")
            )
        typer.echo(str(fetched.root))


@app.command()
def verify(
    bundle: Path = typer.Argument(..., help="bundle .zip"),
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
    as_json: bool = _JSON,
) -> None:
    """Check checksums, manifest, allowlist, structure and run bids-validator-deno."""
    _setup_logging(verbose, quiet, as_json)
    report = _api().verify(bundle)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "members": report.members,
                    "problems": list(report.problems),
                    "validator_errors": report.validator_errors,
                    "validator_warnings": report.validator_warnings,
                    "validator_codes": [list(c) for c in report.validator_codes],
                },
                sort_keys=True,
            )
        )
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
def audit(
    bundle: Path = typer.Argument(..., help="bundle .zip"),
    more: list[str] | None = typer.Argument(None, help="more sources (--source A B works too)", metavar="SOURCE"),
    source: list[str] | None = typer.Option(
        None, "--source", "-s", help="the DICOM source(s) it was built from", metavar="SOURCE"
    ),
    show_values: bool = typer.Option(
        False, "--show-values", help="print matched values (on a terminal only; ignored into pipes and --json)"
    ),
    explain: bool = typer.Option(
        False, "--explain", help="each hit's value, stream, position and the HMAC for [audit] accept (terminal only)"
    ),
    config_file: Path | None = _CONFIG,
    key_file: Path | None = _KEY,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
    as_json: bool = _JSON,
) -> None:
    """Search every byte stream of BUNDLE for PHI values found in SOURCE."""
    _setup_logging(verbose, quiet, as_json)
    # click options take one value each: "--source A B" leaves B as an argument, taken here
    sources = tuple(source or ()) + tuple(more or ())
    if not sources:
        raise typer.BadParameter("give the source(s) the bundle was built from: --source SOURCE [SOURCE ...]")
    if show_values and (as_json or not sys.stderr.isatty()):
        _err("note: --show-values ignored: matched values are shown on a terminal only, never into a pipe or file")
        show_values = False
    config = merge_flags(load_config(config_file), key_file=key_file)
    # values reach the terminal only: in a pipe or a file (CI logs) --explain shows kind and member
    explain = explain and sys.stderr.isatty() and not as_json
    result = _api().audit(
        bundle, sources, show_values=show_values or explain, accept=config.audit.accept, key=config.key
    )
    if explain:
        _explain(result, config.key)
        raise typer.Exit(0 if result.clean else 4)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "clean": result.clean,
                    "values": result.values,
                    "terms": result.terms,
                    "members": result.members,
                    "hits": [
                        {
                            "member": h.member,
                            "stream": h.stream,
                            "kind": h.kind,
                            "tag": h.tag,
                            **({"value": h.value} if show_values else {}),
                        }
                        for h in result.hits
                    ],
                },
                sort_keys=True,
            )
        )
    else:
        for hit in result.hits:
            extra = f" = {hit.value!r}" if show_values and hit.value else ""
            _err(f"hit: {hit.member}: {hit.stream}: {hit.kind} ({hit.tag}){extra}")
        if not quiet:
            _err(
                f"{'clean' if result.clean else 'LEAK'}: {len(result.hits)} hit(s); {result.values} source value(s), "
                f"{result.terms} search term(s), {result.members} member(s)"
            )
    raise typer.Exit(0 if result.clean else 4)


def _explain(result, key: bytes) -> None:
    """``audit --explain`` on a terminal: each hit with the text matched, where, and its HMAC."""
    from packager.phi import accept_hmac

    for hit in result.hits:
        where = f"{hit.member}: {hit.stream}" + (f" @{hit.position}" if hit.position >= 0 else "")
        _err(f"hit: {where}: {hit.kind} ({hit.tag}) matched {hit.term or hit.value!r}")
        if hit.term and key:
            _err(f'  judged harmless? add to [audit] accept: "{accept_hmac(key, hit.term)}"')
    if result.hits and not key:
        _err("no release key given (--key-file or [deid] key_file): no HMACs to accept")
    _err(
        f"{'clean' if result.clean else 'LEAK'}: {len(result.hits)} hit(s), {result.accepted} accepted term(s); "
        f"{result.values} source value(s), {result.terms} search term(s), {result.members} member(s)"
    )


@app.command()
def init(path: Path = typer.Argument(Path("release.toml")), force: bool = typer.Option(False, "--force")) -> None:
    """Write a commented starter release.toml and a random release.key beside it (kept if present)."""
    written = _api().init_config(path, force=force)
    _err(f"wrote {written} (key: {written.parent / 'release.key'}, mode 0600; keep it with the data owner)")


@app.command()
def version(verbose: bool = _VERBOSE) -> None:
    """Print the dcmpack version (with --verbose: also which per-file core runs, compiled or not)."""
    typer.echo(__version__)
    if verbose:
        from packager.dicom import core

        typer.echo(core.describe())


# ---------------------------------------------------------------- diff


@app.command()
def diff(
    old: Path = typer.Argument(..., help="the earlier release's bundle"),
    new: Path = typer.Argument(..., help="the later release's bundle"),
    as_json: bool = _JSON,
) -> None:
    """What changed between two releases: exit 0 identical, 1 different (3: a bundle unreadable)."""
    changes = _api().diff(old, new)
    if as_json:
        typer.echo(json.dumps(changes.as_dict(), sort_keys=True))
    else:
        for line in render.diff_lines(changes):
            typer.echo(line)
    raise typer.Exit(0 if changes.identical else 1)


# ---------------------------------------------------------------- cache

cache_app = typer.Typer(help="The build cache (docs/cache.md): prune or clear it.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
_CACHE_DIR = typer.Option(None, "--cache", help=f"cache folder (default: ${CACHE_ENV} or {default_dir()})")


def _cache_root(root: Path | None) -> Path:
    found = cache_dir(root, False)
    if found is None:
        raise ConfigError(f"cache: ${CACHE_ENV} is off: name the folder with --cache DIR")
    return found


@cache_app.command("prune")
def cache_prune(
    older_than: float | None = typer.Option(None, "--older-than", help="remove entries unused for DAYS"),
    max_size: str | None = typer.Option(None, "--max-size", help="then least recently used beyond SIZE (500M, 2G)"),
    root: Path | None = _CACHE_DIR,
) -> None:
    """Remove old entries, and the least recently used beyond a size."""
    removed, freed = prune_cache(_cache_root(root), older_than_days=older_than, max_size=max_size)
    _err(f"cache: removed {removed} entries ({render.mb(freed)})")


@cache_app.command("clear")
def cache_clear(root: Path | None = _CACHE_DIR) -> None:
    """Remove every entry."""
    removed, freed = clear_cache(_cache_root(root))
    _err(f"cache: removed {removed} entries ({render.mb(freed)})")


# ---------------------------------------------------------------- entry point


def _review(lines: tuple[tuple[str, str], ...]) -> None:
    """A refused build's audit hits with their ``[audit] accept`` lines, on a terminal only (the
    values are the source's: never into a pipe, a file or JSON; ``release.review``)."""
    if not lines or _State.as_json or not sys.stderr.isatty():
        return
    for where, hmac in lines:
        _err(f"hit: {where}")
        if hmac:
            _err(f'  judged harmless? add to [audit] accept: "{hmac}"')


def _fail(message: str, code: int) -> None:
    """The one place errors are printed: ``error: ...`` on stderr (and JSON on stdout with --json);
    identifying parts of the paths in it are masked (``phi.logmask``)."""
    message = mask_message(message)
    _err(message)
    if _State.as_json:
        typer.echo(json.dumps({"error": message.split(": ", 1)[-1], "exit_code": code}, sort_keys=True))
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one handler maps errors to exit codes.

    A bug (any other exception) is one ``internal error`` line and exit 70, never exit 1 (which
    means "built, but series failed"); ``--verbose`` adds the traceback.
    """
    from typer.exceptions import Abort, Exit, TyperException

    _State.as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    remember_phi(None)  # a command's own build tells the error lines its PHI terms
    from packager.executors import tune_blas, tune_gc

    tune_gc()
    tune_blas()
    try:
        # Not standalone: errors reach the handlers below. Typer then *returns* exit codes
        # (typer.Exit, and 130 for a KeyboardInterrupt it caught) instead of exiting.
        code = app(args=argv, standalone_mode=False)
    except DcmpackError as exc:
        if _State.verbose and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        if isinstance(exc, PhiAuditError):
            _review(exc.review)
        _fail(f"error: {exc}", exc.exit_code)
    except (KeyboardInterrupt, Abort):
        code = EXIT_INTERRUPTED
    except Exit as exc:
        code = exc.exit_code
    except TyperException as exc:  # usage errors: typer's own message and code (2)
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            _err(f"error: {exc.format_message()}")
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE) or EXIT_USAGE)
    except SystemExit:
        raise
    except Exception as exc:  # a bug: one line, traceback only on request
        if _State.verbose:
            traceback.print_exception(exc, file=sys.stderr)
        _fail(
            f"error: internal error: {type(exc).__name__} (a bug in dcmpack; rerun with --verbose "
            "for the traceback and report it)",
            EXIT_INTERNAL,
        )
    if _State.verbose and _State.warnings:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(_State.warnings.items()))
        _err(f"note: library warnings withheld (they can quote header values): {counts}")
    if code == EXIT_INTERRUPTED:
        _fail("error: interrupted: staging removed, nothing published", EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
