"""Release, provenance: the collected runs -> BIDS-Prov records in the dataset's ``prov/`` folder.

The records follow the provenance part of the BIDS specification (BEP028, "BIDS-Prov"): four
JSON files with the ``prov-dcmpack`` label, one per object type, objects identified by
``bids::prov#...`` IRIs:

``prov/prov-dcmpack_soft.json``  ``Software``: dcmpack, the conversion engine and the libraries
                                  that shape the output bytes, with their versions
``prov/prov-dcmpack_env.json``   ``Environments``: the Python and the operating system kind
``prov/prov-dcmpack_ent.json``   ``ProvEntities``: each run's source series and its outputs
``prov/prov-dcmpack_act.json``   ``Activities``: per run, the conversion and the sidecar
                                  allowlist; for the dataset, de-identification and the PHI audit

A source series (``bids::prov#source-...``) is named only by a keyed digest: HMAC-SHA256 under the pseudonym key of its
SeriesInstanceUID, written in the letters a-p (hex digits moved to letters, so a digest never
holds a run of digits the PHI audit would take for a date or an ID). Without the key nobody can
tell which series it was or confirm a guess; the data owner, holding the key, can. No UID, date,
time, path of the source or header value is written, and no time stamp (a build is
reproducible), so the records pass the same PHI audit as every other file.

Deviation from the proposal, on purpose: the outputs' ``GeneratedBy`` is in the ``ent`` file,
not in the run sidecars, because sidecars carry only allowlisted acquisition fields. The
BIDS validator (BIDS 1.11) does not know ``prov/`` yet: ``.bidsignore`` lists it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

from packager import executors
from packager.config import Engine, ReleaseConfig
from packager.naming import layout as layout_stage
from packager.release import bundle as bundle_stage
from packager.release.dataset import Collected, ConvertedRun

FOLDER = "prov"
LABEL = "dcmpack"
BIDSIGNORE = ".bidsignore"
_PREFIX = "bids::prov#"
_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
CONVERSION = "DICOM to NIfTI conversion"
SOURCE = "DICOM series (keyed digest of its UID)"
ALLOWLIST = "Sidecar fields from the headers, kept by the typed allowlist, PHI terms dropped"
DEIDENTIFICATION = {
    "shift": "Keyed pseudonyms, dates shifted, ages capped",
    "remove": "Keyed pseudonyms, dates removed, ages capped",
}
AUDIT = "PHI audit of every byte stream of the bundle"
#: The JSON keys of the records (the PHI audit blanks them as dcmpack's own, as it does the manifest's).
KEYS: frozenset[str] = frozenset(
    {"Activities", "ProvEntities", "Software", "Environments", "Id", "Label", "Command", "AssociatedWith", "Used"}
    | {"AtLocation", "GeneratedBy", "Version", "OperatingSystem", "provenance"}
)


def source_digest(key: bytes, uid: str) -> str:
    """The keyed digest naming a source series (see the module doc); 32 letters a-p."""
    return (
        hmac.new(key, b"dcmpack provenance series\0" + uid.encode(), hashlib.sha256)
        .hexdigest()[:32]
        .translate(_LETTERS)
    )


def _command(engine: str) -> str:
    return f"dcmpack build (engine {engine})"


def _python() -> str:
    return f"Python {'.'.join(map(str, sys.version_info[:3]))}"


def constant_texts() -> tuple[bytes, ...]:
    """The fixed values of the records as they stand in the JSON (quoted): the PHI audit blanks
    them, as it does the README's sentences, so a phantom patient called "DICOM" does not match
    dcmpack's own words. Filled-in values (paths, digests, versions) stay searched."""
    values = {CONVERSION, SOURCE, ALLOWLIST, AUDIT, *DEIDENTIFICATION.values(), _python(), platform.system()}
    values |= {_command(engine) for engine in Engine}
    return tuple(json.dumps(value).encode() for value in sorted(values))


def _stem(run: ConvertedRun) -> str:
    return run.planned.relpath.rsplit("/", 1)[-1]


def _software(engine: str) -> list[dict]:
    found = executors.versions()  # the libraries that shape output bytes (the cache key's list too)
    return [
        {"Id": f"{_PREFIX}software-{name}", "Label": name, "Version": version}
        for name, version in sorted(found.items())
        if version != "missing" and (name not in ("dicom2nifti", "dcm2niix") or name == engine)
    ]


