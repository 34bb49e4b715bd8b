"""Defacing (packager/deface): real heads lose their face and keep their brain, implausible
images are refused, and the result is recorded (sidecar code, MANIFEST, report) and verified.

Heads: the UIH 3D T1 of the corpus (a real head with its face) and the sample's T1w (the
vendored template through known affines: exact face and brain masks). Refusal: a 40 mm
mid-sagittal slab of the UIH head (it shows the face's profile, but only part of the brain).
Bundles with defacing on are byte-identical with ``--jobs 1``, ``--jobs 2`` and Dask.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, run_cli

from benchmarks import deface_table
from packager import api
from packager import deface as deface_stage
from packager.config import DefaceConfig, ReleaseConfig, merge_flags
from packager.deface import face, register

SESSION = REPO / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312"
EVERYTHING = REPO / "tests" / "heuristics" / "name_everything.py"
UIH_T1 = Path("dcm_qa_uih") / "In" / "DTI_132225" / "t1_gre_fsp_3d_sag__132750"
#: An independent placement of the template's face and brain for scoring (other grid, sampling,
#: seed and levels than both of the step's registrations).
REFERENCE = register.Settings(grid=3.0, sampling=0.3, seed=11, levels=(4, 2, 1), sigmas=(2.0, 1.0, 0.0))


@pytest.fixture(scope="module")
def uih(corpus, tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """The UIH head as the dcm2niix wheel converts it (voxels as stored, RAS affine)."""
    out = tmp_path_factory.mktemp("uih")
    tool = Path(sys.executable).parent / "dcm2niix"
    subprocess.run(
        [str(tool), "-z", "n", "-f", "t1", "-o", str(out), str(corpus / UIH_T1)], check=True, capture_output=True
    )
    image = nib.load(out / "t1.nii")
    return np.asanyarray(image.dataobj.get_unscaled()), image.affine


def test_uih_head_loses_its_face_and_keeps_its_brain(uih):
    data, affine = uih
    out, record = deface_stage.apply(data, affine, "anat", "T1w", "3D", DefaceConfig())
    assert record is not None and record.status == "defaced", record
    assert out.dtype == data.dtype and out.shape == data.shape
    changed = out != data
    assert np.all(out[changed] == 0)  # voxels are only ever zeroed
    face_tissue, brain = deface_table.reference_masks(data, affine, REFERENCE)
    present = face_tissue & (data != 0)
    assert present.sum() > 100_000  # the face is there to begin with
    assert np.count_nonzero(present & (out != 0)) / present.sum() <= 0.01
    assert brain.sum() > 1_000_000 and not np.any(changed & brain)
    assert dict(record.checks)["margin_mm"] >= 10  # the cut stays far from the brain
    # the same input gives the same bytes (one ITK thread, fixed sampling seed)
    again = face.deface(data, affine)
    assert hashlib.sha256(again.data.tobytes()).digest() == hashlib.sha256(out.tobytes()).digest()
    labels = [label for label, _ in record.views]
    assert labels == ["front, before", "front, after", "side, before", "side, after"]


def test_a_head_cut_to_a_slab_is_refused(uih):
    data, affine = uih
    slab = data[:, :, 330:410].copy()  # 40 mm axial band of the upper brain
    shifted = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 330], [0, 0, 0, 1]], float)
    out, record = deface_stage.apply(slab, shifted, "anat", "T1w", "3D", DefaceConfig())
    assert record is not None and record.refused
    assert "of the brain inside the field of view" in record.status
    assert out is slab  # nothing cut


def _study_of(bundle_manifest: dict) -> dict[str, str]:
    """T1w path -> the sample study it was made from (subject A has two sessions, B one)."""
    paths = sorted(r["path"] for r in bundle_manifest["runs"] if r["suffix"] == "T1w")
    subjects = [p.split("/")[0] for p in paths]
    studies = {}
    for path in paths:
        subject, session = path.split("/")[:2]
        if subjects.count(subject) == 2:
            studies[path] = "A1" if session == "ses-01" else "A2"
        else:
            studies[path] = "B1"
    return studies


def _lookup(mask: np.ndarray, grid: sitk.Image, points: np.ndarray) -> np.ndarray:
    """``mask`` (array order z, y, x, on ``grid``) at LPS ``points`` (3, n), nearest voxel; outside: False."""
    to_index = np.linalg.inv(np.array(grid.GetDirection()).reshape(3, 3) * np.array(grid.GetSpacing()))
    index = np.rint(to_index @ (points - np.array(grid.GetOrigin())[:, None])).astype(int)
    inside = np.all((index >= 0) & (index < np.array(grid.GetSize())[:, None]), axis=0)
    values = np.zeros(points.shape[1], bool)
    values[inside] = mask[index[2, inside], index[1, inside], index[0, inside]] > 0
    return values


def test_sample_t1w_loses_its_exact_face_and_keeps_its_exact_brain(sample_build, sample_module):
    manifest = json.loads((sample_build["extracted"] / "MANIFEST.json").read_text())
    template, facemask, brainmask, _ = face._templates()
    head = sitk.Resample(template > 0.1, facemask, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    face_tissue = sitk.GetArrayFromImage((facemask == 0) & head)
    brain = sitk.GetArrayFromImage(brainmask)
    studies = _study_of(manifest)
    assert len(studies) == 3
    for path, study in studies.items():
        image = nib.load(sample_build["extracted"] / manifest["dataset"] / path)
        out = np.asanyarray(image.dataobj)
        ijk = np.indices(out.shape).reshape(3, -1)
        ras = image.affine[:3, :3] @ ijk + image.affine[:3, 3:]
        where = sample_module.t1_to_template(ras * np.array([[-1.0], [-1.0], [1.0]]), study)
        truth = [
            _lookup(mask, grid, where).reshape(out.shape)
            for mask, grid in ((face_tissue, facemask), (brain, brainmask))
        ]
        face_truth, brain_truth = truth
        assert face_truth.sum() > 5_000 and brain_truth.sum() > 50_000
        assert np.count_nonzero(face_truth & (out != 0)) / face_truth.sum() <= 0.01, path
        assert not np.any(brain_truth & (out == 0)), path  # every brain voxel kept (test_build: with its value)


def test_defaced_runs_are_recorded_in_sidecar_manifest_and_report(sample_build):
    root = sample_build["extracted"]
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert manifest["deface"]["enabled"] is True
    assert "SimpleITK" in manifest["deface"]["version"] and "pydeface" in manifest["deface"]["template"]
    statuses = {r["path"]: r.get("deface") for r in manifest["runs"]}
    for path, status in statuses.items():
        sidecar = json.loads((root / manifest["dataset"] / path.replace(".nii.gz", ".json")).read_text())
        codes = {c["CodeValue"]: c["CodeMeaning"] for c in sidecar["DeidentificationMethodCodeSequence"]}
        if path.endswith("_T1w.nii.gz"):
            assert status == "defaced"
            assert codes["113102"] == "Clean Recognizable Visual Features"
            assert "face removed" in sidecar["DeidentificationMethod"][0]
        else:
            assert status is None and "113102" not in codes  # not a head image: no claim
    report = (sample_build["out"] / "report.html").read_text()
    assert report.count("defacing: defaced") == 3
    assert report.count('alt="surface render, front, after"') == 3


def test_disabling_needs_a_reason_and_is_recorded(tmp_path, key_file):
    config = tmp_path / "release.toml"
    config.write_text("[deface]\nenabled = false\n")
    folder = tmp_path / "in"
    shutil.copytree(SESSION / "02_anat-T1w", folder / "02_anat-T1w")
    proc = run_cli("build", str(folder), "-c", str(config), "-o", str(tmp_path / "out"), "--key-file", str(key_file))
    assert proc.returncode == 2 and "[deface]" in proc.stderr and "reason" in proc.stderr
    config.write_text('[deface]\nenabled = false\nreason = "participants consented to sharing their face"\n')
    proc = run_cli("build", str(folder), "-c", str(config), "-o", str(tmp_path / "out"), "--key-file", str(key_file))
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(tmp_path / "out" / "dataset-1.0.0.zip") as archive:
        manifest = json.loads(archive.read("MANIFEST.json"))
        sidecar = json.loads(next(archive.read(n) for n in archive.namelist() if n.endswith("_T1w.json")))
    assert manifest["deface"] == {"enabled": False, "reason": "participants consented to sharing their face"}
    (run,) = manifest["runs"]
    assert run["deface"] == "exempt: defacing disabled: participants consented to sharing their face"
    assert "113102" not in {c["CodeValue"] for c in sidecar["DeidentificationMethodCodeSequence"]}
    report = (tmp_path / "out" / "report.html").read_text()
    assert "off: participants consented to sharing their face" in report


def test_a_refused_run_is_excluded_with_its_reason(tmp_path, corpus, key_file):
    slab = tmp_path / "slab"
    slab.mkdir()
    files = sorted((corpus / UIH_T1).iterdir())
    for path in files[60:100]:  # 40 mm mid-sagittal: the face's profile, a fraction of the brain
        shutil.copy(path, slab / path.name)
    shutil.copytree(SESSION / "05_func-bold_task-rest", tmp_path / "bold")
    out = tmp_path / "out"
    config = merge_flags(
        ReleaseConfig(),
        sources=(str(slab), str(tmp_path / "bold")),
        output=out,
        key_file=str(key_file),
        heuristic=str(EVERYTHING),
    )
    result = api.build(config)
    assert result.exit_code == 1
    (refused,) = [e for e in result.excluded if e.reason.name == "DEFACE_REFUSED"]
    assert refused.detail.startswith("defacing refused: ")
    assert all(path.endswith("_bold") for path in result.runs)  # the head is not in the bundle
    report = (out / "report.html").read_text()
    assert "defacing refused" in report


def _head_build(session: Path, out: Path, key_file: Path, **flags) -> bytes:
    config = merge_flags(ReleaseConfig(), sources=(str(session),), output=out, key_file=str(key_file), **flags)
    result = api.build(config)
    assert result.exit_code == 0, result.excluded
    with zipfile.ZipFile(result.bundle) as archive:
        manifest = json.loads(archive.read("MANIFEST.json"))
    assert [r["deface"] for r in manifest["runs"] if r["suffix"] == "T1w"] == ["defaced"]
    return result.bundle.read_bytes()


@pytest.fixture(scope="module")
def head_session(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("head") / "in"
    for name in ("02_anat-T1w", "05_func-bold_task-rest"):
        shutil.copytree(SESSION / name, folder / name)
    return folder


def test_defaced_bundles_are_identical_with_jobs_1_2_and_dask(head_session, key_file, tmp_path):
    from distributed import LocalCluster

    one = _head_build(head_session, tmp_path / "jobs1", key_file, jobs=1)
    assert _head_build(head_session, tmp_path / "jobs2", key_file, jobs=2) == one
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        port = int(cluster.scheduler_address.rsplit(":", 1)[1])
        assert _head_build(head_session, tmp_path / "dask", key_file, executor=f"dask://127.0.0.1:{port}") == one


def test_verify_refuses_a_bundle_whose_head_image_is_not_marked(sample_build, tmp_path):
    bundle = tmp_path / "unmarked.zip"
    with zipfile.ZipFile(sample_build["bundle"]) as source, zipfile.ZipFile(bundle, "w") as target:
        manifest = json.loads(source.read("MANIFEST.json"))
        for run in manifest["runs"]:
            run.pop("deface", None)
        text = json.dumps(manifest).encode()
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "MANIFEST.json":
                data = text
            elif info.filename == "SHA256SUMS":
                digest = hashlib.sha256(text).hexdigest()
                data = (
                    "\n".join(
                        f"{digest}  MANIFEST.json" if line.endswith("  MANIFEST.json") else line
                        for line in data.decode().splitlines()
                    ).encode()
                    + b"\n"
                )
            target.writestr(info, data)
    proc = run_cli("verify", str(bundle))
    assert proc.returncode == 5
    assert proc.stderr.count("a head image neither defaced nor exempted") == 3
