"""PHI hardening (issue 15): one test per class of leak found by the adversarial review, each
asserting what is published."""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import stat
import zipfile

import pydicom
import pytest
from conftest import REPO

from packager import api
from packager.config import DeidConfig, key_weakness, load_config, merge_flags
from packager.errors import ConfigError
from packager.model import Session
from packager.naming.deid import identify
from packager.phi import Matcher, PhiValue
from packager.release.audit import _mask_generated, audit_bundle


def test_source_date_epoch_never_reaches_zip_timestamps(tmp_path, key_file, monkeypatch):
    # a build environment that sets SOURCE_DATE_EPOCH to the scan's own time (2023-04-17 14:22:10)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(calendar.timegm((2023, 4, 17, 14, 22, 10))))
    result = api.build(api.sample_config(output=tmp_path, key_file=str(key_file)))
    assert result.exit_code == 0
    with zipfile.ZipFile(result.bundle) as archive:
        stamps = {info.date_time for info in archive.infolist()}
    assert stamps == {(1980, 1, 1, 0, 0, 0)}


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "key, why",
    [
        ("correct horse battery staple, then some more words", "a passphrase is guessable"),
        ("0123456789abcdef" * 4, "a repeating pattern"),
        ("a" * 64, "a repeating pattern"),
        ("3f9a0c", "6 hex digits, at least 64 needed"),
        ("Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXhmb28=", "a passphrase is guessable"),  # base64 is text too
    ],
)
def test_weak_keys_are_refused_with_the_way_out(tmp_path, key, why):
    path = tmp_path / "release.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        merge_flags(load_config(None), key_file=path)
    message = str(info.value)
    assert why in message and "secrets.token_hex(32)" in message
    assert key not in message


def test_random_keys_pass():
    for _ in range(200):
        assert key_weakness(secrets.token_hex(32).encode()) == ""
        assert key_weakness(os.urandom(32)) == ""


def test_init_writes_a_private_random_key_and_never_replaces_it(tmp_path):
    written = api.init_config(tmp_path / "release.toml")
    key = tmp_path / "release.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_text()
    assert key_weakness(first.strip().encode()) == ""
    api.init_config(written, force=True)
    assert key.read_text() == first
    config = merge_flags(load_config(written), sources=(str(REPO / "sample_data" / "dicom"),), output=tmp_path / "out")
    assert config.key == first.strip().encode()


# ---------------------------------------------------------------- every image checked

T1W = REPO / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312" / "02_anat-T1w"


@pytest.mark.parametrize(
    "keyword, value, reason",
    [
        ("BurnedInAnnotation", "YES", "BurnedInAnnotation is not NO"),
        ("ConversionType", "WSD", "image converted from a screen, video, film or document (ConversionType)"),
        ("ImageType", ["ORIGINAL", "PRIMARY", "SCREEN SAVE"], "screen capture (ImageType)"),
        ("PhotometricInterpretation", "PALETTE COLOR", "colour image"),
    ],
)
def test_one_flagged_image_excludes_its_series(tmp_path, key_file, keyword, value, reason):
    """The flag on one image in the middle of the series (not the first) keeps the series out."""
    folder = tmp_path / "in" / T1W.name
    folder.mkdir(parents=True)
    files = sorted(T1W.iterdir())
    for number, path in enumerate(files):
        ds = pydicom.dcmread(path)
        if number == len(files) // 2:
            setattr(ds, keyword, value)
        ds.save_as(folder / path.name)
    plan = api.plan(
        merge_flags(
            load_config(REPO / "sample_data" / "release.toml"), sources=(str(tmp_path / "in"),), key_file=str(key_file)
        )
    )
    assert not plan.planned
    (excluded,) = plan.excluded
    assert excluded.detail == reason


# ---------------------------------------------------------------- ages over 89


def _session(index, study_date, birth="19350310"):
    return Session(
        index=index,
        patient_id="ZZPHI0042",
        study_uid=f"1.2.3.{index}",
        study_date=study_date,
        birth_date=birth,
        patient_age="",
        patient_sex="F",
    )


def test_capped_age_plus_interval_never_implies_an_age_over_89():
    # 88 at the first session, 92 at the second: the interval would give the age away
    sessions = (_session(0, "20230301"), _session(1, "20270401"))
    who = identify(sessions, DeidConfig(), secrets.token_hex(32).encode())
    assert {who[0].age, who[1].age} == {89.0}
    assert who[0].shifted_date is None and who[1].shifted_date is None


