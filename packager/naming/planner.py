"""Naming, the planner: the index's sessions and series -> the plan (what goes where, and why not).

The heuristic names each series (``heuristic``), its labels pass the label policy (``labels``:
unapproved ones become neutral and are listed), runs/echoes/parts are resolved across series,
sessions get pseudonymous identities (``deid``, after the identity checks of ``integrity``) and
every named series a BIDS path (``layout``).
Nothing is dropped silently: an excluded, skipped, unnamed or duplicate series becomes an
``Excluded`` entry with a reason from the closed set.
"""

from __future__ import annotations

import dataclasses
import logging

from packager.config import ReleaseConfig
from packager.model import NIFTI, BidsName, Excluded, ExclusionReason, Index, Plan, Planned, Skip
from packager.naming import deid as deid_stage
from packager.naming import heuristic as heuristics_stage
from packager.naming import integrity
from packager.naming import labels as labels_stage
from packager.naming import layout as layout_stage
from packager.phi import Matcher

log = logging.getLogger(__name__)


def plan_series(config: ReleaseConfig, index: Index, not_fetched: int = 0, matcher: Matcher | None = None) -> Plan:
    """Heuristic names, entities, identities and BIDS paths for indexed series.

    Parameters
    ----------
    config : ReleaseConfig
        The heuristic, ``[deid]`` policy, pseudonym key and dataset session labels.
    index : Index
        The index stage's sessions and series.
    not_fetched : int
        Non-image series a remote source left at the archive (excluded like local ones).
    matcher : packager.phi.Matcher, optional
        The source's PHI values (a build has them): labels that match one are not approved.

    Returns
    -------
    Plan

    Raises
    ------
    ConfigError
        The heuristic cannot be loaded or returns something other than a BidsName or Skip.
    """
    series = index.series
    decisions = heuristics_stage.classify_all(series, heuristics_stage.load_heuristic(config.heuristic))
    decisions, unapproved = labels_stage.review_labels(series, decisions, labels_stage.LabelPolicy.of(config), matcher)
    decisions = heuristics_stage.resolve_entities(series, decisions)
    session_labels: dict[int, str] = {}
    for item in series:
        decision = decisions.get(item.index)
        label = decision.get("ses") if isinstance(decision, BidsName) else None
        if label:
            session_labels.setdefault(item.session, label)
    identities = deid_stage.identify(index.sessions, config.deid, config.key, session_labels, config.dataset.sessions)
    excluded = [
        Excluded(-1, None, ExclusionReason.NOT_IMAGE, "non-image series not fetched") for _ in range(not_fetched)
    ]
    excluded += [
        Excluded(
            -1,
            bad.series_number,
            ExclusionReason.DAMAGED,
            f"{bad.problem}: not attributable to a series (its header names none, its folder holds none or several)",
        )
        for bad in index.unattributed
    ]
    planned: list[Planned] = []
    taken: dict[str, int] = {}
    for item in series:
        if item.exclusion is not None:
            excluded.append(Excluded(item.index, item.series_number, item.exclusion, item.exclusion_detail))
            continue
        decision = decisions[item.index]
        if isinstance(decision, Skip):
            excluded.append(Excluded(item.index, item.series_number, ExclusionReason.HEURISTIC_SKIP, decision.reason))
            continue
        who = identities[item.session]
        relpath = layout_stage.bids_relpath(decision, who.subject, who.session, extension=NIFTI)
        relpath = relpath[: -len(NIFTI)] if relpath is not None else None  # Planned keeps it without
        if relpath is None:
            excluded.append(
                Excluded(
                    item.index,
                    item.series_number,
                    ExclusionReason.UNNAMED,
                    f"no BIDS path for {decision.datatype}/{decision.suffix} with these entities",
                )
            )
        elif relpath in taken:
            excluded.append(
                Excluded(
                    item.index,
                    item.series_number,
                    ExclusionReason.DUPLICATE,
                    f"same BIDS name as series {taken[relpath] + 1}",
                )
            )
        else:
            taken[relpath] = item.index
            planned.append(Planned(item, decision, who.subject, who.session, relpath))
    labels = tuple((s.index, identities[s.index]) for s in index.sessions)
    mapping = deid_stage.read_subject_map(config.deid.subject_map) if config.deid.subject_map else {}
    warnings = integrity.integrity_warnings(index.sessions, mapping)
    for warning in warnings:  # value-free; also in the private report
        log.warning("identity: %s", warning)
    return Plan(
        index.sessions,
        series,
        tuple(planned),
        tuple(excluded),
        index.skipped,
        labels,
        unapproved,
        warnings,
        index.non_image_files,
    )


def refuse(the_plan: Plan, refusals: dict[int, str]) -> Plan:
    """The plan with the series ``refusals`` names ({series index: detail}) moved from planned to
    excluded as failed conversions, as ``build`` would list them.

    Parameters
    ----------
    the_plan : Plan
    refusals : dict
        From ``convert.preflight.preflight_all``.

    Returns
    -------
    Plan
    """
    if not refusals:
        return the_plan
    kept = tuple(p for p in the_plan.planned if p.series.index not in refusals)
    failed = tuple(
        Excluded(p.series.index, p.series.series_number, ExclusionReason.CONVERSION_FAILED, refusals[p.series.index])
        for p in the_plan.planned
        if p.series.index in refusals
    )
    return dataclasses.replace(the_plan, planned=kept, excluded=the_plan.excluded + failed)


def fall_back(the_plan: Plan, refusals: dict[int, str]) -> Plan:
    """``--engine auto``: the series ``refusals`` names stay planned, marked with why ours would
    not convert them (dcm2niix will; ``refuse`` for the other engines)."""
    if not refusals:
        return the_plan
    planned = tuple(
        dataclasses.replace(p, fallback=refusals[p.series.index]) if p.series.index in refusals else p
        for p in the_plan.planned
    )
    return dataclasses.replace(the_plan, planned=planned)
