"""Bad input: one clear line, the documented exit code, no traceback, nothing left behind."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, leftovers, run_cli

SAMPLE = REPO / "sample_data" / "dicom"


def _first_series(tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    source = next(p for p in sorted(SAMPLE.glob("*/*")) if p.name.endswith("anat-T1w"))
    shutil.copytree(source, folder)
    return folder


def _build(source: Path | str, out: Path, key_file: Path, *extra: str):
    return run_cli("build", str(source), "-o", str(out), "--key-file", str(key_file), *extra)


def _assert_clean_failure(proc, out: Path, code: int, pattern: str):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert pattern in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr
    assert leftovers(out) == []


def test_empty_folder(tmp_path, key_file):
    (tmp_path / "empty").mkdir()
    proc = _build(tmp_path / "empty", tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "no DICOM files found")


def test_folder_of_non_dicom_files(tmp_path, key_file):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    proc = _build(folder, tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "no DICOM files found (2 other file(s) skipped)")


def test_truncated_dicom(tmp_path, key_file):
    folder = _first_series(tmp_path)
    victim = sorted(folder.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:-1000])
    proc = _build(folder, tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "truncated")
    assert victim.name in proc.stderr.splitlines()[-1]


def test_truncated_header(tmp_path, key_file):
    folder = _first_series(tmp_path)
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:400])
    proc = _build(folder, tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "corrupt or truncated")


@pytest.mark.parametrize("member", ["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm"])
def test_zip_slip(tmp_path, key_file, member):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("ok/one.dcm", b"x")
        handle.writestr(member, b"x")
    proc = _build(archive, tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "unsafe path")
    assert not (tmp_path / "evil.dcm").exists()


def test_missing_source(tmp_path, key_file):
    proc = _build(tmp_path / "nope", tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "no such file or folder")


def test_no_key_refused(tmp_path):
    folder = _first_series(tmp_path)
    proc = run_cli("build", str(folder), "-o", str(tmp_path / "out"), env={"DCMPACK_KEY": ""})
    assert proc.returncode == 2
    assert "no pseudonym key" in proc.stderr and "Traceback" not in proc.stderr
    assert leftovers(tmp_path / "out") == []


def test_zip_source_builds(tmp_path, key_file):
    """A zip of a ReproIn-named series builds like the folder (member names never reach outputs)."""
    folder = _first_series(tmp_path)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.iterdir()):
            handle.write(path, f"ZZPHIDOE_JANE/anat-T1w/{path.name}")
    proc = _build(archive, tmp_path / "out", key_file)
    assert proc.returncode == 0, proc.stderr
    bundle = next((tmp_path / "out").glob("*.zip"))
    with zipfile.ZipFile(bundle) as handle:
        assert any(n.endswith("_T1w.nii.gz") for n in handle.namelist())
        assert not any("ZZPHI" in n for n in handle.namelist())


def test_existing_bundle_needs_force(tmp_path, key_file):
    folder = _first_series(tmp_path)
    out = tmp_path / "out"
    assert _build(folder, out, key_file).returncode == 0
    before = next(out.glob("*.zip")).read_bytes()
    proc = _build(folder, out, key_file)
    assert proc.returncode == 6 and "--force" in proc.stderr
    assert next(out.glob("*.zip")).read_bytes() == before
    assert _build(folder, out, key_file, "--force").returncode == 0
