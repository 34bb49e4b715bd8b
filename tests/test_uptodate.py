"""The same build again, with nothing changed, does nothing (packager/release/uptodate.py).

A build that published its bundle records what it read and left; the same command again finds
the record, plans, converts, audits and writes nothing, and leaves the bundle and the report as
they were. Each thing the build read or left makes the next one run: a source file touched
(same bytes), a config value, the key, a library version, the report or the bundle rewritten
(same bytes), a Python heuristic (never recorded), sources that changed just before the build.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, TEST_KEY, run_cli

from packager import api, executors, render
from packager import cache as cache_service
from packager.config import load_config, merge_flags
from packager.errors import OutputError
from packager.release import uptodate

SAMPLE = REPO / "sample_data"


def _config(source: Path, out: Path, cache: Path, **flags):
    return merge_flags(
        load_config(SAMPLE / "release.toml"), sources=(str(source),), output=out, cache=cache, jobs=1, **flags
    )


def _stat(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_ctime_ns


def _counts(result) -> dict:
    summary = render.summarize(result)
    return {k: v for k, v in summary.items() if k not in ("seconds", "timings", "unchanged", "up_to_date")}


@pytest.fixture()
def study(tmp_path, monkeypatch):
    """A copy of the sample's DICOM and one build of it through a new cache (recorded: the
    copy's files count as settled here, ``RACY_S`` 0)."""
    monkeypatch.setattr(uptodate, "RACY_S", 0.0)
    source = tmp_path / "dicom"
    shutil.copytree(SAMPLE / "dicom", source)
    cache = tmp_path / "cache"
    first = api.build(_config(source, tmp_path / "out", cache))
    assert first.exit_code == 0 and not first.up_to_date
    return source, cache, first


