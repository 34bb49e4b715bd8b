"""Real DICOM, named by release.toml rules (tests/rules/<dataset>.toml): complete, valid BIDS.

Each corpus dataset is built once through ``packager.api.build`` (audit and verification
included) and checked with bids-validator-deno: zero errors, only "recommended key missing"
style warnings. Run names, automatic entities (run-, dir-, magnitude1/2/phasediff,
magnitude/fieldmap) and the BIDS rules converters trip (FIELD-NOTES.md) are checked on the
files themselves.
"""

from __future__ import annotations

import json
import re

import corpus_builds
import nibabel as nib
import pytest
from conftest import run_cli

DATASETS = ("dcm_qa", "dcm_qa_nih", "dcm_qa_fmap", "dcm_qa_mosaic", "dcm_qa_xa30")
# Warnings we accept: keys withheld on purpose (institution, station, serial, ...), task texts
# and events only the data owner can write, optional dataset_description keys.
ACCEPTED_WARNINGS = {"SIDECAR_KEY_RECOMMENDED", "JSON_KEY_RECOMMENDED", "EVENTS_TSV_MISSING"}

EXPECTED_RUNS = {
    "dcm_qa": [
        f"func/sub-X_task-qa_acq-{order}_dir-{pe}_run-{n}_bold"
        for order, pe, count in (
            ("asc", "AP", 5),
            ("asc", "RL", 2),
            ("desc", "AP", 4),
            ("desc", "RL", 2),
            ("int", "AP", 4),
            ("int", "RL", 2),
        )
        for n in range(1, count + 1)
    ]
    + ["func/sub-X_task-qa_acq-mb2_run-1_bold", "func/sub-X_task-qa_acq-mb2_run-2_bold"],
    "dcm_qa_nih": [
        f"ses-01/func/sub-X_ses-01_task-rest_acq-{order}_run-{n}_bold"
        for order in ("interleaved", "sequential")
        for n in (1, 2)
    ]
    + [f"ses-02/func/sub-X_ses-02_task-pe_dir-{pe}_bold" for pe in ("AP", "LR", "PA", "RL")],
    "dcm_qa_fmap": [
        "fmap/sub-X_acq-2d_fieldmap",
        "fmap/sub-X_acq-2d_fieldmap",
        "fmap/sub-X_acq-2d_magnitude",
        "fmap/sub-X_acq-2d_magnitude",
        # the 3D field maps (GE acq-3d, Philips) are of phantoms (a sphere, a bottle): defacing
        # refuses their magnitude images (test_phantom_field_maps_are_refused_not_damaged)
        "fmap/sub-X_acq-magph_magnitude1",
        "fmap/sub-X_acq-magph_magnitude2",
        "fmap/sub-X_acq-magph_phasediff",
        "fmap/sub-X_acq-separate_magnitude1",
        "fmap/sub-X_acq-separate_magnitude2",
        "fmap/sub-X_acq-separate_phasediff",
    ],
    "dcm_qa_mosaic": [f"func/sub-X_task-rest_acq-{seq}_run-{n}_bold" for seq in ("cmrr", "ep2d") for n in range(1, 5)],
    "dcm_qa_xa30": [
        "anat/sub-X_acq-tfl_T1w",
        "anat/sub-X_acq-tfl_rec-norm_T1w",
        "fmap/sub-X_magnitude1",
        "fmap/sub-X_magnitude2",
        "fmap/sub-X_phasediff",
    ],
}


@pytest.fixture(scope="module")
def built(corpus, key_file, tmp_path_factory):
    return lambda dataset: corpus_builds.build(dataset, corpus, key_file, tmp_path_factory)


def _runs(root):
    return sorted(p for p in root.glob("sub-*/**/*.nii.gz"))


def _anonymous(root, path) -> str:
    relative = str(path.relative_to(root))[: -len(".nii.gz")]
    return re.sub(r"sub-[A-Za-z0-9]+", "sub-X", relative.split("/", 1)[1])


def _sidecar(path):
    return json.loads(path.with_name(path.name[: -len(".nii.gz")] + ".json").read_text())


