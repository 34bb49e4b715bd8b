#!/usr/bin/env python3
"""Benchmark: dcmpack's defacing step on every 3D head image of the corpus, the sample and a
synthetic head with a known pose.

Usage::

    python benchmarks/deface_table.py [--json FILE] [CASE ...]

Cases (all by default): ``uih`` (dcm_qa_uih 3D T1, converted with the dcm2niix wheel),
``xa30_5`` / ``xa30_6`` (dcm_qa_xa30 T1w, a real volunteer), ``philips_fmap`` (dcm_qa_philips_enh
3D field-map magnitude), ``sample_A1`` / ``sample_A2`` / ``sample_B1`` (the sample's T1w),
``synthetic`` (the template through a known affine onto a 1.1 mm, axis-permuted grid: exact
ground truth), the refusal case ``uih_slab`` (the UIH head cropped to a 40 mm band of the
upper brain), and the parts of one acquisition: ``philips_fmap_phase`` (the phase image of the
field map's first echo, defaced with its magnitude's cut; scored with the magnitude's reference
masks, since a phase image cannot be registered) and ``philips_pcasl_real`` (dcm_qa_philips_enh
series 1901, a pCASL perfusion image stored as a real part with no other part beside it).

Per case: the step's outcome; **face left**, the fraction of the template's face tissue (face
mask and head, as placed by an independent *reference* registration: 2 mm grid, 50 % sampling,
another seed) that is non-zero in the input and still non-zero after; **brain changed**, voxels
inside the reference registration's brain mask whose value changed (0 is the target; for the
synthetic head also against the exact masks); seconds of ``face.deface`` and of the whole step
(with the report's renders), run alone; **same bytes** over two runs; and a face detector
(OpenCV's Haar frontal-face cascade on the 1 mm front render, upscaled) before and after, a
witness only: it also fires on things that are not faces.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from packager.config import DefaceConfig  # noqa: E402
from packager.deface import apply, face, register, render  # noqa: E402

CORPUS = Path(os.environ.get("DCMPACK_CORPUS", REPO.parent / "shared" / "corpus"))
REFERENCE = register.Settings(grid=2.0, sampling=0.5, seed=11, levels=(4, 2, 1), sigmas=(2.0, 1.0, 0.0))
CASES = (
    "uih",
    "xa30_5",
    "xa30_6",
    "philips_fmap",
    "philips_fmap_phase",
    "philips_pcasl_real",
    "sample_A1",
    "sample_A2",
    "sample_B1",
    "synthetic",
    "uih_slab",
)
PHILIPS = CORPUS / "dcm_qa_philips_enh" / "Ref"


def _dcm2niix(folder: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(Path(sys.executable).parent / "dcm2niix"), "-z", "y", "-f", "image", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
    )
    return out / "image.nii.gz"


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    proxy = image.dataobj
    data = np.asanyarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy)
    return data, image.affine


def _synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The template through a known affine (pitch 8, yaw 4 degrees, scale 0.94, shifted) onto a
    1.1 mm grid stored axis-permuted and flipped; and its exact face and brain masks."""
    template, facemask, brainmask, _ = face._templates()
    rotation = sitk.VersorRigid3DTransform()
    rotation.SetRotation((1, 0, 0), np.deg2rad(8.0))
    yaw = sitk.VersorRigid3DTransform()
    yaw.SetRotation((0, 0, 1), np.deg2rad(4.0))
    known = sitk.AffineTransform(3)  # synthetic points -> template points
    matrix = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(yaw.GetMatrix()).reshape(3, 3) * 0.94
    known.SetMatrix(matrix.ravel().tolist())
    centre = template.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in template.GetSize()])
    known.SetCenter(centre)
    known.SetTranslation((3.0, -6.0, 9.0))
    grid = sitk.Image((150, 170, 150), sitk.sitkFloat32)
    grid.SetSpacing((1.1, 1.1, 1.1))
    direction = np.array([0, 0, -1, 1, 0, 0, 0, -1, 0], float).reshape(3, 3)
    grid.SetDirection(direction.ravel().tolist())
    middle = np.array(known.GetInverse().TransformPoint(centre))
    grid.SetOrigin((middle - direction @ ((np.array(grid.GetSize()) - 1) / 2 * 1.1)).tolist())
    head = sitk.GetArrayFromImage(sitk.Resample(template, grid, known, sitk.sitkLinear, 0.0))
    rng = np.random.default_rng(0)
    values = np.clip(head * 800 + rng.normal(0, 6, head.shape) * (head > 0.01), 0, 32767).astype(np.int16)
    face_tissue = _face_tissue(template, facemask)
    truth = [
        sitk.GetArrayFromImage(sitk.Resample(mask, grid, known, sitk.sitkNearestNeighbor, 0)).transpose(2, 1, 0) > 0
        for mask in (face_tissue, brainmask)
    ]
    lps = direction * 1.1
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ lps
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.array(grid.GetOrigin())
    return values.transpose(2, 1, 0).copy(), affine, truth[0], truth[1]


