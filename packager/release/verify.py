"""Release, verify: a bundle zip -> Report (checksums, manifest, allowlist, structure, bids-validator).

Checks: every member but SHA256SUMS is listed there with the right digest; MANIFEST.json lists
every dataset member with size and digest; one top folder holding dataset_description.json; no
member outside it but MANIFEST.json and SHA256SUMS; every sidecar JSON key is allowlisted;
every image whose suffix shows a head (``HEAD_SUFFIXES``) is listed in MANIFEST.json as
``defaced`` or ``exempt: <reason>``;
then, when ``bids-validator-deno`` is installed, the extracted dataset is validated (errors
fail verify; warnings are reported).

``build`` checks the bundle it has just written by reading it back once (``bundle.read_back``:
the file's SHA-256, and every member's CRC-32 against the one its entry records) instead of
hashing every image again: the SHA-256 digests it listed in SHA256SUMS were computed from the
same bytes as the images' CRC-32s, as each file was staged (or recorded with them by the build
cache, whose images are checked by size and CRC-32 as they are linked), so a byte changed on the
way into the zip is caught, and the images are read once, not twice. The small text members
(deflated: zipfile takes their CRC-32 as it zips them) are still hashed against SHA256SUMS. ``dcmpack verify`` (no
read-back given) recomputes every member's SHA-256, as a recipient's ``sha256sum -c`` would.

``build`` starts the validator on its staged dataset folder (``start_validation``) while it
audits the zip, and hands it to ``verify``: the build wrote the zip from those files and put
the digests it computed while staging them into SHA256SUMS, which verify checks against every
member; the folder is used when it holds exactly the zip's dataset members (names and sizes),
so the validator sees the bundle's bytes without a second copy on disk. Otherwise the dataset
is extracted as usual.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from packager.config import HEAD_SUFFIXES
from packager.errors import VerifyError
from packager.release.bundle import MANIFEST, SUMS, ReadBack
from packager.sidecar.allowlist import ALLOWLIST, is_denied

#: JSON files at dataset level that are not run sidecars (their keys are BIDS-defined).
_DATASET_JSON = ("dataset_description.json", "participants.json")


@dataclass(frozen=True, slots=True)
class Report:
    """What verify found; ``problems`` empty means the bundle is sound."""

    members: int
    problems: tuple[str, ...]
    validator_errors: int | None
    validator_warnings: int | None
    validator_codes: tuple[tuple[str, str, int], ...] = ()  # (severity, code, count)
    validator_version: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No problem and no validator error."""
        return not self.problems and not self.validator_errors


def _sha(archive: zipfile.ZipFile, name: str) -> str:
    """A member's SHA-256; "" (a mismatch) when it fails the zip's own CRC-32 or does not inflate."""
    try:
        with archive.open(name) as handle:
            # ZipFile.open gives a ZipExtFile (it has readinto); typeshed declares only IO[bytes]
            return hashlib.file_digest(handle, "sha256").hexdigest()  # type: ignore[arg-type]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError):  # incl. offsets past a cut-short file
        return ""


def _read(archive: zipfile.ZipFile, name: str) -> bytes:
    """A member's bytes; b"" when they fail the zip's own CRC-32 or do not inflate (the checksum
    check names the member; what is read here is then checked as empty: invalid JSON)."""
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError):  # incl. offsets past a cut-short file
        return b""


def _is_sidecar(relpath: str) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    if not name.endswith(".json") or relpath in _DATASET_JSON or relpath.startswith("prov/"):  # BIDS-Prov records
        return False
    return not name.endswith(("_scans.json", "_sessions.json"))


def find_validator() -> list[str] | None:
    """Command line for bids-validator-deno, or None when it is not installed."""
    import sys

    beside = Path(sys.executable).parent / "bids-validator-deno"  # same venv, not activated
    exe = str(beside) if beside.is_file() else shutil.which("bids-validator-deno")
    return [exe] if exe else None


@dataclass
class Validation:
    """bids-validator-deno running on a folder (``start_validation``); ``result()`` waits for it."""

    folder: Path
    process: subprocess.Popen
    finished: bool = False
    #: after ``result()``: the dataset files each issue code names, {code: (path, ...)} (for the report)
    files: dict = field(default_factory=dict)

    def result(self) -> tuple[int, int, tuple[tuple[str, str, int], ...], str]:
        try:
            stdout, _ = self.process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise VerifyError("bids-validator-deno did not finish within 600 s") from None
        self.finished = True
        parsed = _parse_validator(stdout, self.process.returncode)
        self.files = _issue_files(stdout)
        return parsed

    def cancel(self) -> None:
        """Stop it (no-op once finished); the build calls this on every way out."""
        if self.finished:
            return
        self.finished = True
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


