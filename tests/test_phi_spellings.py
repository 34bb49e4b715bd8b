"""The second adversarial PHI review (research/phi2): one test per general cause of a leak it
found, each with its own synthetic values (not the review's), asserting what is published or found.

* free text released on purpose (``allow_free_text``) was a denylist: every spelling the matcher
  does not generate left (a passport transliteration, an abbreviated particle name, a date in
  words, a word of the address, an ID's body);
* names in Cyrillic or Greek were searched in one romanisation only, and a name stored decomposed
  (NFD) had no keyboard transcription (``ö`` -> ``oe``);
* an ID with a check digit was not searched without it;
* the words of an institution, an address or an order text ("MRI brain for X") were searched only
  as the whole value.
"""

from __future__ import annotations

import json
import unicodedata
import zipfile

import pytest
from test_phi_matcher import IDENTITY, _build, _published, _study

from packager.config import LabelsConfig, SidecarConfig
from packager.errors import PhiAuditError
from packager.phi import Matcher, PhiValue
from packager.phi.fold import spellings
from packager.release.audit import audit_bundle, member_name_hits
from packager.sidecar.allowlist import scrub_text

LABEL = "dataset/sub-ab2cd3ef/anat/sub-ab2cd3ef_acq-{}_T1w.nii.gz"


def _in_label(value: PhiValue, label: str) -> bool:
    found, _ = member_name_hits(Matcher([value]), LABEL.format(label))
    return bool(found)


# ---------------------------------------------------------------- free text: default-deny


@pytest.mark.parametrize(
    "text, kept",
    [
        ("T1 Gorbunova", "T1"),  # a transliteration the matcher may not generate
        ("T1 vdHoeven", "T1"),  # a particle name abbreviated
        ("T1 Mar 3 2021", "T1 3"),  # a date in words: month and year go, a lone day says nothing
        ("T1 Wrenfold", "T1"),  # a word of the address
        ("T1 mrn 7215", "T1"),  # an ID's body, a lone number of 3+ digits
        ("rest 0171 4960", "rest"),  # a phone number split by its spaces
        ("MPRAGE sag 1mm iso", "MPRAGE sag 1mm iso"),  # protocol words pass unchanged
        ("ep2d_bold_moco 2.5mm", "ep2d_bold_moco 2.5mm"),
        ("DTI 64dir b1000", "DTI 64dir b1000"),
    ],
)
def test_released_free_text_keeps_only_protocol_words_and_plain_numbers(text, kept):
    assert scrub_text(text, frozenset()) == kept


def test_free_text_vocabulary_follows_the_labels_vocabulary():
    assert scrub_text("T1 hcpstyle", frozenset()) == "T1"
    assert scrub_text("T1 hcpstyle", frozenset(), frozenset({"t1", "hcpstyle"})) == "T1 hcpstyle"


def test_a_released_description_loses_every_unlisted_word_in_a_build(tmp_path, key_file):
    source = _study(
        tmp_path,
        {**IDENTITY, "name": "Горбунова^Агафья"},
        files=8,
        SeriesDescription="MPRAGE Gorbunova sag Apr 9 2022",
        InstitutionAddress="3 Wrenfold Lane, Castlebury",
    )
    result = _build(tmp_path, key_file, source, sidecar=SidecarConfig(allow_free_text=("SeriesDescription",)))
    assert result.exit_code == 0
    sidecar = next(json.loads(d) for n, d in _published(result).items() if n.endswith("_T1w.json"))
    assert sidecar["SeriesDescription"] == "MPRAGE sag 9"


# ---------------------------------------------------------------- names: other romanisations, NFD


@pytest.mark.parametrize(
    "name, typed",
    [
        ("Горбунова^Агафья", "Agafia"),  # ICAO passport (я -> ia)
        ("Горбунова^Агафья", "Agafya"),  # BGN/PCGN
        ("Фёдорова^Юлия", "Fyodorova"),  # ё as yo
        ("Фёдорова^Юлия", "Julija"),  # German
        ("Щукина^Олеся", "Schtschukina"),  # German
        ("Шевчук^Оксана", "Chevtchouk"),  # French
        ("Κωνσταντινίδου^Ευτυχία", "Konstantinidou"),  # ου -> ou (anyascii gives oy)
        ("Κωνσταντινίδου^Ευτυχία", "Evtychia"),  # ευ -> ev (ELOT 743)
        ("Μπαλτά^Ευτυχία", "Balta"),  # μπ -> b (as said)
    ],
)
def test_a_name_in_another_script_is_found_in_its_other_romanisations(name, typed):
    value = PhiValue("name", "PatientName", name)
    assert _in_label(value, typed)
    assert Matcher([value]).find_text(f'{{"SequenceName": "x {typed} y"}}')