def _face_tissue(template: sitk.Image, facemask: sitk.Image) -> sitk.Image:
    """The template's face: under the face mask and inside the head (on the face mask's grid)."""
    head = sitk.Resample(template > 0.1, facemask, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.Cast((facemask == 0) & head, sitk.sitkUInt8)


def reference_masks(
    data: np.ndarray, affine: np.ndarray, settings: register.Settings = REFERENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Face tissue and brain of the template, placed by a reference registration (image order)."""
    template, facemask, brainmask, _ = face._templates()
    image = face.sitk_image(data[..., 0] if data.ndim == 4 else data, affine)
    fixed = register.normalise(register.to_grid(image, settings.grid))
    moving = template if settings.grid == 2.0 else register.to_grid(template, settings.grid)
    transform = register.affine(fixed, moving, None, settings)
    face_tissue = _face_tissue(template, facemask)
    return tuple(
        sitk.GetArrayFromImage(sitk.Resample(mask, image, transform, sitk.sitkNearestNeighbor, 0)).transpose(2, 1, 0)
        > 0
        for mask in (face_tissue, brainmask)
    )


def _faces(volume: np.ndarray, affine: np.ndarray) -> int:
    """Haar frontal-face detections on the 1 mm front render (OpenCV < 5 ships the cascade)."""
    import cv2

    cv2.setNumThreads(1)
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    previous, render.VOXEL = render.VOXEL, 1.0
    try:
        front, _ = render.views(volume, affine)
    finally:
        render.VOXEL = previous
    gray = cv2.equalizeHist(cv2.resize(front, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR))
    return len(cascade.detectMultiScale(gray, scaleFactor=1.05, minNeighbors=5, minSize=(120, 120)))


def _inputs(name: str, scratch: Path):
    if name in ("uih", "uih_slab"):
        path = scratch / "uih" / "image.nii.gz"
        if not path.exists():
            _dcm2niix(CORPUS / "dcm_qa_uih" / "In" / "DTI_132225" / "t1_gre_fsp_3d_sag__132750", scratch / "uih")
        data, affine = _load(path)
        if name == "uih_slab":
            affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 330], [0, 0, 0, 1]], float)
            data = data[:, :, 330:410].copy()
        return data, affine, None
    if name.startswith("xa30_"):
        return (*_load(CORPUS / "dcm_qa_xa30" / "Ref" / f"{name[-1]}_anat-T1w_acq-tfl.nii.gz"), None)
    if name == "philips_fmap":
        return (*_load(PHILIPS / "2001_WIP_fcMRI_Field_Mapping_enh_e1.nii.gz"), None)
    if name == "philips_fmap_phase":
        return (*_load(PHILIPS / "2001_WIP_fcMRI_Field_Mapping_enh_e1_ph.nii.gz"), None)
    if name == "philips_pcasl_real":
        return (*_load(PHILIPS / "1901_WIP_3DpCASL_enh_real.nii.gz"), None)
    if name.startswith("sample_"):
        folder = {"A1": "ZZPHIDOE_JANE_20240312", "A2": "ZZPHIDOE_JANE_20240619", "B1": "ZZPHIROE_RICHARD_20240405"}
        path = _dcm2niix(REPO / "sample_data" / "dicom" / folder[name[-2:]] / "02_anat-T1w", scratch / name)
        return (*_load(path), None)
    data, affine, face_truth, brain_truth = _synthetic()
    return data, affine, (face_truth, brain_truth)


def measure(name: str, scratch: Path) -> dict:
    """One row of the table."""
    data, affine, truth = _inputs(name, scratch)
    config = DefaceConfig()
    row: dict = {
        "case": name,
        "shape": list(data.shape),
        "voxel_mm": [round(float(v), 2) for v in np.sqrt((affine[:3, :3] ** 2).sum(0))],
    }
    leader = _inputs("philips_fmap", scratch)[:2] if name == "philips_fmap_phase" else None
    cut = None
    if leader is not None:  # a part: the cut of its magnitude (its own registration refuses it)
        cut = apply(leader[0], leader[1], "anat", "T1w", "3D", config)[1].cut
        row["own_registration"] = apply(data, affine, "anat", "T1w", "3D", config)[1].status
    start = time.perf_counter()
    outcome = face.deface(data, affine) if cut is None else face.Outcome(face.zeroed(data, cut.mask()))
    row["seconds_deface"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    out, record = apply(data, affine, "anat", "T1w", "3D", config, cut)
    row["seconds_step"] = round(time.perf_counter() - start, 2)
    row["status"] = record.status if record is not None else "not a head run"
    row["checks"] = dict(outcome.checks)
    row["faces_before"] = _faces(data[..., 0] if data.ndim == 4 else data, affine)
    if outcome.data is None:
        return row
    again = apply(data, affine, "anat", "T1w", "3D", config, cut)[0]
    row["same_bytes"] = hashlib.sha256(out.tobytes()).digest() == hashlib.sha256(again.tobytes()).digest()
    row["faces_after"] = _faces(outcome.data[..., 0] if data.ndim == 4 else outcome.data, affine)
    face_tissue, brain = reference_masks(*(leader or (data, affine)))
    before = (data[..., 0] if data.ndim == 4 else data) != 0
    after = (outcome.data[..., 0] if data.ndim == 4 else outcome.data) != 0
    row["face_left"] = round(
        float(np.count_nonzero(face_tissue & before & after) / max(1, np.count_nonzero(face_tissue & before))), 4
    )
    changed = (outcome.data != data) if data.ndim == 3 else (outcome.data != data).any(axis=3)
    row["brain_changed"] = int(np.count_nonzero(changed & brain))
    if truth is not None:
        row["face_left_truth"] = round(
            float(np.count_nonzero(truth[0] & before & after) / max(1, np.count_nonzero(truth[0] & before))), 4
        )
        row["brain_changed_truth"] = int(np.count_nonzero(changed & truth[1]))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=list(CASES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dcmpack-deface-bench-") as tmp:
        for name in args.cases:
            row = measure(name, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| series | outcome | face left | brain changed | s (deface / step) | same bytes | detector before -> after |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        left = f"{row['face_left']:.2%}" if "face_left" in row else "-"
        if "face_left_truth" in row:
            left += f" (truth {row['face_left_truth']:.2%})"
        brain = str(row.get("brain_changed", "-")) + (
            f" (truth {row['brain_changed_truth']})" if "brain_changed_truth" in row else ""
        )
        print(
            f"| {row['case']} | {row['status'][:60]} | {left} | {brain} | "
            f"{row['seconds_deface']} / {row['seconds_step']} | "
            f"{'yes' if row.get('same_bytes') else '-' if 'same_bytes' not in row else 'NO'} | "
            f"{row['faces_before']} -> {row.get('faces_after', '-')} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