@pytest.mark.parametrize("dataset", DATASETS)
def test_zero_validator_errors(built, validator, dataset):
    result = built(dataset)
    assert result.result.validator["errors"] == 0
    errors, warnings, codes, _ = validator(result.root)
    assert errors == 0, codes
    assert {code for severity, code, _ in codes if severity == "warning"} <= ACCEPTED_WARNINGS, codes


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_series_named_as_configured(built, dataset):
    root = built(dataset).root
    assert sorted(_anonymous(root, p) for p in _runs(root)) == sorted(EXPECTED_RUNS[dataset])
    refused = [e for e in built(dataset).result.excluded if e.reason.name == "DEFACE_REFUSED"]
    assert len(refused) == (4 if dataset == "dcm_qa_fmap" else 0)  # two phantom field maps (see below)
    assert not [e for e in built(dataset).result.excluded if e.reason.is_error and e not in refused]


@pytest.mark.parametrize("dataset", ["dcm_qa", "dcm_qa_nih", "dcm_qa_mosaic"])
def test_func_runs_meet_bids_timing_rules(built, dataset):
    for path in _runs(built(dataset).root):
        meta = _sidecar(path)
        image = nib.load(path)
        assert image.ndim == 4, path.name
        assert meta["TaskName"] == re.search(r"_task-([A-Za-z0-9]+)", path.name).group(1)
        # REPETITION_TIME_MISMATCH is a validator error: pixdim[4] must equal RepetitionTime
        assert image.header.get_zooms()[3] == pytest.approx(meta["RepetitionTime"], abs=1e-6)
        assert image.header.get_xyzt_units() == ("mm", "sec")
        timing = meta["SliceTiming"]
        assert len(timing) == image.shape[2] and 0 == min(timing) and max(timing) < meta["RepetitionTime"]
        assert meta["PhaseEncodingDirection"] in ("i", "i-", "j", "j-")
        assert meta["TotalReadoutTime"] > 0 and meta["EffectiveEchoSpacing"] > 0


def test_dir_entity_follows_the_headers_phase_encoding(built):
    root = built("dcm_qa_nih").root
    for path in root.glob("sub-*/ses-02/func/*_bold.nii.gz"):
        label = re.search(r"_dir-([A-Z]{2})_", path.name).group(1)
        code = _sidecar(path)["PhaseEncodingDirection"]
        affine = nib.load(path).affine
        axis, sign = "ijk".index(code[0]), (-1 if code.endswith("-") else 1)
        ras = sign * affine[:3, axis]
        # from-to label in RAS+ (x to the right, y to the front): AP runs towards -y,
        # PA towards +y, RL towards -x (right to left), LR towards +x
        expected = {"AP": (1, -1), "PA": (1, 1), "RL": (0, -1), "LR": (0, 1)}[label]
        assert abs(ras[expected[0]]) == max(abs(ras)) and ras[expected[0]] * expected[1] > 0, path.name


def test_field_maps_carry_what_bids_requires(built):
    root = built("dcm_qa_fmap").root
    groups: dict[tuple, set] = {}
    for path in _runs(root):
        meta = _sidecar(path)
        if path.name.endswith("_phasediff.nii.gz"):
            assert 0 < meta["EchoTime1"] < meta["EchoTime2"] < 0.1
            assert "EchoTime" not in meta
        if path.name.endswith("_fieldmap.nii.gz"):
            assert meta["Units"] == "Hz"
        subject = path.relative_to(root).parts[0]  # identifiers are unique within a subject
        groups.setdefault((subject, meta["B0FieldIdentifier"]), set()).add(path.name.rsplit("_", 1)[1])
    assert sorted(map(sorted, groups.values())) == sorted(
        [["fieldmap.nii.gz", "magnitude.nii.gz"]] * 2
        + [["magnitude1.nii.gz", "magnitude2.nii.gz", "phasediff.nii.gz"]] * 2
    )


def test_phantom_field_maps_are_refused_not_damaged(built):
    result = built("dcm_qa_fmap").result
    assert result.exit_code == 1
    refused = [e for e in result.excluded if e.reason.name == "DEFACE_REFUSED"]
    # two magnitude images (implausible template fit: anisotropic scale, shear) and their field
    # maps, which only a magnitude's cut defaces (packager/deface/parts.py)
    details = sorted(e.detail for e in refused)
    assert [d.split(":")[0] for d in details] == ["defacing refused"] * 4
    assert (
        sum(d.endswith("no defaced magnitude of its field map on its voxel grid to take the cut from") for d in details)
        == 2
    )


