"""Deface, parts of one acquisition: the planned runs -> the runs that are magnitude, real,
imaginary and phase images of one acquisition, and one cut for all of them.

A part shows the same head on the same voxel grid as its magnitude, so it gets the same cut:
the cut of the first part whose own registration passes every gate of ``face`` (the magnitude
first, then real, imaginary, phase), carried voxel for voxel. Registering each part on its own
gave each its own cut, and phase, real and imaginary images register poorly (phase is noise
outside the head, real and imaginary change sign): on dcm_qa_philips_enh the phase parts of the
field map were refused while their magnitudes were defaced.

Runs are parts of one acquisition when the heuristic names them alike but for ``part-``, when
the index split them by image part out of one DICOM series and echo, or when they are images of
one field map (``fmap/``, same entities but for the suffix: magnitude1/2 with phasediff or
phase1/2, magnitude with fieldmap; Siemens stores magnitude and phase as two series). Field-map
phases and field maps (``FIELD_MAP_PARTS``) come after every magnitude. A cut is carried only
to a run with the same voxel grid (shape and affine, ``Cut.fits``); any other run is defaced
on its own registration, as every run outside a group is (but a field-map phase or field map,
which ``deface.apply`` refuses without a magnitude's cut).

Refuses nothing itself: a part refused on its own stays refused only when no part of its
acquisition could be defaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from packager.config import HEAD_SUFFIXES, DefaceConfig
from packager.model import Planned

#: Field-map images that are not magnitudes -> the magnitude whose config they follow (BIDS pairs
#: phasediff and phase1 with magnitude1, phase2 with magnitude2, fieldmap with magnitude).
FIELD_MAP_PARTS = {"phasediff": "magnitude1", "phase1": "magnitude1", "phase2": "magnitude2", "fieldmap": "magnitude"}
FIELD_MAP_IMAGES = ("magnitude", "magnitude1", "magnitude2", *FIELD_MAP_PARTS)

#: Which part leads (registers first): the magnitude shows the head best; phase least.
PART_ORDER = {"mag": 0, "": 0, "real": 1, "imag": 2, "phase": 3}
#: Two grids are the same when their affines agree to this (mm): both come from the same headers
#: through the same code, so they are equal but for float32 storage.
GRID_TOLERANCE_MM = 1e-3


@dataclass(frozen=True, slots=True)
class Cut:
    """The voxels one run's defacing zeroed, to be zeroed in the other parts of its acquisition.

    ``packed`` is the boolean mask (C order, ``shape``) bit-packed and zlib-compressed (a face
    region is one compact block: tens of kB for a 1 mm head); ``digest`` names it in reprs and so
    in the build cache's key. ``checks`` are the gate values its registration passed.
    """

    shape: tuple[int, ...]
    affine: tuple[float, ...]
    digest: str
    packed: bytes = field(repr=False)
    checks: tuple[tuple[str, float], ...] = ()
    source: str = ""  # the BIDS path of the run whose registration made it

    @classmethod
    def of(cls, mask: np.ndarray, affine: np.ndarray, checks: tuple[tuple[str, float], ...] = ()) -> Cut:
        """The cut ``mask`` (3D, the run's voxel order) of a run on the grid ``affine``."""
        packed = zlib.compress(np.packbits(np.ascontiguousarray(mask, dtype=bool).ravel()).tobytes(), 6)
        rounded = tuple(float(v) for v in np.round(np.asarray(affine, float), 6).ravel())
        return cls(tuple(int(n) for n in mask.shape), rounded, hashlib.sha256(packed).hexdigest(), packed, checks)

    def fits(self, affine: np.ndarray, shape: tuple[int, ...]) -> bool:
        """Whether a run with this affine and (spatial) shape is on the cut's grid."""
        mine = np.asarray(self.affine, float).reshape(4, 4)
        return tuple(shape[:3]) == self.shape and bool(
            np.allclose(mine, np.asarray(affine, float), rtol=0.0, atol=GRID_TOLERANCE_MM)
        )

    def mask(self) -> np.ndarray:
        """The zeroed voxels as a boolean array of ``shape``."""
        bits = np.frombuffer(zlib.decompress(self.packed), dtype=np.uint8)
        return np.unpackbits(bits, count=int(np.prod(self.shape))).astype(bool).reshape(self.shape)


def groups(items: Sequence[Planned], config: DefaceConfig) -> tuple[tuple[int, ...], ...]:
    """The positions in ``items`` of head runs that are parts of one acquisition (two or more
    each), leading part first.

    Parameters
    ----------
    items : sequence of Planned
    config : DefaceConfig
        Which suffixes are head runs.

    Returns
    -------
    tuple of tuple of int
        One tuple per acquisition, ordered by ``PART_ORDER`` (field-map phases and field maps
        last) and then by position.
    """
    heads = [
        i
        for i, item in enumerate(items)
        if item.name.suffix in (*HEAD_SUFFIXES, *config.suffixes) or _field_map_part(item)
    ]
    owner = {i: i for i in heads}  # union-find over the two keys below

    def root(i: int) -> int:
        while owner[i] != i:
            i = owner[i]
        return i

    seen: dict[tuple, int] = {}
    for i in heads:
        item, series = items[i], items[i].series
        keys: list[tuple] = []
        if item.name.get("part") is not None:  # the heuristic named them as parts of one run
            entities = tuple(kv for kv in item.name.entities if kv[0] != "part")
            keys.append(("name", item.subject, item.session, item.name.datatype, item.name.suffix, entities))
        if series.part in PART_ORDER and series.part and series.uid:  # split out of one series by part
            keys.append(("series", series.session, series.uid, series.echo_number, series.echo_time))
        if item.name.datatype == "fmap" and item.name.suffix in FIELD_MAP_IMAGES:  # one field map's images
            keys.append(("fmap", item.subject, item.session, item.name.entities))
        for key in keys:
            if key in seen:
                owner[root(i)] = root(seen[key])
            else:
                seen[key] = i
    members: dict[int, list[int]] = {}
    for i in heads:
        members.setdefault(root(i), []).append(i)
    return tuple(
        tuple(sorted(group, key=lambda i: (_rank(items[i]), i))) for group in sorted(members.values()) if len(group) > 1
    )


def _part(item: Planned) -> str:
    return item.name.get("part") or item.series.part or ""


def field_map_part(datatype: str, suffix: str) -> bool:
    """A field-map phase or field map: a part that follows its field map's magnitudes."""
    return datatype == "fmap" and suffix in FIELD_MAP_PARTS


def _field_map_part(item: Planned) -> bool:
    return field_map_part(item.name.datatype, item.name.suffix)


def _rank(item: Planned) -> int:
    """Which part leads: by ``PART_ORDER``; field-map phases and field maps after every magnitude."""
    return len(PART_ORDER) + 1 if _field_map_part(item) else PART_ORDER.get(_part(item), len(PART_ORDER))


#: ``run(positions, shared)``: convert the items at ``positions`` (in that order), each run
#: listed in ``shared`` as (its BIDS path, cut) with that cut; returns their results in order.
Runner = Callable[[list[int], tuple[tuple[str, Cut], ...]], list[Any]]


def in_waves(items: Sequence[Planned], config: DefaceConfig, run: Runner) -> list[Any]:
    """Convert every item, the parts of an acquisition after the part whose cut they share.

    First every run outside a group and each group's leading part; then, per group, the other
    parts with the leader's cut when the leader was defaced, or the next part alone when it was
    refused (until one is defaced: then every other part, refused ones again, with its cut), or
    the rest on their own when it was exempt or not converted. Each task is still a pure
    function of its arguments, so the bytes do not depend on ``--jobs`` or the executor.

    Parameters
    ----------
    items : sequence of Planned
    config : DefaceConfig
    run : Runner
        Runs conversion tasks; results must have ``.deface`` (a ``Record`` or None).

    Returns
    -------
    list
        One result per item, in ``items`` order (the last one made for a run tried twice).
    """
    found = groups(items, config)
    followers = {p for group in found for p in group[1:]}
    results: list[Any] = [None] * len(items)
    first = [i for i in range(len(items)) if i not in followers]
    for position, result in zip(first, run(first, ()), strict=True):
        results[position] = result
    leading = dict.fromkeys(range(len(found)), 0)  # group -> index of the part tried last
    while leading:
        wave: list[int] = []
        shared: list[tuple[str, Cut]] = []
        for g, k in list(leading.items()):
            group = found[g]
            record = results[group[k]].deface
            del leading[g]
            if record is not None and record.defaced and record.cut is not None:
                cut = dataclasses.replace(record.cut, source=items[group[k]].relpath)
                others = [p for j, p in enumerate(group) if j != k]
                wave += others
                shared += [(items[p].relpath, cut) for p in others]
            elif record is not None and record.refused and k + 1 < len(group):
                leading[g] = k + 1
                wave.append(group[k + 1])
            else:  # exempt, not converted, or no part left to try: the rest on their own
                wave += list(group[k + 1 :])
        if wave:
            wave.sort()
            for position, result in zip(wave, run(wave, tuple(shared)), strict=True):
                results[position] = result
    return results