def test_a_decomposed_name_has_the_spellings_of_the_composed_one():
    composed, decomposed = "Schönfeld^Jürgen", unicodedata.normalize("NFD", "Schönfeld^Jürgen")
    assert decomposed != composed
    assert "schoenfeld" in spellings(unicodedata.normalize("NFD", "Schönfeld"))
    assert _in_label(PhiValue("name", "PatientName", decomposed), "Schoenfeld")
    assert _in_label(PhiValue("name", "PatientName", decomposed), "Juergen")


def test_latin_names_get_no_invented_romanisations():
    assert spellings("Pennifold") == ("pennifold",)


# ---------------------------------------------------------------- IDs with check digits and pieces


@pytest.mark.parametrize(
    "pid, label",
    [
        ("0072215-8", "72215"),  # the body, without its zeros and its check digit
        ("0072215-8", "mrn0072215"),
        ("C-0093318-4", "C0093318"),
        ("TQ-5502917-K", "5502917"),  # the digits between two letter groups
    ],
)
def test_an_id_is_found_without_its_check_digit_and_by_its_pieces(pid, label):
    assert _in_label(PhiValue("id", "PatientID", pid), label)


def test_id_pieces_do_not_match_unrelated_numbers():
    matcher = Matcher([PhiValue("id", "PatientID", "0072215-8")])
    assert not matcher.find_text('{"size": 172215, "RepetitionTime": 2.0}')
    assert not member_name_hits(matcher, LABEL.format("b722"))[0]


# ---------------------------------------------------------------- words of institution and order texts


@pytest.mark.parametrize(
    "value, label",
    [
        (PhiValue("text", "InstitutionAddress", "3 Wrenfold Lane, Castlebury"), "castlebury"),
        (PhiValue("text", "InstitutionName", "Tamsworth Royal Infirmary"), "tamsworth"),
        (PhiValue("description", "RequestedProcedureDescription", "MRI brain for Ilunga"), "T1Ilunga"),
    ],
)
def test_a_word_of_an_institution_address_or_order_is_found_in_a_label(value, label):
    assert _in_label(value, label)


def test_those_words_are_not_searched_in_text():
    # ordinary English in an institution's name ("General Hospital", "Research") stays publishable
    # where a data owner writes it (the README's description); only labels may not hold it
    matcher = Matcher([PhiValue("text", "InstitutionName", "Tamsworth General Hospital Research Unit")])
    assert not matcher.find_text("Data from the research unit of a general hospital.")
    assert not _in_label(PhiValue("description", "RequestedProcedureDescription", "MRI brain for Ilunga"), "mprage")
    # a short word counts as a whole label only ("park" of the address is not in "parking")
    address = PhiValue("text", "InstitutionAddress", "1 Park Road, Castlebury")
    assert _in_label(address, "park") and not _in_label(address, "parking")


def test_an_approved_label_holding_a_name_from_an_order_text_stops_the_build(tmp_path, key_file):
    # the name is written nowhere but in the order's description inside RequestAttributesSequence
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.RequestedProcedureDescription = "MRI head for Ilunga"
    source = _study(
        tmp_path,
        {**IDENTITY, "name": "ANONYMOUS^"},
        files=8,
        RequestAttributesSequence=Sequence([item]),
        ProtocolName="anat-T1w_acq-Ilunga",
        SeriesDescription="x",
    )
    with pytest.raises(PhiAuditError):  # approved by mistake: the audit stops it
        _build(tmp_path, key_file, source, labels=LabelsConfig(acq=("Ilunga",)))
    assert not any((tmp_path / "out").glob("*.zip"))


def test_the_audit_finds_a_check_digit_body_in_a_member_name(tmp_path):
    bundle = tmp_path / "b.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr(zipfile.ZipInfo(LABEL.format("72215"), (1980, 1, 1, 0, 0, 0)), b"")
    result = audit_bundle(bundle, {PhiValue("id", "PatientID", "0072215-8")}, released=())
    assert [(h.stream, h.kind) for h in result.hits if h.kind != "structure"] == [("member name", "id")]


# ---------------------------------------------------------------- a refusal says how to get past it


