"""ReproIn naming convention: the scanner protocol name says where a series goes in BIDS.

Form: ``<datatype>[-<suffix>][_<key>-<value>...][__<anything>]`` in ProtocolName or
SeriesDescription, e.g. ``anat-T1w``, ``func-bold_task-rest_run-2``, ``fmap-epi_dir-AP``,
``dwi_acq-b1000``. Datatype may be followed by ``_`` instead of ``-`` when the suffix is left
out (``dwi_dir-AP``). Handled like heudiconv's reproin: a leading ``WIP `` (Philips) is
dropped, ``__dup-NN`` (scanner duplicate) and anything after ``__`` are ignored, ``_run+`` (or
no run) lets dcmpack number repeated runs, ``_SBRef`` marks a single-band reference.
Non-ReproIn names give ``Skip`` with the reason, so ``dcmpack plan`` shows why.
"""
from __future__ import annotations

import re

from packager.model import BidsName, Series, Skip

DATATYPES = ("anat", "func", "dwi", "fmap", "perf")
DEFAULT_SUFFIX = {"func": "bold", "dwi": "dwi", "perf": "asl", "fmap": "auto"}
#: ReproIn keys that name BIDS entities (ReproIn's ``ses`` is honoured by deid via the entity).
ENTITY_KEYS = ("ses", "task", "acq", "ce", "trc", "stain", "rec", "dir", "run", "mod", "echo",
               "flip", "inv", "mt", "part", "recording", "chunk")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def parse(name: str) -> tuple[str, str, dict[str, str]] | None:
    """Split a ReproIn name into (datatype, suffix, entities); None if it is not ReproIn.

    ``run`` is "+" for ``_run+`` (auto numbering).
    """
    text = name.strip()
    if text.upper().startswith("WIP "):
        text = text[4:].strip()
    text = text.split("__", 1)[0]
    text = text.replace(" ", "_")
    match = re.match(r"^(anat|func|dwi|fmap|perf)(?:-([A-Za-z0-9]+))?(?=$|_)(.*)$", text)
    if not match:
        return None
    datatype, suffix, rest = match.group(1), match.group(2) or "", match.group(3)
    entities: dict[str, str] = {}
    for token in filter(None, rest.split("_")):
        if token in ("run+", "run=", "run"):
            entities["run"] = "+"
            continue
        if token.upper() == "SBREF":
            suffix = suffix if suffix in ("", "bold", "dwi", "asl") else suffix
            entities["_sbref"] = "1"
            continue
        key, sep, value = token.partition("-")
        if not sep:
            if not suffix and _LABEL.match(token):
                suffix = token  # e.g. "anat_T1w" with the suffix after an underscore
            continue
        key = key.lower()
        if key in ENTITY_KEYS:
            value = re.sub(r"[^A-Za-z0-9+]", "", value)
            if value:
                entities[key] = value
    if not suffix:
        suffix = DEFAULT_SUFFIX.get(datatype, "")
    return datatype, suffix, entities


def classify(series: Series) -> BidsName | Skip:
    """Name a series from its ReproIn protocol (ProtocolName first, then SeriesDescription)."""
    for field_name, text in (("ProtocolName", series.protocol_name),
                             ("SeriesDescription", series.series_description)):
        parsed = parse(text) if text else None
        if parsed:
            break
    else:
        return Skip("not a ReproIn name")
    datatype, suffix, entities = parsed
    if not suffix:
        return Skip(f"ReproIn {datatype} name without a suffix")
    if "sbref" in series.series_description.lower() or entities.pop("_sbref", None):
        suffix = "sbref"
    if datatype == "func" and "task" not in entities:
        return Skip("ReproIn func name without task-")
    if datatype == "fmap" and suffix == "auto":
        suffix = "phasediff" if series.part == "phase" else f"magnitude{series.echo_number or 1}"
    elif series.part != "mag" and datatype in ("anat", "func", "dwi") and "part" not in entities:
        entities["part"] = series.part
    return BidsName(datatype=datatype, suffix=suffix,
                    entities=tuple(sorted(entities.items())),
                    reason=f"ReproIn name in {field_name}")