def _run_records(run: ConvertedRun, key: bytes, engine: str) -> tuple[list[dict], list[dict]]:
    """(entities, activities) of one run."""
    stem, relpath = _stem(run), run.planned.relpath
    conversion, allowlisting = f"{_PREFIX}conversion-{stem}", f"{_PREFIX}allowlist-{stem}"
    used = [f"{_PREFIX}environment-python"]
    entities = []
    if key and run.planned.series.uid:
        source = f"{_PREFIX}source-{source_digest(key, run.planned.series.uid)}"
        entities.append({"Id": source, "Label": SOURCE})
        used.insert(0, source)
    outputs = [s.relpath for s in run.result.staged]
    entities += [
        {
            "Id": f"{_PREFIX}file-{path.rsplit('/', 1)[-1]}",
            "Label": path.rsplit("/", 1)[-1],
            "AtLocation": path,
            "GeneratedBy": conversion,
        }
        for path in outputs
    ]
    sidecar = relpath + ".json"
    entities.append(
        {
            "Id": f"{_PREFIX}file-{sidecar.rsplit('/', 1)[-1]}",
            "Label": sidecar.rsplit("/", 1)[-1],
            "AtLocation": sidecar,
            "GeneratedBy": allowlisting,
        }
    )
    activities = [
        {
            "Id": conversion,
            "Label": CONVERSION,
            "Command": _command(engine),
            "AssociatedWith": [f"{_PREFIX}software-dcmpack", f"{_PREFIX}software-{engine}"],
            "Used": used,
        },
        {
            "Id": allowlisting,
            "Label": ALLOWLIST,
            "AssociatedWith": f"{_PREFIX}software-dcmpack",
            "Used": used[:-1],  # the source series (its headers), when it can be named
        },
    ]
    if not activities[1]["Used"]:
        del activities[1]["Used"]
    return entities, activities


def records(config: ReleaseConfig, collected: Collected) -> dict[str, dict]:
    """The four provenance documents, by their path in the dataset.

    Parameters
    ----------
    config : ReleaseConfig
        The pseudonym key (for the source digests), the engine, the date policy.
    collected : Collected
        The converted runs.

    Returns
    -------
    dict of str to dict
    """
    engine = str(config.convert.engine)
    entities: list[dict] = []
    activities: list[dict] = []
    runs = sorted(collected.runs, key=lambda r: r.planned.relpath)
    named: set[str] = set()
    for run in runs:
        found, done = _run_records(run, config.key, engine)
        entities += [e for e in found if e["Id"] not in named]  # a series split in runs is one source
        named.update(e["Id"] for e in found)
        activities += done
    outputs = [e["Id"] for e in entities if "AtLocation" in e]
    activities.append(
        {
            "Id": f"{_PREFIX}deidentification",
            "Label": DEIDENTIFICATION[config.deid.dates],
            "AssociatedWith": f"{_PREFIX}software-dcmpack",
        }
    )
    activities.append(
        {
            "Id": f"{_PREFIX}audit",
            "Label": AUDIT,
            "AssociatedWith": f"{_PREFIX}software-dcmpack",
            "Used": outputs,
        }
    )
    base = f"{FOLDER}/prov-{LABEL}"
    return {
        f"{base}_act.json": {"Activities": activities},
        f"{base}_ent.json": {"ProvEntities": entities},
        f"{base}_env.json": {
            "Environments": [
                {"Id": f"{_PREFIX}environment-python", "Label": _python(), "OperatingSystem": platform.system()}
            ]
        },
        f"{base}_soft.json": {"Software": _software(engine)},
    }


def stage_records(config: ReleaseConfig, folder: Path, collected: Collected) -> list[bundle_stage.Staged]:
    """Stage the provenance documents and the ``.bidsignore`` that keeps the validator off them.

    Parameters
    ----------
    config : ReleaseConfig
    folder : Path
        The dataset staging folder.
    collected : Collected

    Returns
    -------
    list of Staged
    """
    staged = [
        bundle_stage.stage_bytes(folder, path, layout_stage.canonical_json(document))
        for path, document in records(config, collected).items()
    ]
    # "/prov" (the folder itself, from the root): "prov/" leaves the folder NOT_INCLUDED (validator 3.0)
    staged.append(bundle_stage.stage_bytes(folder, BIDSIGNORE, f"/{FOLDER}\n".encode()))
    return staged


def paths(staged: Iterable[bundle_stage.Staged]) -> list[str]:
    """The provenance documents among ``staged`` (for the manifest)."""
    return sorted(s.relpath for s in staged if s.relpath.startswith(FOLDER + "/"))