def test_subjects_under_the_cap_keep_ages_and_intervals():
    sessions = (_session(0, "20230301", birth="19800101"), _session(1, "20270401", birth="19800101"))
    who = identify(sessions, DeidConfig(), secrets.token_hex(32).encode())
    assert (who[0].age, who[1].age) == (43.0, 47.0)
    first, second = (dt.date.fromisoformat(who[i].shifted_date) for i in (0, 1))
    assert (second - first).days == (dt.date(2027, 4, 1) - dt.date(2023, 3, 1)).days


# ---------------------------------------------------------------- no false alarms from dcmpack's own numbers


def test_an_mrn_inside_a_digest_is_chance_but_glued_to_a_label_it_is_found():
    mrn = PhiValue("id", "PatientID", "7305918")
    matcher = Matcher({mrn})
    digest = hashlib.sha256(b"x").hexdigest()
    planted = digest[:20] + "a7305918b" + digest[29:]  # the MRN's digits inside a checksum
    assert matcher.find_text(f"{planted}  sub-01/anat/sub-01_T1w.nii.gz") == []
    assert matcher.find_text("sub-01/anat/sub-01_acq-mrn7305918_T1w.nii.gz", member_name=True) == [mrn]


def test_a_number_equal_to_a_file_size_in_the_manifest_is_no_hit(tmp_path, key_file):
    result = api.build(api.sample_config(output=tmp_path, key_file=str(key_file)))
    with zipfile.ZipFile(result.bundle) as archive:
        manifest = json.loads(archive.read("MANIFEST.json"))
        sums = archive.read("SHA256SUMS").decode()
    size = next(str(f["size"]) for f in manifest["files"] if f["size"] >= 100_000)
    digit_run = next(run for run in re.findall(r"[0-9]{6,}", sums) if run)  # digits inside a digest
    values = {PhiValue("id", "PatientID", size), PhiValue("id", "OtherPatientIDs", digit_run)}
    assert audit_bundle(result.bundle, values).clean
    # both are search terms: the same digits standing alone in a text are found
    matcher = Matcher(values)
    assert len(matcher.find_text(f"record {size}; id {digit_run}")) == 2


def test_names_equal_to_dcmpack_words_publish_but_are_still_found_in_labels(tmp_path, key_file):
    result = api.build(api.sample_config(output=tmp_path, key_file=str(key_file)))
    # a surname "Made" ("How it was made"), a PatientID "dicom" (the README and the dataset
    # description say DICOM) and a patient "Slice Timing" (a sidecar key)
    values = {
        PhiValue("name", "PatientName", "Made"),
        PhiValue("id", "PatientID", "dicom"),
        PhiValue("name", "PatientName", "Slice"),
        PhiValue("name", "PatientName", "Timing"),
    }
    assert audit_bundle(result.bundle, values).clean
    matcher = Matcher(values)
    assert matcher.find_text("sub-01/func/sub-01_task-made_bold.nii.gz", member_name=True)
    assert matcher.find_text('"TaskName": "made"') and matcher.find_text('"ImageComments": "dicom"')


def test_own_text_blanking_keeps_values():
    data = b'{\n  "SliceTiming": [0.1],\n  "TaskName": "restmadeline"\n}\n'
    masked = _mask_generated("dataset/sub-01/func/sub-01_task-x_bold.json", data, start=True)
    assert len(masked) == len(data) and b"SliceTiming" not in masked and b"restmadeline" in masked
    planted = b'{\n  "Zzphidoe": 1,\n  "RepetitionTime": 2.0\n}\n'  # a key dcmpack never writes is searched
    masked = _mask_generated("dataset/sub-01/func/sub-01_task-x_bold.json", planted, start=True)
    assert b"Zzphidoe" in masked and b"RepetitionTime" not in masked
    assert b"Zzphidoe" in _mask_generated("dataset/participants.tsv", b"participant_id\tZzphidoe\n", start=True)
    tsv = b"filename\tacq_time\nfunc/x.nii.gz\t1900-01-01T00:00:00\n"
    assert _mask_generated("dataset/sub-01/sub-01_scans.tsv", tsv, start=True).endswith(tsv.split(b"\n", 1)[1])
    assert _mask_generated("dataset/sub-01/sub-01_scans.tsv", tsv, start=False) == tsv  # a later chunk: no header
