"""ReproIn naming convention: the scanner protocol name says where a series goes in BIDS.

Form (https://github.com/ReproNim/reproin)::

    [PREFIX:][WIP ]<datatype>[-<suffix>][_<key>-<value>...][_run+|_run=][__<anything>]

e.g. ``anat-T1w``, ``func-bold_task-rest_run-2``, ``fmap-epi_dir-AP``, ``dwi_acq-b1000``,
``fmap_acq-3mm`` (a GRE field map: magnitude1/2 and phasediff are told apart by the image
type). ProtocolName is read first, then SeriesDescription. Handled as heudiconv's reproin
does, with these choices:

- a leading ``XYZ:`` prefix (``PU:`` on some scanners) and Philips' ``WIP `` are dropped;
  ``__`` starts a comment (``__dup-01``, ``__anything``), spaces count as ``_``;
- the datatype may be followed by ``_`` when the suffix is left out (``dwi_dir-AP``), and a
  bare BIDS suffix after it is the suffix (``anat_T1w``); the datatype is lower case (so
  vendor defaults such as ``DWI_dir80_PA`` are not mistaken for ReproIn), the suffix is
  matched without regard to case and written as BIDS spells it (``anat-t1w`` -> ``T1w``);
- labels lose characters BIDS does not allow (``acq-p2-s4-3.5mm`` -> ``acq-p2s435mm``);
  a ``run``/``echo``/``chunk`` label must be a number (``run-02`` -> ``run-2``);
- ``_run+`` / ``_run=`` (or no run) let dcmpack number repeated names in acquisition order;
  an explicit run repeated means the earlier series was cancelled: the last one is kept;
- ``_SBRef`` in either name (Siemens appends it to single-band references) gives ``sbref``;
- unknown keys are ignored and counted in the decision's reason; an unknown suffix, ``scout``,
  a func name without ``task-`` and perfusion (ASL needs aslcontext.tsv, not produced yet)
  are skipped with the reason, so ``dcmpack plan`` shows why.
"""

from __future__ import annotations

import re

from packager.model import BidsName, Series, Skip
from packager.naming.spec import ENTITY_KEYS, IMAGE_DATATYPES, SUFFIXES

#: The spec's suffixes, plus ``auto`` for field maps (the suffix is chosen after naming, from the
#: series around it: ``heuristic.resolve_entities``).
_SUFFIXES = {**SUFFIXES, "fmap": SUFFIXES["fmap"] + ("auto",)}
DEFAULT_SUFFIX = {"func": "bold", "dwi": "dwi", "perf": "asl", "fmap": "auto"}
_INDEX_KEYS = ("run", "echo", "chunk", "flip", "inv")
_PART_LABELS = ("mag", "phase", "real", "imag")
_PREFIX = re.compile(r"^[A-Z]+:\s*")
_WIP = re.compile(r"^WIP[\s_]+", re.IGNORECASE)
# The datatype is lower case, as ReproIn writes it: "DWI_dir80_PA" is a vendor default, not ReproIn.
_HEAD = re.compile(rf"^({'|'.join(IMAGE_DATATYPES)})(?:-([A-Za-z0-9]+))?(?=$|_)(.*)$")
_SBREF = re.compile(r"(^|[_\s-])sbref($|[_\s-])", re.IGNORECASE)


class ReproInName:
    """A parsed ReproIn name: ``datatype``, ``suffix``, ``entities`` and what was ignored."""

    __slots__ = ("datatype", "suffix", "entities", "ignored", "sbref")

    def __init__(self, datatype: str, suffix: str, entities: dict[str, str], ignored: list[str], sbref: bool):
        self.datatype, self.suffix, self.entities, self.ignored, self.sbref = datatype, suffix, entities, ignored, sbref

    def __repr__(self) -> str:
        return f"ReproInName({self.datatype!r}, {self.suffix!r}, {self.entities!r})"


