"""The build cache (packager/cache, convert/cached.py, index/reuse.py; docs/cache.md).

A bundle built through the cache, cold or warm, with one or two workers, is byte-identical to
a clean build; each part of a task's key invalidates exactly the tasks it affects (counted as
new entries in the store); two builds sharing a cache do not corrupt it; a damaged entry or
image blob is detected and rebuilt; the cache holds neither the key nor a pseudonym. A
no-change rebuild reuses the audit's verdicts and the validator's result (release/reuse.py);
a new PHI term or a changed member is searched again, and a changed tree validated again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import corpus_builds
import pytest
from conftest import REPO, TEST_KEY, run_cli

from packager import api, executors
from packager import cache as cache_service
from packager.cache.store import MAGIC, Store
from packager.config import load_config, merge_flags
from packager.convert import cached
from packager.convert import task as task_stage
from packager.errors import ConfigError
from packager.phi import PhiValue
from packager.release import audit as audit_stage
from packager.release import reuse
from packager.release import verify as verify_stage
from packager.release.bundle import stage_bytes, write_bundle

SAMPLE = REPO / "sample_data"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _entries(cache: Path, kind: str = "tasks") -> set[str]:
    return {p.name for p in (cache / kind).rglob("*") if p.is_file()}


def _files_hashed(monkeypatch) -> list[str]:
    """The paths of the files hashed from now on (in this process), in order."""
    read: list[str] = []
    real = cached.hashlib.file_digest

    def counted(handle, name):
        read.append(handle.name)
        return real(handle, name)

    monkeypatch.setattr(cached.hashlib, "file_digest", counted)
    return read


def _build(source: Path, out: Path, cache: Path | None, jobs: int = 1, **flags):
    config = merge_flags(
        load_config(SAMPLE / "release.toml"), sources=(str(source),), output=out, cache=cache, jobs=jobs, **flags
    )
    return api.build(config)


@pytest.fixture(scope="module")
def sample_copy(tmp_path_factory) -> Path:
    """The sample's DICOM folder, copied (a test changes a file in its own copy of this)."""
    target = tmp_path_factory.mktemp("cache-sample") / "dicom"
    shutil.copytree(SAMPLE / "dicom", target)
    return target


@pytest.fixture(scope="module")
def warm(tmp_path_factory, sample_copy):
    """A cache filled by one cold build of the sample copy (two workers), and that build. Tests add
    entries to it; ``pristine`` beside it is a copy of what the cold build alone stored."""
    root = tmp_path_factory.mktemp("cache-warm")
    cache = root / "cache"
    result = _build(sample_copy, root / "cold", cache, jobs=2)
    shutil.copytree(cache, root / "pristine")
    return cache, result


def test_cold_and_warm_builds_are_byte_identical_to_a_clean_build(warm, sample_copy, sample_build, tmp_path):
    cache, cold = warm
    assert cold.exit_code == 0
    assert cold.sha256 == _sha(sample_build["bundle"])  # the clean build: `dcmpack build`, no cache
    assert len(_entries(cache)) == len(cold.runs) and _entries(cache, "headers")
    assert (cache.stat().st_mode & 0o777) == 0o700

    # the input digests and the build's record are kept only once the sources are 2 s old
    # (``cached.RACY_S``): the warm build may add those, nothing else
    def stored() -> set[Path]:
        return {p for p in cache.rglob("*") if p.is_file() and not {"inputs", "builds"} & set(p.parts)}

    before = stored()
    warm_result = _build(sample_copy, tmp_path / "warm", cache, jobs=1)
    assert warm_result.sha256 == cold.sha256
    assert stored() == before  # every task a hit


def test_the_cache_holds_no_key_and_no_pseudonym(warm):
    cache, cold = warm
    labels = {part.split("/")[0].removeprefix("sub-") for part in cold.runs}
    assert labels
    secrets = [(SAMPLE / "sample.key").read_bytes().strip(), *(label.encode() for label in labels)]
    for path in cache.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret in data for secret in secrets), path.relative_to(cache)


