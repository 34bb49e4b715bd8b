"""Label policy and identity integrity (issue 15, part A): one synthetic study per leak class of the
adversarial review that concerns labels, each asserting what is published and the exit code, and
controls that ordinary labels publish.

Identities are invented. Plans run in process on tiny synthetic sessions (4x4 pixels); a few
classes are built end to end.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import synthetic_dicom as dicom
from conftest import REPO, run_cli
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from heuristics import reproin
from packager import api
from packager.config import ReleaseConfig, load_config, merge_flags
from packager.errors import ConfigError
from packager.model import Session
from packager.naming import integrity
from packager.naming.labels import (
    DATE_OR_ID,
    NOT_VOCABULARY,
    PHI_MATCH,
    LabelPolicy,
    label_problem,
    plain_number,
    review_labels,
    shipped_vocabulary,
    vocabulary_problem,
)
from packager.phi import Matcher, PhiValue
from packager.phi.terms import GENERIC_WORDS
from packager.render import WITHHELD_REASON

PERSON = {"name": "Pennifold^Adaeze", "pid": "HB20551873", "date": "20230917", "birth": "19760211"}


def _session(root: Path, protocols: dict[str, str], person: dict | None = None, *, study: str = "study-1") -> Path:
    """One study: each protocol a series (``func-*`` ones 3 slices x 2 volumes, others 3 slices)."""
    person = {**PERSON, **(person or {})}
    for number, (folder, protocol) in enumerate(protocols.items(), 1):
        volumes = 2 if protocol.startswith("func") else 1
        for k in range(3 * volumes):
            ds: Dataset = dicom.mr_image(
                patient_id=person["pid"],
                study=study,
                series=number,
                description=protocol,
                instance=k + 1,
                position=(0.0, 0.0, float(k % 3)),
            )
            ds.AcquisitionTime = f"10{number:02d}{k // 3:02d}"
            ds.PatientName = person["name"]
            ds.PatientBirthDate = person["birth"]
            ds.StudyDate = ds.SeriesDate = person["date"]
            if "charset" in person:
                ds.SpecificCharacterSet = person["charset"]
            if "comments" in person:
                ds.PatientComments = person["comments"]
            if "operator" in person:
                ds.OperatorsName = person["operator"]
            if "private" in person:
                block = ds.private_block(0x0029, "ZZ LABEL TEST", create=True)
                block.add_new(0x01, "LO", person["private"])
            dicom.write(ds, root / study / folder / f"IM{k + 1:04d}.dcm")
    return root


def _config(source: Path, key_file: Path, out: Path | None = None, toml: str = "", **flags) -> ReleaseConfig:
    base = None
    if toml:
        base = source.parent / "release.toml"
        base.write_text(toml)
    return merge_flags(
        load_config(base), sources=(str(source),), output=out or source.parent / "out", key_file=str(key_file), **flags
    )


# ---------------------------------------------------------------- the review's label classes

# (id, protocol names by folder, the person, the spellings that must never be published)
LEAKS = [
    ("L01", {"bold": "func-bold_task-restVask"}, {"name": "Vask^Orla"}, ["vask"]),
    ("L03", {"t1": "anat-T1w_acq-627914"}, {"pid": "00627914"}, ["627914"]),
    ("L04", {"t1": "anat-T1w_acq-QX-40718"}, {"pid": "QX-40718"}, ["qx40718", "40718"]),
    ("L05", {"bold": "func-bold_task-rest_acq-17092023"}, {}, ["17092023"]),
    ("L06", {"bold": "func-bold_task-rest_acq-230917"}, {}, ["230917"]),
    ("L07", {"bold": "func-bold_task-rest_acq-Sep172023"}, {}, ["sep172023", "172023"]),
    ("L08", {"bold": "func-bold_task-rest_acq-17.09.23"}, {}, ["170923"]),
    ("L09", {"bold": "func-bold_task-rest_ses-17092023"}, {}, ["17092023"]),
    ("L10", {"bold": "func-bold_task-rest_acq-09172023"}, {}, ["09172023", "9172023"]),
    ("L11", {"t1": "anat-T1w_acq-Broennimann"}, {"name": "Brönnimann^Anaïs", "charset": "ISO_IR 192"}, ["broenn"]),
    ("L12", {"t1": "anat-T1w_acq-Bronnimann"}, {"name": "Brönnimann^Anaïs", "charset": "ISO_IR 192"}, ["bronn"]),
    ("L12b", {"t1": "anat-T1w_acq-Brönnimann"}, {"name": "Brönnimann^Anaïs", "charset": "ISO_IR 192"}, ["nnimann"]),
    ("L13", {"t1": "anat-T1w_acq-Lukaszczyk"}, {"name": "Łukaszczyk^Bożena", "charset": "ISO_IR 192"}, ["lukasz"]),
    ("L14", {"bold": "func-bold_task-restTakano"}, {"name": "鷹野^澄香", "charset": "ISO_IR 192"}, ["takano"]),
    ("L15", {"bold": "func-bold_task-restDazzo"}, {"comments": "prefers to be called Dazzo"}, ["dazzo"]),
    ("L16", {"t1": "anat-T1w_acq-Trelawny"}, {"private": "escort Yevgenia Trelawny-Obuya"}, ["trelawny"]),
    ("L17", {"t1": "anat-T1w_acq-nesrovlaH"}, {"name": "Halvorsen^Birgit"}, ["nesrovlah"]),
    ("L18", {"t1": "anat-T1w_acq-OSheehy"}, {"name": "O'Sheehy-Brandt^Maeve"}, ["osheehy", "sheehy"]),
    ("L18b", {"t1": "anat-T1w_acq-Brandtner"}, {"name": "O'Sheehy-Brandtner^Maeve"}, ["brandtner"]),
    ("L19", {"bold": "func-bold_task-nbackUdo"}, {"operator": "Udo^Kemal"}, ["nbackudo"]),
    ("L20", {"bold": "func-bold_task-Ines"}, {"name": "Pennifold^Ines"}, ["ines"]),
    ("L21", {"t1": "anat-T1w_acq-110276"}, {}, ["110276"]),
    ("L22", {"t1": "anat-T1w_acq-Ng"}, {"name": "Ng^Mai"}, ["acq-ng"]),
    ("L23", {"t1": "anat-T1w_acq-mrn20551"}, {"pid": "20551"}, ["20551"]),
]


def _published_text(the_plan) -> str:
    """Everything a plan would put in member names, MANIFEST, SHA256SUMS, scans.tsv (its paths)."""
    return "\n".join(p.relpath for p in the_plan.planned).casefold()


@pytest.mark.parametrize("case, protocols, person, spellings", LEAKS, ids=[c[0] for c in LEAKS])
def test_label_from_protocol_text_is_held_back(tmp_path, key_file, case, protocols, person, spellings):
    source = _session(tmp_path / "src", protocols, person)
    the_plan = api.plan(_config(source, key_file))
    assert the_plan.unapproved, f"{case}: the label was approved"
    assert len(the_plan.planned) == len(protocols)  # still planned, under a neutral placeholder
    text = _published_text(the_plan)
    for spelling in spellings:
        assert spelling not in text, case
    for item in the_plan.unapproved:
        assert item.neutral in text and item.reason in (NOT_VOCABULARY, DATE_OR_ID)


def test_a_date_never_becomes_the_session_folder(tmp_path, key_file):
    source = _session(tmp_path / "src", {"t1": "anat-T1w_ses-17092023", "bold": "func-bold_task-rest_ses-17092023"})
    the_plan = api.plan(_config(source, key_file))
    assert {(u.entity, u.neutral) for u in the_plan.unapproved} == {("ses", "ses1")}
    assert {p.session for p in the_plan.planned} == {"ses1"}
    # approving a date-shaped session label is refused outright
    with pytest.raises(ConfigError, match=r"\[labels\].*ses"):
        api.plan(_config(source, key_file, toml='[labels]\nses = ["17092023"]\n'))


HEURISTICS = {
    # H01/H02: acq made of SeriesDescription; H03: task made of it; H05: a prefix of the source folder
    "H01": ("acq = re.sub(r'[^A-Za-z0-9]', '', series.series_description)", {"t1": "T1 Ito"}, ["ito"]),
    "H02": ("acq = re.sub(r'[^A-Za-z0-9]', '', series.series_description)", {"t1": "T1 17/09/23"}, ["170923"]),
    "H03": ("task = re.sub(r'[^A-Za-z0-9]', '', series.series_description)", {"t1": "Ines rest"}, ["ines"]),
    "H05": ("acq = re.sub(r'[^A-Za-z0-9]', '', str(series.relpaths[0]).split('/')[0])[:6]", {"t1": "T1"}, ["quarri"]),
}


@pytest.mark.parametrize("case", sorted(HEURISTICS))
def test_python_heuristics_go_through_the_same_policy(tmp_path, key_file, case):
    code, protocols, spellings = HEURISTICS[case]
    entity = code.split(" ", 1)[0]
    heuristic = tmp_path / "heuristic.py"
    datatype, suffix = ("func", "bold") if entity == "task" else ("anat", "T1w")
    heuristic.write_text(
        "import re\nfrom packager.model import BidsName\n\n"
        f"def classify(series):\n    {code}\n"
        f"    return BidsName('{datatype}', '{suffix}', (('{entity}', {entity}),), 'from the description')\n"
    )
    source = _session(tmp_path / "src", protocols, {"name": "Quarrington^Ito"}, study="Quarrington_Sefton")
    the_plan = api.plan(_config(source, key_file, heuristic=str(heuristic)))
    assert [u.entity for u in the_plan.unapproved] == [entity]
    text = _published_text(the_plan)
    assert not any(s in text for s in spellings)


def test_build_refuses_unapproved_labels_without_showing_them(tmp_path, key_file):
    source = _session(tmp_path / "src", {"t1": "anat-T1w", "bold": "func-bold_task-restVask"}, {"name": "Vask^Orla"})
    out = tmp_path / "out"
    proc = run_cli("build", str(source), "-o", str(out), "--key-file", str(key_file))
    assert proc.returncode == 2
    assert "series 2 task" in proc.stderr and '[labels] unapproved = "neutral"' in proc.stderr
    assert "vask" not in (proc.stdout + proc.stderr).casefold()
    assert not any(out.glob("*.zip"))


def test_approved_labels_publish_as_written(tmp_path, key_file):
    source = _session(tmp_path / "src", {"bold": "func-bold_task-restEyesOpenHCP_acq-fov256"})
    toml = '[labels]\ntask = ["restEyesOpenHCP"]\nvocabulary = ["fov256"]\n'
    the_plan = api.plan(_config(source, key_file, toml=toml))
    assert not the_plan.unapproved
    assert "_task-restEyesOpenHCP_acq-fov256_bold" in the_plan.planned[0].relpath


def test_neutral_labels_publish_nothing_of_the_original(tmp_path, key_file):
    """[labels] unapproved = "neutral": built end to end; member names, every text member and the
    TaskName carry the placeholders; MANIFEST and the report count them."""
    person = {"name": "Broennimann^Vask", "charset": "ISO_IR 192"}
    source = _session(
        tmp_path / "src",
        {
            "t1": "anat-T1w_acq-Broennimann_ses-17092023",
            "bold": "func-bold_task-restVask_ses-17092023",
            "bold2": "func-bold_task-restVask_acq-Sep172023_ses-17092023",
        },
        person,
    )
    config = _config(source, key_file, toml='[labels]\nunapproved = "neutral"\n')
    result = api.build(config)
    assert result.exit_code == 0
    with zipfile.ZipFile(result.bundle) as archive:
        names = archive.namelist()
        texts = {n: archive.read(n).decode() for n in names if n.endswith((".json", ".tsv", ".md", "SUMS", "CHANGES"))}
    published = ("\n".join(names) + "\n".join(texts.values())).casefold()
    for spelling in ("broenn", "vask", "17092023", "sep17", "172023"):
        assert spelling not in published
    bold = [n for n in names if n.endswith("_bold.json")]
    assert {n.split("/")[-1].split("_", 1)[1] for n in bold} == {
        "ses-ses1_task-task1_bold.json",
        "ses-ses1_task-task1_acq-acq2_bold.json",
    }
    assert {json.loads(texts[n])["TaskName"] for n in bold} == {"task1"}  # same original, same placeholder
    assert any("_acq-acq1_T1w.nii.gz" in n for n in names)
    assert json.loads(texts[next(n for n in names if n.endswith("MANIFEST.json"))])["labels_neutralised"] == 4
    assert "published as neutral placeholders" in result.report.read_text()


def test_sample_labels_publish_and_nothing_is_neutralised(sample_build):
    manifest = json.loads(zipfile.ZipFile(sample_build["bundle"]).read("MANIFEST.json"))
    assert manifest["labels_neutralised"] == 0
    runs = {Path(r["path"]).name.split("_", 2)[2] for r in manifest["runs"]}
    assert {"task-rest_bold.nii.gz", "dir-AP_epi.nii.gz", "dir-PA_epi.nii.gz", "acq-6dir_dwi.nii.gz"} <= runs


def test_ordinary_labels_are_approved(tmp_path, key_file):
    protocols = {
        "t1": "anat-T1w_acq-mprage",
        "flair": "anat-FLAIR_acq-sag3d",
        "epi": "fmap-epi_dir-AP_acq-se",
        "rest1": "func-bold_task-rest_run-1",
        "rest2": "func-bold_task-rest_run-2",
        "nback": "func-bold_task-nback_acq-mb4_echo-2",
        "faces": "func-bold_task-facesEyesOpen_acq-p2s435mm",
    }
    the_plan = api.plan(_config(source := _session(tmp_path / "src", protocols), key_file))
    assert source.is_dir() and not the_plan.unapproved
    names = {p.relpath.split("/")[-1].split("_", 1)[1] for p in the_plan.planned}
    assert names == {
        "acq-mprage_T1w",
        "acq-sag3d_FLAIR",
        "acq-se_dir-AP_epi",
        "task-rest_run-1_bold",
        "task-rest_run-2_bold",
        "task-nback_acq-mb4_echo-2_bold",
        "task-facesEyesOpen_acq-p2s435mm_bold",
    }


# ---------------------------------------------------------------- plan: terminal and pipe


def test_plan_into_a_pipe_shows_placeholders_never_the_label(tmp_path, key_file):
    source = _session(tmp_path / "src", {"bold": "func-bold_task-restVask"}, {"name": "Vask^Orla"})
    text = run_cli("plan", str(source), "--key-file", str(key_file))
    assert text.returncode == 0
    assert "task-task1" in text.stdout and "on a terminal" in text.stderr
    rows = json.loads(run_cli("plan", str(source), "--key-file", str(key_file), "--json").stdout)
    assert rows[0]["unapproved"] == ["task"] and "task-task1" in rows[0]["path"]
    assert "vask" not in (text.stdout + text.stderr + json.dumps(rows)).casefold()


def test_plan_on_a_terminal_shows_the_label_and_how_to_approve_it(tmp_path, key_file):
    source = _session(tmp_path / "src", {"bold": "func-bold_task-restVask"}, {"name": "Vask^Orla"})
    main, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "packager", "plan", str(source), "--key-file", str(key_file), "--quiet"],
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=tmp_path,
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert '"restVask"' in shown and 'task = ["restVask"]' in shown and "[labels]" in shown


# ---------------------------------------------------------------- the policy itself


@pytest.mark.parametrize(
    "digits, plain",
    [("2", True), ("64", True), ("100", True), ("250", True), ("700", True), ("3000", True),
     ("312", False), ("128", False), ("0123", False), ("1703", False), ("1976", False), ("2309", False),
     ("1430", False), ("1000", False), ("20551", False), ("230917", False), ("17092023", False)],
)  # fmt: skip
def test_digit_runs_that_could_be_a_date_time_or_id_are_not_plain(digits, plain):
    assert plain_number(digits) is plain


@pytest.mark.parametrize(
    "label, problem",
    [("rest", None), ("restEyesOpen", None), ("b1000", None), ("ep2d", None), ("T1w", None), ("6dir", None),
     ("s21", None), ("1x1x1", None), ("mb3", None), ("AP", None), ("restdoe", NOT_VOCABULARY),
     ("TaskRestSmith", NOT_VOCABULARY), ("Ng", NOT_VOCABULARY), ("b1000x17092023", DATE_OR_ID)],
)  # fmt: skip
def test_labels_are_vocabulary_words_and_plain_numbers(label, problem):
    assert vocabulary_problem(label, shipped_vocabulary()) == problem


def test_a_vocabulary_label_matching_a_phi_value_needs_approval():
    """Defense in depth: a patient called Finger, and the build's matcher sees it. A name that is
    generic protocol vocabulary (Rest, Bold) is searched only with the rest of the name (the
    matcher's rule, so that such patients can publish): ``task-rest`` passes for Rest^Anna."""
    matcher = Matcher([PhiValue("name", "PatientName", "Finger^Anna")])
    policy = LabelPolicy.of(ReleaseConfig())
    assert label_problem(policy, "task", "finger", matcher) == PHI_MATCH
    assert label_problem(policy, "task", "fingerTapping", matcher) == PHI_MATCH
    assert label_problem(policy, "task", "nback", matcher) is None
    approved = LabelPolicy.of(load_config_text('[labels]\ntask = ["finger"]\n'))
    assert label_problem(approved, "task", "finger", matcher) is None
    generic = Matcher([PhiValue("name", "PatientName", "Rest^Anna")])
    assert label_problem(policy, "task", "rest", generic) is None


def test_rule_literals_are_approved_and_index_entities_must_be_numbers():
    config = load_config_text(
        '[heuristic]\nname = "rules"\n[[heuristic.rules]]\nmatch = { SeriesDescription = "*" }\n'
        'datatype = "anat"\nsuffix = "T1w"\nentities = { acq = "siteXprotoQ" }\n'
    )
    policy = LabelPolicy.of(config)
    assert label_problem(policy, "acq", "siteXprotoQ") is None
    assert label_problem(policy, "echo", "mb") is not None and label_problem(policy, "run", "+") is None


def test_neutral_labels_keep_distinct_originals_apart_and_skip_labels_in_use():
    decisions = {
        0: reproin.classify(_series(0, "func-bold_task-restVask")),
        1: reproin.classify(_series(1, "func-bold_task-task1")),  # a real label that looks neutral
        2: reproin.classify(_series(2, "func-bold_task-restOrla")),
        3: reproin.classify(_series(3, "func-bold_task-restVask")),
    }
    renamed, held = review_labels([_series(i, "") for i in range(4)], decisions, LabelPolicy.of(ReleaseConfig()))
    tasks = [dict(renamed[i].entities)["task"] for i in range(4)]
    assert tasks == ["task2", "task1", "task3", "task2"]
    assert [u.series_index for u in held] == [0, 2, 3] and "Vask" not in repr(held)


def _series(index: int, protocol: str) -> SimpleNamespace:
    return SimpleNamespace(index=index, protocol_name=protocol, series_description=protocol)


def load_config_text(text: str) -> ReleaseConfig:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "release.toml"
        path.write_text(text)
        return load_config(path)


@pytest.mark.parametrize(
    "text, problem",
    [('[labels]\nunapproved = "drop"\n', "must be one of refuse, neutral"),
     ('[labels]\ntask = ["rest-state"]\n', "letters and digits only"),
     ('[labels]\ntaks = ["rest"]\n', 'did you mean "task"')],
)  # fmt: skip
def test_labels_table_mistakes_are_config_errors(text, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config_text(text)


# A name that is itself generic protocol vocabulary (a patient called Coronal or Rest) cannot be
# told from protocol text: a documented limit (docs/phi.md), searched only with the rest of the name.
_NAMES = st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=10).filter(lambda n: n not in GENERIC_WORDS)
_DATES = st.dates(
    min_value=__import__("datetime").date(1930, 1, 1), max_value=__import__("datetime").date(2030, 12, 31)
)
_ORDERS = ("%Y%m%d", "%d%m%Y", "%m%d%Y", "%y%m%d", "%d%m%y", "%m%d%y", "%b%d%Y", "%d%b%Y", "%d.%m.%y", "%Y-%m-%d")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=_NAMES,
    number=st.integers(10_000, 10**10),
    zeros=st.integers(0, 3),
    date=_DATES,
    order=st.sampled_from(_ORDERS),
    glue=st.sampled_from(["rest", "T1", "nback", "mprage", ""]),
    capital=st.booleans(),
    entity=st.sampled_from(["task", "acq", "ses", "rec", "dir", "ce"]),
)
def test_random_names_ids_and_dates_in_protocol_text_never_reach_a_member_name(
    name, number, zeros, date, order, glue, capital, entity
):
    """A name (3+ letters), an ID (5+ digits, with or without zeros) or a date in any common order,
    glued into a ReproIn label: the plan's labels never hold it (a name that is a vocabulary word
    is caught by the matcher, as in a build)."""
    assume(name not in ("task", "acq", "ses", "rec", "dir", "ce"))  # the placeholders' own prefixes
    written = date.strftime(order)
    pid = "0" * zeros + str(number)
    piece = {"name": name.title() if capital else name, "id": pid, "date": written}
    matcher = Matcher([PhiValue("name", "PatientName", f"{name}^Zed"), PhiValue("id", "PatientID", pid)])
    policy = LabelPolicy.of(ReleaseConfig())
    for kind, value in piece.items():
        protocol = f"anat-T1w_{entity}-{glue}{value}"
        decision = reproin.classify(_series(0, protocol))
        renamed, _ = review_labels([_series(0, protocol)], {0: decision}, policy, matcher)
        label = dict(renamed[0].entities).get(entity, "").casefold()
        forbidden = {"name": [name], "id": [pid.lstrip("0")], "date": ["".join(c for c in written if c.isalnum())]}
        for spelling in forbidden[kind]:
            assert spelling.casefold() not in label, (kind, protocol)


