"""Stage unit test, layout: a BIDS name + de-identified labels -> the run's dataset path (``bids_relpath``).

The paths are written from the BIDS schema by hand (``naming/layout.py`` says why); pybids'
``build_path`` with its default BIDS patterns is the reference wherever it places a name.
"""

from __future__ import annotations

import pytest

from packager.model import BidsName
from packager.naming.layout import bids_relpath
from packager.naming.schema import entity_rules
from packager.naming.spec import ENTITY_KEYS, SUFFIXES


@pytest.mark.parametrize(
    "name, session, extension, expected",
    [
        (BidsName("anat", "T1w"), "01", ".nii.gz", "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"),
        (BidsName("anat", "T1w"), None, ".json", "sub-01/anat/sub-01_T1w.json"),
        # entities come in the spec's order, whatever order the heuristic gave them in
        (
            BidsName("func", "bold", (("run", "2"), ("task", "rest"), ("acq", "mb4"))),
            "01",
            ".nii.gz",
            "sub-01/ses-01/func/sub-01_ses-01_task-rest_acq-mb4_run-2_bold.nii.gz",
        ),
        (
            BidsName("fmap", "epi", (("dir", "AP"), ("acq", "se"), ("run", "1"))),
            None,
            ".nii.gz",
            "sub-01/fmap/sub-01_acq-se_dir-AP_run-1_epi.nii.gz",
        ),
        # a ses entity from the heuristic never overrides the session from deid
        (BidsName("dwi", "dwi", (("ses", "99"),)), "02", ".bval", "sub-01/ses-02/dwi/sub-01_ses-02_dwi.bval"),
        # direct field mapping's plain _magnitude (pybids only knows magnitude1/2)
        (BidsName("fmap", "magnitude"), None, ".nii.gz", "sub-01/fmap/sub-01_magnitude.nii.gz"),
        (BidsName("fmap", "magnitude1"), None, ".nii.gz", "sub-01/fmap/sub-01_magnitude1.nii.gz"),
    ],
)
def test_bids_relpath(name, session, extension, expected):
    assert bids_relpath(name, "01", session, extension) == expected


@pytest.mark.parametrize(
    "name",
    [
        BidsName("anat", "T1w", (("bogus", "x"),)),  # an entity BIDS does not have
        BidsName("anat", "nonsense"),  # a suffix with no place in its datatype
        BidsName("func", "bold"),  # bold without its required task
    ],
)
def test_names_bids_has_no_place_for_are_refused(name):
    assert bids_relpath(name, "01", None) is None


def _combinations():
    """Every image suffix dcmpack writes, with no entity, each entity alone, the required ones,
    the required ones plus each other entity, and every allowed entity at once."""
    values = {"run": "1", "echo": "1", "part": "mag", "mt": "on", "flip": "1", "inv": "1", "dir": "AP"}
    for datatype, suffixes in SUFFIXES.items():
        for suffix in suffixes:
            allowed, required = entity_rules(datatype, suffix) or (frozenset(), frozenset())
            keys = [key for key in ENTITY_KEYS if key != "ses"]
            combos = {(), tuple(sorted(required)), tuple(sorted(allowed - {"ses"}))}
            combos |= {(key,) for key in keys} | {tuple(sorted(required | {key})) for key in keys}
            for combo in sorted(combos):
                yield BidsName(datatype, suffix, tuple((key, values.get(key, "x1")) for key in combo))


def test_paths_equal_pybids_wherever_it_places_a_name():
    from bids.layout.models import Config
    from bids.layout.writing import build_path

    patterns = list(Config.load("bids").default_path_patterns)
    pybids_names = {"ses": "session", "acq": "acquisition", "ce": "ceagent", "trc": "tracer", "stain": "staining"}
    pybids_names |= {"rec": "reconstruction", "dir": "direction", "mod": "modality", "inv": "inversion"}
    placed = ours_only = 0
    for name in _combinations():
        for session, extension in ((None, ".nii.gz"), ("02", ".json")):
            ours = bids_relpath(name, "01", session, extension)
            entities = {pybids_names.get(key, key): value for key, value in name.entities}
            entities |= {"subject": "01", "datatype": name.datatype, "suffix": name.suffix, "extension": extension}
            entities |= {"session": session} if session else {}
            theirs = build_path(entities, patterns, strict=True)
            allowed, required = entity_rules(name.datatype, name.suffix) or (frozenset(), frozenset())
            if theirs is not None:
                placed += 1
                # pybids' fmap patterns take dir- for every field-map suffix; BIDS allows it only on epi/m0scan
                if ours is None:
                    assert name.datatype == "fmap" and "dir" in dict(name.entities) and "dir" not in allowed, name
                else:
                    assert ours == theirs, name
            elif ours is not None:  # a file rule pybids' patterns lack: every entity BIDS allows, none missing
                ours_only += 1
                assert set(dict(name.entities)) <= allowed and required <= set(dict(name.entities)) | {"ses"}, name
    assert placed > 500 and ours_only > 300