def test_a_refused_build_carries_its_review_and_the_accept_line_passes_it(tmp_path, key_file):
    from packager.config import AuditConfig
    from packager.phi import accept_hmac

    # an operator called Hartnoll and a task the lab named hartnoll: a false alarm to review
    source = _study(tmp_path, IDENTITY, files=8, OperatorsName="Hartnoll^Bram", ProtocolName="anat-T1w_acq-hartnoll")
    labels = LabelsConfig(acq=("hartnoll",))
    with pytest.raises(PhiAuditError) as info:
        _build(tmp_path, key_file, source, labels=labels)
    assert "hartnoll" not in str(info.value).lower() and "on a terminal" in str(info.value)
    key = key_file.read_bytes().strip()
    review = info.value.review
    assert [line for line in review if "'hartnoll'" in line[0]] == [
        (review[0][0], accept_hmac(key, "hartnoll"))
    ] and "OperatorsName" in review[0][0]
    result = _build(tmp_path, key_file, source, labels=labels, audit=AuditConfig(accept=(review[0][1],)))
    assert result.exit_code == 0


def test_a_hit_in_the_subject_label_is_keyed_by_the_label_text():
    # a --subject-map label typed as the surname: the accept HMAC is of what matched, not of a
    # piece of the path before it
    matcher = Matcher([PhiValue("name", "PatientName", "Wrenfold^Ada")])
    name = "dataset/sub-wrenfold/anat/sub-wrenfold_T1w.nii.gz"
    found, _ = member_name_hits(matcher, name)
    assert found and {name[start:end] for start, end, _ in found} == {"wrenfold"}


def test_plan_into_a_pipe_masks_an_approved_label_holding_a_name(tmp_path, key_file):
    from conftest import run_cli

    source = _study(tmp_path, {**IDENTITY, "name": "Фёдорова^Юлия"}, files=4, ProtocolName="anat-T1w_acq-Fyodorova")
    config = tmp_path / "release.toml"
    config.write_text('[dataset]\nname = "x"\nversion = "1.0.0"\n[labels]\nacq = ["Fyodorova"]\n')
    for extra in ((), ("--json",)):
        shown = run_cli("plan", str(source), "-c", str(config), "--key-file", str(key_file), *extra)
        assert shown.returncode == 0
        assert "fyodorova" not in (shown.stdout + shown.stderr).lower()
        assert "_acq-[name]_T1w.nii.gz" in shown.stdout


def test_a_dicomdir_spelling_of_the_name_is_searched(tmp_path):
    # a CD export: the images hold the Cyrillic name, the DICOMDIR (Latin-1) the writer's own
    # transliteration, which no romanisation system gives
    import pydicom
    from pydicom.fileset import FileSet

    from packager.index.header import NonImageFile, read_header
    from packager.model import SourceFile

    source = _study(tmp_path, {**IDENTITY, "name": "Жукова^Ульяна"}, files=2)
    files = FileSet()
    for path in sorted(source.rglob("*.dcm")):
        files.add(path)
    files.write(tmp_path / "cd")
    dicomdir = pydicom.dcmread(tmp_path / "cd" / "DICOMDIR")
    dicomdir.SpecificCharacterSet = "ISO_IR 100"
    for record in dicomdir.DirectoryRecordSequence:
        if record.DirectoryRecordType == "PATIENT":
            record.PatientName = "Shoukowa^Ulyanah"
    dicomdir.save_as(tmp_path / "cd" / "DICOMDIR")
    for fast in (True, False):
        found: set = set()
        with pytest.raises(NonImageFile):
            read_header(SourceFile(tmp_path / "cd" / "DICOMDIR", "DICOMDIR"), phi=found, public=set(), fast=fast)
        assert member_name_hits(Matcher(found), LABEL.format("Shoukowa"))[0]


def test_a_short_piece_of_a_study_id_does_not_stop_a_b1000_label():
    # study-style IDs ("P-1000-07"): a 4-digit piece is not searched alone, or acq-b1000 would hit
    matcher = Matcher([PhiValue("id", "PatientID", "P-1000-07")])
    assert not member_name_hits(matcher, "dataset/sub-ab2cd3ef/dwi/sub-ab2cd3ef_acq-b1000_dwi.nii.gz")[0]


def test_labels_vocabulary_reaches_released_free_text(tmp_path, key_file):
    source = _study(tmp_path, IDENTITY, files=8, SeriesDescription="MPRAGE hcpstyle sag")
    result = _build(
        tmp_path,
        key_file,
        source,
        sidecar=SidecarConfig(allow_free_text=("SeriesDescription",)),
        labels=LabelsConfig(vocabulary=("hcpstyle",)),
    )
    sidecar = next(json.loads(d) for n, d in _published(result).items() if n.endswith("_T1w.json"))
    assert sidecar["SeriesDescription"] == "MPRAGE hcpstyle sag"