def test_each_key_part_invalidates_exactly_what_it_affects(warm, sample_copy, tmp_path, monkeypatch):
    cache, cold = warm
    tasks = _entries(cache)

    # the key and a config part the task does not read: every task reused, same bytes as clean
    other_key = tmp_path / "other.key"
    other_key.write_text(TEST_KEY)
    other_key.chmod(0o600)
    renamed = merge_flags(
        load_config(SAMPLE / "release.toml"), sources=(str(sample_copy),), key_file=str(other_key), jobs=1
    )
    renamed = dataclasses.replace(renamed, dataset=dataclasses.replace(renamed.dataset, name="renamed"))
    with_cache = api.build(dataclasses.replace(renamed, output=tmp_path / "key", cache=cache))
    clean = api.build(dataclasses.replace(renamed, output=tmp_path / "key-clean", cache=None))
    assert with_cache.sha256 == clean.sha256 != cold.sha256
    assert _entries(cache) == tasks

    # a heuristic that renames the T1w runs only: exactly those are converted again
    heuristic = tmp_path / "t1_acq.py"
    heuristic.write_text(
        "import dataclasses, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('base', {str(REPO / 'heuristics' / 'reproin.py')!r})\n"
        "base = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(base)\n"
        "def classify(series):\n"
        "    name = base.classify(series)\n"
        "    if getattr(name, 'suffix', None) == 'T1w':\n"
        "        return dataclasses.replace(name, entities=(*name.entities, ('acq', 'mprage')))\n"
        "    return name\n"
    )
    result = _build(sample_copy, tmp_path / "heuristic", cache, heuristic=str(heuristic))
    t1w = [run for run in result.runs if run.endswith("_T1w")]
    assert len(t1w) == 3 and all("_acq-mprage_" in run for run in t1w)
    assert len(_entries(cache) - tasks) == len(t1w)
    tasks = _entries(cache)

    # the engine (a config part the task reads): every task again
    _build(sample_copy, tmp_path / "engine", cache, engine="dcm2niix")
    assert len(_entries(cache) - tasks) == len(cold.runs)
    tasks = _entries(cache)

    # a library version string: every task and every header run again
    headers = _entries(cache, "headers")
    versions = executors.versions()
    monkeypatch.setattr(executors, "versions", lambda: {**versions, "numpy": versions["numpy"] + ".post1"})
    cache_service.environment.cache_clear()
    try:
        _build(sample_copy, tmp_path / "library", cache)
    finally:
        cache_service.environment.cache_clear()
    assert len(_entries(cache) - tasks) == len(cold.runs)
    assert len(_entries(cache, "headers") - headers) == len(headers)


def test_changed_file_bytes_reconvert_that_series_only(warm, sample_copy, tmp_path):
    cache, cold = warm
    source = tmp_path / "dicom"
    shutil.copytree(sample_copy, source)
    first = sorted((source / "ZZPHIDOE_JANE_20240619" / "05_func-bold_task-rest").iterdir())[0]
    data = bytearray(first.read_bytes())
    data[-2] ^= 0x01  # one pixel's low bit: same header, different voxels
    first.write_bytes(bytes(data))
    tasks = _entries(cache)
    result = _build(source, tmp_path / "changed", cache)
    assert len(_entries(cache) - tasks) == 1
    # rewritten with the same bytes (a new modification time): its folder's headers are read
    # again (one new header entry), its series is not converted again (same content)
    first.write_bytes(first.read_bytes())
    tasks, headers = _entries(cache), _entries(cache, "headers")
    assert _build(source, tmp_path / "touched", cache).sha256 == result.sha256
    assert _entries(cache) == tasks and len(_entries(cache, "headers") - headers) == 1
    clean = _build(source, tmp_path / "clean", None)
    assert result.sha256 == clean.sha256 != cold.sha256


