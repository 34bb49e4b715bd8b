"""Convert, optional engine: one Series -> the dcm2niix binary -> data, affine, JSON, b-tables.

``--engine dcm2niix`` (``[convert] engine``) runs the binary of the ``dcm2niix`` PyPI wheel once
per series, so a release can be compared with, or fall back to, the reference converter
(FIELD-NOTES.md, "dcm2niix wheel"). Per series: the series' files are linked under neutral
names (``00000.dcm``, ...) into a private (0700) temporary folder, gzip-compressed DICOM is
unpacked there instead; dcm2niix writes a gzipped NIfTI + BIDS JSON (+ bval/bvec) under a fixed
neutral name (``-f series``, never a header value), with its defaults file ignored (``HOME`` is
the private folder), no network use, and a timeout; the folder is removed afterwards.

What it writes is raw material, never output: its NIfTI ``descrip`` holds the time of day and
its JSON (even with ``-ba y``) InstitutionName, StationName, DeviceSerialNumber, ImageComments.
The caller (``api``) re-serialises the voxels and affine with ``nifti.write_nifti`` and
passes ``sidecar_fields`` through ``allowlist.apply_allowlist`` with the series' PHI terms;
b-tables are re-formatted from the parsed numbers. dcm2niix's stdout and stderr are never
read out (they hold file names and header values): failures are summarised by exit code.

Refuses (``ConversionFailed``, value-free detail): missing binary (on a worker), a
non-zero exit or a timeout, no image, more than one distinct image for our one series (echoes,
phase, derived or equalised volumes: the index already splits echo and part), a frame subset
of enhanced files, an image without a scanner affine, more than 4 dimensions, non-finite
values, b-tables that do not match the volumes.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packager.convert import ConversionFailed
from packager.convert.diffusion import format_number
from packager.convert.engines import _INSTALL_HINT, binary, require  # noqa: F401  (require: re-exported)
from packager.convert.volume import narrow_dtype
from packager.dicom.reader import reading_settings
from packager.dicom.vendor import label_polarity
from packager.errors import ConfigError

log = logging.getLogger(__name__)

#: Fixed output name given to dcm2niix (``-f``): no ``%`` field, so never a header value.
OUTPUT_STEM = "series"
#: Per-series time limit: a base plus a little per input file (a 3000-file DWI stays well inside).
TIMEOUT_BASE_S = 120.0
TIMEOUT_PER_FILE_S = 0.25
#: dcm2niix exit codes (``nii_dicom.h``, kEXIT_*); 3 is its version report, never seen here.
_EXIT_MEANINGS = {
    1: "failure",
    2: "no DICOM found",
    4: "corrupt file",
    5: "input folder invalid",
    6: "output folder invalid",
    7: "output folder read-only",
    8: "some images not converted",
    9: "rename error",
    10: "incomplete volumes",
    11: "images it did not expect to convert",
    12: "invalid option",
}
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])  # the NIfTI affine is RAS; label_polarity works in LPS


@dataclass(frozen=True, slots=True)
class EngineOutput:
    """What dcm2niix made of one series, read back into memory.

    ``metadata`` is dcm2niix's JSON as written: it holds identifying values and must go
    through the allowlist (``sidecar_fields`` then ``allowlist.apply_allowlist``) before any use.
    """

    data: np.ndarray
    affine: np.ndarray
    metadata: dict = field(repr=False)
    bval: str | None = None
    bvec: str | None = None


# ---------------------------------------------------------------- the binary


# ---------------------------------------------------------------- running it


def _stage_inputs(files: Sequence[Path], folder: Path) -> None:
    """Neutral names in ``folder``: symlinks, or an unpacked copy of gzip-compressed DICOM."""
    from packager.dicom.reader import is_gzip

    for number, source in enumerate(files):
        target = folder / f"{number:05d}.dcm"
        source = Path(os.path.abspath(source))
        try:
            if is_gzip(source):
                with gzip.open(source, "rb") as packed, open(target, "wb") as plain:
                    while chunk := packed.read(1 << 20):
                        plain.write(chunk)
            else:
                os.symlink(source, target)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ConversionFailed(f"file unreadable for dcm2niix ({type(exc).__name__})") from None


@reading_settings()
def _refuse_frame_subset(files: Sequence[Path], frames: tuple[tuple[int, int], ...]) -> None:
    """dcm2niix converts whole enhanced files; a series made of some of their frames is not that."""
    if not frames:
        return
    from pydicom.errors import InvalidDicomError

    from packager.dicom.reader import read_dataset

    total = 0
    for path in files:
        try:
            total += int(read_dataset(path, headers_only=True).get("NumberOfFrames", 1) or 1)
        except (OSError, EOFError, ValueError, TypeError, InvalidDicomError) as exc:
            raise ConversionFailed(f"file unreadable in header pass ({type(exc).__name__})") from None
    if len(set(frames)) != total:
        raise ConversionFailed(
            "enhanced files split by echo or image part: not supported with --engine dcm2niix (use dicom2nifti)"
        )


def run_dcm2niix(
    files: Sequence[Path], *, frames: tuple[tuple[int, int], ...] = (), timeout: float | None = None
) -> EngineOutput:
    """Convert one series' files with dcm2niix; nothing it wrote survives the call.

    Parameters
    ----------
    files : sequence of Path
        ``Series.files`` (plain or gzip-compressed DICOM).
    frames : tuple of (file position, frame)
        ``Series.frames``; a proper subset of the files' frames is refused.
    timeout : float, optional
        Seconds; default ``TIMEOUT_BASE_S + TIMEOUT_PER_FILE_S * len(files)``.

    Raises
    ------
    ConversionFailed
        With a value-free detail (see the module docstring).
    """
    if not files:
        raise ConversionFailed("no images")
    try:
        program = binary()
    except ConfigError:  # checked up front by the build; here: a worker without the wheel
        raise ConversionFailed(f"dcm2niix not installed where this series ran ({_INSTALL_HINT})") from None
    _refuse_frame_subset(files, frames)
    limit = timeout if timeout is not None else TIMEOUT_BASE_S + TIMEOUT_PER_FILE_S * len(files)
    with tempfile.TemporaryDirectory(prefix="dcmpack-dcm2niix-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o700)
        inputs, outputs = root / "in", root / "out"
        inputs.mkdir(mode=0o700)
        outputs.mkdir(mode=0o700)
        _stage_inputs(files, inputs)
        command = [
            str(program),
            "-b",
            "y",
            "-ba",
            "y",
            "-z",
            "y",
            "-f",
            OUTPUT_STEM,
            "-c",
            "",
            "-d",
            "0",
            "-i",
            "n",
            "-x",
            "n",
            "-v",
            "n",
            "-o",
            str(outputs),
            str(inputs),
        ]
        # HOME: dcm2niix reads ~/.dcm2nii.ini defaults; an empty private HOME means none apply.
        env = {"HOME": str(root), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        try:
            proc = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=root,
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ConversionFailed(f"dcm2niix timed out after {limit:.0f} s") from None
        except OSError as exc:
            raise ConversionFailed(f"dcm2niix could not be started ({type(exc).__name__})") from None
        if proc.returncode != 0:
            meaning = _EXIT_MEANINGS.get(proc.returncode, "unknown" if proc.returncode > 0 else "killed by a signal")
            raise ConversionFailed(f"dcm2niix failed (exit code {proc.returncode}: {meaning})")
        output = _read_outputs(outputs)
    log.debug("convert: dcm2niix engine, %d file(s) -> shape %s", len(files), output.data.shape)
    return output


# ---------------------------------------------------------------- reading its files


def _image_stem(name: str) -> str | None:
    for extension in (".nii.gz", ".nii"):
        if name.endswith(extension):
            return name[: -len(extension)]
    return None


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (scaling applied, narrowed back to integers when exact) and the scanner affine."""
    import nibabel as nib  # only the dcm2niix engine reads its images back

    try:
        # nibabel's load is typed as returning FileBasedImage; dcm2niix writes NIfTI (Nifti1Image or its subclass)
        image: nib.Nifti1Image = nib.load(path)  # type: ignore[assignment]
        header = image.header
        affine, code = header.get_sform(coded=True)
        if not code:
            affine, code = header.get_qform(coded=True)
        if not code or affine is None:
            raise ConversionFailed("dcm2niix wrote an image without a scanner affine")
        data = np.asanyarray(image.dataobj)
        data = np.array(data, copy=True)
    except ConversionFailed:
        raise
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise ConversionFailed(f"dcm2niix image unreadable ({type(exc).__name__})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 4:
        raise ConversionFailed("dcm2niix wrote an image of more than 4 dimensions")
    if not data.dtype.fields and np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise ConversionFailed("non-finite voxel values")
        data = narrow_dtype(data)
    affine = np.asarray(affine, dtype=float)
    if data.size == 0 or not np.all(np.isfinite(affine)):
        raise ConversionFailed("empty image or non-finite affine")
    return data, affine


def _same(first: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> bool:
    return (
        first[0].shape == other[0].shape
        and first[0].dtype == other[0].dtype
        and np.array_equal(first[1], other[1])
        and np.array_equal(first[0], other[0])
    )


def _read_outputs(folder: Path) -> EngineOutput:
    stems = sorted(s for s in (_image_stem(p.name) for p in folder.iterdir()) if s is not None)
    if not stems:
        raise ConversionFailed("dcm2niix wrote no image")
    loaded = [
        _load(folder / (stem + (".nii.gz" if (folder / (stem + ".nii.gz")).exists() else ".nii"))) for stem in stems
    ]
    # More than one image for one series: keep one only when all are provably the same image.
    if any(not _same(loaded[0], other) for other in loaded[1:]):
        raise ConversionFailed(
            f"dcm2niix wrote {len(stems)} different images for one series (echoes, "
            "phase, derived or equalised volumes): not supported with --engine dcm2niix"
        )
    stem = stems[0]
    data, affine = loaded[0]
    sidecar = folder / (stem + ".json")
    if not sidecar.is_file():
        raise ConversionFailed("dcm2niix wrote no JSON sidecar")
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8", errors="replace"))
    except ValueError:
        raise ConversionFailed("dcm2niix JSON sidecar unreadable") from None
    if not isinstance(metadata, dict):
        raise ConversionFailed("dcm2niix JSON sidecar is not an object")
    n_volumes = data.shape[3] if data.ndim == 4 else 1
    bval, bvec = _tables(folder / (stem + ".bval"), folder / (stem + ".bvec"), n_volumes)
    return EngineOutput(data=data, affine=affine, metadata=metadata, bval=bval, bvec=bvec)


def _numbers(path: Path) -> list[list[float]]:
    """The rows of a b-table file dcm2niix wrote (a text file, not a header value: those are
    ``dicom.header``'s), refused when unreadable or not finite."""
    try:
        rows = [line.split() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
        values = [[float(x) for x in row] for row in rows]
    except (OSError, UnicodeDecodeError, ValueError):
        raise ConversionFailed("dcm2niix b-table unreadable") from None
    if not all(math.isfinite(x) for row in values for x in row):
        raise ConversionFailed("dcm2niix b-table holds non-finite values")
    return values


def _tables(bval_path: Path, bvec_path: Path, n_volumes: int) -> tuple[str | None, str | None]:
    """BIDS .bval/.bvec text re-formatted from dcm2niix's numbers (its voxel frame, FSL convention)."""
    if not bval_path.is_file() and not bvec_path.is_file():
        return None, None
    if not (bval_path.is_file() and bvec_path.is_file()):
        raise ConversionFailed("dcm2niix wrote only one of .bval and .bvec")
    bvals, bvecs = _numbers(bval_path), _numbers(bvec_path)
    if len(bvals) != 1 or len(bvecs) != 3 or any(len(row) != n_volumes for row in bvals + bvecs):
        raise ConversionFailed("dcm2niix b-values/vectors do not match the number of volumes")
    return (
        " ".join(format_number(b) for b in bvals[0]) + "\n",
        "".join(" ".join(format_number(v) for v in row) + "\n" for row in bvecs),
    )


# ---------------------------------------------------------------- sidecar candidates


def _axis_from_label(axis: str, label: str | None, affine: np.ndarray) -> str | None:
    """``PhaseEncodingDirection`` from dcm2niix's ``PhaseEncodingAxis`` and a from-to ``dir-`` label.

    The dicom2nifti path's rule (``vendor.label_polarity``): when the header has no polarity
    (GE without its protocol block, Philips), the run's ``dir-`` label is the operator's
    statement of it, which BIDS requires for epi field maps.
    """
    if axis not in ("i", "j", "k"):
        return None
    column_ras = np.asarray(affine, dtype=float)[:3, "ijk".index(axis)]
    polarity = label_polarity(label, column_ras * _RAS_TO_LPS)
    if polarity is None:
        return None
    return axis if polarity > 0 else axis + "-"


def sidecar_fields(output: EngineOutput, entities: dict[str, str], datatype: str, suffix: str) -> dict[str, Any]:
    """dcm2niix's JSON mapped onto our candidate keys, before the allowlist (which drops the rest).

    Adds what the pipeline derives from the run's name (TaskName; PhaseEncodingDirection from
    ``dir-`` when dcm2niix found only the axis), writes multi-valued ScanningSequence and
    SequenceVariant with ``_`` (as the dicom2nifti path does, not DICOM's backslash), drops a
    phasediff's EchoTime when EchoTime1 is given, and drops dcm2niix's ConversionSoftware*
    (the caller names dcmpack and the engine version).
    """
    fields = dict(output.metadata)
    fields.pop("ConversionSoftware", None)
    fields.pop("ConversionSoftwareVersion", None)
    for key in ("ScanningSequence", "SequenceVariant"):
        if isinstance(fields.get(key), str):
            fields[key] = fields[key].replace("\\", "_")
    if datatype == "func" and entities.get("task"):
        fields["TaskName"] = entities["task"]
    if "PhaseEncodingDirection" not in fields and isinstance(fields.get("PhaseEncodingAxis"), str):
        code = _axis_from_label(fields["PhaseEncodingAxis"], entities.get("dir"), output.affine)
        if code:
            fields["PhaseEncodingDirection"] = code
    if datatype == "fmap" and suffix == "phasediff" and "EchoTime1" in fields:
        fields.pop("EchoTime", None)
    return fields
