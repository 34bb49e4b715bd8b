"""Release, dataset: the conversion tasks' results -> the staged BIDS dataset's own files.

``collect`` takes the task results in series order and puts every run's derived sidecar
fields through the allowlist, once, with the PHI terms of the whole source (every header's
values and the source path names): a string holding any term a PHI audit of the bundle
searches for is dropped before it is written. ``dataset_files`` then pairs field maps with
runs, adds the de-identification record and stages the sidecar JSONs, dataset_description,
the participants/sessions/scans tables, README and CHANGES. Refuses (InputError): a build in
which no series could be converted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packager import __version__
from packager import phi as phi_stage
from packager.config import ReleaseConfig
from packager.convert.task import TaskResult
from packager.errors import InputError
from packager.model import Excluded, ExclusionReason, Identity, Plan, Planned, Sidecar
from packager.naming import layout as layout_stage
from packager.naming.labels import release_vocabulary
from packager.release import bundle as bundle_stage
from packager.sidecar import allowlist, fieldmaps


@dataclass(frozen=True, slots=True)
class ConvertedRun:
    """One converted series: its plan, its task's result and its sidecar after the allowlist."""

    planned: Planned
    result: TaskResult
    sidecar: Sidecar
    dropped: tuple[tuple[str, int], ...]  # value-free counts: unknown, invalid, phi, denied
    dropped_keys: tuple[tuple[str, str], ...] = ()  # (key, reason): invalid, phi, denied (for the report)


@dataclass(frozen=True, slots=True)
class Collected:
    """The runs in series order and everything left out (the plan's exclusions, then failures)."""

    runs: tuple[ConvertedRun, ...]
    excluded: tuple[Excluded, ...]
    neutral_labels: int = 0  # distinct labels the label policy replaced by neutral ones

    @property
    def staged(self) -> tuple[bundle_stage.Staged, ...]:
        return tuple(s for run in self.runs for s in run.result.staged)

    @property
    def dropped(self) -> Counter:
        """Sidecar values dropped by the allowlist, per reason, over every run."""
        total: Counter = Counter()
        for run in self.runs:
            total.update(dict(run.dropped))
        return total


def collect(the_plan: Plan, results: Iterable[TaskResult], config: ReleaseConfig, values: set) -> Collected:
    """Results in series order; a failed task becomes an ``Excluded`` entry, every other one's
    fields go through the allowlist with the PHI terms of ``values``.

    Parameters
    ----------
    the_plan : Plan
    results : iterable of TaskResult
        One per planned series, in any order.
    config : ReleaseConfig
        ``[sidecar]`` allow and allow_free_text.
    values : set of PhiValue
        The source's PHI values (headers and path names).

    Returns
    -------
    Collected

    Raises
    ------
    InputError
        No series could be converted.
    """
    # the descriptions released on purpose are scrubbed, not themselves terms; a value inside a
    # PHI value is refused only for identities (a model name inside the institution's is not a leak)
    kept = phi_stage.released(values, config.sidecar.allow_free_text)
    terms = frozenset(t for v in kept for t in phi_stage.search_terms(v))
    identity = frozenset(t for v in kept if _identifying(v) for t in phi_stage.search_terms(v))
    # released free text keeps the label policy's words: the shipped ones and [labels] vocabulary
    vocabulary = release_vocabulary(config)
    by_index = {p.series.index: p for p in the_plan.planned}
    runs: list[ConvertedRun] = []
    excluded = list(the_plan.excluded)
    for result in sorted(results, key=lambda r: r.series_index):
        item = by_index[result.series_index]
        if result.error:
            reason = ExclusionReason.CONVERSION_FAILED
            if result.deface is not None and result.deface.refused:
                reason = ExclusionReason.DEFACE_REFUSED  # never published with its face, nor with a hole
            excluded.append(Excluded(item.series.index, item.series.series_number, reason, result.error))
            continue
        filtered = allowlist.apply_allowlist(
            dict(result.fields),
            allow=config.sidecar.allow,
            allow_free_text=config.sidecar.allow_free_text,
            phi_terms=terms,
            identity_terms=identity,
            vocabulary=vocabulary,
        )
        dropped = (
            ("unknown", filtered.dropped_unknown),
            ("invalid", filtered.dropped_invalid),
            ("phi", filtered.dropped_phi),
            ("denied", filtered.dropped_denied),
        )
        runs.append(
            ConvertedRun(item, result, Sidecar.of(result.relpath, filtered.fields), dropped, filtered.dropped_keys)
        )
    runs, partners = _without_partners_of_refused(runs, excluded, by_index)
    excluded += partners
    if not runs:
        raise InputError(
            f"input: nothing to release: no series could be converted"
            f"{first_failure(excluded)} ({len(excluded)} excluded; see: dcmpack plan)"
        )
    neutral = len({(u.entity, u.proposed) for u in the_plan.unapproved})
    return Collected(tuple(runs), tuple(excluded), neutral)