def test_input_digests_are_remembered_by_stat_and_a_rewrite_is_read_again(sample_copy, tmp_path, monkeypatch):
    """Files unchanged since their digest was taken (same path, device, inode, size, modification
    and change times) are not read again for the conversion key; a file rewritten in place with
    its old size and modification time (only its change time moves) is; files that changed less
    than ``RACY_S`` before the digest was taken are not remembered at all."""
    source = tmp_path / "dicom"
    shutil.copytree(sample_copy, source)
    cache = tmp_path / "cache"
    monkeypatch.setattr(cached, "RACY_S", 3600.0)  # every file changed "just now": hashed, not remembered
    cold = _build(source, tmp_path / "cold", cache)
    assert cold.exit_code == 0 and not _entries(cache, "inputs")

    monkeypatch.setattr(cached, "RACY_S", 0.0)
    first = _build(source, tmp_path / "first", cache)
    assert first.sha256 == cold.sha256 and len(_entries(cache, "inputs")) == len(cold.runs)

    read = _files_hashed(monkeypatch)
    again = _build(source, tmp_path / "again", cache)
    # every series' key from the remembered digests: no source file hashed
    assert again.sha256 == cold.sha256 and not [name for name in read if str(name).startswith(str(source))]

    victim = sorted((source / "ZZPHIDOE_JANE_20240619" / "05_func-bold_task-rest").iterdir())[0]
    info = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-2] ^= 0x01  # one pixel's low bit: same size
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))  # the old modification time put back
    assert victim.stat().st_size == info.st_size and victim.stat().st_mtime_ns == info.st_mtime_ns
    tasks, headers = _entries(cache), _entries(cache, "headers")
    changed = _build(source, tmp_path / "changed", cache)
    assert str(victim) in read and len(_entries(cache) - tasks) == 1  # its series read and converted again
    assert len(_entries(cache, "headers") - headers) == 1  # and its run of headers read again
    assert changed.sha256 == _build(source, tmp_path / "clean", None).sha256 != cold.sha256


def test_files_on_file_systems_whose_stat_is_not_trusted_are_read_every_time(sample_copy, tmp_path, monkeypatch):
    """Sources on FUSE, network file systems or disc images (``cache.stat_trusted``: their change
    times or inode numbers do not stand for the content) are hashed and their headers read on
    every build; nothing is remembered under their stat."""
    source = tmp_path / "dicom"
    shutil.copytree(sample_copy, source)
    device = source.stat().st_dev
    assert cache_service.stat_trusted(device)  # the test machine's local file system
    systems = {**cache_service._file_systems(), device: "fuse.sshfs"}
    monkeypatch.setattr(cache_service, "_file_systems", lambda: systems)
    monkeypatch.setattr(cached, "RACY_S", 0.0)
    cache = tmp_path / "cache"
    first = _build(source, tmp_path / "first", cache)
    assert not _entries(cache, "inputs") and not _entries(cache, "headers") and _entries(cache)
    read = _files_hashed(monkeypatch)
    again = _build(source, tmp_path / "again", cache)
    assert again.sha256 == first.sha256
    converted = {str(path) for planned in again.plan.planned for path in planned.series.files}
    assert converted and {str(name) for name in read if str(name).startswith(str(source))} == converted


