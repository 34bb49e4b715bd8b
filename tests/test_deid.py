"""De-identification: keyed pseudonyms, mapping files, per-subject date shifts, ages, no secret out."""

from __future__ import annotations

import datetime as dt
import json
import os
import zipfile

import pytest
from conftest import TEST_KEY, run_cli
from phi_torture import STUDIES, make_torture

from packager import api
from packager.config import DeidConfig, load_config, merge_flags
from packager.errors import ConfigError
from packager.model import Session
from packager.naming import deid


@pytest.fixture(scope="module")
def torture(tmp_path_factory):
    return make_torture(tmp_path_factory.mktemp("deid") / "src")


def _tsv(archive: zipfile.ZipFile, suffix: str) -> list[list[list[str]]]:
    return [
        [line.split("\t") for line in archive.read(n).decode().splitlines()]
        for n in sorted(archive.namelist())
        if n.endswith(suffix)
    ]


@pytest.fixture(scope="module")
def shifted_build(tmp_path_factory, torture, key_file):
    out = tmp_path_factory.mktemp("deid-build")
    proc = run_cli("build", str(torture.root), "-o", str(out), "--key-file", str(key_file))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "dataset-1.0.0.zip"


def test_dates_shift_per_subject_keep_intervals_before_1925(shifted_build, torture):
    real = {
        subject: sorted(dt.date(int(d[:4]), int(d[4:6]), int(d[6:])) for d in dates)
        for subject, dates in torture.dates.items()
    }
    shifted: dict[str, dict[str, set]] = {}
    with zipfile.ZipFile(shifted_build) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith("_scans.tsv"):
                _, subject, session, _ = name.split("/", 3)
                rows = [line.split("\t") for line in archive.read(name).decode().splitlines()]
                assert rows[0] == ["filename", "acq_time"]
                for _, stamp in rows[1:]:
                    assert stamp.endswith("T00:00:00")
                    shifted.setdefault(subject, {}).setdefault(session, set()).add(dt.date.fromisoformat(stamp[:10]))
    by_count = {len(sessions): subject for subject, sessions in shifted.items()}
    a, b = shifted[by_count[2]], shifted[by_count[1]]
    days_a = [d for s in sorted(a) for d in a[s]]
    assert all(len(days) == 1 for days in a.values())  # one date per session
    assert [d.year < 1925 for d in days_a] == [True, True]
    assert days_a[1] - days_a[0] == real["A"][1] - real["A"][0] == dt.timedelta(days=64)  # interval kept
    offset_a = {(r - d).days for r, d in zip(real["A"], days_a, strict=False)}
    offset_b = {(real["B"][0] - d).days for days in b.values() for d in days}
    assert len(offset_a) == 1 and len(offset_b) == 1  # one whole-day offset per subject
    assert offset_a != offset_b


def test_shift_is_the_same_for_every_session_of_a_subject():
    key = TEST_KEY.encode()
    assert deid.shift_days(key, "P1") == deid.shift_days(key, "P1")
    sessions = tuple(
        Session(index=i, patient_id="P1", study_uid=f"u{i}", study_date=d, birth_date="19800101")
        for i, d in enumerate(("20200101", "20200301", "20231231"))
    )
    who = deid.identify(sessions, DeidConfig(), key)
    days = {
        (
            dt.date.fromisoformat(f"{s.study_date[:4]}-{s.study_date[4:6]}-{s.study_date[6:]}")
            - dt.date.fromisoformat(who[s.index].shifted_date)
        ).days
        for s in sessions
    }
    assert len(days) == 1 and deid.SHIFT_BASE_DAYS <= days.pop() < deid.SHIFT_BASE_DAYS + deid.SHIFT_SPAN_DAYS
    assert [who[i].session for i in range(3)] == ["01", "02", "03"]


def test_ages_capped_at_89_from_birth_date_or_patient_age():
    config = DeidConfig()
    old = Session(index=0, patient_id="P", study_uid="u", study_date="20221130", birth_date="19190203")
    assert deid._age(old, config.max_age) == 89.0
    no_birth = Session(index=0, patient_id="P", study_uid="u", study_date="20221130", patient_age="103Y")
    assert deid._age(no_birth, config.max_age) == 89.0
    months = Session(index=0, patient_id="P", study_uid="u", study_date="", patient_age="030M")
    assert deid._age(months, config.max_age) == 2.0


def test_participants_ages_and_sex(shifted_build):
    with zipfile.ZipFile(shifted_build) as archive:
        rows = _tsv(archive, "participants.tsv")[0]
        sidecar = json.loads(archive.read("dataset/participants.json"))
    assert rows[0] == ["participant_id", "age", "sex"]
    assert sorted((r[1], r[2]) for r in rows[1:]) == [("45", "F"), ("89", "M")]
    assert "89" in sidecar["age"]["Description"] and sidecar["age"]["Units"] == "year"


