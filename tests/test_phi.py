"""PHI collection (Annex E table, nested sequences, private text, overlays) and the matcher's modes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pydicom
import pytest
from conftest import REPO
from phi_torture import make_torture
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from packager.phi import annex
from packager.phi import collect as phi
from packager.phi.collect import collect
from packager.phi.matcher import Matcher
from packager.phi.terms import PhiValue, terms


def test_annex_e_table_is_loaded_as_data():
    text = (REPO / "packager" / "data" / "annex_e.tsv").read_text(encoding="utf-8").splitlines()
    assert text[0] == "tag\tkeyword\tname\taction"
    assert len(text) - 1 >= 400
    keywords, tags, repeating = annex.annex_e()
    assert {
        "PatientName",
        "PatientID",
        "StudyDate",
        "InstitutionName",
        "DeviceSerialNumber",
        "OverlayData",
        "SeriesInstanceUID",
        "ProtocolName",
        "AccessionNumber",
    } <= keywords
    assert 0x00100010 in tags and (0x60, 0x3000) in repeating and (0x50, -1) in repeating
    assert annex.is_phi_tag(0x60024000, "") and not annex.is_phi_tag(0x00180080, "RepetitionTime")


def test_make_annex_e_turns_the_json_into_rows(tmp_path):
    source = tmp_path / "table.json"
    source.write_text(
        json.dumps(
            [
                {"name": "Patient's Name", "tag": "(0010,0010)", "basicProfile": "Z"},
                {"name": "Overlay Data", "tag": "(60XX,3000)", "basicProfile": "X"},
                {"name": "Private attributes", "tag": "(GGGG,EEEE) WHERE GGGG IS ODD", "basicProfile": "X"},
            ]
        )
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "packager" / "data" / "make_annex_e.py"), str(source)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.splitlines() == [
        "tag\tkeyword\tname\taction",
        "00100010\tPatientName\tPatient's Name\tZ",
        "60XX3000\tOverlayData\tOverlay Data\tX",
        "ODD\t\tPrivate attributes\tX",
    ]


@pytest.fixture(scope="module")
def torture_values(tmp_path_factory):
    made = make_torture(tmp_path_factory.mktemp("phi") / "src")
    values: set[PhiValue] = set()
    public: set[str] = set()
    for path in sorted(made.root.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        collect(ds, values, public)
        collect(ds.file_meta, values, public)
    return made, phi.without_public(values, public)


def test_collect_finds_every_header_marker(torture_values):
    made, values = torture_values
    matcher = Matcher(values)
    for field, value in made.markers.items():
        if field.startswith("Path") or field.startswith("GSPSLabel"):
            continue  # file and folder names are the audit's path values; ContentLabel is not PHI
        probe = value.split("^")[0]
        assert any(probe in v.value for v in values), f"{field} is not collected"
        if field.split(":")[0] not in ("SeriesDescription", "PrivateLO", "PrivateLT", "PrivateUR"):  # in longer texts
            assert matcher.find_text(f"x {probe} x"), f"{field} is not searched"
    for uid in made.uids:
        assert matcher.find_text(f"uid={uid};"), "a UID is not collected"
    assert {v.tag for v in values} >= {
        "(0011,1010)",
        "(0011,1011)",
        "(0011,1013)",
        "(0011,1014)",
        "(0011,1015)",
        "(0011,1016)",
        "(0011,1017)",
        "(0011,1018)",
        "(6000,0022)",
        "(6000,4000)",
        "TextValue",
        "CodeValue",
    }


def test_private_utf16_and_nested_values(torture_values):
    made, values = torture_values
    private = {v.value for v in values if v.tag == "(0011,1014)"}
    assert made.markers["PrivateOB16:A1"] in private  # OB value written as UTF-16LE
    nested = {v.tag for v in values if made.markers["ReqAttrSPSDesc:A1"] == v.value}
    assert nested == {"ScheduledProcedureStepDescription"}


def test_public_and_standard_values_are_not_phi():
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.ManufacturerModelName = "MAGNETOM Prisma Fit"
    ds.SequenceName = "*epfid2d1_64"
    ds.AcquisitionContextSequence = Sequence([Dataset()])
    ds.AcquisitionContextSequence[0].TextValue = "MAGNETOM Prisma Fit"
    ds.AcquisitionContextSequence[0].CodeMeaning = "Echo Time"
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "LO", "*epfid2d1_64")
    block.add_new(0x11, "LO", "SliceThickness")
    values = collect(ds)
    assert not [v for v in values if v.kind != "private-word"]
    assert {v.value for v in values} == {"SliceThickness"}  # a bare word: member names only
    assert [t.mode for v in values for t in terms(v)] == ["label"]


@pytest.mark.parametrize(
    "value,text,hit",
    [
        (PhiValue("date", "StudyDate", "20230115"), "acq 2023-01-15T00:00:00", True),
        (PhiValue("date", "StudyDate", "20230115"), "15.01.2023", True),
        (PhiValue("date", "StudyDate", "20230115"), '"size": 120230115,', False),
        (PhiValue("time", "StudyTime", "101530.25"), '"size": 101530,', True),
        (PhiValue("time", "StudyTime", "101530.25"), "0.1015301 0.101530", False),
        (PhiValue("time", "AcquisitionTime", "101530.25"), "sha 1a101530b2 size 101530", False),
        (PhiValue("time", "AcquisitionTime", "101530.25"), "Time=10:15:30", True),
        (PhiValue("uid", "SeriesInstanceUID", "1.2.3.4.5.6.7.8"), "x 1.2.3.4.5.6.7.8.9 x", True),
        (PhiValue("uid", "SeriesInstanceUID", "1.2.3.4.5.6.7.8"), "x 1.2.3.4.5.6.7.89 x", False),
        (PhiValue("name", "PatientName", "Lee^Ann"), "sub-lee", True),
        (PhiValue("name", "PatientName", "Lee^Ann"), "sleep planned", False),
        (PhiValue("name", "PatientName", "Müller^Jürgen"), "MÜLLER", True),
        (PhiValue("id", "PatientID", "1234"), "sub-1234", False),
        (PhiValue("id", "PatientID", "12345678"), "sub-12345678_T1w", True),
        (PhiValue("text", "InstitutionName", "St Mary Hospital"), "st_mary_hospital", True),
        (PhiValue("description", "SeriesDescription", "func-bold_task-rest"), "task-rest", False),
    ],
)
def test_match_modes(value, text, hit):
    assert bool(Matcher({value}).find(text.encode())) is hit


def test_short_ids_only_in_member_names_and_redaction():
    matcher = Matcher({PhiValue("id", "PatientID", "1234"), PhiValue("name", "PatientName", "Doe^Jane")})
    assert matcher.find(b"sub-1234/anat", member_name=True) and not matcher.find(b"sub-1234/anat")
    assert matcher.redact("sub-1234_jane", member_name=True) == "sub-[id]_[name]"
    assert matcher.find("DOE".encode("utf-16-le")) and matcher.find(b"\x00" + "Jane".encode("utf-16-le"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("straße_doe_jane_T1w.json", "straße_[name]_T1w.json"),  # "ß" folds to two letters
        ("ﬁﬁ_jane_doe.json", "ﬁﬁ_[name].json"),  # so does the "ﬁ" ligature
        ("İstanbul_JANE.json", "İstanbul_[name].json"),  # and "İ" (i + combining dot)
    ],
)
def test_redaction_masks_the_whole_term_when_case_folding_changes_lengths(text, expected):
    matcher = Matcher({PhiValue("name", "PatientName", "Doe^Jane")})
    redacted = matcher.redact(text, member_name=True)
    assert redacted == expected and "jane" not in redacted.casefold()


def test_matcher_is_fast_with_many_terms():
    rng = random.Random(7)
    values = {
        PhiValue("uid", "SOPInstanceUID", f"1.3.12.2.1107.5.2.43.{rng.randint(1, 99999)}.{rng.getrandbits(60)}")
        for _ in range(50_000)
    }
    values |= {
        PhiValue("private", "(0029,1010)", "".join(rng.choice("abcdefgh") for _ in range(9)) + "7")
        for _ in range(5_000)
    }
    started = time.process_time()  # this process's CPU: other processes' load does not count
    matcher = Matcher(values)
    text = " ".join(f"{rng.random():.6f}" for _ in range(100_000)).encode()
    assert matcher.find(text) == []
    assert time.process_time() - started < 20  # ~1 s; a matcher trying terms one by one takes minutes
    assert matcher.count >= 55_000