def test_a_rebuild_into_a_folder_holding_the_same_zip_leaves_it_in_place(warm, sample_copy, tmp_path):
    """The same command again (same output folder, --force) after the report was touched (so the
    build runs, ``test_uptodate``): the bundle there is byte for byte the one this build would
    write, so it is audited and verified where it is and left untouched (same inode and
    modification time); the report is written again. A bundle someone changed there (one
    byte, same size) is replaced by a new one equal to the clean build."""
    cache = tmp_path / "cache"
    shutil.copytree(warm[0].parent / "pristine", cache)
    out = tmp_path / "out"
    first = _build(sample_copy, out, cache)
    assert first.sha256 == warm[1].sha256 and _entries(cache, "bundles")
    before = first.bundle.stat()
    os.utime(first.report)  # not as the build left it: not up to date (release.uptodate), built again
    report = first.report.stat().st_mtime_ns
    time.sleep(0.01)
    again = _build(sample_copy, out, cache, force=True)
    after = again.bundle.stat()
    assert again.sha256 == first.sha256 and again.size == before.st_size and again.unchanged and not first.unchanged
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # left where it was
    assert again.report.stat().st_mtime_ns != report and again.validator == first.validator

    data = bytearray(first.bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    first.bundle.write_bytes(bytes(data))
    replaced = _build(sample_copy, out, cache, force=True)
    assert replaced.sha256 == warm[1].sha256 == _sha(replaced.bundle)
    assert replaced.bundle.stat().st_ino != before.st_ino  # written anew

    # the same bytes, but not as a build publishes them: others may write it, or a link to a copy
    replaced.bundle.chmod(0o666)
    assert _build(sample_copy, out, cache, force=True).bundle.stat().st_mode & 0o777 == 0o644
    elsewhere = tmp_path / "elsewhere.zip"
    shutil.copyfile(replaced.bundle, elsewhere)
    replaced.bundle.unlink()
    replaced.bundle.symlink_to(elsewhere)
    relinked = _build(sample_copy, out, cache, force=True)
    assert not relinked.bundle.is_symlink() and relinked.sha256 == warm[1].sha256


def test_two_builds_sharing_a_cache_do_not_corrupt_it(sample_build, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "packager", "build", "-o", str(tmp_path / name), "--cache", str(cache), "-q"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    expected = _sha(sample_build["bundle"])
    assert [_sha(tmp_path / name / "dcmpack-sample-1.0.0.zip") for name in ("one", "two")] == [expected] * 2
    store = Store(cache, create=False)
    kinds = [kind for kind, _, _ in store.entries()]
    assert (
        kinds.count("tasks") == 15 and kinds.count("headers") > 0 and kinds.count("blobs") > 0
    )  # identical files share one
    assert all(store.get(kind, path.name) is not None for kind, path, _ in store.entries() if kind != "blobs")
    assert all(_sha(path) == path.name for kind, path, _ in store.entries() if kind == "blobs")
    assert not list((cache / "tmp").iterdir())  # no half-written entry left behind


def test_the_default_cache_is_private_under_the_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DCMPACK_CACHE", "")
    root = cache_service.cache_dir(None, False)
    assert root == tmp_path / "xdg" / "dcmpack"
    Store(root)
    assert (root.stat().st_mode & 0o777) == 0o700
    assert cache_service.cache_dir(None, True) is None
    monkeypatch.setenv("DCMPACK_CACHE", "off")
    assert cache_service.cache_dir(None, False) is None
    assert cache_service.cache_dir(tmp_path / "mine", False) == tmp_path / "mine"


def test_a_damaged_entry_is_detected_and_rebuilt(warm, sample_copy, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(warm[0].parent / "pristine", cache)  # every entry is one this build reads
    task = sorted(p for p in (cache / "tasks").rglob("*") if p.is_file())[-1]
    task.write_bytes(task.read_bytes()[:-100])  # a truncated write
    header = next(p for p in sorted((cache / "headers").rglob("*")) if p.is_file())
    data = bytearray(header.read_bytes())
    data[len(MAGIC) + 70] ^= 0xFF  # a flipped bit in the payload
    header.write_bytes(bytes(data))
    again = run_cli(
        "build",
        str(sample_copy),
        "-c",
        str(SAMPLE / "release.toml"),
        "--cache",
        str(cache),
        "-o",
        str(tmp_path / "again"),
        "-j",
        "1",
        "-v",
    )
    assert again.returncode == 0, again.stderr
    assert "cache: a damaged tasks entry was removed" in again.stderr
    assert "cache: a damaged headers entry was removed" in again.stderr
    assert _sha(tmp_path / "again" / "dcmpack-sample-1.0.0.zip") == warm[1].sha256
    store = Store(cache, create=False)
    assert store.get("tasks", task.name) is not None and store.get("headers", header.name) is not None


def test_corpus_dataset_cold_and_warm_match_a_clean_build(corpus, key_file, tmp_path_factory, tmp_path):
    clean = corpus_builds.build("dcm_qa_xa30", corpus, key_file, tmp_path_factory).result
    config = merge_flags(
        load_config(corpus_builds.RULES / "dcm_qa_xa30.toml"),
        sources=(str(corpus / "dcm_qa_xa30" / "In"),),
        key_file=str(key_file),
        cache=tmp_path / "cache",
    )
    cold = api.build(dataclasses.replace(config, output=tmp_path / "cold", jobs=2))
    warm = api.build(dataclasses.replace(config, output=tmp_path / "warm", jobs=1))
    assert cold.sha256 == warm.sha256 == clean.sha256
    assert len(_entries(tmp_path / "cache")) == len(clean.runs)


def _store_with(tmp_path: Path, count: int) -> Store:
    store = Store(tmp_path / "cache")
    for n in range(count):
        store.put("tasks", hashlib.sha256(str(n).encode()).hexdigest(), bytes(1000))
    return store


def test_a_cache_that_cannot_be_written_only_logs(tmp_path, monkeypatch, caplog):
    """A read-only cache folder (EROFS on every write, even removing a temporary file that was
    never made): the entry is not stored, a warning is logged, nothing is raised."""
    store = Store(tmp_path / "cache")

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setattr(Path, "unlink", refuse)
    with caplog.at_level("WARNING", logger="packager.cache.store"):
        store.put("tasks", hashlib.sha256(b"x").hexdigest(), b"payload")
    assert "cache: entry not stored (OSError)" in caplog.text
    monkeypatch.undo()
    assert store.get("tasks", hashlib.sha256(b"x").hexdigest()) is None


def test_prune_by_age_and_size_and_clear(tmp_path):
    store = _store_with(tmp_path, 6)
    paths = sorted(path for _, path, _ in store.entries())
    old = time.time() - 3 * 86400
    for path in paths[:2]:
        os.utime(path, (old, old))
    root = str(tmp_path / "cache")
    pruned = run_cli("cache", "prune", "--older-than", "2", "--cache", root)
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 2 entries" in pruned.stderr
    assert sorted(path for _, path, _ in store.entries()) == paths[2:]
    entry = paths[2].stat().st_size
    assert run_cli("cache", "prune", "--max-size", str(2 * entry), "--cache", root).returncode == 0
    assert store.usage().total_entries == 2
    cleared = run_cli("cache", "clear", "--cache", root)
    assert cleared.returncode == 0 and "removed 2 entries" in cleared.stderr
    assert store.usage().total_entries == 0


def test_bad_sizes_and_open_cache_folders_are_refused(tmp_path, sample_copy):
    bad = run_cli("cache", "prune", "--max-size", "lots", "--cache", str(tmp_path))
    assert bad.returncode == 2 and 'error: --max-size: "lots" is not a size' in bad.stderr
    assert cache_service.parse_size("1.5G") == 3 << 29 and cache_service.parse_size("500m") == 500 << 20
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(ConfigError, match="other users can open it"):
        _build(sample_copy, tmp_path / "out", shared)
    refused = run_cli("cache", "clear", "--cache", str(shared))
    assert refused.returncode == 2 and "other users can open it" in refused.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.zip"))


def test_a_damaged_image_blob_is_detected_and_rebuilt(warm, sample_copy, tmp_path, caplog):
    cache = tmp_path / "cache"
    shutil.copytree(warm[0].parent / "pristine", cache)
    blob = max((p for p in (cache / "blobs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the image's gzip stream
    blob.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="packager.cache.store"):
        result = _build(sample_copy, tmp_path / "again", cache)
    assert "a damaged blobs entry was removed" in caplog.text
    assert result.sha256 == warm[1].sha256  # converted again, same bytes as the clean build
    assert _sha(blob) == blob.name  # stored again, whole


def test_a_no_change_rebuild_reuses_audit_verdicts_and_the_validator_result(warm, sample_copy, tmp_path, monkeypatch):
    """The cold build stored a clean verdict per member and the validator's result for its
    tree: a warm build searches no member's content again (only SHA256SUMS, which lists the
    digests) and starts no validator, and reports the same validator counts. A change of the
    tree (another dataset name: dataset_description.json and the top folder change) validates
    and searches again."""
    cache = tmp_path / "cache"
    shutil.copytree(warm[0].parent / "pristine", cache)
    searched: list[str] = []
    started: list[Path] = []
    for name in ("_audit_nifti", "_audit_stream"):
        real = getattr(audit_stage, name)
        monkeypatch.setattr(
            audit_stage,
            name,
            lambda a, member, *rest, _real=real: (searched.append(member), _real(a, member, *rest))[1],
        )
    real_start = verify_stage.start_validation
    monkeypatch.setattr(
        verify_stage, "start_validation", lambda folder: (started.append(folder), real_start(folder))[1]
    )
    again = _build(sample_copy, tmp_path / "warm", cache)
    assert again.sha256 == warm[1].sha256
    assert searched == ["SHA256SUMS"] and started == []
    assert again.validator["errors"] == 0 and again.validator == warm[1].validator

    config = merge_flags(load_config(SAMPLE / "release.toml"), sources=(str(sample_copy),), jobs=1)
    renamed = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset, name="renamed"))
    moved = api.build(dataclasses.replace(renamed, output=tmp_path / "renamed", cache=cache))
    assert len(started) == 1 and len(searched) > len(again.runs)
    clean = api.build(dataclasses.replace(renamed, output=tmp_path / "renamed-clean", cache=None))
    assert moved.sha256 == clean.sha256 and moved.validator == clean.validator


def _bundle_with(folder: Path, text: bytes) -> Path:
    staged = [
        stage_bytes(folder / "staging", "dataset_description.json", b'{"Name": "study"}\n'),
        stage_bytes(folder / "staging", "README.md", b"A study. " + text + b"\n"),
    ]
    write_bundle(folder / "bundle.zip", "study", staged, b'{"dataset": "study"}\n')
    return folder / "bundle.zip"


def test_audit_verdicts_are_invalidated_by_a_new_term_or_a_changed_byte(tmp_path, monkeypatch):
    """A verdict says "this member's bytes, searched for these terms, were clean": a new PHI
    value in the sources (a new session's patient) or a changed member is searched again, and
    a hit is found, never skipped."""
    store = Store(tmp_path / "cache")
    searched: list[str] = []
    real = audit_stage._audit_stream
    monkeypatch.setattr(
        audit_stage, "_audit_stream", lambda a, member, *rest: (searched.append(member), real(a, member, *rest))[1]
    )
    old = {PhiValue("name", "PatientName", "Zzphidoe^Jane")}
    bundle = _bundle_with(tmp_path / "one", b"Scanned by Grace Kowalczyk.")
    assert audit_stage.audit_bundle(bundle, old, verdicts=reuse.Verdicts(store)).clean
    assert len(searched) == 4  # MANIFEST.json, SHA256SUMS and both members
    searched.clear()
    assert audit_stage.audit_bundle(bundle, old, verdicts=reuse.Verdicts(store)).clean
    assert searched == ["SHA256SUMS"]  # every listed member: a stored verdict

    # a new session's patient: every member is searched again, and the README's name is found
    new = old | {PhiValue("name", "PatientName", "Kowalczyk^Grace")}
    searched.clear()
    result = audit_stage.audit_bundle(bundle, new, verdicts=reuse.Verdicts(store))
    assert not result.clean and {hit.member for hit in result.hits} == {"study/README.md"}
    assert "study/README.md" in searched

    # a changed member (same name, other bytes) is searched again; unchanged ones are not
    changed = _bundle_with(tmp_path / "two", b"Scanned by Zzphidoe.")
    searched.clear()
    result = audit_stage.audit_bundle(changed, old, verdicts=reuse.Verdicts(store))
    assert not result.clean and "study/README.md" in searched
    assert "study/dataset_description.json" not in searched
    # a failed audit stores no verdict: the same bundle is searched again next time
    searched.clear()
    assert not audit_stage.audit_bundle(changed, old, verdicts=reuse.Verdicts(store)).clean
    assert "study/README.md" in searched


def test_a_run_refused_by_defacing_is_reused_not_registered_again(corpus, key_file, tmp_path, monkeypatch):
    """A refused head costs a registration per build: the refusal is stored like a result (its
    key holds the voxels' files, the code and [deface]), and the rebuild repeats it exactly."""
    slab = tmp_path / "slab"
    slab.mkdir()
    for path in sorted((corpus / "dcm_qa_uih" / "In" / "DTI_132225" / "t1_gre_fsp_3d_sag__132750").iterdir())[60:100]:
        shutil.copy(path, slab / path.name)  # 40 mm mid-sagittal: defacing refuses it (test_deface.py)
    shutil.copytree(SAMPLE / "dicom" / "ZZPHIDOE_JANE_20240312" / "05_func-bold_task-rest", tmp_path / "bold")
    config = merge_flags(
        load_config(None),
        sources=(str(slab), str(tmp_path / "bold")),
        key_file=str(key_file),
        heuristic=str(REPO / "tests" / "heuristics" / "name_everything.py"),
        cache=tmp_path / "cache",
        jobs=1,
    )
    cold = api.build(dataclasses.replace(config, output=tmp_path / "cold"))
    (refused,) = [e for e in cold.excluded if e.reason.name == "DEFACE_REFUSED"]
    tasks = _entries(tmp_path / "cache")
    assert cold.exit_code == 1 and len(tasks) == 2  # the bold run and the refusal
    converted: list[str] = []
    real = task_stage.convert_task
    monkeypatch.setattr(
        task_stage, "convert_task", lambda item, *a: (converted.append(item.relpath), real(item, *a))[1]
    )
    warm = api.build(dataclasses.replace(config, output=tmp_path / "warm"))  # one job: tasks run here
    assert converted == [] and _entries(tmp_path / "cache") == tasks
    assert warm.exit_code == 1 and warm.excluded == cold.excluded and warm.sha256 == cold.sha256