def _plan_labels(torture, **flags) -> dict[str, str]:
    config = merge_flags(load_config(flags.pop("config", None)), sources=(str(torture.root),), **flags)
    plan = api.plan(config)
    return {s.patient_id: label for s in plan.sessions for index, label, _ in plan.subject_labels if index == s.index}


def test_a_different_key_changes_every_pseudonym(torture, tmp_path):
    first, second = tmp_path / "one.key", tmp_path / "two.key"
    first.write_text(TEST_KEY)
    second.write_text(TEST_KEY[::-1])
    first.chmod(0o600), second.chmod(0o600)  # a key others can read is refused
    one, two = _plan_labels(torture, key_file=str(first)), _plan_labels(torture, key_file=str(second))
    assert set(one) == set(two) == set(torture.patient_ids.values())
    assert all(one[p] != two[p] for p in one)
    assert all(len(label) == 8 and label.isalnum() and label.islower() for label in one.values())
    assert one == _plan_labels(torture, key_file=str(first))  # and the same key gives the same labels


def test_subject_map_is_honoured_and_needs_no_key(torture, tmp_path):
    mapping = tmp_path / "subjects.tsv"
    mapping.write_text(
        "PatientID\tlabel\n"
        + "".join(
            f"{pid}\tsub-{name}\n"
            for name, pid in (("alpha", torture.patient_ids["A"]), ("beta", torture.patient_ids["B"]))
        )
    )
    config = tmp_path / "release.toml"
    config.write_text('[deid]\ndates = "remove"\nsex = false\n')
    env = {"DCMPACK_KEY": ""}
    labels = _plan_labels(torture, subject_map=str(mapping), config=config)
    assert labels == {torture.patient_ids["A"]: "alpha", torture.patient_ids["B"]: "beta"}
    out = tmp_path / "out"
    proc = run_cli(
        "build", str(torture.root), "-o", str(out), "-c", str(config), "--subject-map", str(mapping), env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with zipfile.ZipFile(out / "dataset-1.0.0.zip") as archive:
        names = archive.namelist()
        participants = _tsv(archive, "participants.tsv")[0]
        scans = _tsv(archive, "_scans.tsv")
        sessions = _tsv(archive, "_sessions.tsv")
        assert json.loads(archive.read("MANIFEST.json"))["key_fingerprint"] == ""
        assert all(json.loads(archive.read(n)) == {} for n in names if n.endswith("_scans.json"))
    assert {n.split("/")[1] for n in names if n.startswith("dataset/sub-")} == {"sub-alpha", "sub-beta"}
    # dates = "remove": no acq_time column at all; sex = false: no sex column
    assert participants[0] == ["participant_id", "age"]
    assert all(table[0] == ["filename"] for table in scans)
    assert all(table[0] == ["session_id", "age"] for table in sessions)


def test_no_key_and_no_map_is_refused_without_values(torture):
    env = {key: "" for key in os.environ if key.startswith("DCMPACK_KEY")} | {"DCMPACK_KEY": ""}
    proc = run_cli("plan", str(torture.root), env=env)
    assert proc.returncode == 2
    assert "no pseudonym key" in proc.stderr
    for canary in torture.canaries():
        assert canary.lower() not in proc.stderr.lower()


def test_key_never_leaves_only_its_fingerprint(shifted_build):
    key = TEST_KEY.encode()
    with zipfile.ZipFile(shifted_build) as archive:
        manifest = json.loads(archive.read("MANIFEST.json"))
        for info in archive.infolist():
            data = archive.read(info)
            assert key.lower() not in data.lower() and key not in info.filename.encode()
    assert manifest["key_fingerprint"] == deid.key_fingerprint(key)
    assert len(manifest["key_fingerprint"]) == 8 and int(manifest["key_fingerprint"], 16) >= 0
    assert deid.key_fingerprint(key) != deid.key_fingerprint(key[::-1])


def test_partial_map_without_key_is_refused(torture, tmp_path):
    mapping = tmp_path / "partial.tsv"
    mapping.write_text(f"{torture.patient_ids['A']}\talpha\n")
    with pytest.raises(ConfigError, match="no entry for the patient of session") as error:
        config = merge_flags(load_config(None), sources=(str(torture.root),), subject_map=str(mapping))
        api.plan(config.__class__(**{**{f: getattr(config, f) for f in config.__dataclass_fields__}, "key": b""}))
    assert torture.patient_ids["B"] not in str(error.value)


def test_studies_span_two_subjects():
    assert {s[0] for s in STUDIES} == {"A", "B"}