# ---------------------------------------------------------------- identity integrity


def _who(index, patient_id, name, birth="19760211", study=None) -> Session:
    return Session(index, patient_id, study or f"2.25.{index + 1}", "20230917", birth, "", "F", name)


def test_two_people_under_anonymous_are_refused_without_a_subject_map(tmp_path, key_file):
    """F38: two studies, two different people, both PatientID ANONYMOUS."""
    root = tmp_path / "src"
    _session(root, {"t1": "anat-T1w"}, {"pid": "ANONYMOUS", "name": "Pennifold^Adaeze"}, study="a")
    _session(root, {"t1": "anat-T1w"}, {"pid": "ANONYMOUS", "name": "Corrigan^Theo", "birth": "19500101"}, study="b")
    proc = run_cli("build", str(root), "-o", str(tmp_path / "out"), "--key-file", str(key_file))
    assert proc.returncode == 2 and "--subject-map" in proc.stderr and "StudyInstanceUID" in proc.stderr
    assert not any(v in proc.stderr for v in ("ANONYMOUS", "Pennifold", "Corrigan", "1950"))
    # a subject map naming each study separates them
    subjects = tmp_path / "subjects.tsv"
    subjects.write_text(
        f"{dicom.uid('study', 'ANONYMOUS', 'a')}\tp01\n{dicom.uid('study', 'ANONYMOUS', 'b')}\tp02\n", encoding="utf-8"
    )
    the_plan = api.plan(_config(root, key_file, subject_map=str(subjects)))
    assert sorted(p.subject for p in the_plan.planned) == ["p01", "p02"]
    assert not any(p.session for p in the_plan.planned)


