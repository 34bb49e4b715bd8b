"""Rules heuristic: ``[[heuristic.rules]]`` tables from release.toml name the series.

Each rule has a ``match`` table of header-derived Series fields (DICOM-keyword-like names, see
``FIELDS``) and either ``datatype`` + ``suffix`` (+ ``entities``) or ``skip = true``. Rules are
tried in file order; the first rule whose every condition holds decides. A series no rule
matches is skipped ("no rule matched"), so ``dcmpack plan`` shows what still needs a rule.

Conditions, by field kind:

- text (SeriesDescription, ProtocolName, SequenceName, ...): a glob (``*``, ``?``, ``[abc]``)
  matched against the whole value, case-insensitively; ``"re:<regex>"`` searches a Python
  regular expression (case-insensitive); a list of patterns matches when any one does.
- ImageType, ScanningSequence, SequenceVariant: like text, where a pattern matches the backslash-joined value
  (``ORIGINAL\\PRIMARY\\M\\ND``) or any single token (``"P"``, ``"MOSAIC"``).
- number (EchoTime, RepetitionTime, ... in DICOM units: milliseconds, degrees): a number
  (equal within 1e-6 relative) or ``[min, max]`` (inclusive).
- flag (IsDerived, IsMosaic, IsMultiframe, HasDiffusion): ``true`` / ``false``.

A field the series does not have (None) never matches. Mistakes (unknown field, a number for
a text field, a broken regex, an unknown datatype or entity) are a ``ConfigError`` naming the
rule, raised when the heuristic is loaded, before any file is read.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packager.errors import ConfigError
from packager.model import BidsName, Series, Skip
from packager.naming.schema import name_problem
from packager.naming.spec import ENTITY_KEYS, IMAGE_DATATYPES

# Match-field name -> (Series attribute, kind). Names follow DICOM keywords where one exists.
FIELDS: dict[str, tuple[str, str]] = {
    "SeriesDescription": ("series_description", "text"),
    "ProtocolName": ("protocol_name", "text"),
    "SequenceName": ("sequence_name", "text"),
    "ImageType": ("image_type", "tokens"),
    "ScanningSequence": ("scanning_sequence", "tokens"),  # SE, GR, IR, EP, RM
    "SequenceVariant": ("sequence_variant", "tokens"),  # SK, SS, MP, OSP, ...
    "Manufacturer": ("manufacturer", "text"),
    "ManufacturerModelName": ("model", "text"),
    "Modality": ("modality", "text"),
    "SOPClassUID": ("sop_class_uid", "text"),
    "Orientation": ("orientation", "text"),  # axial | coronal | sagittal | unknown
    "Part": ("part", "text"),  # mag | phase | real | imag | fieldmap
    "PhaseEncodingDirection": ("phase_encoding", "text"),  # AP | PA | LR | RL | SI | IS
    "EchoTime": ("echo_time", "number"),
    "RepetitionTime": ("repetition_time", "number"),
    "FlipAngle": ("flip_angle", "number"),
    "InversionTime": ("inversion_time", "number"),
    "EchoNumber": ("echo_number", "number"),
    "SeriesNumber": ("series_number", "number"),
    "Rows": ("rows", "number"),
    "Columns": ("columns", "number"),
    "NumberOfVolumes": ("n_volumes", "number"),
    "NumberOfSlices": ("n_slices", "number"),
    "NumberOfFiles": ("n_files", "number"),
    "NumberOfFrames": ("n_frames", "number"),
    "IsDerived": ("is_derived", "flag"),
    "IsMosaic": ("is_mosaic", "flag"),
    "IsMultiframe": ("is_multiframe", "flag"),
    "HasDiffusion": ("has_diffusion", "flag"),
}
ALIASES = {"ManufacturersModelName": "ManufacturerModelName", "EchoNumbers": "EchoNumber", "PartType": "Part"}
_LABEL = re.compile(r"^[A-Za-z0-9]+$")

Condition = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule ready to test: (field, attribute, condition) triples and its decision."""

    number: int
    conditions: tuple[tuple[str, str, Condition], ...]
    decision: BidsName | Skip


