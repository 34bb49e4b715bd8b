"""Release to release: ``dcmpack diff`` and ``build --previous`` (packager/release/diff.py).

Three releases of the sample, built through one cache: ``old`` (one subject's two sessions),
``new`` (plus the second subject, with ``--previous old``) and ``changed`` (``new`` with one
BOLD file's pixels and the flip angle of one T1w series changed in the DICOM).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from conftest import REPO, run_cli

from packager import api
from packager.config import load_config, merge_flags
from packager.errors import ConfigError

SAMPLE = REPO / "sample_data"
JANE = ("ZZPHIDOE_JANE_20240312", "ZZPHIDOE_JANE_20240619")


def _build(source: Path, out: Path, cache: Path, **flags):
    config = merge_flags(
        load_config(SAMPLE / "release.toml"), sources=(str(source),), output=out, cache=cache, jobs=1, **flags
    )
    return api.build(config)


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diff")
    for folder in JANE:
        shutil.copytree(SAMPLE / "dicom" / folder, root / "old" / folder)
    shutil.copytree(SAMPLE / "dicom", root / "new")
    changed = shutil.copytree(SAMPLE / "dicom", root / "changed")
    bold = sorted((changed / JANE[1] / "05_func-bold_task-rest").iterdir())[0]
    data = bytearray(bold.read_bytes())
    data[-2] ^= 0x01
    bold.write_bytes(bytes(data))
    for path in (changed / JANE[1] / "02_anat-T1w").iterdir():
        ds = pydicom.dcmread(path)
        ds.FlipAngle = float(ds.FlipAngle) + 1.0
        ds.save_as(path)
    cache = root / "cache"
    old = _build(root / "old", root / "r-old", cache).bundle
    new = _build(root / "new", root / "r-new", cache, previous=old).bundle
    return {"old": old, "new": new, "changed": _build(changed, root / "r-changed", cache).bundle}


def test_diff_lists_what_an_added_subject_brings(releases, sample_module):
    proc = run_cli("diff", str(releases["old"]), str(releases["new"]), "--json")
    assert proc.returncode == 1, proc.stderr
    found = json.loads(proc.stdout)
    assert found["identical"] is False and found["same_key"] is True
    assert len(found["participants_added"]) == 1 and not found["participants_removed"]
    added = found["participants_added"][0]
    assert found["sessions_added"] == [f"{added}/ses-01"]
    assert len(found["runs_added"]) == 5 and all(run.startswith(f"{added}/ses-01/") for run in found["runs_added"])
    assert not found["runs_removed"] and not found["runs_changed"]
    # the first subject's files (pseudonyms, session labels, shifted dates) are the same bytes
    assert not [p for p in found["files_changed"] + found["files_removed"] if p.startswith("sub-")]
    assert "participants.tsv" in found["files_changed"]
    text = run_cli("diff", str(releases["old"]), str(releases["new"]))
    assert text.returncode == 1 and f"  + {added}" in text.stdout and text.stdout.rstrip().endswith("different")
    shown = (text.stdout + proc.stdout).lower()
    canaries = {c.lower() for c in sample_module.canaries() if len(c) >= 6}
    assert len(canaries) > 50 and not [c for c in canaries if c in shown]


def test_diff_names_changed_runs_and_sidecar_keys(releases):
    proc = run_cli("diff", str(releases["new"]), str(releases["changed"]), "--json")
    assert proc.returncode == 1, proc.stderr
    found = json.loads(proc.stdout)
    changed = {c["run"].rsplit("/", 1)[-1].split("_", 2)[-1]: c for c in found["runs_changed"]}
    assert set(changed) == {"task-rest_bold", "T1w"}, found["runs_changed"]
    assert changed["task-rest_bold"]["parts"] == ["image"]
    assert changed["T1w"]["parts"] == ["sidecar"] and changed["T1w"]["sidecar_keys"] == ["FlipAngle"]
    assert "/ses-02/" in changed["T1w"]["run"]
    assert not found["runs_added"] and not found["runs_removed"] and not found["participants_added"]


def test_identical_releases_exit_0(releases):
    proc = run_cli("diff", str(releases["new"]), str(releases["new"]))
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("identical")


def test_unreadable_bundles_and_bad_usage(releases, tmp_path):
    not_zip = tmp_path / "notes.zip"
    not_zip.write_text("not a zip")
    proc = run_cli("diff", str(releases["new"]), str(not_zip))
    assert proc.returncode == 3 and "error: diff: " in proc.stderr and "unreadable bundle" in proc.stderr
    missing = run_cli("diff", str(releases["new"]), str(tmp_path / "none.zip"))
    assert missing.returncode == 3 and "no such bundle" in missing.stderr
    assert run_cli("diff", str(releases["new"])).returncode == 2
    with pytest.raises(ConfigError, match="--previous: .*: no such bundle"):
        merge_flags(load_config(SAMPLE / "release.toml"), previous=tmp_path / "none.zip")


def test_build_previous_writes_a_bids_changes_entry(releases):
    import zipfile

    with zipfile.ZipFile(releases["new"]) as archive:
        text = archive.read("dcmpack-sample/CHANGES").decode()
    with zipfile.ZipFile(releases["old"]) as archive:
        before = archive.read("dcmpack-sample/CHANGES").decode()
    entry, history = text[: -len(before)], text[-len(before) :]
    assert history == before  # the previous release's CHANGES follows the new entry
    lines = entry.splitlines()
    assert lines[0] == "1.0.0" and all(line.startswith("  - ") for line in lines[1:])
    assert "  - Compared with release 1.0.0." in lines
    assert sum(line.startswith("  - Added run sub-") for line in lines) == 5
    assert sum(line.startswith("  - Added participant sub-") for line in lines) == 1