@pytest.mark.parametrize("pid", ["", "ANONYMOUS", "anonymized", "0", "0000", "***", "N/A", "unknown", "NONE", "xxx"])
def test_placeholder_patient_ids(pid):
    assert integrity.is_generic_id(pid)
    with pytest.raises(ConfigError):
        integrity.refuse_generic_ids((_who(0, pid, "A^B"), _who(1, pid, "C^D")), {})
    integrity.refuse_generic_ids((_who(0, pid, "A^B"), _who(1, pid, "C^D")), {pid: "one"})  # the owner says: one


@pytest.mark.parametrize("pid", ["crlab", "DEV", "HB20551873", "Test01", "PH202010141", "dicom"])
def test_ordinary_patient_ids_are_not_placeholders(pid):
    assert not integrity.is_generic_id(pid)


def test_identity_warnings_name_sessions_never_values():
    sessions = (
        _who(0, "HB1", "Pennifold^Adaeze"),
        _who(1, "HB1", "Corrigan^Theo", birth="19500101"),  # one ID, another person
        _who(2, "QX7", "PENNIFOLD^ADAEZE^^"),  # another ID, the first person (spelt in capitals)
        _who(3, "QX8", "Holm^Ida"),
    )
    warnings = integrity.integrity_warnings(sessions)
    assert warnings == (
        "sessions 1, 2: one PatientID, different patient names (two people under one ID?)",
        "sessions 1, 2: one PatientID, different birth dates (two people under one ID?)",
        "sessions 1, 3: 2 PatientIDs, same patient name and birth date (one person under several IDs? "
        "a subject map can give them one label)",
    )
    assert not any(v in " ".join(warnings) for v in ("HB1", "QX7", "Pennifold", "1950", "1976"))
    assert (
        integrity.integrity_warnings((_who(0, "DEV", "Test^Regression"), _who(1, "DEV", "Test^Regression", ""))) == ()
    )


