"""Naming, a heuristic's BidsName checked against the BIDS schema (``bidsschematools``), before it names anything.

Input: datatype, suffix and entity keys (a rule when the rules file is loaded, a Python
heuristic's answer per series). Output: the problem as one sentence, or "" when BIDS allows
the name. Refused: a suffix BIDS does not define for the datatype (``BOLD`` for ``bold``), one
dcmpack does not produce (``spec.SUFFIXES``: deprecated and non-image suffixes), an entity the
schema does not allow with that suffix, and a missing required entity that dcmpack does not
add by itself (``task`` for func; ``flip``/``inv``/``mt`` for the multi-parameter anat files).
The schema's file rules are read at run time (they are the authority for the combinations);
``spec`` keeps the tables dcmpack writes with (see its docstring).
"""

from __future__ import annotations

import difflib
from functools import lru_cache

from packager.naming.spec import DATATYPES, SUFFIXES

#: Entities resolved across series after naming (``heuristic.resolve_entities``): a heuristic
#: need not set them even where BIDS requires them.
ADDED_BY_DCMPACK = frozenset({"run", "echo", "part", "dir"})
#: The fmap suffix a heuristic may give for dcmpack to choose (magnitude1/2, phasediff, ...).
AUTO_FMAP = "auto"


@lru_cache(maxsize=1)
def _combinations() -> dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]]:
    """(datatype, suffix) -> (allowed entity keys, required entity keys), from the schema's file rules."""
    from bidsschematools import schema

    bids = schema.load_schema()
    short = {name: entity["name"] for name, entity in bids.objects.entities.items()}
    table: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {}
    for group in bids.rules.files.raw.values():
        for rule in group.values():
            datatypes = rule.get("datatypes") or ()
            entities = rule.get("entities") or {}
            allowed = frozenset(short[e] for e in entities if e in short) - {"sub"}
            required = frozenset(short[e] for e, level in entities.items() if level == "required" and e in short)
            for datatype in datatypes:
                for suffix in rule.get("suffixes") or ():
                    old = table.get((datatype, suffix))
                    if old is not None:  # a suffix in two rules (m0scan): either rule's entities
                        allowed, required = allowed | old[0], required & old[1]
                    table[(datatype, suffix)] = (allowed, required - {"sub"})
    return table


def name_problem(datatype: str, suffix: str, entities: tuple[str, ...] | list[str]) -> str:
    """Why ``datatype``/``suffix`` with these entity keys is not a BIDS name dcmpack can write ("" if it is).

    Parameters
    ----------
    datatype, suffix : str
    entities : sequence of str
        Short entity keys (``task``, ``acq``, ...), without ``sub``/``ses``.

    Returns
    -------
    str
    """
    if datatype not in DATATYPES:
        return f'datatype "{datatype}" is not one of {", ".join(DATATYPES)}'
    suffixes = SUFFIXES.get(datatype, ())
    if datatype == "fmap" and suffix == AUTO_FMAP:
        suffix = "phasediff"  # auto becomes one of the field-map suffixes, which share their entities
    elif suffix not in suffixes:
        close = [s for s in suffixes if s.lower() == suffix.lower()] or difflib.get_close_matches(suffix, suffixes, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        listed = ", ".join(suffixes + ((AUTO_FMAP,) if datatype == "fmap" else ()))
        return f'suffix "{suffix}" is not a BIDS {datatype} suffix{hint}; one of: {listed}'
    allowed, required = _combinations().get((datatype, suffix), (frozenset(), frozenset()))
    for key in entities:
        if key not in allowed and key != "ses":
            listed = ", ".join(sorted(allowed))
            return f'entity "{key}" is not allowed in BIDS {datatype}/*_{suffix} names (allowed: {listed})'
    missing = sorted(required - set(entities) - ADDED_BY_DCMPACK - {"ses"})
    if missing:
        return f"BIDS {datatype}/*_{suffix} names require the entity {', '.join(missing)}"
    return ""


def entity_rules(datatype: str, suffix: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """The entity keys BIDS allows and requires (``sub`` left out) in ``datatype``/``*_suffix``
    names, from the schema's file rules; None when the schema has no such file."""
    return _combinations().get((datatype, suffix))
