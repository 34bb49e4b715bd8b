"""``dcmpack inspect``: the index's series -> one private TSV row per series, with every field a
rule can match on (column names = the ``[[heuristic.rules]]`` match names, ``heuristics.rules.FIELDS``).

Not a pipeline stage: a read-only view over the index (like ``render``), for writing rules
before anything is named or converted. The rows hold header text (descriptions, protocol names)
and source folder names, so the file is the data owner's: written 0600 with one atomic rename,
never inside the output folder (where bundles are published), and nothing of it is printed
except on the user's own terminal. Refuses (ConfigError): a TSV path inside the output folder.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from heuristics.rules import FIELDS
from packager.errors import ConfigError, OutputError
from packager.model import Index, Series, SourceSet

#: Columns that are not match fields: where a row comes from and what policy already decided.
#: Lower case, so they can never be mistaken for (or collide with) a rule's match name.
BOOKKEEPING = ("series", "session", "source", "folder", "excluded", "b_values")
COLUMNS = BOOKKEEPING[:2] + tuple(FIELDS) + BOOKKEEPING[2:]
DEFAULT_NAME = "series.tsv"


@dataclass(frozen=True, slots=True)
class Inspection:
    """What ``inspect`` found: the TSV written, its rows (PRIVATE: header text), and counts."""

    path: Path
    rows: tuple[dict[str, str], ...]
    files: int
    skipped_files: int
    sessions: int


def cell(value: object) -> str:
    """A field as the TSV (and a rule) spells it: tokens joined by ``\\``, flags true/false,
    numbers without trailing zeros, an absent value as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    # a tab or newline inside header text would break the row: shown as a space
    return " ".join(str(value).split("\t")).replace("\r", " ").replace("\n", " ")


def _b_values(series: Series) -> str:
    """The distinct b-values of a diffusion series (every image read, headers only), sorted."""
    if not series.has_diffusion or series.exclusion is not None:
        return ""
    import pydicom

    from packager.convert.diffusion import b_value
    from packager.dicom.frames import frame_views, is_multiframe
    from packager.dicom.reader import reading_settings

    found: set[float] = set()
    with reading_settings():
        for path in series.files:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - the header pass read it; b-values stay unknown
                return "?"
            for view in frame_views(ds) if is_multiframe(ds) else [ds]:
                value = b_value(view)
                if value is not None:
                    found.add(round(value, 1))
    return " ".join(cell(v) for v in sorted(found))


def rows(index: Index, sets: list[SourceSet]) -> tuple[dict[str, str], ...]:
    """One row per series: bookkeeping columns and every rule field, as text.

    Parameters
    ----------
    index : Index
        From ``index.index_files`` (the same grouping ``plan`` and ``build`` use).
    sets : list of SourceSet
        The sources, in command-line order (``source`` is 1-based into them).

    Returns
    -------
    tuple of dict
        Keys are ``COLUMNS``.
    """
    source_of = {f.path: number for number, s in enumerate(sets, 1) for f in s.files}
    out = []
    for item in index.series:
        row = {
            "series": str(item.index + 1),
            "session": str(item.session + 1),
            "source": str(source_of.get(item.files[0], "")) if item.files else "",
            "folder": item.folder,
            "excluded": item.exclusion.name.lower() if item.exclusion is not None else "",
            "b_values": _b_values(item),
        }
        for name, (attribute, _) in FIELDS.items():
            row[name] = cell(getattr(item, attribute, None))
        out.append({column: row[column] for column in COLUMNS})
    return tuple(out)


def default_path(config_path: Path | None, key_file: Path | None) -> Path:
    """``series.tsv`` beside the config (``-c``), else beside the key file, else in the working folder."""
    for anchor in (config_path, key_file):
        if anchor is not None:
            return Path(anchor).resolve().parent / DEFAULT_NAME
    return Path.cwd() / DEFAULT_NAME


def check_path(path: Path, output: Path) -> Path:
    """``path`` resolved; a ConfigError when it lies inside the output folder (bundles go there)."""
    target = Path(path).resolve()
    folder = Path(output).resolve()
    if target == folder or folder in target.parents:
        raise ConfigError(
            f"inspect: {path} is inside the output folder {output}: the series table holds header text "
            "and must never sit beside a bundle (choose another -o)"
        )
    return target


def write_tsv(path: Path, table: tuple[dict[str, str], ...]) -> None:
    """The rows as a tab-separated file, mode 0600, written to a temporary file and renamed."""
    lines = ["\t".join(COLUMNS)] + ["\t".join(row[c] for c in COLUMNS) for row in table]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=".series-", suffix=".tsv", dir=path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
                handle.write("\n".join(lines) + "\n")
            os.chmod(temporary, 0o600)  # mkstemp makes it 0600 already; said here for the reader
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        from packager.release.staging import os_reason

        raise OutputError(f"inspect: cannot write {path} ({os_reason(exc)})") from None


def inspect(index: Index, sets: list[SourceSet], path: Path) -> Inspection:
    """Rows for ``index``, written to ``path`` (already checked by ``check_path``).

    Parameters
    ----------
    index : Index
    sets : list of SourceSet
    path : Path
        Where the TSV goes (0600).

    Returns
    -------
    Inspection
    """
    table = rows(index, sets)
    write_tsv(path, table)
    return Inspection(
        path=path,
        rows=table,
        files=sum(s.n_files for s in index.series),
        skipped_files=index.skipped,
        sessions=len(index.sessions),
    )
