"""Release, positions: the dataset files a stored result names, as positions in a list of paths.

The validator names files by their dataset path (``/sub-…/x.json``), which is pseudonymous: the
build cache stores its results (``reuse``: a tree's validation; ``uptodate``: a build's record)
with each such path replaced by ``[prefix, position]`` in a list of the dataset's paths the
reader has too (the staged tree's sorted paths; MANIFEST.json's list), so no entry holds one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def as_positions(files: Mapping[str, Iterable[str]], paths: Sequence[str]) -> dict[str, list[list]] | None:
    """``{code: [[prefix, position], ...]}`` for ``{code: [path, ...]}``, the prefix "" or "/";
    None when a path is not in ``paths`` (such a result is not stored)."""
    where: dict[str, list] = {f"{prefix}{path}": [prefix, n] for n, path in enumerate(paths) for prefix in ("", "/")}
    try:
        return {code: [where[p] for p in named] for code, named in files.items()}
    except KeyError:
        return None


def at_positions(where: Mapping[str, Iterable[Sequence]], paths: Sequence[str]) -> dict[str, list[str]]:
    """``as_positions`` undone: ``{code: [path, ...]}``. Raises IndexError, TypeError or
    ValueError on a malformed entry."""
    return {code: [prefix + paths[n] for prefix, n in named] for code, named in where.items()}
