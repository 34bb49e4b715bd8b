"""Remote sources, the per-series loop shared by every protocol: series plans -> staged files.

A protocol lists the series to fetch (``SeriesPlan``, with the server's instance count when it
reports one) and supplies two callables: ``retrieve(plan, missing)`` and ``list_instances``.
``retrieve_all`` lists only what is partly staged, retrieves what is missing with retries,
checks every series is complete, and returns the staged files.
Refuses: series that stay incomplete after every attempt (one ``InputError`` at the end,
naming them by index; what did arrive stays staged, so a rerun resumes), and a server that
stays unreachable (``InputError`` at once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from packager.errors import InputError
from packager.model import SourceFile
from packager.sources.remote.context import FetchContext, Transient
from packager.sources.remote.staging import digest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Item:
    """One instance (or XNAT file) to have locally."""

    key: str = field(repr=False)  # SOPInstanceUID or XNAT file path: never logged
    relpath: str
    size: int | None = None  # expected size, when the server tells (XNAT)
    uri: str = field(repr=False, default="")  # XNAT: the file's URI from the listing


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    """One series to retrieve; ``index`` (1-based, in query order) is what messages show.

    ``items`` is the instance listing, or None while the series has not been listed: a series
    with nothing staged and a server-reported ``count`` is fetched whole without one.
    """

    index: int
    dirname: str
    ids: tuple[str, ...] = field(repr=False)  # (study UID, series UID) or (scan ID,)
    count: int | None = None
    items: tuple[Item, ...] | None = None
    sop_classes: tuple[str, ...] = field(repr=False, default=())

    def relpath(self, key: str) -> str:
        return f"{self.dirname}/{digest(key, 20)}.dcm"


Lister = Callable[[SeriesPlan], SeriesPlan]
Retriever = Callable[[SeriesPlan, "list[Item] | None"], None]


def series_dirname(number: Any, key: str) -> str:
    """``<series number>-<digest>``: readable order, stable across runs, no UID."""
    text = str(number).strip() if number is not None else ""
    prefix = f"{int(text):04d}" if text.isdigit() and len(text) < 10 else "x"
    return f"{prefix}-{digest(key, 10)}"


def sort_number(value: Any) -> int:
    """An IS value as int for sorting; absent or odd values sort last."""
    text = str(value if value is not None else "").strip()
    return int(text) if text.lstrip("-").isdigit() else 1 << 31


def listed(plan: SeriesPlan) -> frozenset[str] | None:
    """The keys of the plan's listing, or None when it was not listed."""
    return None if plan.items is None else frozenset(item.key for item in plan.items)


def store(
    context: FetchContext, plan: SeriesPlan, uid: str, chunks: Iterable[bytes], listed_keys: frozenset[str] | None
) -> None:
    """Stage one received instance of ``plan`` unless it is staged already."""
    stage = context.stage
    relpath = plan.relpath(uid)
    if listed_keys is not None and uid not in listed_keys:
        stage.add_extra(relpath)  # not in the listing, yet part of the series: keep it
    if not stage.has(relpath):
        stage.write(relpath, chunks)
        context.progress.advance()


def _missing(context: FetchContext, plan: SeriesPlan) -> list[Item]:
    return [item for item in plan.items or () if not context.stage.has(item.relpath, item.size)]


def retrieve_all(
    context: FetchContext, plans: Sequence[SeriesPlan], retrieve: Retriever, list_instances: Lister
) -> list[SourceFile]:
    """Retrieve what is missing of each series with retries; raise once at the end on failures.

    Listing a series' instances costs about as much as transferring them (Orthanc reads every
    instance for QIDO and image-level C-FIND), so a series with nothing staged is fetched whole
    and checked against the server's count; one partly staged is listed and only its missing
    instances are fetched (``retrieve(plan, None)`` = the whole series). A series whose staged
    count equals the server's count is taken as complete without a listing.

    Parameters
    ----------
    context : FetchContext
        The fetch's spec, staging journal, progress and retry policy.
    plans : sequence of SeriesPlan
        The series to have locally, in query order.
    retrieve : callable
        ``retrieve(plan, missing)``: fetch ``missing`` (None: the whole series) into the stage.
    list_instances : callable
        ``list_instances(plan)``: the plan with its instance listing (``items``).

    Returns
    -------
    list of SourceFile
        Every staged file of every series, plus instances the listings did not announce.

    Raises
    ------
    InputError
        The server unreachable after retries, or series still incomplete (named by index).
    """
    remote, stage = context.remote, context.stage

    def resolve(plan: SeriesPlan) -> SeriesPlan:
        if plan.items is not None:
            return plan
        staged = len(stage.staged_in(plan.dirname))
        if plan.count is not None and staged in (0, plan.count):
            return plan
        return list_instances(plan)

    def todo(plan: SeriesPlan) -> int:
        if plan.items is not None:
            return len(_missing(context, plan))
        return 0 if stage.staged_in(plan.dirname) else plan.count or 0

    current = {plan.index: plan for plan in plans}  # replaced by the listed plan when listed
    failed: list[int] = []

    def attempt(index: int) -> None:
        plan = current[index] = resolve(current[index])
        if plan.items is None:
            retrieve(plan, None)
            left = (plan.count or 0) - len(stage.staged_in(plan.dirname))
        else:
            missing = _missing(context, plan)
            if missing:
                retrieve(plan, missing)
            left = len(_missing(context, plan))
        if left > 0:
            raise Transient(
                f"{left} of {plan.count if plan.items is None else len(plan.items)} instances not received",
                connection=False,
            )

    def guarded(step: Callable[[int], None], index: int) -> None:
        try:
            context.retry(lambda: step(index), f"{remote.kind}: series {index}")
        except Transient as exc:
            if exc.connection or exc.rejected:
                raise context.unreachable(exc) from None
            log.warning("%s: series %d failed: %s", remote.kind, index, exc.reason)
            failed.append(index)

    def list_if_partial(index: int) -> None:
        current[index] = resolve(current[index])

    for index in current:  # list partly staged series first, so the total is known up front
        guarded(list_if_partial, index)
    total = sum(todo(plan) for index, plan in current.items() if index not in failed)
    log.info("%s: %d series, %d instances to download", remote.kind, len(plans), total)
    context.progress.start(total)
    for index in current:
        if index not in failed and todo(current[index]):
            guarded(attempt, index)
    if failed:
        shown = ", ".join(str(i) for i in failed[:10]) + (", ..." if len(failed) > 10 else "")
        raise InputError(
            f"{remote.kind}: {len(failed)} of {len(plans)} series failed (series "
            f"{shown}) at {remote.where}; rerun the same command to resume"
        )
    files: list[SourceFile] = list(stage.extras)
    for plan in current.values():
        relpaths = [i.relpath for i in plan.items] if plan.items is not None else stage.staged_in(plan.dirname)
        files.extend(SourceFile(stage.path(r), r) for r in relpaths)
    return files
