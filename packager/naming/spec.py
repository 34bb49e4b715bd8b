"""BIDS tables for naming: the datatypes, entities and suffixes dcmpack names runs with (data, one place).

Kept as data rather than read from ``bidsschematools`` at run time: the schema lists deprecated
and non-image suffixes (``PD``, ``T2star``, ``FLASH``, ``defacemask``) a heuristic must not
produce, and names must not change when the installed schema does. Which entities each file
allows or requires is read from the schema (``naming.schema``). ``tests/test_heuristics.py``
checks every table against the schema.
"""

from __future__ import annotations

#: The BIDS version dataset_description.json states.
BIDS_VERSION = "1.11.1"

#: Datatypes of the images dcmpack converts (MRI), those the shipped heuristics name.
IMAGE_DATATYPES = ("anat", "func", "dwi", "fmap", "perf")
#: Every datatype a heuristic may name (a custom heuristic may also place a run under ``beh``).
DATATYPES = IMAGE_DATATYPES + ("beh",)

#: Entities a heuristic may set (short keys, as in file names), in BIDS entity order: the order
#: paths are written in (``layout.bids_relpath``). ``ses`` is honoured by deid, the others name the run.
ENTITY_KEYS = (
    "ses",
    "task",
    "acq",
    "ce",
    "trc",
    "stain",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "recording",
    "chunk",
)

#: Image suffixes BIDS 1.11 defines per datatype (spelling as in the spec; deprecated ones left out).
SUFFIXES = {
    "anat": (
        "T1w",
        "T2w",
        "PDw",
        "T2starw",
        "FLAIR",
        "inplaneT1",
        "inplaneT2",
        "PDT2",
        "angio",
        "T1map",
        "T2map",
        "T2starmap",
        "R1map",
        "R2map",
        "R2starmap",
        "PDmap",
        "MTRmap",
        "MTsat",
        "UNIT1",
        "T1rho",
        "MWFmap",
        "MTVmap",
        "Chimap",
        "S0map",
        "M0map",
        "MESE",
        "MEGRE",
        "VFA",
        "IRT1",
        "MP2RAGE",
        "MPM",
        "MTS",
        "MTR",
    ),
    "func": ("bold", "cbv", "sbref", "noRF"),
    "dwi": ("dwi", "sbref"),
    "fmap": (
        "phasediff",
        "phase1",
        "phase2",
        "magnitude1",
        "magnitude2",
        "magnitude",
        "fieldmap",
        "epi",
        "m0scan",
        "TB1DAM",
        "TB1EPI",
        "TB1AFI",
        "TB1TFL",
        "TB1RFM",
        "TB1SRGE",
        "TB1map",
        "RB1COR",
        "RB1map",
    ),
    "perf": ("asl", "m0scan"),
}
