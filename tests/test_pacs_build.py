"""Build from real archives: a bundle built from Orthanc (DICOMweb, C-GET, C-MOVE) or the XNAT
stand-in is byte-identical to the one built from the local folder; faults are clear and publish
nothing. Orthanc is real (started by the ``orthanc`` fixture in tests/conftest_remote.py); XNAT is
a stand-in (tests/xnat_standin.py), since no XNAT server can be installed here."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pydicom
import pytest
from conftest import REPO, leftovers, run_cli
from conftest_remote import CALLING_AET, ORTHANC_PASSWORD, ORTHANC_USER

pytestmark = pytest.mark.pacs

SAMPLE_STUDY = REPO / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312"
HEURISTIC = REPO / "tests" / "heuristics" / "name_everything.py"
LOGIN = {"DCMPACK_USER": ORTHANC_USER, "DCMPACK_PASSWORD": ORTHANC_PASSWORD}


def _study_uid(folder: Path) -> str:
    first = next(p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".dcm", ""))
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def _build(source: str, out: Path, key_file: Path, *extra: str, env: dict | None = None):
    return run_cli("build", source, "-o", str(out), "--key-file", str(key_file), "--json", *extra, env=env)


@pytest.fixture(scope="module")
def local_sample_bundle(tmp_path_factory, key_file) -> bytes:
    out = tmp_path_factory.mktemp("local")
    proc = _build(str(SAMPLE_STUDY), out, key_file)
    assert proc.returncode == 0, proc.stderr
    return next(out.glob("*.zip")).read_bytes()


@pytest.mark.parametrize("method", ["dicomweb", "cget", "cmove"])
def test_pacs_build_identical_to_folder(orthanc, tmp_path, key_file, local_sample_bundle, method):
    query = f"StudyInstanceUID={_study_uid(SAMPLE_STUDY)}"
    extra: tuple[str, ...] = ()
    if method == "dicomweb":
        source = f"{orthanc.dicomweb_spec}?{query}"
    elif method == "cget":
        source = f"{orthanc.dimse_spec}?{query}&calling={CALLING_AET}"
    else:
        source = f"{orthanc.dimse_spec}?{query}"
        extra = ("--move-dest", orthanc.move_dest, "--retrieve", "move")
    proc = _build(source, tmp_path, key_file, *extra, env=LOGIN)
    assert proc.returncode == 0, proc.stderr
    assert next(tmp_path.glob("*.zip")).read_bytes() == local_sample_bundle
    assert ORTHANC_PASSWORD not in proc.stdout + proc.stderr


def test_xnat_build_identical_to_folder(xnat_standin, tmp_path, key_file, local_sample_bundle):
    from xnat_standin import PASSWORD as XNAT_PASSWORD
    from xnat_standin import USER as XNAT_USER

    source = xnat_standin.spec(xnat_standin.experiments[0])
    proc = _build(source, tmp_path, key_file, env={"DCMPACK_USER": XNAT_USER, "DCMPACK_PASSWORD": XNAT_PASSWORD})
    assert proc.returncode == 0, proc.stderr
    assert next(tmp_path.glob("*.zip")).read_bytes() == local_sample_bundle


def test_corpus_study_from_dicomweb_identical(orthanc, corpus, tmp_path, key_file):
    folder = corpus / "dcm_qa_nih" / "In" / "20180918GE"
    local = tmp_path / "local"
    assert _build(str(folder), local, key_file, "--heuristic", str(HEURISTIC)).returncode in (0, 1)
    remote = tmp_path / "remote"
    source = f"{orthanc.dicomweb_spec}?StudyInstanceUID={_study_uid(folder)}"
    proc = _build(source, remote, key_file, "--heuristic", str(HEURISTIC), env=LOGIN)
    assert proc.returncode in (0, 1), proc.stderr
    assert next(remote.glob("*.zip")).read_bytes() == next(local.glob("*.zip")).read_bytes()


def test_wrong_password_is_exit_3_and_secret_stays_secret(orthanc, tmp_path, key_file):
    wrong = "not-the-password-Xy9"
    source = f"{orthanc.dicomweb_spec}?StudyInstanceUID={_study_uid(SAMPLE_STUDY)}"
    proc = _build(source, tmp_path / "out", key_file, env={"DCMPACK_USER": ORTHANC_USER, "DCMPACK_PASSWORD": wrong})
    assert proc.returncode == 3
    assert "authentication" in proc.stderr.lower()
    assert wrong not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert leftovers(tmp_path / "out") == []


def test_unknown_study_is_clear(orthanc, tmp_path, key_file):
    source = f"{orthanc.dicomweb_spec}?StudyInstanceUID=1.2.3.4.5.6.7.8.9"
    proc = _build(source, tmp_path / "out", key_file, env=LOGIN)
    assert proc.returncode == 3 and "no study" in proc.stderr
    assert leftovers(tmp_path / "out") == []


def test_stopped_pacs_publishes_nothing(orthanc_factory, tmp_path, key_file):
    server = orthanc_factory()
    server.upload(sorted(p for p in SAMPLE_STUDY.rglob("*") if p.is_file()))
    source = f"{server.dimse_spec}?StudyInstanceUID={_study_uid(SAMPLE_STUDY)}&calling={CALLING_AET}"
    server.stop()
    proc = _build(source, tmp_path / "out", key_file, env=LOGIN)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr
    assert leftovers(tmp_path / "out") == []


def test_pull_then_build_from_folder(orthanc, tmp_path, key_file, local_sample_bundle):
    source = f"{orthanc.dicomweb_spec}?StudyInstanceUID={_study_uid(SAMPLE_STUDY)}"
    pulled = tmp_path / "pulled"
    proc = run_cli("pull", source, "-o", str(pulled), env=LOGIN)
    assert proc.returncode == 0, proc.stderr
    assert (pulled.stat().st_mode & 0o777) == 0o700
    again = run_cli("pull", source, "-o", str(pulled), "--json", env=LOGIN)
    assert again.returncode == 0
    out = tmp_path / "out"
    proc = _build(str(pulled), out, key_file)
    assert proc.returncode == 0, proc.stderr
    # SR series are left at the archive by pull, so only the manifest's exclusion count could differ:
    # the dataset members themselves are identical.
    ours = zipfile.ZipFile(io.BytesIO(next(out.glob("*.zip")).read_bytes()))
    theirs = zipfile.ZipFile(io.BytesIO(local_sample_bundle))
    members = [n for n in theirs.namelist() if n not in ("MANIFEST.json", "SHA256SUMS")]
    assert [n for n in ours.namelist() if n not in ("MANIFEST.json", "SHA256SUMS")] == members
    assert all(ours.read(n) == theirs.read(n) for n in members)