def start_validation(dataset: Path) -> Validation:
    """Start bids-validator-deno on ``dataset`` in the background."""
    command = find_validator()
    if command is None:
        raise VerifyError("bids-validator-deno is not installed (pip install bids-validator-deno)")
    process = subprocess.Popen(
        [*command, "--format", "json", str(dataset)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    return Validation(Path(dataset), process)


def run_validator(dataset: Path) -> tuple[int, int, tuple[tuple[str, str, int], ...], str]:
    """(errors, warnings, (severity, code, count)..., version) from bids-validator-deno."""
    return start_validation(dataset).result()


def _parse_validator(stdout: str, returncode: int) -> tuple[int, int, tuple[tuple[str, str, int], ...], str]:
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        raise VerifyError(f"bids-validator-deno gave no JSON (exit {returncode})") from None
    issues = data.get("issues", {}).get("issues", [])
    counts: dict[tuple[str, str], int] = {}
    for issue in issues:
        key = (issue.get("severity", "?"), issue.get("code", "?"))
        counts[key] = counts.get(key, 0) + 1
    errors = sum(n for (sev, _), n in counts.items() if sev == "error")
    warnings = sum(n for (sev, _), n in counts.items() if sev == "warning")
    version = str(data.get("summary", {}).get("schemaVersion", ""))
    return errors, warnings, tuple(sorted((s, c, n) for (s, c), n in counts.items())), version


def _issue_files(stdout: str, limit: int = 20) -> dict[str, tuple[str, ...]]:
    """{issue code: the dataset files it names (sorted, at most ``limit``)}; BIDS paths only."""
    try:
        issues = json.loads(stdout).get("issues", {}).get("issues", [])
    except (json.JSONDecodeError, AttributeError):
        return {}
    files: dict[str, set[str]] = {}
    for issue in issues:
        location = issue.get("location")
        if isinstance(location, str) and location:
            files.setdefault(str(issue.get("code", "?")), set()).add(location)
    return {code: tuple(sorted(paths)[:limit]) for code, paths in sorted(files.items())}


def verify(
    bundle: Path, *, validate: bool = True, validation: Validation | None = None, checked: ReadBack | None = None
) -> Report:
    """Check a bundle; never raises for a bad bundle (see ``Report.problems``).

    Parameters
    ----------
    bundle : Path
        The zip written by ``build``.
    validate : bool
        Run bids-validator-deno on the extracted dataset (when installed).
    validation : Validation, optional
        The validator already running on the folder the bundle was made from (see module doc);
        its result is used when that folder holds exactly the bundle's dataset members.
    checked : ReadBack, optional
        The build's own read-back of the bundle it wrote (``bundle.read_back``): members are
        checked by the CRC-32 it compared instead of by their SHA-256 again (see module doc).

    Raises
    ------
    VerifyError
        The file is not a readable zip.
    """
    problems: list[str] = []
    try:
        archive = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError) as exc:
        raise VerifyError(f"verify: {bundle.name}: not a readable zip ({type(exc).__name__})") from None
    with archive:
        names = [i.filename for i in archive.infolist()]
        if len(set(names)) != len(names):
            problems.append("duplicate member names")
        if SUMS not in names or MANIFEST not in names:
            problems.append("MANIFEST.json or SHA256SUMS missing")
            return Report(len(names), tuple(problems), None, None)
        sums: dict[str, str] = {}
        for line in _read(archive, SUMS).decode(errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            sums[name] = digest
        listed_names = [name for name in names if name != SUMS and name in sums]
        mismatched = set(checked.damaged) if checked is not None else set()
        if checked is not None:
            # the images (stored) were checked by the read-back's CRC-32s; the small text members
            # are hashed: their CRC-32 was computed as they were zipped, not as they were staged
            stored = {i.filename for i in archive.infolist() if i.compress_type == zipfile.ZIP_STORED}
            listed_names = [name for name in listed_names if name not in stored]
        # Members are hashed on a few threads (hashlib and zlib release the GIL; ZipFile reads
        # of one archive are safe from several threads): a 4.6 GB bundle in half the time.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            found = dict(zip(listed_names, pool.map(lambda name: _sha(archive, name), listed_names), strict=True))
        mismatched |= {name for name in listed_names if found[name] != sums[name]}
        for name in names:
            if name == SUMS:
                if name in mismatched:
                    problems.append(f"{name}: damaged (CRC-32 mismatch)")
                continue
            if name not in sums:
                problems.append(f"{name}: not listed in SHA256SUMS")
            elif name in mismatched:
                problems.append(f"{name}: checksum mismatch")
        for name in sums:
            if name not in names:
                problems.append(f"{name}: listed in SHA256SUMS but missing")
        try:
            manifest = json.loads(_read(archive, MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError):
            problems.append("MANIFEST.json is not valid JSON")
            manifest = {}
        top = manifest.get("dataset", "")
        listed = {f"{top}/{f['path']}": f for f in manifest.get("files", [])}
        dataset_members = [n for n in names if n not in (SUMS, MANIFEST)]
        for name in dataset_members:
            if not name.startswith(f"{top}/"):
                problems.append(f"{name}: outside the dataset folder")
            elif name not in listed:
                problems.append(f"{name}: not listed in MANIFEST.json")
            elif listed[name].get("sha256") != sums.get(name):
                problems.append(f"{name}: MANIFEST digest differs from SHA256SUMS")
        for name in listed:
            if name not in names:
                problems.append(f"{name}: listed in MANIFEST.json but missing")
        problems += [
            f"{top}/{relpath}: a head image neither defaced nor exempted in MANIFEST.json"
            for relpath in _undefaced(manifest, [n[len(top) + 1 :] for n in dataset_members if n.startswith(f"{top}/")])
        ]
        if f"{top}/dataset_description.json" not in names:
            problems.append("dataset_description.json missing")
        for name in dataset_members:
            relpath = name[len(top) + 1 :]
            if not _is_sidecar(relpath):
                continue
            try:
                data = json.loads(_read(archive, name))
            except (json.JSONDecodeError, UnicodeDecodeError):
                problems.append(f"{name}: invalid JSON")
                continue
            for key in data:
                if key not in ALLOWLIST or is_denied(key):
                    problems.append(f"{name}: key {key!r} is not allowlisted")
        errors = warnings = None
        codes: tuple = ()
        version = ""
        if validation is not None and not (
            validate and not problems and top and _same_files(archive, top, validation.folder)
        ):
            validation.cancel()
            validation = None
        extra: dict = {}
        if validation is not None:
            errors, warnings, codes, version = validation.result()
            extra["files"] = validation.files
        elif validate and find_validator() is not None and top and not problems:
            # a bundle with a problem is rejected already (and a damaged member would not extract)
            with tempfile.TemporaryDirectory(prefix="dcmpack-verify-") as tmp:
                for info in archive.infolist():
                    if info.filename.startswith(f"{top}/"):
                        archive.extract(info, tmp)
                errors, warnings, codes, version = run_validator(Path(tmp) / top)
    return Report(len(names), tuple(problems), errors, warnings, codes, version, extra)


def _same_files(archive: zipfile.ZipFile, top: str, folder: Path) -> bool:
    """``folder`` holds exactly the zip's members under ``top/``, with the same sizes.

    Their bytes need no second reading: the build wrote the zip from these files and listed
    the digests computed as it staged them in SHA256SUMS, which verify has just checked
    against every member of the zip (see module doc).
    """
    members = {
        info.filename[len(top) + 1 :]: info.file_size
        for info in archive.infolist()
        if info.filename.startswith(f"{top}/") and not info.is_dir()
    }
    found = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
    if set(found) != set(members):
        return False
    return all(not path.is_symlink() and path.stat().st_size == members[relpath] for relpath, path in found.items())


def _undefaced(manifest: dict, relpaths: list[str]) -> list[str]:
    """The head images (by suffix) that MANIFEST.json does not mark ``defaced`` or ``exempt: <reason>``."""
    runs = {run.get("path"): run for run in manifest.get("runs", []) if isinstance(run, dict)}
    problems = []
    for relpath in relpaths:
        name = relpath.rsplit("/", 1)[-1]
        stem = name.removesuffix(".gz").removesuffix(".nii")
        if stem == name or stem.rsplit("_", 1)[-1] not in HEAD_SUFFIXES:
            continue
        status = (runs.get(relpath) or {}).get("deface")
        exempt = isinstance(status, str) and status.startswith("exempt: ") and status[len("exempt: ") :].strip()
        if status != "defaced" and not exempt:
            problems.append(relpath)
    return problems
