"""Defacing the parts of one acquisition (packager/deface/parts.py): the phase images of a real
Philips field map (dcm_qa_philips_enh series 2001: two echoes, each a magnitude and a phase on
one 3 mm grid) get the cut of their magnitude, voxel for voxel; on their own they are refused.
A part on another grid (shifted, or cropped) is never given another part's cut. Named as a BIDS
field map (magnitude1/2, phase1/2), the same images share one cut as images of one field map; a
field-map phase with no magnitude cut on its grid is refused, never registered on its own.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from packager import api
from packager import deface as deface_stage
from packager.config import DefaceConfig, ReleaseConfig, load_config, merge_flags
from packager.deface import parts

REPO = Path(__file__).resolve().parent.parent

FIELD_MAP = "2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm.gz"
EVERYTHING = Path(__file__).parent / "heuristics" / "name_everything.py"
FIELD_MAP_AUTO = Path(__file__).parent / "heuristics" / "field_map_auto.py"
REF = Path("dcm_qa_philips_enh") / "Ref" / "2001_WIP_fcMRI_Field_Mapping_enh_e1"


@pytest.fixture(scope="module")
def field_map(corpus, tmp_path_factory) -> Path:
    """The field-map file alone (one enhanced object: magnitude and phase of two echoes)."""
    folder = tmp_path_factory.mktemp("fmap") / "in"
    folder.mkdir()
    with gzip.open(corpus / "dcm_qa_philips_enh" / "In" / "enh" / FIELD_MAP) as source:
        (folder / "fm.dcm").write_bytes(source.read())
    return folder


def _build(source: Path, out: Path, key_file: Path, base: ReleaseConfig | None = None, **flags):
    config = merge_flags(
        base or ReleaseConfig(),
        sources=(str(source),),
        output=out,
        key_file=str(key_file),
        **{"heuristic": str(EVERYTHING), **flags},
    )
    return api.build(config)


def _images(bundle: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Voxels by BIDS file name and the MANIFEST's defacing status by path."""
    images = {}
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("MANIFEST.json"))
        for name in archive.namelist():
            if name.endswith(".nii.gz"):
                data = gzip.decompress(archive.read(name))
                image = nib.Nifti1Image.from_bytes(data)
                images[name.rsplit("/", 1)[-1]] = np.asanyarray(image.dataobj)
    return images, {r["path"].rsplit("/", 1)[-1]: r.get("deface", "") for r in manifest["runs"]}


@pytest.fixture(scope="module")
def builds(field_map, key_file, tmp_path_factory):
    """The field map built with defacing (--jobs 2 and --jobs 1) and with defacing off."""
    root = tmp_path_factory.mktemp("fmap-builds")
    on = _build(field_map, root / "on", key_file, jobs=2)
    once_more = _build(field_map, root / "jobs1", key_file, jobs=1)
    off = _build(
        field_map,
        root / "off",
        key_file,
        ReleaseConfig(deface=DefaceConfig(enabled=False, reason="test: cuts measured on the converted voxels")),
    )
    return on, once_more, off


def test_plan_groups_each_echo_magnitude_first(field_map, key_file, tmp_path):
    config = merge_flags(
        ReleaseConfig(), sources=(str(field_map),), output=tmp_path, key_file=str(key_file), heuristic=str(EVERYTHING)
    )
    planned = api.plan(config).planned
    found = parts.groups(planned, DefaceConfig())
    assert len(planned) == 4 and len(found) == 2
    for group in found:
        members = [planned[i].series for i in group]
        assert [s.part for s in members] == ["mag", "phase"]
        assert len({(s.uid, s.echo_number) for s in members}) == 1


def test_phase_parts_get_their_magnitudes_cut(builds):
    on, once_more, off = builds
    assert on.exit_code == 0, on.excluded
    assert on.bundle.read_bytes() == once_more.bundle.read_bytes()  # --jobs 2 and --jobs 1: same bytes
    defaced, status = _images(on.bundle)
    plain, _ = _images(off.bundle)
    assert sorted(status.values()) == ["defaced"] * 4
    phases = sorted(name for name in defaced if "part-phase" in name)
    assert len(phases) == 2
    for phase in phases:
        magnitude = phase.replace("_part-phase", "").replace(phase.split("_")[1], _acq_before(phase))
        zeroed_phase = (plain[phase] != 0) & (defaced[phase] == 0)
        zeroed_magnitude = (plain[magnitude] != 0) & (defaced[magnitude] == 0)
        assert zeroed_phase.sum() > 1000 and zeroed_magnitude.sum() > 1000
        # one cut: what either part lost is 0 in the other, and nothing else changed
        assert not defaced[phase][zeroed_magnitude].any()
        assert not defaced[magnitude][zeroed_phase].any()
        assert np.array_equal(defaced[phase][~zeroed_phase], plain[phase][~zeroed_phase])


