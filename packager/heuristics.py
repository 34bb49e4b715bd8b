"""Stage 3, heuristics: Series -> BidsName | Skip, then the entities no single series can know.

Loads the chosen heuristic (shipped ``reproin`` or ``rules``, or a user ``.py`` file exposing
``classify(series)``), calls it on every series that policy did not exclude, and resolves
``run-`` (repeated names in acquisition order), ``echo-`` (multi-echo), ``part-mag`` (when a
phase twin exists). A heuristic that raises or returns something else is a ConfigError.
"""
from __future__ import annotations

import importlib.util
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable, Protocol

from .config import HeuristicConfig
from .errors import ConfigError
from .model import BidsName, Series, Skip

Decision = BidsName | Skip
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_SUFFIX = re.compile(r"^[A-Za-z0-9]+$")
DATATYPES = ("anat", "func", "dwi", "fmap", "perf", "beh")


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
            raise ConfigError("[heuristic] name = \"rules\" needs at least one [[heuristic.rules]] entry")
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
        raise ConfigError(f"heuristic returned {type(decision).__name__} for series {series.index}, "
                          "expected BidsName or Skip")
    if decision.datatype not in DATATYPES:
        raise ConfigError(f'heuristic: series {series.index}: unknown datatype "{decision.datatype}"')
    if not _SUFFIX.match(decision.suffix):
        raise ConfigError(f"heuristic: series {series.index}: suffix must be alphanumeric")
    for key, value in decision.entities:
        if not re.match(r"^[a-z]+$", key) or not (_LABEL.match(value) or value == "+"):
            raise ConfigError(f"heuristic: series {series.index}: entity {key!r} must have an alphanumeric label")
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


def resolve_entities(series: tuple[Series, ...], decisions: dict[int, Decision]) -> dict[int, Decision]:
    """Add echo-, part-mag and run- where names would otherwise collide.

    - ``echo-N``: series of one acquisition (same SeriesInstanceUID) with several echo numbers,
      except GRE field maps, which use magnitude1/magnitude2 suffixes instead.
    - ``part-mag``: a magnitude series whose phase twin got ``part-phase``.
    - ``run-N``: repeated names in a session, numbered in acquisition order; ``run-+`` always.
    """
    by_index = {s.index: s for s in series}
    named = {i: d for i, d in decisions.items() if isinstance(d, BidsName)}
    result: dict[int, Decision] = dict(decisions)

    # echo: per acquisition uid, several echo numbers under one name
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, name in named.items():
        s = by_index[i]
        groups[(s.session, s.uid, name.datatype, name.suffix, _without(name.entities, "echo", "part"))].append(i)
    for members in groups.values():
        echoes = {by_index[i].echo_number for i in members}
        if len(echoes) > 1 and named[members[0]].datatype != "fmap":
            for i in members:
                if named[i].get("echo") is None:
                    named[i] = _with(named[i], "echo", str(by_index[i].echo_number or 1))
    # part-mag next to part-phase
    twins: dict[tuple, set[str]] = defaultdict(set)
    for i, name in named.items():
        s = by_index[i]
        twins[(s.session, s.uid, name.datatype, name.suffix, _without(name.entities, "part"))].add(name.get("part") or "")
    for i, name in list(named.items()):
        s = by_index[i]
        key = (s.session, s.uid, name.datatype, name.suffix, _without(name.entities, "part"))
        if name.get("part") is None and "phase" in twins[key]:
            named[i] = _with(name, "part", "mag")
    # run numbering
    runs: dict[tuple, list[int]] = defaultdict(list)
    for i, name in named.items():
        s = by_index[i]
        runs[(s.session, name.datatype, name.suffix, _without(name.entities, "run", "echo", "part"))].append(i)
    for members in runs.values():
        uids: list[str] = []
        for i in sorted(members, key=lambda i: (by_index[i].acquisition_order, by_index[i].series_number or 0, i)):
            if by_index[i].uid not in uids:
                uids.append(by_index[i].uid)
        auto = any(named[i].get("run") == "+" for i in members)
        if len(uids) > 1 or auto:
            for i in members:
                if named[i].get("run") in (None, "+"):
                    named[i] = _with(named[i], "run", str(uids.index(by_index[i].uid) + 1))
    result.update(named)
    return result


def _with(name: BidsName, key: str, value: str) -> BidsName:
    entities = dict(name.entities)
    entities[key] = value
    return BidsName(name.datatype, name.suffix, tuple(sorted(entities.items())), name.reason)
