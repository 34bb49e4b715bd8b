"""Naming, heuristics: Series -> BidsName | Skip, then the entities no single series can know.

Loads the chosen heuristic (shipped ``reproin`` or ``rules``, or a user ``.py`` file exposing
``classify(series)``), calls it on every series that policy did not exclude, then resolves what
needs more than one series (``resolve_entities``): field-map suffixes, ``sbref``, ``part-``,
``echo-``, ``dir-``, cancelled runs and ``run-`` numbering. A heuristic that raises or returns
something else is a ConfigError.
"""

from __future__ import annotations

import importlib.util
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from packager.config import HeuristicConfig
from packager.errors import ConfigError
from packager.model import BidsName, Series, Skip
from packager.naming.schema import name_problem
from packager.naming.spec import DATATYPES

Decision = BidsName | Skip
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_SUFFIX = re.compile(r"^[A-Za-z0-9]+$")


class Heuristic(Protocol):
    """What a heuristic file provides."""

    def __call__(self, series: Series) -> Decision: ...


def load_heuristic(config: HeuristicConfig) -> Callable[[Series], Decision]:
    """The ``classify`` function for the configured heuristic."""
    if config.path is not None:
        return _load_file(Path(config.path))
    if config.name == "reproin":
        from heuristics import reproin

        return reproin.classify
    if config.name == "rules":
        from heuristics import rules

        if not config.rules:
            raise ConfigError('[heuristic] name = "rules" needs at least one [[heuristic.rules]] entry')
        return rules.classifier(config.rules)
    raise ConfigError(f'[heuristic] name: unknown heuristic "{config.name}" (reproin, rules or a .py path)')


def _load_file(path: Path) -> Callable[[Series], Decision]:
    if not path.is_file():
        raise ConfigError(f"heuristic file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"dcmpack_user_heuristic_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"heuristic file cannot be loaded: {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # user code: any failure is a config problem, shown by class only
        raise ConfigError(f"heuristic file {path.name} failed to import ({type(exc).__name__})") from exc
    classify = getattr(module, "classify", None)
    if not callable(classify):
        raise ConfigError(f"heuristic file {path.name} has no classify(series) function")
    return classify


def _checked(decision: object, series: Series) -> Decision:
    if isinstance(decision, Skip):
        return decision
    if not isinstance(decision, BidsName):
        raise ConfigError(
            f"heuristic returned {type(decision).__name__} for series {series.index}, expected BidsName or Skip"
        )
    if decision.datatype not in DATATYPES:
        raise ConfigError(f'heuristic: series {series.index}: unknown datatype "{decision.datatype}"')
    if not _SUFFIX.match(decision.suffix):
        raise ConfigError(f"heuristic: series {series.index}: suffix must be alphanumeric")
    for key, value in decision.entities:
        if not re.match(r"^[a-z]+$", key) or not (_LABEL.match(value) or value == "+"):
            raise ConfigError(f"heuristic: series {series.index}: entity {key!r} must have an alphanumeric label")
    problem = name_problem(decision.datatype, decision.suffix, tuple(k for k, _ in decision.entities))
    if problem:  # never a silently dropped or misnamed run: the heuristic is wrong, the build stops
        raise ConfigError(f"heuristic: series {series.index + 1}: {problem}")
    return decision


def classify_all(series: tuple[Series, ...], classify: Callable[[Series], Decision]) -> dict[int, Decision]:
    """Run the heuristic on every series not excluded by policy."""
    decisions: dict[int, Decision] = {}
    for item in series:
        if item.exclusion is not None:
            continue
        try:
            decision = classify(item)
        except ConfigError:
            raise
        except Exception as exc:  # user code: report its class, never its message (may hold values)
            raise ConfigError(f"heuristic raised {type(exc).__name__} on series {item.index}") from exc
        decisions[item.index] = _checked(decision, item)
    return decisions


def _without(entities: tuple[tuple[str, str], ...], *keys: str) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in entities if k not in keys)


def _with(name: BidsName, key: str, value: str) -> BidsName:
    entities = dict(name.entities)
    entities[key] = value
    return BidsName(name.datatype, name.suffix, tuple(sorted(entities.items())), name.reason)


def _suffixed(name: BidsName, suffix: str) -> BidsName:
    return BidsName(name.datatype, suffix, name.entities, name.reason)


def _order(series: Series) -> tuple:
    """Acquisition order within a session (time, then series number, then index)."""
    return (
        series.acquisition_order,
        series.series_number if series.series_number is not None else 1 << 30,
        series.index,
    )


