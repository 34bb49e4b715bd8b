"""Stage unit test, verify: a bundle zip -> Report (``verify``), on small bundles made here.

The validator is not run (``validate=False``): these tests are about verify's own checks.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from packager.errors import VerifyError
from packager.release.bundle import stage_bytes, write_bundle
from packager.release.verify import verify

TOP = "study"
FILES = {
    "dataset_description.json": b'{"BIDSVersion": "1.11.1", "Name": "study"}\n',
    "sub-01/anat/sub-01_T1w.json": b'{"EchoTime": 0.003, "RepetitionTime": 2.0}\n',
    "sub-01/anat/sub-01_T1w.nii.gz": b"\x1f\x8b" + bytes(60),
    # a table's sidecar: its keys are column names, not run metadata (no allowlist)
    "sub-01/sub-01_scans.json": b'{"acq_time": {"Description": "shifted"}}\n',
}


RUNS = [{"path": "sub-01/anat/sub-01_T1w.nii.gz", "deface": "defaced"}]


def _bundle(tmp_path, files=FILES, manifest_files=None, runs=RUNS) -> Path:
    """A bundle as ``build`` writes it: MANIFEST.json lists every staged file with its digest
    and every run (a head image: defaced)."""
    staged = [stage_bytes(tmp_path / "staging", relpath, data) for relpath, data in sorted(files.items())]
    listed = (
        manifest_files
        if manifest_files is not None
        else [{"path": s.relpath, "size": s.size, "sha256": s.sha256} for s in staged]
    )
    manifest = json.dumps({"dataset": TOP, "files": listed, "runs": runs}, sort_keys=True).encode()
    target = tmp_path / "bundle.zip"
    write_bundle(target, TOP, staged, manifest)
    return target


def _rewrite(bundle, change) -> None:
    """Rewrite the zip member by member through ``change(name, data) -> (name, data) | None``."""
    with zipfile.ZipFile(bundle) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in members:
            changed = change(name, data)
            if changed is not None:
                archive.writestr(*changed)


def test_sound_bundle_has_no_problem(tmp_path):
    report = verify(_bundle(tmp_path), validate=False)
    assert report.problems == () and report.ok
    assert report.members == len(FILES) + 2  # with MANIFEST.json and SHA256SUMS
    assert report.validator_errors is None  # not run


def test_changed_member_is_a_checksum_mismatch(tmp_path):
    bundle = _bundle(tmp_path)
    _rewrite(bundle, lambda name, data: (name, data + b" ") if name.endswith("_T1w.json") else (name, data))
    report = verify(bundle, validate=False)
    assert report.problems == ("study/sub-01/anat/sub-01_T1w.json: checksum mismatch",) and not report.ok


def test_member_added_after_the_fact(tmp_path):
    bundle = _bundle(tmp_path)
    with zipfile.ZipFile(bundle, "a") as archive:
        archive.writestr("study/sub-01/extra.txt", b"x")
        archive.writestr("elsewhere.txt", b"x")
    problems = verify(bundle, validate=False).problems
    assert "study/sub-01/extra.txt: not listed in SHA256SUMS" in problems
    assert "study/sub-01/extra.txt: not listed in MANIFEST.json" in problems
    assert "elsewhere.txt: outside the dataset folder" in problems


def test_member_missing(tmp_path):
    bundle = _bundle(tmp_path)
    _rewrite(bundle, lambda name, data: None if name.endswith("dataset_description.json") else (name, data))
    problems = verify(bundle, validate=False).problems
    assert "study/dataset_description.json: listed in SHA256SUMS but missing" in problems
    assert "study/dataset_description.json: listed in MANIFEST.json but missing" in problems
    assert "dataset_description.json missing" in problems


def test_manifest_digest_must_agree_with_sha256sums(tmp_path):
    listed = [
        {"path": relpath, "size": len(data), "sha256": hashlib.sha256(data + b"!").hexdigest()}
        for relpath, data in sorted(FILES.items())
    ]
    problems = verify(_bundle(tmp_path, manifest_files=listed), validate=False).problems
    assert len(problems) == len(FILES)
    assert all(p.endswith(": MANIFEST digest differs from SHA256SUMS") for p in problems)


@pytest.mark.parametrize("key", ["PatientName", "InstitutionName", "NotADicomKeyword"])
def test_sidecar_keys_outside_the_allowlist(tmp_path, key):
    files = dict(FILES)
    files["sub-01/anat/sub-01_T1w.json"] = json.dumps({"EchoTime": 0.003, key: "x"}).encode()
    problems = verify(_bundle(tmp_path, files), validate=False).problems
    assert problems == (f"study/sub-01/anat/sub-01_T1w.json: key {key!r} is not allowlisted",)


def test_invalid_sidecar_json(tmp_path):
    files = dict(FILES)
    files["sub-01/anat/sub-01_T1w.json"] = b"{not json"
    problems = verify(_bundle(tmp_path, files), validate=False).problems
    assert problems == ("study/sub-01/anat/sub-01_T1w.json: invalid JSON",)


def test_without_manifest_or_sums(tmp_path):
    bundle = _bundle(tmp_path)
    _rewrite(bundle, lambda name, data: None if name == "MANIFEST.json" else (name, data))
    report = verify(bundle, validate=False)
    assert report.problems == ("MANIFEST.json or SHA256SUMS missing",) and not report.ok


def test_not_a_zip_raises(tmp_path):
    bogus = tmp_path / "bundle.zip"
    bogus.write_bytes(b"PK\x03\x04 but not really")
    with pytest.raises(VerifyError, match=r"bundle.zip: not a readable zip \(BadZipFile\)") as info:
        verify(bogus, validate=False)
    assert info.value.exit_code == 5


@pytest.mark.parametrize(
    ("runs", "sound"),
    [
        ([{"path": "sub-01/anat/sub-01_T1w.nii.gz", "deface": "exempt: defacing disabled: consented"}], True),
        ([{"path": "sub-01/anat/sub-01_T1w.nii.gz", "deface": "exempt: "}], False),  # no reason
        ([{"path": "sub-01/anat/sub-01_T1w.nii.gz"}], False),  # no marker
        ([{"path": "sub-01/anat/sub-01_T1w.nii.gz", "deface": "refused: never published"}], False),
        ([], False),  # the run is not listed at all
    ],
)
def test_every_head_image_is_defaced_or_exempted(tmp_path, runs, sound):
    report = verify(_bundle(tmp_path, runs=runs), validate=False)
    expected = () if sound else ("study/sub-01/anat/sub-01_T1w.nii.gz: a head image neither defaced nor exempted",)
    assert tuple(p.removesuffix(" in MANIFEST.json") for p in report.problems) == expected
