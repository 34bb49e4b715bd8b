"""Sidecar, field maps: planned runs and their sidecars -> sidecars with IntendedFor, B0Field* filled.

Runs once every run's sidecar exists (the release stage calls it over the whole session).

A field map serves the runs acquired after it in the same session: each func/dwi/perf run is
paired with the most recent preceding field-map *acquisition* (a group of fmap files that
estimate one field: magnitude1/2 + phasediff, phase1/2, fieldmap + magnitude, or epi images
of opposite phase encoding). A field map named ``acq-dwi`` / ``acq-bold`` / ``acq-func`` /
``acq-asl`` serves only that kind of run (the BIDS convention for naming what a field map is
for). For each pair this writes:

- ``B0FieldIdentifier`` on every file of a field-map group that can estimate a field (also
  when no run follows it), ``B0FieldSource`` on each run it serves (BIDS 1.7+), and
  ``IntendedFor`` as BIDS URIs (``bids::sub-.../...nii.gz``) when it serves runs;
- ``EchoTime1``/``EchoTime2`` on a phasediff whose header did not give them, from the echo
  times of the group's magnitude images.

Magnitude-only groups (nothing to estimate a field from) get no identifier and serve no run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from packager.model import Planned, Sidecar

TARGET_DATATYPES = ("func", "dwi", "perf")
_ESTIMATORS = {"phasediff", "phase1", "phase2", "fieldmap", "epi"}
#: fmap acq- labels that say which runs the field map is for (BIDS "IntendedFor" convention).
_ACQ_TARGETS = {
    "dwi": "dwi",
    "diffusion": "dwi",
    "bold": "func",
    "func": "func",
    "fmri": "func",
    "asl": "perf",
    "perf": "perf",
}


@dataclass
class _Group:
    kind: str  # "epi" or "gre"
    acq: str
    members: list[Planned] = field(default_factory=list)
    targets: list[Planned] = field(default_factory=list)
    closed: bool = False  # a run was acquired after it: later field maps start a new group

    def role(self, item: Planned) -> tuple:
        return (item.name.suffix, item.name.get("dir") or "", item.name.get("echo") or "", item.name.get("part") or "")

    def accepts(self, item: Planned, kind: str, acq: str) -> bool:
        """Same acquisition kind, no run acquired since, and this role not taken."""
        return (
            self.kind == kind
            and self.acq == acq
            and not self.closed
            and self.role(item) not in {self.role(m) for m in self.members}
        )

    def serves(self, target: Planned) -> bool:
        wanted = _ACQ_TARGETS.get(self.acq.lower())
        return wanted is None or wanted == target.name.datatype

    @property
    def estimates(self) -> bool:
        return any(m.name.suffix in _ESTIMATORS for m in self.members)

    @property
    def label(self) -> str:
        suffixes = {m.name.suffix for m in self.members}
        if self.kind == "epi":
            return "pepolar"
        if "fieldmap" in suffixes:
            return "fieldmap"
        return "phasediff" if "phasediff" in suffixes else "phase"


def _order(item: Planned) -> tuple:
    return (item.series.acquisition_order, item.series.series_number or 0, item.series.index)


def _groups_of_session(items: list[Planned]) -> list[_Group]:
    groups: list[_Group] = []
    for item in sorted(items, key=_order):
        if item.name.datatype == "fmap":
            kind = "epi" if item.name.suffix == "epi" else "gre"
            acq = item.name.get("acq") or ""
            current = next((g for g in reversed(groups) if g.kind == kind and g.acq == acq), None)
            if current is not None and current.accepts(item, kind, acq):
                current.members.append(item)
            else:
                groups.append(_Group(kind, acq, [item]))
        elif item.name.datatype in TARGET_DATATYPES:
            source = next((g for g in reversed(groups) if g.estimates and g.serves(item)), None)
            if source is not None:
                source.targets.append(item)
            for group in groups:
                group.closed = True
    return groups


def link_fieldmaps(planned: Sequence[Planned], sidecars: Sequence[Sidecar]) -> tuple[Sidecar, ...]:
    """Pair field maps with runs and add the pairing keys to their sidecars.

    Parameters
    ----------
    planned : sequence of Planned
        The runs that were converted (a run without a sidecar is left out of the pairing).
    sidecars : sequence of Sidecar
        The runs' sidecars.

    Returns
    -------
    tuple of Sidecar
        ``sidecars`` in the same order, with the pairing keys filled in.
    """
    fields = {sidecar.relpath: dict(sidecar.fields) for sidecar in sidecars}
    by_session: dict[tuple, list[Planned]] = defaultdict(list)
    for item in planned:
        if item.relpath in fields:
            by_session[(item.subject, item.session)].append(item)
    for (_, session), items in sorted(by_session.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        counts: dict[str, int] = defaultdict(int)
        for group in _groups_of_session(items):
            _fill_echo_times(group, fields)
            if not group.estimates:
                continue
            counts[group.label] += 1
            identifier = (f"ses{session}" if session else "") + f"{group.label}{counts[group.label]}"
            uris = sorted(f"bids::{t.image}" for t in group.targets)
            for member in group.members:
                meta = fields[member.relpath]
                meta["B0FieldIdentifier"] = identifier
                if uris:
                    meta["IntendedFor"] = uris
            for target in group.targets:
                fields[target.relpath]["B0FieldSource"] = identifier
    return tuple(Sidecar.of(sidecar.relpath, fields[sidecar.relpath]) for sidecar in sidecars)


def _fill_echo_times(group: _Group, fields: dict[str, dict]) -> None:
    """EchoTime1/2 of a phasediff from its magnitudes when the header gave none (``fields``:
    relpath -> the sidecar's fields, this call's own copies)."""
    for member in group.members:
        if member.name.suffix != "phasediff":
            continue
        meta = fields[member.relpath]
        if "EchoTime1" in meta and "EchoTime2" in meta:
            continue
        echoes = sorted(
            {fields[m.relpath].get("EchoTime") for m in group.members if m.name.suffix.startswith("magnitude")} - {None}
        )
        if len(echoes) >= 2:
            meta["EchoTime1"], meta["EchoTime2"] = echoes[0], echoes[-1]
            meta.pop("EchoTime", None)
