"""Release, diff: two releases of one dataset -> what changed between them, without PHI.

A release is read as a ``Snapshot``: from a published bundle (its MANIFEST.json, run sidecars,
participants.tsv and CHANGES) or from the staged dataset of the build in progress. ``compare``
lists participants and sessions added or removed, runs added or removed, runs changed (by the
content digests the manifests record: image, b-values, b-vectors, sidecar) with the *names* of
the sidecar keys whose values changed, and other dataset files changed. Everything it names is
already in both bundles (pseudonymous BIDS paths, BIDS key names); no value is shown.
``changes_entry`` turns that into a BIDS CHANGES entry (``build --previous``).

Refuses (``InputError``): a file that is not a readable zip, or a zip without dcmpack's
MANIFEST.json.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packager.config import ReleaseConfig
from packager.errors import InputError
from packager.model import NIFTI
from packager.naming import deid as deid_stage
from packager.release import bundle as bundle_stage

MANIFEST = "MANIFEST.json"
#: The files of one run besides its image (what a run's "changed" can name).
_RUN_PARTS = (("image", NIFTI), ("sidecar", ".json"), ("bval", ".bval"), ("bvec", ".bvec"))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One release as far as a comparison needs it (paths relative to the dataset root)."""

    version: str
    key_fingerprint: str
    files: tuple[tuple[str, str], ...]  # (relpath, sha256), sorted
    runs: tuple[str, ...]  # run relpaths without extension, sorted
    sidecars: tuple[tuple[str, dict], ...]  # (run relpath, fields)
    participants: tuple[str, ...]
    changes: str  # the CHANGES text


@dataclass(frozen=True, slots=True)
class RunChange:
    """A run in both releases whose files differ: which of them, and the sidecar keys changed."""

    run: str
    parts: tuple[str, ...]
    sidecar_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Changes:
    """What ``compare`` found (every tuple sorted)."""

    old_version: str
    new_version: str
    same_key: bool
    participants_added: tuple[str, ...]
    participants_removed: tuple[str, ...]
    sessions_added: tuple[str, ...]
    sessions_removed: tuple[str, ...]
    runs_added: tuple[str, ...]
    runs_removed: tuple[str, ...]
    runs_changed: tuple[RunChange, ...]
    files_added: tuple[str, ...]  # other dataset files (tables, dataset description, ...)
    files_removed: tuple[str, ...]
    files_changed: tuple[str, ...]

    @property
    def identical(self) -> bool:
        """True when both releases hold the same dataset files, byte for byte."""
        return not (
            self.runs_added
            or self.runs_removed
            or self.runs_changed
            or self.files_added
            or self.files_removed
            or self.files_changed
        )

    def as_dict(self) -> dict:
        """Plain data for ``--json``."""
        return {
            "identical": self.identical,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "same_key": self.same_key,
            "participants_added": list(self.participants_added),
            "participants_removed": list(self.participants_removed),
            "sessions_added": list(self.sessions_added),
            "sessions_removed": list(self.sessions_removed),
            "runs_added": list(self.runs_added),
            "runs_removed": list(self.runs_removed),
            "runs_changed": [
                {"run": c.run, "parts": list(c.parts), "sidecar_keys": list(c.sidecar_keys)} for c in self.runs_changed
            ],
            "files_added": list(self.files_added),
            "files_removed": list(self.files_removed),
            "files_changed": list(self.files_changed),
        }


def read_bundle(path: Path) -> Snapshot:
    """The snapshot of a published bundle.

    Parameters
    ----------
    path : Path

    Returns
    -------
    Snapshot

    Raises
    ------
    InputError
        Not a readable zip, or no dcmpack manifest in it.
    """
    if not Path(path).is_file():
        raise InputError(f"diff: {path}: no such bundle")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if MANIFEST not in names:
                raise InputError(f"diff: {path}: not a dcmpack bundle (no {MANIFEST})")
            manifest = json.loads(archive.read(MANIFEST))
            root = manifest["dataset"] + "/"
            files = tuple(sorted((f["path"], f["sha256"]) for f in manifest["files"]))
            runs = tuple(sorted(r["path"].removesuffix(NIFTI) for r in manifest["runs"]))

            def member(relpath: str) -> bytes | None:
                return archive.read(root + relpath) if root + relpath in names else None

            return _snapshot(manifest, files, runs, member)
    except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"diff: {path}: unreadable bundle ({type(exc).__name__})") from None


def staged_snapshot(
    version: str, key_fingerprint: str, staged: Iterable[bundle_stage.Staged], runs: Iterable[str]
) -> Snapshot:
    """The snapshot of the dataset a build has staged (before its CHANGES is written).

    Parameters
    ----------
    version : str
    key_fingerprint : str
    staged : iterable of Staged
        The dataset's files.
    runs : iterable of str
        The runs' relpaths (without extension).

    Returns
    -------
    Snapshot
    """
    by_path = {s.relpath: s for s in staged}

    def member(relpath: str) -> bytes | None:
        return by_path[relpath].path.read_bytes() if relpath in by_path else None

    manifest = {"config": {"dataset": {"version": version}}, "key_fingerprint": key_fingerprint}
    files = tuple(sorted((s.relpath, s.sha256) for s in by_path.values()))
    return _snapshot(manifest, files, tuple(sorted(runs)), member)