def _echo_rank_key(series: Series) -> tuple:
    return (
        series.echo_number if series.echo_number is not None else 1 << 30,
        series.echo_time if series.echo_time is not None else 0.0,
        series.index,
    )


#: Datatypes whose file names take ``part-`` (mag/phase/real/imag of one complex image).
_PART_DATATYPES = ("anat", "func", "dwi")
_SBREF = re.compile(r"(^|[_\s-])sbref$", re.IGNORECASE)


def _resolve_fmap_auto(by_index: dict[int, Series], named: dict[int, BidsName], result: dict[int, Decision]) -> None:
    """fmap suffix "auto" -> magnitude1/2 + phasediff, phase1/2, or magnitude + fieldmap.

    Images of one field-map acquisition are grouped per session in acquisition order (Siemens
    stores magnitude and phase as two series); a group ends when an image of a kind it already
    has (same part and echo) comes along.
    """
    pending = sorted(
        (i for i, n in named.items() if n.datatype == "fmap" and n.suffix == "auto"),
        key=lambda i: (by_index[i].session, _order(by_index[i])),
    )
    groups: list[list[int]] = []
    open_group: dict[tuple, list[int]] = {}
    for i in pending:
        s = by_index[i]
        key = (s.session, _without(named[i].entities, "run"))
        kind = (s.part, s.echo_number, s.echo_time)
        group = open_group.get(key)
        if group is None or kind in {(by_index[j].part, by_index[j].echo_number, by_index[j].echo_time) for j in group}:
            group = []
            groups.append(group)
            open_group[key] = group
        group.append(i)
    for group in groups:
        parts = {i: by_index[i].part for i in group}
        mags = sorted((i for i in group if parts[i] == "mag"), key=lambda i: _echo_rank_key(by_index[i]))
        phases = sorted((i for i in group if parts[i] == "phase"), key=lambda i: _echo_rank_key(by_index[i]))
        fieldmaps = [i for i in group if parts[i] == "fieldmap"]
        for i in group:
            if parts[i] not in ("mag", "phase", "fieldmap"):
                result[i] = Skip("fmap: real/imaginary images are not a BIDS field map")
                named.pop(i)
        if fieldmaps:
            for i in fieldmaps:
                named[i] = _suffixed(named[i], "fieldmap")
            for rank, i in enumerate(mags):
                if rank == 0:
                    named[i] = _suffixed(named[i], "magnitude")
                else:
                    result[i] = Skip("fmap: a direct field map takes one magnitude image (first echo kept)")
                    named.pop(i)
            for i in phases:
                result[i] = Skip("fmap: phase image next to a direct field map")
                named.pop(i)
            continue
        phase_echoes = {(by_index[i].echo_number, by_index[i].echo_time) for i in phases}
        if len(phase_echoes) >= 2:
            for rank, i in enumerate(phases[:2], 1):
                named[i] = _suffixed(named[i], f"phase{rank}")
            for i in phases[2:]:
                result[i] = Skip("fmap: more than two phase echoes")
                named.pop(i)
        else:
            for i in phases:
                named[i] = _suffixed(named[i], "phasediff")
        for rank, i in enumerate(mags, 1):
            if rank <= 2:
                named[i] = _suffixed(named[i], f"magnitude{rank}")
            else:
                result[i] = Skip("fmap: more than two magnitude echoes")
                named.pop(i)