def _canonical_suffix(datatype: str, text: str) -> str | None:
    for known in _SUFFIXES[datatype]:
        if known.lower() == text.lower():
            return known
    return None


def parse(name: str) -> ReproInName | None:
    """Parse a ReproIn name; None when it is not one.

    ``run`` is "+" for ``_run+`` / ``_run=`` (dcmpack numbers those). The suffix is "" when
    the name gives none and the datatype has no default, and it is returned as written when
    it is not a BIDS suffix (``classify`` then skips the series).
    """
    text = _PREFIX.sub("", name.strip())
    text = _WIP.sub("", text)
    text = text.split("__", 1)[0].strip().replace(" ", "_")
    if text.lower().startswith("bids_"):
        text = text[5:]
    match = _HEAD.match(text)
    if not match:
        return None
    datatype = match.group(1)
    suffix = match.group(2) or ""
    entities: dict[str, str] = {}
    ignored: list[str] = []
    sbref = False
    for token in filter(None, match.group(3).split("_")):
        if re.fullmatch(r"run[+=]?|run-[+=]", token, re.IGNORECASE):
            entities["run"] = "+"
            continue
        if token.lower() == "sbref":
            sbref = True
            continue
        key, sep, value = token.partition("-")
        if not sep:
            if not suffix and _canonical_suffix(datatype, token):
                suffix = _canonical_suffix(datatype, token)  # "anat_T1w": suffix after an underscore
            else:
                ignored.append(token)
            continue
        key = key.lower()
        if key not in ENTITY_KEYS:
            ignored.append(key)
            continue
        label = re.sub(r"[^A-Za-z0-9]", "", value)
        if key in _INDEX_KEYS:
            label = str(int(label)) if label.isdigit() else ""
        if key == "part":
            label = label.lower() if label.lower() in _PART_LABELS else ""
        if label:
            entities[key] = label
        else:
            ignored.append(key)
    if not suffix:
        suffix = DEFAULT_SUFFIX.get(datatype, "")
    elif _canonical_suffix(datatype, suffix):
        suffix = _canonical_suffix(datatype, suffix)
    return ReproInName(datatype, suffix, entities, ignored, sbref)


def classify(series: Series) -> BidsName | Skip:
    """Name a series from its ReproIn protocol (ProtocolName first, then SeriesDescription)."""
    # field_name is read after the loop: the field the ReproIn name was found in
    for field_name, text in (  # noqa: B007
        ("ProtocolName", series.protocol_name),
        ("SeriesDescription", series.series_description),
    ):
        parsed = parse(text) if text else None
        if parsed:
            break
    else:
        return Skip("not a ReproIn name (in ProtocolName or SeriesDescription)")
    datatype, suffix, entities = parsed.datatype, parsed.suffix, dict(parsed.entities)
    where = f"ReproIn name in {field_name}"
    if suffix.lower() == "scout":
        return Skip(f"{where}: scout (localizer)")
    if datatype == "perf":
        return Skip(f"{where}: perfusion (ASL) is not supported yet (needs aslcontext.tsv)")
    if not suffix:
        return Skip(f"{where}: {datatype} name without a suffix")
    sbref = parsed.sbref or bool(_SBREF.search(series.series_description or ""))
    if sbref and datatype in ("func", "dwi"):
        suffix = "sbref"
    if _canonical_suffix(datatype, suffix) is None:
        return Skip(f"{where}: the suffix is not a BIDS {datatype} suffix")
    if datatype == "func" and "task" not in entities:
        return Skip(f"{where}: func name without task-")
    # Reasons are shown by ``dcmpack plan`` and kept in the private report: count what was
    # ignored, never echo it (protocol names are header text).
    reason = where + (f" ({len(parsed.ignored)} unknown part(s) ignored)" if parsed.ignored else "")
    return BidsName(datatype=datatype, suffix=suffix, entities=tuple(sorted(entities.items())), reason=reason)
