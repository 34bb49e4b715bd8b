"""Naming, label policy: the heuristic's BIDS labels -> approved labels, or neutral ones and a list.

Every entity label a heuristic returns (ReproIn names, ``[[heuristic.rules]]``, Python files) is
made of header text or chosen by code reading it, and labels end up in member names, MANIFEST.json,
SHA256SUMS, scans.tsv and the ``TaskName`` of sidecars. A search for the source's PHI values cannot
catch every way a person can be written into a label (a nickname, a transliteration, a date in some
other order, an ID without its zeros), so labels are default-deny: a label is used only when

* it is approved explicitly in release.toml (``[labels] task = ["rest"]`` and the like, or written
  as a literal label in a ``[[heuristic.rules]]`` entry), or
* it is made only of protocol vocabulary (``packager/data/label_vocabulary.txt`` plus
  ``[labels] vocabulary``) and digit runs that cannot be a date, a time or an identifier
  (``plain_number``), and it matches no PHI value of the source (when the build has them).

Every other label is replaced by a neutral one (``task1``, ``acq1``, ...; an unapproved ``run`` is
numbered by dcmpack) and listed as ``UnapprovedLabel``; ``refuse_unapproved`` then stops a build
(exit 2, naming series and entity, never the value) unless ``[labels] unapproved = "neutral"``.
Labels dcmpack adds itself (``run-``/``echo-`` numbers, ``part-``, ``dir-`` from the phase-encoding
direction) come after this stage and are not header text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from packager.config import ReleaseConfig
from packager.errors import ConfigError
from packager.model import BidsName, Plan, Series, Skip, UnapprovedLabel
from packager.phi import Matcher
from packager.phi.terms import protocol_vocabulary

Decision = BidsName | Skip

#: Entities whose labels are numbers (BIDS "index" entities).
INDEX_ENTITIES = ("run", "echo", "chunk", "flip", "inv")
#: Why a label was not approved (value-free, shown in plan and in the build's error).
NOT_VOCABULARY = "a word outside the protocol vocabulary"
DATE_OR_ID = "digits that could be a date, a time or an identifier"
PHI_MATCH = "matches a PHI value of the source"
NOT_A_LABEL = "not a label"

#: The atoms of a label: an upper-case run not followed by lower case (``MPRAGE``, the ``HC`` of
#: ``HCPrest``), a capitalised or lower-case word (``Eyes``, ``rest``), a digit run. camelCase and
#: letter/digit boundaries split; a lower-case run is never split further (``restdoe`` stays one
#: atom, so a name cannot be spelt out of short vocabulary words).
_ATOM = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def shipped_vocabulary() -> frozenset[str]:
    """The protocol vocabulary shipped in ``packager/data/label_vocabulary.txt`` (lower case; loaded
    by the phi service, whose word terms leave these words out)."""
    return protocol_vocabulary()


def release_vocabulary(config: ReleaseConfig) -> frozenset[str]:
    """The words labels and released free text may be made of: the shipped vocabulary and the
    release's ``[labels] vocabulary`` (lower case)."""
    return shipped_vocabulary() | {w.lower() for w in config.labels.vocabulary}


def atoms(label: str) -> list[str]:
    """``label`` split at camelCase and letter/digit boundaries (``restEyesOpen2`` -> rest, Eyes, Open, 2)."""
    return _ATOM.findall(label)


def _month_day(month: int, day: int) -> bool:
    return 1 <= month <= 12 and 1 <= day <= 31


def plain_number(digits: str) -> bool:
    """True when a digit run of a label cannot be a date, a time of day or an identifier.

    Hand-written because no library answers "could this be part of a date in *some* order":
    date parsers read one format at a time. The rule, from the review's leaks:

    * one or two digits pass (a day, a month or a two-digit year alone identifies no one);
    * five or more never pass (every full date in any order, YYMMDD, an MRN, an ID without its
      leading zeros);
    * three or four digits pass only when no reading gives a date fragment or a time: month and
      day in either order (``312`` = 3/12, ``1703`` = 17/03), a year 1900-2099, year and month
      (``2309``), a time of day (``1430``); and never with a leading zero (an ID's padding).
      So ``100``, ``150``, ``250``, ``700``, ``3000`` pass; ``128``, ``256``, ``1000`` do not:
      ``b1000`` passes because it is a vocabulary word, other numbers can be approved in
      release.toml.
    """
    if not digits.isdigit():
        return False
    if len(digits) <= 2:
        return True
    if len(digits) > 4 or digits[0] == "0":
        return False
    if len(digits) == 3:
        head, tail = int(digits[0]), int(digits[1:])
        lead, last = int(digits[:2]), int(digits[2])
        return not (
            _month_day(head, tail) or _month_day(tail, head) or _month_day(lead, last) or _month_day(last, lead)
        )
    first, second = int(digits[:2]), int(digits[2:])
    return not (
        1900 <= int(digits) <= 2099
        or _month_day(first, second)
        or _month_day(second, first)
        or 1 <= second <= 12  # YYMM
        or 1 <= first <= 12  # MMYY
        or (first <= 23 and second <= 59)  # HHMM
    )