def _snapshot(manifest: dict, files, runs: tuple[str, ...], member) -> Snapshot:
    sidecars = []
    for run in runs:
        data = member(run + ".json")
        sidecars.append((run, json.loads(data) if data is not None else {}))
    table = member("participants.tsv") or b""
    rows = csv.DictReader(io.StringIO(table.decode("utf-8")), delimiter="\t")
    return Snapshot(
        version=str(manifest["config"]["dataset"]["version"]),
        key_fingerprint=str(manifest.get("key_fingerprint", "")),
        files=files,
        runs=runs,
        sidecars=tuple(sidecars),
        participants=tuple(sorted(row["participant_id"] for row in rows if row.get("participant_id"))),
        changes=(member("CHANGES") or b"").decode("utf-8"),
    )


def _sessions(runs: Iterable[str]) -> set[str]:
    """``sub-X`` or ``sub-X/ses-Y`` of every run."""
    found = set()
    for run in runs:
        parts = run.split("/")
        found.add("/".join(parts[:2]) if len(parts) > 2 and parts[1].startswith("ses-") else parts[0])
    return found


def _keys_changed(old: dict, new: dict) -> tuple[str, ...]:
    return tuple(sorted(k for k in set(old) | set(new) if k not in old or k not in new or old[k] != new[k]))


def compare(old: Snapshot, new: Snapshot, *, ignore: tuple[str, ...] = ()) -> Changes:
    """What changed from ``old`` to ``new``.

    Parameters
    ----------
    old, new : Snapshot
    ignore : tuple of str
        Dataset files left out of the comparison (``build --previous``: the CHANGES being written).

    Returns
    -------
    Changes
    """
    old_files = {p: d for p, d in old.files if p not in ignore}
    new_files = {p: d for p, d in new.files if p not in ignore}
    old_runs, new_runs = set(old.runs), set(new.runs)
    old_sidecars, new_sidecars = dict(old.sidecars), dict(new.sidecars)
    changed = []
    for run in sorted(old_runs & new_runs):
        parts = tuple(label for label, ext in _RUN_PARTS if old_files.get(run + ext) != new_files.get(run + ext))
        if parts:
            keys = _keys_changed(old_sidecars.get(run, {}), new_sidecars.get(run, {})) if "sidecar" in parts else ()
            changed.append(RunChange(run, parts, keys))
    run_files = {run + ext for run in old_runs | new_runs for _, ext in _RUN_PARTS}
    old_others, new_others = set(old_files) - run_files, set(new_files) - run_files
    old_sessions, new_sessions = _sessions(old_runs), _sessions(new_runs)
    return Changes(
        old_version=old.version,
        new_version=new.version,
        same_key=old.key_fingerprint == new.key_fingerprint,
        participants_added=tuple(sorted(set(new.participants) - set(old.participants))),
        participants_removed=tuple(sorted(set(old.participants) - set(new.participants))),
        sessions_added=tuple(sorted(s for s in new_sessions - old_sessions if "/" in s)),
        sessions_removed=tuple(sorted(s for s in old_sessions - new_sessions if "/" in s)),
        runs_added=tuple(sorted(new_runs - old_runs)),
        runs_removed=tuple(sorted(old_runs - new_runs)),
        runs_changed=tuple(changed),
        files_added=tuple(sorted(new_others - old_others)),
        files_removed=tuple(sorted(old_others - new_others)),
        files_changed=tuple(sorted(p for p in old_others & new_others if old_files[p] != new_files[p])),
    )


def changes_entry(changes: Changes) -> str:
    """The BIDS CHANGES entry of the new release (version line, then ``  - `` items)."""
    items = [f"Compared with release {changes.old_version}."]
    if not changes.same_key:
        items.append("Built with a different pseudonym key: participant labels do not carry over.")
    items += [f"Added participant {p}." for p in changes.participants_added]
    items += [f"Removed participant {p}." for p in changes.participants_removed]
    items += [f"Added session {s}." for s in changes.sessions_added]
    items += [f"Removed session {s}." for s in changes.sessions_removed]
    items += [f"Added run {r}." for r in changes.runs_added]
    items += [f"Removed run {r}." for r in changes.runs_removed]
    for change in changes.runs_changed:
        what = ", ".join(change.parts)
        if change.sidecar_keys:
            what += f" (sidecar keys: {', '.join(change.sidecar_keys)})"
        items.append(f"Changed run {change.run}: {what}.")
    if changes.identical:
        items.append("No run changed.")
    return changes.new_version + "\n" + "".join(f"  - {item}\n" for item in items)


def with_changes(
    config: ReleaseConfig, staged: list[bundle_stage.Staged], runs: Iterable[str]
) -> list[bundle_stage.Staged]:
    """``staged`` with its CHANGES replaced by this release's entry (against ``config.previous``)
    followed by the previous release's CHANGES (``build --previous``).

    Parameters
    ----------
    config : ReleaseConfig
        ``previous`` (the previous release's bundle), this release's version and key.
    staged : list of Staged
        The staged dataset, its CHANGES among them.
    runs : iterable of str
        This release's runs (relpaths without extension).

    Returns
    -------
    list of Staged

    Raises
    ------
    InputError
        The previous bundle is unreadable.
    """
    if config.previous is None:
        return staged
    old = read_bundle(Path(config.previous))
    new = staged_snapshot(config.dataset.version, deid_stage.key_fingerprint(config.key), staged, runs)
    text = changes_entry(compare(old, new, ignore=("CHANGES",))) + old.changes
    target = next(s for s in staged if s.relpath == "CHANGES")
    written = bundle_stage.stage_bytes(target.path.parent, "CHANGES", text.encode("utf-8"))
    return [written if s.relpath == "CHANGES" else s for s in staged]
