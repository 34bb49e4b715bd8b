"""Release, manifest: the staged files and the collected runs -> ``manifest.json`` (canonical JSON).

The manifest names the tool and engine versions, the config (its digest view and sha256), the
pseudonym key's fingerprint (never the key), every dataset file with size and sha256, every
run with shape and voxel size, the provenance records (``prov/``), and value-free counts of
exclusions and dropped sidecar values.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from packager import __version__
from packager import deface as deface_stage
from packager.config import ReleaseConfig
from packager.convert.task import engine_version
from packager.naming import deid as deid_stage
from packager.naming import layout as layout_stage
from packager.release import bundle as bundle_stage
from packager.release import provenance
from packager.release.dataset import Collected


def manifest(config: ReleaseConfig, staged: Iterable[bundle_stage.Staged], collected: Collected) -> bytes:
    """The bundle's manifest.json.

    Parameters
    ----------
    config : ReleaseConfig
    staged : iterable of Staged
        Every dataset file (listed with size and sha256, sorted by path).
    collected : Collected
        The converted runs, the exclusions and the allowlist's counts.

    Returns
    -------
    bytes
        Canonical JSON.
    """
    staged = list(staged)
    engine = config.convert.engine
    runs: list[dict[str, Any]] = [
        {
            "path": run.planned.image,
            "datatype": run.planned.name.datatype,
            "suffix": run.planned.name.suffix,
            "shape": list(run.result.shape),
            "voxel_size": [round(z, 4) for z in run.result.zooms[:3]],
            "engine": run.result.engine or engine,
            # --engine auto: the run dcm2niix converted, and why our engine refused it (value-free)
            **({"fallback": run.result.fallback} if run.result.fallback else {}),
            **({"deface": run.result.deface.status} if run.result.deface is not None else {}),
        }
        for run in collected.runs
    ]
    reasons = Counter(e.reason.name.lower() for e in collected.excluded)
    view = config.digest_view()
    data = {
        "tool": {"name": "dcmpack", "version": __version__, "engine": engine_version(engine)},
        "dataset": config.dataset.name,
        "config": view,
        "config_sha256": hashlib.sha256(layout_stage.canonical_json(view)).hexdigest(),
        "key_fingerprint": deid_stage.key_fingerprint(config.key),
        "files": [
            {"path": s.relpath, "size": s.size, "sha256": s.sha256} for s in sorted(staged, key=lambda s: s.relpath)
        ],
        "runs": sorted(runs, key=lambda r: r["path"]),
        "provenance": provenance.paths(staged),  # BIDS-Prov records of every run (release/provenance.py)
        "deface": _deface(config),
        "excluded": dict(sorted(reasons.items())),
        "sidecar_dropped": dict(sorted(collected.dropped.items())),
        "labels_neutralised": collected.neutral_labels,
    }
    return layout_stage.canonical_json(data)


def _deface(config: ReleaseConfig) -> dict[str, Any]:
    """How head runs were defaced, or why not (``[deface]``); each run says which applied."""
    if not config.deface.enabled:
        return {"enabled": False, "reason": config.deface.reason}
    return {"enabled": True, **deface_stage.method(), "suffixes": list(config.deface.suffixes)}