def resolve_entities(series: tuple[Series, ...], decisions: dict[int, Decision]) -> dict[int, Decision]:
    """The entities and suffixes no single series can know, added after naming.

    - fmap suffix ``auto``: magnitude1/magnitude2 + phasediff, phase1/phase2, or magnitude +
      fieldmap, from the image parts and echoes of one field-map acquisition;
    - ``sbref``: func/dwi series whose SeriesDescription ends in ``SBRef`` (Siemens);
    - ``part-phase`` (``-real``, ``-imag``) for anat/func/dwi images that are not magnitude,
      and ``part-mag`` for magnitude images with such a twin;
    - ``echo-N``: one acquisition (SeriesInstanceUID) with several echo numbers (not fmap,
      which uses magnitude1/2);
    - ``dir-<AP|PA|...>``: from the header's phase-encoding direction, for ``epi`` field maps
      that have none, and for any names that would collide but differ in phase encoding;
    - an explicit ``run-`` repeated in a session: the earlier series are skipped as cancelled
      (ReproIn convention; the last acquisition is kept);
    - ``run-N``: repeated names in a session, numbered in acquisition order; ``run-+`` always.
    """
    by_index = {s.index: s for s in series}
    result: dict[int, Decision] = dict(decisions)
    named = {i: d for i, d in decisions.items() if isinstance(d, BidsName)}

    _resolve_fmap_auto(by_index, named, result)
    for i, name in list(named.items()):
        s = by_index[i]
        if (
            name.datatype in ("func", "dwi")
            and name.suffix in ("bold", "dwi")
            and _SBREF.search((s.series_description or "").strip())
        ):
            named[i] = _suffixed(name, "sbref")
        if (
            named[i].datatype in _PART_DATATYPES
            and named[i].get("part") is None
            and s.part in ("phase", "real", "imag")
        ):
            named[i] = _with(named[i], "part", s.part)

    # part-mag next to a phase (real/imag) twin of the same name in the session
    twins: dict[tuple, set[str]] = defaultdict(set)
    for i, name in named.items():
        twin_key = (by_index[i].session, name.datatype, name.suffix, _without(name.entities, "part"))
        twins[twin_key].add(name.get("part") or "")
    for i, name in list(named.items()):
        key = (by_index[i].session, name.datatype, name.suffix, _without(name.entities, "part"))
        if name.datatype in _PART_DATATYPES and name.get("part") is None and twins[key] - {""}:
            named[i] = _with(name, "part", "mag")

    # echo: per acquisition uid, several echo numbers under one name
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, name in named.items():
        s = by_index[i]
        groups[(s.session, s.uid, name.datatype, name.suffix, _without(name.entities, "echo", "part"))].append(i)
    for members in groups.values():
        echoes = {by_index[i].echo_number for i in members}
        if len(echoes) > 1 and named[members[0]].datatype != "fmap":
            ranked = sorted(echoes, key=lambda e: (e is None, e or 0))
            for i in members:
                if named[i].get("echo") is None:
                    named[i] = _with(named[i], "echo", str(ranked.index(by_index[i].echo_number) + 1))

    # dir: epi field maps need one; otherwise only where it tells colliding names apart
    for i, name in list(named.items()):
        label = getattr(by_index[i], "phase_encoding", "") or ""
        if name.datatype == "fmap" and name.suffix == "epi" and name.get("dir") is None and label:
            named[i] = _with(name, "dir", label)
    clashes: dict[tuple, list[int]] = defaultdict(list)
    for i, name in named.items():
        clashes[(by_index[i].session, name.datatype, name.suffix, _without(name.entities, "run"))].append(i)
    for members in clashes.values():
        labels = {getattr(by_index[i], "phase_encoding", "") or "" for i in members}
        if len(labels) > 1 and "" not in labels and all(named[i].get("dir") is None for i in members):
            for i in members:
                named[i] = _with(named[i], "dir", by_index[i].phase_encoding)

    # explicit run repeated: the last acquisition wins, earlier ones were cancelled
    full: dict[tuple, list[int]] = defaultdict(list)
    for i, name in named.items():
        if name.get("run") not in (None, "+"):
            full[(by_index[i].session, name.datatype, name.suffix, name.entities)].append(i)
    for members in full.values():
        uids = {by_index[i].uid for i in members}
        if len(uids) > 1:
            last_uid = by_index[max(members, key=lambda i: _order(by_index[i]))].uid
            for i in members:
                if by_index[i].uid != last_uid:
                    result[i] = Skip("superseded: a later series has the same name and run (cancelled run kept out)")
                    named.pop(i)

    # run numbering
    runs: dict[tuple, list[int]] = defaultdict(list)
    for i, name in named.items():
        # echo and part stay in the key: each echo/part is numbered on its own, in the same
        # acquisition order, so magnitude and phase series of one run get the same number
        runs[(by_index[i].session, name.datatype, name.suffix, _without(name.entities, "run"))].append(i)
    for members in runs.values():
        ordered_uids: list[str] = []
        for i in sorted(members, key=lambda i: _order(by_index[i])):
            if by_index[i].uid not in ordered_uids:
                ordered_uids.append(by_index[i].uid)
        auto = any(named[i].get("run") == "+" for i in members)
        if len(ordered_uids) > 1 or auto:
            taken = {named[i].get("run") for i in members} - {None, "+"}
            numbers = iter(n for n in range(1, 10_000) if str(n) not in taken)
            assigned: dict[str, int] = {}
            for uid in ordered_uids:
                if any(named[i].get("run") in (None, "+") for i in members if by_index[i].uid == uid):
                    assigned[uid] = next(numbers)
            for i in members:
                if named[i].get("run") in (None, "+"):
                    named[i] = _with(named[i], "run", str(assigned[by_index[i].uid]))
    result.update(named)
    return result