def vocabulary_problem(label: str, vocabulary: frozenset[str]) -> str | None:
    """Why ``label`` is not made of vocabulary words and plain numbers (None when it is).

    The label's atoms are covered left to right by vocabulary words (which may span several
    atoms: ``b`` + ``1000`` is the word ``b1000``) and single digit runs that pass
    ``plain_number``; the label passes when some cover reaches its end.
    """
    parts = atoms(label)
    if not parts or "".join(parts) != label:
        return NOT_A_LABEL
    lowered = [p.lower() for p in parts]
    reach = [True] + [False] * len(parts)
    blocked_by_digits = False
    for start in range(len(parts)):
        if not reach[start]:
            continue
        for end in range(start + 1, len(parts) + 1):
            if "".join(lowered[start:end]) in vocabulary:
                reach[end] = True
        if parts[start].isdigit():
            if plain_number(parts[start]):
                reach[start + 1] = True
            else:
                blocked_by_digits = True
    if reach[-1]:
        return None
    return DATE_OR_ID if blocked_by_digits else NOT_VOCABULARY


@dataclass(frozen=True, slots=True)
class LabelPolicy:
    """What release.toml allows: the vocabulary, the approved labels per entity, the fallback."""

    vocabulary: frozenset[str]
    approved: tuple[tuple[str, frozenset[str]], ...]
    neutral: bool

    @classmethod
    def of(cls, config: ReleaseConfig) -> LabelPolicy:
        """The policy of a release config: shipped vocabulary + ``[labels]`` + rule literals."""
        labels = config.labels
        approved: dict[str, set[str]] = {key: {v.casefold() for v in labels.approved(key)} for key in labels.entities()}
        # a [[heuristic.rules]] entry's labels are written in release.toml by the data owner
        if config.heuristic.name == "rules" and config.heuristic.path is None:
            for rule in config.heuristic.rules:
                for key, value in rule.entities:
                    approved.setdefault(key, set()).add(str(value).casefold())
        # a session label names a folder and every file in it: one shaped like a date never passes
        for value in approved.get("ses", set()):
            if any(a.isdigit() and not plain_number(a) for a in atoms(value)):
                raise ConfigError(
                    "release.toml: a ses label with digits that could be a date, a time or an ID cannot be "
                    "approved ([labels] ses or a rule's entities; use pre, post, 1, 2, ...)"
                )
        return cls(
            vocabulary=release_vocabulary(config),
            approved=tuple(sorted((k, frozenset(v)) for k, v in approved.items() if v)),
            neutral=labels.unapproved == "neutral",
        )

    def is_approved(self, entity: str, label: str) -> bool:
        return label.casefold() in dict(self.approved).get(entity, frozenset())


def label_problem(policy: LabelPolicy, entity: str, label: str, matcher: Matcher | None = None) -> str | None:
    """Why ``entity-label`` may not be published (None when it may).

    Parameters
    ----------
    policy : LabelPolicy
    entity : str
        The entity key (``task``, ``acq``, ...).
    label : str
        The label as the heuristic returned it.
    matcher : packager.phi.Matcher, optional
        The source's PHI values (``plan`` and ``build`` collect them): a vocabulary label that
        matches one (a patient called Rest) needs explicit approval.

    Returns
    -------
    str or None
        One of ``NOT_VOCABULARY``, ``DATE_OR_ID``, ``PHI_MATCH``, ``NOT_A_LABEL`` (value-free).
    """
    if entity == "run" and label == "+":
        return None
    if not _LABEL.match(label):
        return NOT_A_LABEL
    if policy.is_approved(entity, label):
        return None
    problem = vocabulary_problem(label, policy.vocabulary)
    if problem is None and entity in INDEX_ENTITIES and not label.isdigit():
        problem = NOT_A_LABEL
    if problem is None and matcher:
        spaced = " ".join(atoms(label))
        if matcher.find_text(label, member_name=True) or matcher.find_text(spaced, member_name=True):
            problem = PHI_MATCH
    return problem


