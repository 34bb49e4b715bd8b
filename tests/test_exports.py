"""Scanner and PACS export styles end to end: a CD/DVD tree with a DICOMDIR at its root, and
archives (zip, tar, tar.gz, nested) inside a source folder, over real corpus files."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

from conftest import REPO, leftovers, run_cli
from pydicom.fileset import FileSet

NAME_EVERYTHING = REPO / "tests" / "heuristics" / "name_everything.py"


def _tar_bytes(folder: Path, mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for path in sorted(folder.glob("*.dcm")):
            archive.add(path, f"PATIENT_ZZEXPORT/{folder.name}/{path.name}")
    return buffer.getvalue()


def test_cd_export_with_dicomdir_and_nested_archives_builds(tmp_path, corpus, key_file):
    """DICOMDIR (pydicom's FileSet over real Siemens files) is skipped and counted, never fatal;
    a zip in the tree holding a tar.gz and a plain tar is read like a zip SOURCE: three series."""
    siemens = corpus / "dcm_qa_nih" / "In" / "20180918Si"
    export = tmp_path / "CDROM"
    media = FileSet()
    for path in sorted((siemens / "mr_0003").glob("*.dcm")):
        media.add(path)
    media.write(export)
    assert (export / "DICOMDIR").is_file()
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("more/pa.tar.gz", _tar_bytes(siemens / "mr_0004", "w:gz"))
        archive.writestr("more/rl.tar", _tar_bytes(siemens / "mr_0005", "w"))
    shutil.copy(inner, export / "EXTRA.ZIP")

    out = tmp_path / "out"
    proc = run_cli(
        "build", str(export), "-o", str(out), "--key-file", str(key_file), "--heuristic", str(NAME_EVERYTHING)
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 non-image DICOM object(s)" in proc.stderr
    assert leftovers(out) == ["dataset-1.0.0.zip", "report.html"]
    with zipfile.ZipFile(out / "dataset-1.0.0.zip") as bundle:
        runs = [n for n in bundle.namelist() if n.endswith("_bold.nii.gz")]
        assert len(runs) == 3, runs
        assert not any("ZZEXPORT" in n or "EXTRA" in n for n in bundle.namelist())


def test_only_a_dicomdir_is_a_clear_refusal(tmp_path, corpus, key_file):
    """A DICOMDIR whose images are missing (a half-copied CD): exit 3 saying what was found."""
    media = FileSet()
    for path in sorted((corpus / "dcm_qa_nih" / "In" / "20180918Si" / "mr_0003").glob("*.dcm")):
        media.add(path)
    media.write(tmp_path / "CD")
    for image in (tmp_path / "CD").rglob("IM*"):
        image.unlink()
    proc = run_cli("plan", str(tmp_path / "CD"), "--key-file", str(key_file))
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: input: no DICOM images found (0 other file(s) and 1 non-image DICOM object(s), "
        "such as a DICOMDIR, skipped)"
    )