def _identifying(value) -> bool:
    """A person's name or identifier (what a released value must not be a piece of)."""
    return value.kind in ("name", "id") or value.tag in phi_stage.DIRECT_IDENTIFIERS


def _without_partners_of_refused(
    runs: list[ConvertedRun], excluded: list[Excluded], by_index: dict[int, Planned]
) -> tuple[list[ConvertedRun], list[Excluded]]:
    """A field map whose magnitude image defacing refused is left out with it (BIDS needs the
    pair): the runs kept and the partners' exclusions."""
    refused = {
        by_index[e.series_index].relpath.rsplit("_", 1)[0] + "_"
        for e in excluded
        if e.reason is ExclusionReason.DEFACE_REFUSED and by_index[e.series_index].name.datatype == "fmap"
    }
    if not refused:
        return runs, []
    kept, partners = [], []
    for run in runs:
        if run.planned.name.datatype == "fmap" and run.planned.relpath.rsplit("_", 1)[0] + "_" in refused:
            series = run.planned.series
            detail = "field map left out with its magnitude image (defacing refused)"
            partners.append(Excluded(series.index, series.series_number, ExclusionReason.DEFACE_REFUSED, detail))
        else:
            kept.append(run)
    return kept, partners


def first_failure(excluded: Iterable[Excluded]) -> str:
    """``; first: series N (no. M): detail`` for the one-line error when nothing converts."""
    excluded = list(excluded)
    failures = [e for e in excluded if e.reason.is_error] or excluded
    if not failures:
        return ""
    first = failures[0]
    number = f" (no. {first.series_number})" if first.series_number is not None else ""
    return f"; first: series {first.series_index + 1}{number}: {first.detail or first.reason.value}"


def dataset_files(
    config: ReleaseConfig, folder: Path, collected: Collected, identities: dict[int, Identity]
) -> list[bundle_stage.Staged]:
    """Stage the sidecars (with field-map links and the de-identification record) and the
    dataset-level files into ``folder``."""
    done = [run.planned for run in collected.runs]
    records = {
        defaced: allowlist.apply_allowlist(layout_stage.deidentification_record(config.deid.dates, defaced)).fields
        for defaced in (False, True)
    }
    faceless = {run.result.relpath for run in collected.runs if run.result.deface and run.result.deface.defaced}
    sidecars = fieldmaps.link_fieldmaps(done, [run.sidecar for run in collected.runs])
    staged = [
        bundle_stage.stage_bytes(
            folder,
            sidecar.json_relpath,
            layout_stage.canonical_json(dict(sidecar.updated(records[sidecar.relpath in faceless]).fields)),
        )
        for sidecar in sidecars
    ]
    ds = config.dataset
    staged.append(
        bundle_stage.stage_bytes(
            folder,
            "dataset_description.json",
            layout_stage.dataset_description(
                name=ds.name,
                license_=ds.license,
                authors=ds.authors,
                version=ds.version,
                tool_version=__version__,
                dates=config.deid.dates,
                engine=config.convert.engine,
            ),
        )
    )
    subjects: dict[str, dict] = {}
    sessions_of: dict[str, list] = defaultdict(list)
    rows: dict[tuple, list] = defaultdict(list)
    for index in sorted({p.series.session for p in done}):
        who = identities[index]
        info = subjects.setdefault(who.subject, {"age": who.age, "sex": who.sex})
        if info["age"] is None:
            info["age"] = who.age
        if who.session:
            sessions_of[who.subject].append((who.session, who.shifted_date, who.age))
    for item in done:
        who = identities[item.series.session]
        rows[(who.subject, who.session)].append(
            layout_stage.Row(who.subject, who.session, item.image, who.shifted_date)
        )
    tsv, js = layout_stage.participants(subjects)
    staged.append(bundle_stage.stage_bytes(folder, "participants.tsv", tsv))
    staged.append(bundle_stage.stage_bytes(folder, "participants.json", js))
    for subject, items in sessions_of.items():
        tsv, js = layout_stage.sessions_table(sorted(set(items)))
        staged.append(bundle_stage.stage_bytes(folder, f"sub-{subject}/sub-{subject}_sessions.tsv", tsv))
        staged.append(bundle_stage.stage_bytes(folder, f"sub-{subject}/sub-{subject}_sessions.json", js))
    for (subject, session), items in rows.items():
        prefix = f"sub-{subject}/" + (f"ses-{session}/" if session else "")
        stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        tsv, js = layout_stage.scans_table(items, prefix)
        staged.append(bundle_stage.stage_bytes(folder, f"{prefix}{stem}_scans.tsv", tsv))
        staged.append(bundle_stage.stage_bytes(folder, f"{prefix}{stem}_scans.json", js))
    staged.append(
        bundle_stage.stage_bytes(
            folder,
            "README.md",
            layout_stage.readme(ds.name, ds.description, len(subjects), len(done), config.deid.dates),
        )
    )
    staged.append(bundle_stage.stage_bytes(folder, "CHANGES", layout_stage.changes(ds.version)))
    return staged
