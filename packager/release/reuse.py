"""Release, reused: the audit's verdicts and the BIDS validator's results through the build cache.

A no-change rebuild would otherwise audit and validate bytes that were audited and validated
before. Both checks are pure functions of what they read, so their outcomes are stored in the
build cache (``packager.cache``, kind ``verdicts``) under a digest of everything they depend on:

- **audit** (``Verdicts``): a member's content was found clean (no hit, no structural finding)
  by a search for exactly these terms. The entry is named by the SHA-256 of: the member's name
  and the SHA-256 of its bytes (as SHA256SUMS lists them), a fingerprint of the search (every
  PHI value searched for and every term the matcher kept after the reviewed exceptions), and
  ``cache.environment()`` (dcmpack's code). A changed byte, a renamed member, one more PHI
  value in the sources (a new session), an edited ``[audit] accept`` or ``allow_free_text`` or
  a new dcmpack makes a new name: the member is searched again. Only the content searches are
  skipped; the member's name, timestamp, extra field and comment are checked on every build.
  The digests come from SHA256SUMS, computed from each member's bytes as it was staged (or
  recorded with them by the build cache), and the build then reads every member back against
  the CRC-32 taken from the same bytes (``bundle.read_back``, checked by ``verify``): a member
  changed on its way into the zip fails the build (nothing is published).
  Verdicts are stored only after an audit without any hit, and hold no value (the payload is
  the word ``clean``).
- **validator** (``validation``): bids-validator-deno's counts and issue codes for a dataset
  tree, named by the SHA-256 of every file's path, size and SHA-256 (the staged digests), the
  versions of the validator and of Deno, its executable, and ``cache.environment()``. The
  files an issue names are stored as positions in the sorted list of the tree's paths, so the
  entry holds no pseudonymous path (a result naming anything else is not stored). ``verify``
  still checks that the staged tree is exactly the bundle's members before it uses the result.

- **bundles** (``Published``): the SHA-256 and size of the zip a build published, named by a
  digest of everything the zip's bytes are made of: its top folder, each member's name, size,
  SHA-256 and CRC-32 (as staged), MANIFEST.json's bytes, zlib's version (the text members are
  deflated) and ``cache.environment()`` (the zip writer is dcmpack's code). A rebuild into a
  folder whose bundle is exactly the zip it would write (same name, size and SHA-256, read in
  full) leaves that file in place instead of writing an identical one, reading it back and
  replacing it: it is audited and verified where it is, the QC report is written as always
  (``api.build``). Anything else (another member, another key's CHANGES, a file someone edited)
  is a new name or a different digest: the zip is written.

Used by ``build`` only (``dcmpack audit`` and ``dcmpack verify`` always search and validate).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from packager import cache as cache_service
from packager.cache import Store
from packager.phi import Matcher, PhiValue
from packager.release import verify as verify_stage
from packager.release.bundle import SUMS, ReadBack, Staged, file_sha256
from packager.release.positions import as_positions, at_positions
from packager.release.staging import published_stat

KIND = "verdicts"
BUNDLES = "bundles"
#: Bumped when what an entry means changes (old entries are then never read).
SCHEMA = 1
_CLEAN = b"clean"


def _name(*parts: object) -> str:
    return hashlib.sha256(json.dumps([SCHEMA, cache_service.environment(), *parts]).encode()).hexdigest()


def search_fingerprint(values: Iterable[PhiValue], matcher: Matcher) -> str:
    """SHA-256 of what an audit searches for: the PHI values and the terms ``matcher`` kept
    (the reviewed exceptions left out), both sorted."""
    digest = hashlib.sha256()
    for value in sorted(values):
        digest.update("\0".join(value).encode() + b"\1")
    digest.update(b"\2")
    for term in sorted(matcher.owner):
        digest.update(term.encode() + b"\1")
    return digest.hexdigest()


@dataclass
class Verdicts:
    """The audit's clean verdicts for one build (see the module doc)."""

    store: Store
    #: member -> entry name, for the members of the bundle being audited
    names: dict[str, str] = field(default_factory=dict)
    known: frozenset[str] = frozenset()

    def clean_before(self, sums: bytes, values: Iterable[PhiValue], matcher: Matcher) -> frozenset[str]:
        """The members (listed in ``sums``, the bundle's SHA256SUMS) whose content an earlier
        audit with the same search found clean; remembers the rest for ``remember``."""
        search = search_fingerprint(values, matcher)
        self.names = {}
        for line in sums.decode("utf-8", "replace").splitlines():
            digest, _, member = line.partition("  ")
            if len(digest) == 64 and member and member != SUMS:
                self.names[member] = _name("audit", search, member, digest)
        self.known = frozenset(m for m, key in self.names.items() if self.store.get(KIND, key) == _CLEAN)
        return self.known

    def remember(self) -> None:
        """Store a clean verdict for every listed member (call after an audit without any hit)."""
        for member, key in self.names.items():
            if member not in self.known:
                self.store.put(KIND, key, _CLEAN)


def verdicts(cache: Path | None) -> Verdicts | None:
    """The build's ``Verdicts`` (None without a cache)."""
    return None if cache is None else Verdicts(Store(cache))