def _acq_before(phase: str) -> str:
    """The magnitude's ``acq-s<N>`` label: the test heuristic numbers series, phase after magnitude."""
    number = int(phase.split("_")[1].removeprefix("acq-s"))
    return f"acq-s{number - 1}"


def _ref(corpus: Path, suffix: str = "") -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(corpus / f"{REF}{suffix}.nii.gz")
    return np.asanyarray(image.dataobj), image.affine


def test_a_cut_is_carried_only_to_the_same_grid(corpus):
    magnitude, affine = _ref(corpus)
    phase, phase_affine = _ref(corpus, "_ph")
    assert np.allclose(affine, phase_affine)
    config = DefaceConfig()
    _, own = deface_stage.apply(phase, affine, "anat", "T1w", "3D", config)
    assert own.refused  # the phase image on its own: the template cannot be placed on it
    defaced, record = deface_stage.apply(magnitude, affine, "anat", "T1w", "3D", config)
    assert record.defaced and record.cut is not None and record.cut.fits(affine, phase.shape)
    cut = record.cut.mask()
    assert np.array_equal(defaced == 0, (magnitude == 0) | cut)
    shared, carried = deface_stage.apply(phase, affine, "anat", "T1w", "3D", config, record.cut)
    assert carried.defaced and carried.cut is None
    assert np.array_equal(shared == 0, (phase == 0) | cut) and carried.removed == int(cut.sum())

    shifted = affine.copy()
    shifted[:3, 3] += 3.0  # one voxel off
    cropped = phase[:, :, 2:]
    assert not record.cut.fits(shifted, phase.shape) and not record.cut.fits(affine, cropped.shape)
    for data, where in ((phase, shifted), (cropped, affine)):
        out, other = deface_stage.apply(data, where, "anat", "T1w", "3D", config, record.cut)
        assert other.cut_from == "" and other.refused  # registered on its own, and refused as before
        assert out is data


def test_cut_survives_packing():
    rng = np.random.default_rng(3)
    mask = rng.random((7, 9, 5)) > 0.6
    cut = parts.Cut.of(mask, np.eye(4))
    assert np.array_equal(cut.mask(), mask)
    assert parts.Cut.of(mask, np.eye(4)) == cut  # deterministic bytes and digest
    assert cut.digest in repr(cut) and "packed" not in repr(cut)


def test_a_refused_magnitude_takes_the_cut_of_the_next_part(field_map, key_file, tmp_path):
    """The waves of ``in_waves`` with a stand-in task (the real one runs in the tests above): the
    first echo's magnitude is refused, its phase is defaced on its own and its cut goes back to
    the magnitude; the second echo's magnitude leads as usual."""
    config = merge_flags(
        ReleaseConfig(), sources=(str(field_map),), output=tmp_path, key_file=str(key_file), heuristic=str(EVERYTHING)
    )
    planned = api.plan(config).planned
    assert [p.series.part for p in planned] == ["mag", "phase", "mag", "phase"]
    own = {1: parts.Cut.of(np.ones((2, 2, 2), bool), np.eye(4)), 2: parts.Cut.of(np.zeros((2, 2, 2), bool), np.eye(4))}
    waves = []

    def task(positions, shared):
        waves.append((positions, dict(shared)))
        results = []
        for p in positions:
            if p in own and planned[p].relpath not in dict(shared):
                record = deface_stage.Record(deface_stage.DEFACED, cut=own[p])
            elif planned[p].relpath in dict(shared):
                record = deface_stage.Record(deface_stage.DEFACED, cut_from=dict(shared)[planned[p].relpath].source)
            else:
                record = deface_stage.Record(deface_stage.REFUSED + "stand-in")
            results.append(type("Result", (), {"deface": record})())
        return results

    results = parts.in_waves(planned, DefaceConfig(), task)
    assert [w[0] for w in waves] == [[0, 2], [1, 3], [0]]
    assert waves[1][1] == {planned[3].relpath: dataclasses.replace(own[2], source=planned[2].relpath)}
    assert waves[2][1][planned[0].relpath].source == planned[1].relpath
    assert [r.deface.cut_from for r in results] == [planned[1].relpath, "", "", planned[2].relpath]


def test_parts_build_the_same_bytes_on_dask(builds, field_map, key_file, tmp_path):
    """The rounds of tasks (leading parts, then the parts that share their cuts) on a Dask cluster
    give the bundle ``--jobs 2`` gave."""
    from distributed import LocalCluster

    on = builds[0]
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        port = int(cluster.scheduler_address.rsplit(":", 1)[1])
        dask = _build(field_map, tmp_path / "dask", key_file, executor=f"dask://127.0.0.1:{port}")
    assert dask.exit_code == 0, dask.excluded
    assert dask.bundle.read_bytes() == on.bundle.read_bytes()