def _nothing_planned(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("planned: the build was not up to date")

    monkeypatch.setattr(api, "_plan_from", refuse)


def test_the_same_build_again_does_nothing_and_says_so(study, tmp_path, monkeypatch):
    source, cache, first = study
    bundle, report = _stat(first.bundle), _stat(first.report)
    with monkeypatch.context() as patched:
        _nothing_planned(patched)
        again = api.build(_config(source, tmp_path / "out", cache, force=True))
        cli = run_cli(
            "build", str(source), "-c", str(SAMPLE / "release.toml"), "--cache", str(cache), "-o", str(tmp_path / "out")
        )
        cli_json = run_cli(
            "build",
            *(str(source), "-c", str(SAMPLE / "release.toml"), "--cache", str(cache), "-o", str(tmp_path / "out")),
            "--json",
        )
    assert again.up_to_date and again.unchanged and again.exit_code == 0
    assert (again.sha256, again.size, again.runs, again.validator) == (
        first.sha256,
        first.size,
        first.runs,
        first.validator,
    )
    assert _counts(again) == _counts(first)  # the summary says what the first build said
    assert (_stat(again.bundle), _stat(again.report)) == (bundle, report)  # neither written nor touched
    assert cli.returncode == 0 and "up to date: " in cli.stderr and "sessions: 3" in cli.stderr
    summary = json.loads(cli_json.stdout)
    assert summary["up_to_date"] and summary["sha256"] == first.sha256 and summary["exit_code"] == 0
    # the record holds counts and digests: no pseudonym, no key, no source path
    labels = {run.split("/")[0].removeprefix("sub-") for run in first.runs}
    for entry in (cache / "builds").rglob("*"):
        if entry.is_file():
            data = entry.read_bytes()
            secrets = [(SAMPLE / "sample.key").read_bytes().strip(), str(source).encode()]
            assert not any(s in data for s in [*secrets, *(label.encode() for label in labels)])


def test_whatever_the_build_read_or_left_makes_the_next_one_run(study, tmp_path, monkeypatch):
    source, cache, first = study
    out = tmp_path / "out"

    def again(expect_up_to_date: bool, **flags):
        result = api.build(_config(source, out, cache, force=True, **flags))
        assert result.up_to_date == expect_up_to_date and result.exit_code == 0
        return result

    # a source file touched (same bytes, new times): built again, the same zip kept in place
    victim = next(p for p in sorted(source.rglob("*")) if p.is_file())
    os.utime(victim)
    kept = again(False)
    assert kept.unchanged and kept.sha256 == first.sha256 and kept.bundle.stat().st_ino == first.bundle.stat().st_ino
    again(True)  # recorded again

    # the report rewritten with its own bytes and its old times put back: only its change time moved
    info = first.report.stat()
    first.report.write_bytes(first.report.read_bytes())
    os.utime(first.report, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert again(False).report.stat().st_mtime_ns != info.st_mtime_ns  # written anew
    again(True)

    # the bundle replaced by a copy of itself (another file, the same bytes)
    copy = tmp_path / "copy.zip"
    shutil.copyfile(first.bundle, copy)
    os.replace(copy, first.bundle)
    assert again(False).sha256 == first.sha256
    again(True)

    # a config value, another key, a library version: each runs the build
    described = api.build(
        dataclasses.replace(
            _config(source, out, cache, force=True),
            dataset=dataclasses.replace(_config(source, out, cache).dataset, description="Another description."),
        )
    )
    assert not described.up_to_date and described.sha256 != first.sha256
    back = again(False)
    assert back.sha256 == first.sha256
    other = tmp_path / "other.key"
    other.write_text(TEST_KEY)
    other.chmod(0o600)
    rekeyed = again(False, key_file=str(other), new_key=True)
    assert rekeyed.sha256 != first.sha256
    again(True, key_file=str(other), new_key=True)
    versions = executors.versions()
    monkeypatch.setattr(executors, "versions", lambda: {**versions, "numpy": versions["numpy"] + ".post1"})
    cache_service.environment.cache_clear()
    try:
        again(False, key_file=str(other), new_key=True)  # (provenance names the versions: another zip)
    finally:
        cache_service.environment.cache_clear()


def test_builds_that_cannot_be_trusted_are_never_taken_as_up_to_date(tmp_path, monkeypatch):
    """A Python heuristic may read anything; sources changed less than ``RACY_S`` before the build
    could change again unseen: neither is recorded, every build runs."""
    source = tmp_path / "dicom"
    shutil.copytree(SAMPLE / "dicom", source)
    cache = tmp_path / "cache"
    monkeypatch.setattr(uptodate, "RACY_S", 3600.0)  # every source file changed "just now"
    for _ in range(2):
        assert not api.build(_config(source, tmp_path / "fresh", cache, force=True)).up_to_date
    assert not list((cache / "builds").rglob("*.*")) and not [p for p in (cache / "builds").rglob("*") if p.is_file()]

    monkeypatch.setattr(uptodate, "RACY_S", 0.0)
    heuristic = str(REPO / "heuristics" / "reproin.py")
    for _ in range(2):
        assert not api.build(_config(source, tmp_path / "python", cache, force=True, heuristic=heuristic)).up_to_date
    assert not [p for p in (cache / "builds").rglob("*") if p.is_file()]
    assert api.build(_config(source, tmp_path / "rules", cache)).exit_code == 0  # recorded: the control
    assert [p for p in (cache / "builds").rglob("*") if p.is_file()]


def _records(cache: Path) -> dict[str, int]:
    """Each record's name and when it was written (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in (cache / "builds").rglob("*") if p.is_file()}


def _recorded_once_settled(cache: Path, result, before: set[str]) -> None:
    """Exactly one new record, written at least ``SETTLED_S`` after the last change of the
    bundle and report it stands for."""
    new = {name: when for name, when in _records(cache).items() if name not in before}
    newest = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in (result.bundle, result.report))
    assert len(new) == 1 and next(iter(new.values())) - newest >= uptodate.SETTLED_S * 1e9


def test_a_published_file_is_recorded_only_once_its_change_time_is_settled(study, tmp_path):
    """A write in the same clock tick as the recorded change time would keep that time: the
    record is written only once ``SETTLED_S`` passed since the bundle's and report's last change
    (the build waits for it when it published them just before)."""
    source, cache, first = study
    _recorded_once_settled(cache, first, set())
    known = set(_records(cache))
    config = _config(source, tmp_path / "out", cache, force=True)
    other = api.build(dataclasses.replace(config, dataset=dataclasses.replace(config.dataset, description="Other.")))
    _recorded_once_settled(cache, other, known)


def test_the_heuristics_in_use_and_any_installed_distribution_are_part_of_the_record(study, tmp_path, monkeypatch):
    """The shipped heuristics name every run, and any installed library may shape the bytes (the
    BIDS schema, the PHI search, pixel decoders): an edit or an install builds again."""
    source, cache, first = study
    shipped = tmp_path / "shipped" / "heuristics"
    shutil.copytree(REPO / "heuristics", shipped, ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.spec_from_file_location("heuristics", shipped / "__init__.py")
    assert spec is not None and spec.submodule_search_locations is not None
    monkeypatch.setattr(uptodate.importlib.util, "find_spec", lambda name: spec)

    def again():
        return api.build(_config(source, tmp_path / "out", cache, force=True))

    assert not again().up_to_date  # another heuristics folder: built, then recorded
    assert again().up_to_date
    (shipped / "reproin.py").write_text((shipped / "reproin.py").read_text() + "\n# edited\n")
    assert not again().up_to_date
    assert again().up_to_date
    site = tmp_path / "site"
    (site / "somelib-1.0.dist-info").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(site))
    assert not again().up_to_date  # a library installed
    assert again().up_to_date


def test_a_bundle_is_published_read_only_for_others_whatever_the_umask(tmp_path, monkeypatch):
    """Under ``umask 002`` (many distributions' default) the zip would be group-writable, which the
    cache never trusts: it is published without write permission for group and others, and the
    same build again is up to date."""
    monkeypatch.setattr(uptodate, "RACY_S", 0.0)
    source = tmp_path / "dicom"
    shutil.copytree(SAMPLE / "dicom", source)
    old = os.umask(0o002)
    try:
        first = api.build(_config(source, tmp_path / "out", tmp_path / "cache"))
        again = api.build(_config(source, tmp_path / "out", tmp_path / "cache"))
    finally:
        os.umask(old)
    assert first.bundle.stat().st_mode & 0o777 == 0o644 and again.up_to_date


def test_an_existing_bundle_is_refused_before_an_archive_source_is_unpacked(tmp_path, monkeypatch):
    """Without ``--force`` an existing bundle is replaced only if the build is up to date, and an
    archive given as SOURCE never is (it is unpacked anew): refused at once, nothing unpacked."""
    archive = shutil.make_archive(str(tmp_path / "sample"), "zip", SAMPLE / "dicom")
    out = tmp_path / "out"
    first = api.build(_config(Path(archive), out, tmp_path / "cache"))
    assert first.exit_code == 0 and not uptodate.recordable(_config(Path(archive), out, tmp_path / "cache"))

    def unpacked(*args, **kwargs):
        raise AssertionError("the sources were opened")

    monkeypatch.setattr(api, "_gather", unpacked)
    with pytest.raises(OutputError, match="exists"):
        api.build(_config(Path(archive), out, tmp_path / "cache"))


def test_change_times_alone_say_when_files_settled_and_loop_images_are_not_trusted(tmp_path):
    """A modification time can be set to the future (an unzip across time zones, a scanner's
    clock); the change time cannot: a file whose mtime lies ahead is settled by its change time.
    A file system image on a loop device is never trusted (two alike images, one device)."""
    ahead = tmp_path / "ahead.dcm"
    ahead.write_bytes(b"x")
    info = ahead.stat()
    os.utime(ahead, ns=(info.st_atime_ns, info.st_mtime_ns + 3 * 3600 * 10**9))
    signature = cache_service.signature([ahead])
    assert signature.newest_ns == ahead.stat().st_ctime_ns < ahead.stat().st_mtime_ns
    assert cache_service.stat_trusted(ahead.stat().st_dev)  # the test machine's local file system
    assert not cache_service.stat_trusted(os.makedev(7, 3))