@dataclass(frozen=True, slots=True)
class Published:
    """The zip a build would write, named by its makings (``bundle_name``), and what the cache
    remembers of the last one published under that name (see the module doc)."""

    store: Store | None
    name: str

    def unchanged(self, target: Path) -> ReadBack | None:
        """``target``'s read-back (its digest; every member as it was checked when it was written)
        when it is byte for byte the zip this build would write, as a build publishes it (a
        regular file of this user's that others cannot write to); None otherwise (it is read
        only when its size is the one remembered)."""
        payload = self.store.get(BUNDLES, self.name) if self.store is not None else None
        if payload is None:
            return None
        remembered = json.loads(payload)
        before = _identity(target)
        if before is None or before[1] != remembered["size"]:
            return None
        try:
            digest = file_sha256(target)
        except OSError:
            return None
        if _identity(target) != before or digest != remembered["sha256"]:
            return None  # changed while it was read, or other bytes
        return ReadBack(digest, before[1], ())

    def remember(self, sha256: str, size: int) -> None:
        """Record the zip just published under this name (after the build succeeded)."""
        if self.store is not None:
            self.store.put(BUNDLES, self.name, json.dumps({"sha256": sha256, "size": size}).encode())


def _identity(path: Path) -> tuple | None:
    """((inode, modification and change times), size) of a bundle as a build publishes it."""
    info = published_stat(path)
    return None if info is None else ((info.st_ino, info.st_mtime_ns, info.st_ctime_ns), info.st_size)


def published(cache: Path | None, top: str, staged: list[Staged], manifest: bytes) -> Published:
    """The ``Published`` record of the zip ``write_bundle(…, top, staged, manifest)`` would write."""
    members = sorted((s.relpath, s.size, s.sha256, s.crc32) for s in staged)
    name = _name("bundle", top, members, hashlib.sha256(manifest).hexdigest(), zlib.ZLIB_RUNTIME_VERSION)
    return Published(None if cache is None else Store(cache), name)


def validator_identity(command: list[str]) -> list:
    """The validator's package version (its schema comes with it), the Deno runtime's, and its
    launcher (path, size, modification time)."""
    from importlib.metadata import PackageNotFoundError, version

    installed = []
    for name in ("bids-validator-deno", "deno"):
        try:
            installed.append(version(name))
        except PackageNotFoundError:
            installed.append("")
    info = os.stat(command[0])
    return [*installed, command[0], info.st_size, info.st_mtime_ns]


class Remembered(verify_stage.Validation):
    """A validator result read from the cache, in place of a running validator."""

    def __init__(self, folder: Path, outcome: tuple, files: dict):
        self.folder = folder
        self.finished = True
        self.files = files
        self._outcome = outcome

    def result(self) -> tuple[int, int, tuple[tuple[str, str, int], ...], str]:
        return self._outcome

    def cancel(self) -> None:
        """Nothing runs."""


@dataclass
class _Storing(verify_stage.Validation):
    """A running validator whose result is stored when it is read."""

    store: Store | None = None
    key: str = ""
    paths: tuple[str, ...] = ()

    def result(self) -> tuple[int, int, tuple[tuple[str, str, int], ...], str]:
        outcome = super().result()
        files = as_positions(self.files, self.paths)  # the validator writes "/sub-.../x.json"
        if self.store is not None and files is not None:
            payload = {"outcome": [outcome[0], outcome[1], [list(c) for c in outcome[2]], outcome[3]], "files": files}
            self.store.put(KIND, self.key, json.dumps(payload).encode())
        return outcome


def _remembered(folder: Path, payload: bytes, paths: tuple[str, ...]) -> Remembered | None:
    try:
        data = json.loads(payload)
        errors, warnings, codes, version = data["outcome"]
        files = {code: tuple(named) for code, named in at_positions(data["files"], paths).items()}
        outcome = (int(errors), int(warnings), tuple((str(s), str(c), int(n)) for s, c, n in codes), str(version))
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return Remembered(folder, outcome, files)


@contextmanager
def validation(
    dataset_dir: Path, staged: Iterable[Staged], cache: Path | None
) -> Iterator[verify_stage.Validation | None]:
    """``review.validation`` through the build cache: the stored result when this exact tree was
    validated before by this validator, else bids-validator-deno started on ``dataset_dir`` (its
    result stored when read). None when the validator is not installed.

    Parameters
    ----------
    dataset_dir : Path
        The staged dataset.
    staged : iterable of Staged
        Its files, with the digests taken as they were staged.
    cache : Path, optional
        The build cache folder.
    """
    command = verify_stage.find_validator()
    if command is None:
        yield None
        return
    store = Store(cache) if cache is not None else None
    files = sorted((s.relpath, s.size, s.sha256) for s in staged)
    paths = tuple(relpath for relpath, _, _ in files)
    key = _name("validator", validator_identity(command), files) if store is not None else ""
    payload = store.get(KIND, key) if store is not None else None
    remembered = _remembered(dataset_dir, payload, paths) if payload is not None else None
    if remembered is not None:
        yield remembered
        return
    started = verify_stage.start_validation(dataset_dir)
    running = _Storing(started.folder, started.process, store=store, key=key, paths=paths)
    try:
        yield running
    finally:
        running.cancel()