def test_field_map_images_are_one_group_magnitudes_first(field_map, key_file, tmp_path, corpus):
    config = merge_flags(
        ReleaseConfig(),
        sources=(str(field_map),),
        output=tmp_path,
        key_file=str(key_file),
        heuristic=str(FIELD_MAP_AUTO),
    )
    planned = api.plan(config).planned
    (group,) = parts.groups(planned, DefaceConfig())
    assert [planned[i].name.suffix for i in group] == ["magnitude1", "magnitude2", "phase1", "phase2"]
    # Siemens stores magnitude and phase as two series: one field map by its BIDS name (2D: both exempt)
    siemens = merge_flags(
        load_config(REPO / "tests" / "rules" / "dcm_qa_fmap.toml"),
        sources=(str(corpus / "dcm_qa_fmap" / "In" / "Siemens"),),
        output=tmp_path / "siemens",
        key_file=str(key_file),
    )
    planned = api.plan(siemens).planned
    groups = parts.groups(planned, DefaceConfig())
    assert ["magnitude1", "magnitude2", "phasediff"] in [[planned[i].name.suffix for i in group] for group in groups]
    assert any(len({planned[i].series.uid for i in group}) > 1 for group in groups)  # across series
    for group in groups:
        assert len({(planned[i].subject, planned[i].session, planned[i].name.entities) for i in group}) == 1


@pytest.fixture(scope="module")
def field_map_builds(field_map, key_file, tmp_path_factory):
    """The field map named magnitude1/2 + phase1/2, built with --jobs 2 and --jobs 1."""
    root = tmp_path_factory.mktemp("fmap-auto")
    return tuple(
        _build(field_map, root / f"jobs{jobs}", key_file, heuristic=str(FIELD_MAP_AUTO), jobs=jobs) for jobs in (2, 1)
    )


def test_field_map_phases_get_the_magnitudes_cut(field_map_builds, builds):
    on, once_more = field_map_builds
    assert on.exit_code == 0, on.excluded
    assert on.bundle.read_bytes() == once_more.bundle.read_bytes()  # --jobs 2 and --jobs 1: same bytes
    defaced, status = _images(on.bundle)
    suffixes = {name.rsplit("_", 1)[1].removesuffix(".nii.gz"): name for name in defaced}
    assert sorted(suffixes) == ["magnitude1", "magnitude2", "phase1", "phase2"]
    assert sorted(status.values()) == ["defaced"] * 4
    plain = list(_images(builds[2].bundle)[0].values())  # the same voxels, defacing off
    cuts = {}
    for suffix, name in suffixes.items():
        image = defaced[name]
        # its undefaced twin: equal wherever this image was not zeroed
        (twin,) = [p for p in plain if p.shape == image.shape and np.all((p == image) | (image == 0))]
        cuts[suffix] = twin != image
        assert cuts[suffix].sum() > 1000
    # one cut, the first magnitude's, in every image of the field map: what one lost is 0 in the other
    lead = defaced[suffixes["magnitude1"]]
    for suffix in ("magnitude2", "phase1", "phase2"):
        assert not defaced[suffixes[suffix]][cuts["magnitude1"]].any() and not lead[cuts[suffix]].any(), suffix


def test_a_field_map_phase_is_never_registered_on_its_own(corpus):
    magnitude, affine = _ref(corpus)
    phase, _ = _ref(corpus, "_ph")
    config = DefaceConfig()
    _, record = deface_stage.apply(magnitude, affine, "fmap", "magnitude1", "3D", config)
    assert record.defaced and record.cut is not None
    shifted = affine.copy()
    shifted[:3, 3] += 3.0
    for suffix in ("phasediff", "phase1", "phase2", "fieldmap"):
        out, alone = deface_stage.apply(phase, affine, "fmap", suffix, "3D", config)
        assert alone.status == deface_stage.REFUSED + deface_stage.NO_MAGNITUDE_CUT and out is phase
        assert alone.checks == ()  # refused before any registration
        out, other_grid = deface_stage.apply(phase, shifted, "fmap", suffix, "3D", config, record.cut)
        assert other_grid.refused and out is phase
        out, shared = deface_stage.apply(phase, affine, "fmap", suffix, "3D", config, record.cut)
        assert shared.defaced and np.array_equal(out == 0, (phase == 0) | record.cut.mask())
        # the exemptions of its magnitude: a 2D acquisition, defacing off or its magnitude left out by config
        assert deface_stage.apply(phase, affine, "fmap", suffix, "2D", config)[1].status == (
            deface_stage.EXEMPT + deface_stage.FIELD_MAP_2D
        )
        off = DefaceConfig(enabled=False, reason="test")
        assert (
            deface_stage.apply(phase, affine, "fmap", suffix, "3D", off)[1].status == "exempt: defacing disabled: test"
        )
    narrower = DefaceConfig(suffixes=("T1w", "magnitude1"), reason="test: no second echo")
    assert deface_stage.apply(phase, affine, "fmap", "phase1", "2D", narrower)[1].status.startswith("exempt: field-map")
    assert deface_stage.apply(phase, affine, "fmap", "phase2", "3D", narrower)[1].status == (
        "exempt: suffix not in [deface] suffixes: test: no second echo"
    )