def test_plan_checks_labels_against_the_sources_phi_values_as_the_build_does(tmp_path, key_file):
    """A patient called Finger: task-finger is vocabulary, but the plan (like the build) holds it
    back until release.toml approves it."""
    source = _session(
        tmp_path / "src", {"bold": "func-bold_task-finger", "nback": "func-bold_task-nback"}, {"name": "Finger^Anna"}
    )
    held = api.plan(_config(source, key_file)).unapproved
    assert [(u.entity, u.reason) for u in held] == [("task", PHI_MATCH)]
    assert not api.plan(_config(source, key_file, toml='[labels]\ntask = ["finger"]\n')).unapproved


def test_a_heuristic_files_reasons_stay_out_of_pipes(tmp_path, key_file):
    """A Python heuristic that quotes the description in its reasons: plan into a pipe withholds them."""
    heuristic = tmp_path / "heuristic.py"
    heuristic.write_text(
        "from packager.model import BidsName, Skip\n\n"
        "def classify(series):\n"
        "    if 'T1' in series.series_description:\n"
        "        return BidsName('anat', 'T1w', (), 'T1 from ' + series.series_description)\n"
        "    return Skip('not wanted: ' + series.series_description)\n"
    )
    source = _session(tmp_path / "src", {"t1": "T1 Vask", "other": "Vask extra"}, {"name": "Vask^Orla"})
    for extra in ((), ("--json",)):
        proc = run_cli("plan", str(source), "--key-file", str(key_file), "--heuristic", str(heuristic), *extra)
        assert proc.returncode == 0 and "vask" not in (proc.stdout + proc.stderr).casefold()
    assert {row["why"].split(": ")[-1] for row in json.loads(proc.stdout)} == {WITHHELD_REASON}


def test_identity_warnings_reach_the_terminal(tmp_path, key_file):
    root = tmp_path / "src"
    _session(root, {"t1": "anat-T1w"}, {"pid": "HB1", "name": "Pennifold^Adaeze"}, study="a")
    _session(root, {"t1": "anat-T1w"}, {"pid": "HB1", "name": "Corrigan^Theo", "birth": "19500101"}, study="b")
    proc = run_cli("plan", str(root), "--key-file", str(key_file))
    assert proc.returncode == 0
    assert "warning: identity: sessions 1, 2: one PatientID, different patient names" in proc.stderr
    assert not any(v in proc.stderr + proc.stdout for v in ("HB1", "Pennifold", "Corrigan", "1950"))