def _neutral_labels(found: list[tuple[int, str, str, str]], named: dict[int, BidsName]) -> dict[tuple[str, str], str]:
    """(entity, original) -> neutral label: numbered per entity by first appearance in plan order,
    skipping labels already in use, so distinct originals stay distinct and one original gets the
    same neutral label in every session."""
    used: dict[str, set[str]] = {}
    for name in named.values():
        for key, value in name.entities:
            used.setdefault(key, set()).add(value.casefold())
    mapping: dict[tuple[str, str], str] = {}
    counters: dict[str, int] = {}
    for _, entity, original, _ in found:
        if (entity, original) in mapping:
            continue
        if entity == "run":
            mapping[(entity, original)] = "+"  # dcmpack numbers the runs
            continue
        prefix = "" if entity in INDEX_ENTITIES else entity
        number = counters.get(entity, 0)
        while True:
            number += 1
            candidate = f"{prefix}{number}"
            if candidate.casefold() not in used.get(entity, set()):
                break
        counters[entity] = number
        used.setdefault(entity, set()).add(candidate.casefold())
        mapping[(entity, original)] = candidate
    return mapping


def review_labels(
    series: Iterable[Series],
    decisions: dict[int, Decision],
    policy: LabelPolicy,
    matcher: Matcher | None = None,
) -> tuple[dict[int, Decision], tuple[UnapprovedLabel, ...]]:
    """Every label of every decision checked; unapproved ones replaced by neutral labels.

    Parameters
    ----------
    series : iterable of Series
        In plan order (neutral labels are numbered by first appearance in it).
    decisions : dict
        Series index -> the heuristic's BidsName or Skip.
    policy : LabelPolicy
    matcher : packager.phi.Matcher, optional
        The source's PHI values, when the caller collected them.

    Returns
    -------
    decisions : dict
        The same decisions, unapproved labels replaced by neutral ones.
    unapproved : tuple of UnapprovedLabel
        One per replaced label, in plan order.
    """
    named = {i: d for i, d in decisions.items() if isinstance(d, BidsName)}
    found: list[tuple[int, str, str, str]] = []
    for item in series:
        name = named.get(item.index)
        if name is None:
            continue
        for key, value in name.entities:
            problem = label_problem(policy, key, value, matcher)
            if problem is not None:
                found.append((item.index, key, value, problem))
    if not found:
        return decisions, ()
    mapping = _neutral_labels(found, named)
    result = dict(decisions)
    for index, key, value, _ in found:
        held = result[index]
        assert isinstance(held, BidsName)
        entities = tuple((k, mapping[(k, v)] if (k, v) == (key, value) else v) for k, v in held.entities)
        result[index] = BidsName(held.datatype, held.suffix, entities, held.reason)
    unapproved = tuple(
        UnapprovedLabel(index, key, value, mapping[(key, value)], problem) for index, key, value, problem in found
    )
    return result, unapproved


def refuse_unapproved(plan: Plan, policy: LabelPolicy) -> None:
    """Stop a build that would publish unapproved labels (unless the policy says neutral).

    Raises
    ------
    ConfigError
        Naming each series by plan index and the entity, never the label.
    """
    if not plan.unapproved or policy.neutral:
        return
    shown = ", ".join(f"series {u.series_index + 1} {u.entity}" for u in plan.unapproved[:5])
    more = f" and {len(plan.unapproved) - 5} more" if len(plan.unapproved) > 5 else ""
    raise ConfigError(
        f"labels: {len(plan.unapproved)} label(s) not approved ({shown}{more}): "
        "run dcmpack plan on a terminal to see them, approve them in release.toml [labels] "
        '(e.g. task = ["..."]), or set [labels] unapproved = "neutral"'
    )


def approval_lines(unapproved: Iterable[UnapprovedLabel]) -> list[str]:
    """The release.toml lines that would approve these labels (for the data owner's terminal only)."""
    per_entity: dict[str, list[str]] = {}
    for item in unapproved:
        values = per_entity.setdefault(item.entity, [])
        if item.proposed not in values:
            values.append(item.proposed)
    return [f"{entity} = [{', '.join(repr_toml(v) for v in values)}]" for entity, values in per_entity.items()]


def repr_toml(value: str) -> str:
    """A TOML basic string (labels are letters and digits; quotes escaped all the same)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