class _RuleError(ConfigError):
    """A rule's mistake and the key it is in (``compile_rules`` adds the file and line)."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


def _fail(number: int, problem: str, key: str = "") -> ConfigError:
    return _RuleError(f"[[heuristic.rules]] rule {number}: {problem}", key)


def _regex_test(regex: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda value: regex.search(value) is not None


def _glob_test(glob: str) -> Callable[[str], bool]:
    return lambda value: fnmatch.fnmatchcase(value.lower(), glob)


def _text_condition(number: int, name: str, pattern: Any, tokens: bool) -> Condition:
    patterns = pattern if isinstance(pattern, list) else [pattern]
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise _fail(number, f"{name} must be a pattern string or a list of them")
    tests: list[Callable[[str], bool]] = []
    for text in patterns:
        if text.startswith("re:"):
            try:
                regex = re.compile(text[3:], re.IGNORECASE)
            except re.error as exc:
                raise _fail(number, f"{name}: invalid regular expression ({exc.msg})") from None
            tests.append(_regex_test(regex))
        else:
            tests.append(_glob_test(text.lower()))

    def check(value: Any) -> bool:
        if value is None:
            return False
        if tokens:
            candidates = ["\\".join(value), *value]
        else:
            candidates = [str(value)]
        return any(test(candidate) for test in tests for candidate in candidates)

    return check


def _number_condition(number: int, name: str, expected: Any) -> Condition:
    def is_number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if is_number(expected):
        target = float(expected)
        return lambda value: value is not None and math.isclose(float(value), target, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(expected, list) and len(expected) == 2 and all(is_number(x) for x in expected):
        low, high = float(expected[0]), float(expected[1])
        if low > high:
            raise _fail(number, f"{name}: range [min, max] has min > max")
        return lambda value: value is not None and low <= float(value) <= high
    raise _fail(number, f"{name} must be a number or a [min, max] range")


def _flag_condition(number: int, name: str, expected: Any) -> Condition:
    if not isinstance(expected, bool):
        raise _fail(number, f"{name} must be true or false")
    return lambda value: value is not None and bool(value) is expected


def _condition(number: int, name: str, expected: Any) -> tuple[str, str, Condition]:
    canonical = ALIASES.get(name, name)
    if canonical not in FIELDS:
        close = difflib.get_close_matches(name, list(FIELDS) + list(ALIASES), n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise _fail(number, f'unknown match field "{name}"{hint}', "match")
    attribute, kind = FIELDS[canonical]
    if kind == "number":
        check = _number_condition(number, canonical, expected)
    elif kind == "flag":
        check = _flag_condition(number, canonical, expected)
    else:
        check = _text_condition(number, canonical, expected, tokens=kind == "tokens")
    return canonical, attribute, check


def _decision(number: int, rule) -> BidsName | Skip:
    matched = ", ".join(ALIASES.get(k, k) for k, _ in rule.match)
    if rule.skip:
        return Skip(f"rule {number} (skip) matched on {matched}")
    if rule.datatype not in IMAGE_DATATYPES:
        raise _fail(number, f'datatype "{rule.datatype}" is not one of {", ".join(IMAGE_DATATYPES)}', "datatype")
    if not _LABEL.match(rule.suffix):
        raise _fail(number, "suffix must be alphanumeric (a BIDS suffix such as T1w or bold)", "suffix")
    entities: dict[str, str] = {}
    for key, value in rule.entities:
        if key not in ENTITY_KEYS:
            close = difflib.get_close_matches(key, ENTITY_KEYS, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise _fail(number, f'unknown entity "{key}"{hint}', "entities")
        value = str(value)
        if not (_LABEL.match(value) or (key == "run" and value == "+")):
            raise _fail(number, f'entity "{key}" needs an alphanumeric label', "entities")
        if key in ("run", "echo", "chunk", "flip", "inv") and value != "+" and not value.isdigit():
            raise _fail(number, f'entity "{key}" must be a number', "entities")
        entities[key] = str(int(value)) if value.isdigit() else value
    if rule.datatype == "func" and rule.suffix in ("bold", "cbv", "sbref") and "task" not in entities:
        raise _fail(number, "func rules need entities.task (BIDS requires task-<label>)", "entities")
    problem = name_problem(rule.datatype, rule.suffix, tuple(entities))
    if problem:
        raise _fail(number, problem, "suffix" if problem.startswith("suffix") else "entities")
    return BidsName(
        rule.datatype, rule.suffix, tuple(sorted(entities.items())), reason=f"rule {number} matched on {matched}"
    )


def compile_rules(rules) -> tuple[CompiledRule, ...]:
    """Check every rule and turn it into conditions (ConfigError on the first mistake)."""
    compiled = []
    for number, rule in enumerate(rules, 1):
        try:
            if not rule.match:
                raise _fail(number, "needs a non-empty match table", "match")
            conditions = tuple(_condition(number, name, expected) for name, expected in rule.match)
            compiled.append(CompiledRule(number, conditions, _decision(number, rule)))
        except _RuleError as exc:
            raise ConfigError(f"{_where(rule, exc.key)}{exc}") from None
    return tuple(compiled)


def _where(rule, key: str) -> str:
    """``release.toml:42: `` for a rule read from a file (the key's line, else the rule's header)."""
    lines = dict(getattr(rule, "lines", ()))
    line = lines.get(key) or lines.get("")
    where = getattr(rule, "where", "")
    if not where:
        return ""
    return f"{where}:{line}: " if line else f"{where}: "


def classifier(rules) -> Callable[[Series], BidsName | Skip]:
    """A ``classify(series)`` function for ``rules`` (``config.Rule`` objects, in order).

    Raises
    ------
    ConfigError
        A rule that cannot be used (unknown field or entity, wrong value type, bad regex).
    """
    compiled = compile_rules(rules)
    if not compiled:
        raise ConfigError('[heuristic] name = "rules" needs at least one [[heuristic.rules]] entry')

    def classify(series: Series) -> BidsName | Skip:
        for rule in compiled:
            if all(check(getattr(series, attribute, None)) for _, attribute, check in rule.conditions):
                return rule.decision
        return Skip(f"no rule matched ({len(compiled)} rule(s) tried)")

    return classify