def test_xa30_t1w_are_defaced(built):
    root = built("dcm_qa_xa30").root
    manifest = json.loads((root.parent / "MANIFEST.json").read_text())
    assert [r["deface"] for r in manifest["runs"] if r["suffix"] == "T1w"] == ["defaced", "defaced"]
    # the 2D field-map magnitudes are exempt (and say so)
    magnitudes = [r["deface"] for r in manifest["runs"] if r["suffix"].startswith("magnitude")]
    assert magnitudes == ["exempt: field-map magnitude from a 2D acquisition"] * 2


def test_xa30_exclusions_are_listed_with_reasons(built):
    result = built("dcm_qa_xa30").result
    reasons = sorted(e.reason.name for e in result.excluded)
    assert reasons.count("PHOENIX") == 1
    assert reasons.count("HEURISTIC_SKIP") == 5  # 2 derived DWI b0 maps, the ASL series and 2 ASL maps
    assert all(e.detail for e in result.excluded)


def test_plan_shows_every_decision_and_why(corpus, key_file):
    proc = run_cli(
        "plan",
        str(corpus / "dcm_qa_xa30" / "In"),
        "-c",
        str(corpus_builds.RULES / "dcm_qa_xa30.toml"),
        "--key-file",
        str(key_file),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 19 and all(row["why"] for row in rows)
    whys = {row["number"]: row["why"] for row in rows}
    assert whys[6] == "rule 1 matched on ProtocolName, SeriesNumber"
    assert "rule 4 (skip)" in whys[16]


@pytest.mark.parametrize("dataset", DATASETS)
def test_provenance_records_follow_bids_prov_and_name_sources_by_keyed_digest(built, corpus, key_file, dataset):
    import warnings
    import zipfile

    import jsonschema
    import pydicom
    from conftest import REPO

    from packager.release.provenance import source_digest

    result = built(dataset)
    schema = json.loads((REPO / "tests" / "bids_prov.schema.json").read_text())
    files = sorted(p.relative_to(result.root).as_posix() for p in (result.root / "prov").iterdir())
    assert files == [f"prov/prov-dcmpack_{kind}.json" for kind in ("act", "ent", "env", "soft")]
    assert (result.root / ".bidsignore").read_text() == "/prov\n"
    with zipfile.ZipFile(result.result.bundle) as archive:
        assert json.loads(archive.read("MANIFEST.json"))["provenance"] == files
    documents = {path: json.loads((result.root / path).read_text()) for path in files}
    for document in documents.values():
        jsonschema.validate(document, schema)
    objects = {o["Id"]: o for document in documents.values() for items in document.values() for o in items}
    for item in objects.values():  # every reference names an object of these files
        for field in ("AssociatedWith", "Used", "GeneratedBy"):
            refs = item.get(field, [])
            assert set([refs] if isinstance(refs, str) else refs) <= set(objects), (item["Id"], field)
    sources = {i for i in objects if i.startswith("bids::prov#source-")}
    assert all(re.fullmatch(r"bids::prov#source-[a-p]{32}", i) for i in sources)
    located = {o["AtLocation"]: o for o in objects.values() if "AtLocation" in o}
    for run in _runs(result.root):
        image = run.relative_to(result.root).as_posix()
        conversion = objects[located[image]["GeneratedBy"]]
        assert conversion["Label"] == "DICOM to NIfTI conversion" and conversion["Used"][0] in sources
        assert objects[located[image[: -len(".nii.gz")] + ".json"]["GeneratedBy"]]["Id"].startswith(
            "bids::prov#allowlist-"
        )
    assert {"bids::prov#deidentification", "bids::prov#audit"} <= set(objects)
    # the data owner (key holder) can name the source series; nobody can read a UID from the records
    key = key_file.read_bytes().strip()
    uids = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on the QA files' quirks
        for path in (corpus / dataset / "In").rglob("*"):
            try:
                uids.add(str(pydicom.dcmread(path, specific_tags=["SeriesInstanceUID"], force=True).SeriesInstanceUID))
            except (AttributeError, OSError, pydicom.errors.InvalidDicomError):
                continue  # not DICOM (a LICENSE, a folder)
    assert sources <= {f"bids::prov#source-{source_digest(key, uid)}" for uid in uids}
    text = "".join((result.root / path).read_text() for path in files)
    assert not [uid for uid in uids if uid in text]
