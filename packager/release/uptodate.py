"""Release, up to date: the same build again, with nothing changed, does nothing (as ``make``).

After a build that published its bundle and QC report without a failed series, the build cache
(``packager.cache``, kind ``builds``) keeps a *record*: the bundle's SHA-256 and size, the
summary's counts and the validator's counts. It is named by a digest of everything the build
read and of what it left:

- dcmpack's code, Python's and the output-shaping libraries' versions (``cache.environment()``),
  the shipped heuristics' files, every installed distribution's name and version, zlib's
  version, and the validator's identity (``reuse.validator_identity``);
- the whole config except how it runs (jobs, executor, cache folder, ``--force``), an HMAC of a
  fixed text under the pseudonym key (never the key, nor anything a pseudonym is made from), the
  subject map's bytes and the previous release's stat (``--previous``);
- every source file's path, device, inode, size, modification and change times
  (``cache.signature``), and each source's root and label;
- the bundle's and the report's paths and their stat: device, inode, size, modification and
  change times, as a build publishes them (regular files of this user's that others cannot
  write to).

A build whose inputs and outputs have exactly that digest returns the record (``BuildResult``
with ``plan`` None: nothing else is read, converted, audited or written). Anything else is a
new name: the build runs as usual, and reuses what it can (``convert.cached``, ``reuse``).
The stat stands for a file's bytes only where ``cache.stat_trusted`` says so, and only once
it is *settled*: sources changed less than ``cached.RACY_S`` before the build are read as
usual, and the bundle and report are recorded once their change time is ``SETTLED_S`` old (the
build waits for it). A rewrite of the bundle or the report, even with its old size and times put
back, moves its change time: the next build runs.

Not recorded, so always built as usual: remote sources (fetched anew every time), an archive or
a single file as SOURCE and archives inside a folder (extracted anew), a Python heuristic (it
may read anything: other modules, files), a build with a failed series (its messages are not
stored), a cache that cannot be written.
The record holds counts and digests, no value, name, label or path (docs/cache.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib.util
import json
import os
import sys
import time
import zipfile
import zlib
from pathlib import Path

from packager import cache as cache_service
from packager.cache import Store
from packager.config import ReleaseConfig
from packager.convert.cached import RACY_S
from packager.model import NIFTI, BuildResult, SourceSet
from packager.release.positions import as_positions, at_positions
from packager.release.staging import published_stat
from packager.sources import is_remote

KIND = "builds"
#: Bumped when what a record means changes (old records are then never read).
SCHEMA = 1
#: A published file is recorded once its last change is this old: any later write then gets a
#: later change time. Linux stamps a file with a clock that moves every tick (1-10 ms, finer with
#: multigrain timestamps).
SETTLED_S = 0.05
#: The same on file systems that keep whole seconds (change times without nanoseconds: ext2/3/4
#: with 128-byte inodes): a time is the second it began, so the next second must have started.
SETTLED_COARSE_S = 1.0
_MANIFEST = "MANIFEST.json"


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """This build's record name (None: it cannot be recorded, see the module doc)."""

    store: Store | None
    inputs: str | None
    target: Path
    report: Path

    def _name(self) -> tuple[str, int] | None:
        """The record's name for the bundle and report as they are now, and their latest change
        (ns); None when they are not as a build publishes them, or this build is not recorded."""
        if self.store is None or self.inputs is None:
            return None
        target, report = published_stat(self.target), published_stat(self.report)
        if target is None or report is None or not cache_service.stat_trusted(target.st_dev):
            return None
        facts = [
            [str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
            for path, info in ((self.target, target), (self.report, report))
        ]
        return _digest(self.inputs, facts), max(target.st_ctime_ns, report.st_ctime_ns)

    def result(self) -> BuildResult | None:
        """The recorded build when nothing changed since it (None otherwise)."""
        named = self._name()
        payload = self.store.get(KIND, named[0]) if self.store is not None and named is not None else None
        if payload is None:
            return None
        try:
            recorded = json.loads(payload)
            manifest = _manifest(self.target)  # pseudonymous paths stay in the bundle: the runs, the files
            runs = tuple(sorted(run["path"].removesuffix(NIFTI) for run in manifest["runs"]))
            files = at_positions(recorded["files"], [f["path"] for f in manifest["files"]])
            return BuildResult(
                bundle=self.target,
                sha256=str(recorded["sha256"]),
                size=int(recorded["size"]),
                plan=None,
                runs=runs,
                excluded=(),
                report=self.report,
                validator={**recorded["validator"], "files": files},
                unchanged=True,
                recorded=dict(recorded["counts"]),
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile):
            return None  # not what a build left: build as usual

    def remember(self, result: BuildResult) -> None:
        """Record ``result`` (a build that just published its bundle and report, holding the
        output folder's lock) once the two files are settled."""
        if self.store is None or self.inputs is None or result.exit_code or result.plan is None:
            return
        for _ in range(2):
            taken = time.time_ns()  # before the stat: a write after it is stamped later than this
            named = self._name()
            if named is None:
                return
            name, changed = named
            settled = SETTLED_S if changed % 1_000_000_000 else SETTLED_COARSE_S
            wait = settled - (taken - changed) / 1e9
            if wait <= 0:
                self._put(name, result)
                return
            if wait > settled:
                return  # the clock was set back: recorded by a later build, once settled
            time.sleep(wait)

    def _put(self, name: str, result: BuildResult) -> None:
        """Store the record. The files a validator issue names are kept as positions in
        MANIFEST.json's list (their paths are pseudonymous); not stored when one is not there."""
        if self.store is None:
            return
        try:
            paths = [f["path"] for f in _manifest(self.target)["files"]]
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
            return
        where = as_positions(result.validator.get("files", {}), paths)
        if where is None:
            return
        payload = {
            "sha256": result.sha256,
            "size": result.size,
            "counts": result.counts(),
            "validator": {k: v for k, v in result.validator.items() if k != "files"},
            "files": where,
        }
        self.store.put(KIND, name, json.dumps(payload, sort_keys=True).encode())


def _manifest(bundle: Path) -> dict:
    with zipfile.ZipFile(bundle) as archive:
        return json.loads(archive.read(_MANIFEST))


def record(config: ReleaseConfig, sets: list[SourceSet], staging_dir: Path, target: Path, report: Path) -> Record:
    """This build's ``Record`` (its inputs' digest: see the module doc).

    Parameters
    ----------
    config : ReleaseConfig
    sets : list of SourceSet
        The opened sources (``sources.open_source``).
    staging_dir : Path
        The build's private folder: files extracted there are new on every build.
    target, report : Path
        Where the bundle and the QC report are published.
    """
    store = Store(config.cache) if config.cache is not None else None
    return Record(store, _inputs(config, sets, staging_dir), target, report)


def recordable(config: ReleaseConfig) -> bool:
    """Whether a build with ``config`` may be recorded (a cache; no remote source, no archive or
    single file given as SOURCE, no Python heuristic): known before any source is opened."""
    if config.cache is None or config.heuristic.path is not None:
        return False
    return not any(is_remote(spec) or Path(spec).expanduser().is_file() for spec in config.sources)


def _inputs(config: ReleaseConfig, sets: list[SourceSet], staging_dir: Path) -> str | None:
    if not recordable(config):
        return None
    inside = os.path.join(str(staging_dir), "")
    paths = [str(f.path) for s in sets for f in s.files]
    if any(path.startswith(inside) for path in paths):
        return None
    try:
        files = cache_service.signature(paths)
        previous = cache_service.signature([config.previous]) if config.previous is not None else None
        subject_map = config.deid.subject_map.read_bytes() if config.deid.subject_map is not None else b""
    except OSError:
        return None
    if not files.trusted or not files.settled(RACY_S):
        return None
    if previous is not None and not (previous.trusted and previous.settled(RACY_S)):
        return None
    # imported here, not at the top: the API imports this module before the header pass starts
    from packager.release.reuse import validator_identity
    from packager.release.verify import find_validator

    how = dataclasses.replace(config, jobs=0, executor="", cache=None, force=False, new_key=False)
    command = find_validator()
    return _digest(
        SCHEMA,
        cache_service.environment(),
        _software(),
        validator_identity(command) if command is not None else None,
        repr(how),  # the key is not in it (``repr=False``)
        hmac.new(config.key, b"dcmpack build record", hashlib.sha256).hexdigest() if config.key else "",
        hashlib.sha256(subject_map).hexdigest(),
        previous.digest if previous is not None else None,
        [(str(s.root), s.label, s.not_fetched, [f.relpath for f in s.files]) for s in sets],
        files.digest,
    )


def _software() -> list:
    """What else shapes a build's bytes, beyond ``cache.environment()`` (dcmpack's own code and the
    libraries that shape images): the shipped heuristics' files (they name every run), every
    installed distribution's name and version (the BIDS schema, the PHI search's libraries, the
    pixel decoders: an install or upgrade of anything builds again), and zlib's version (the
    bundle's text members are deflated). A listing of names, not an import: ~1 ms."""
    heuristics = importlib.util.find_spec("heuristics")
    folders = list(heuristics.submodule_search_locations or ()) if heuristics is not None else []
    code = hashlib.sha256()
    for path in sorted(p for folder in folders for p in Path(folder).glob("*.py")):
        code.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    installed = []
    for entry in sys.path:
        try:
            installed += sorted(n for n in os.listdir(entry or ".") if n.endswith((".dist-info", ".egg-info")))
        except OSError:  # a zip or a missing folder on the path
            continue
    return [folders, code.hexdigest(), installed, zlib.ZLIB_RUNTIME_VERSION]


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
