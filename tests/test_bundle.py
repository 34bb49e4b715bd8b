"""Stage unit test, bundle: staged files -> one deterministic zip (``stage_bytes``, ``write_bundle``)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import stat
import zipfile

import pytest

from packager.errors import VerifyError
from packager.release.bundle import ReadBack, read_back, stage_bytes, write_bundle
from packager.release.verify import verify

TOP = "study"
MANIFEST = b'{"dataset": "study"}\n'


def _stage(folder, order=(0, 1, 2)):
    files = [
        ("sub-01/anat/sub-01_T1w.nii.gz", gzip.compress(b"\0" * 4000, mtime=0)),
        ("sub-01/anat/sub-01_T1w.json", b'{"EchoTime": 0.003}\n' * 20),
        ("dataset_description.json", b'{"Name": "study"}\n'),
    ]
    return [stage_bytes(folder, *files[i]) for i in order]


def test_stage_bytes_records_size_and_digest(tmp_path):
    staged = stage_bytes(tmp_path / "staging", "sub-01/anat/x.json", b"{}\n")
    assert staged.path == tmp_path / "staging" / "sub-01" / "anat" / "x.json"
    assert staged.path.read_bytes() == b"{}\n"
    assert (staged.relpath, staged.size) == ("sub-01/anat/x.json", 3)
    assert staged.sha256 == hashlib.sha256(b"{}\n").hexdigest()
    assert stat.S_IMODE(staged.path.parent.stat().st_mode) == 0o700  # staging stays private


def test_zip_is_byte_identical_whatever_the_order(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first, size = write_bundle(tmp_path / "a.zip", TOP, _stage(tmp_path / "a"), MANIFEST)
    second, _ = write_bundle(tmp_path / "b.zip", TOP, _stage(tmp_path / "b", order=(2, 0, 1)), MANIFEST)
    data = (tmp_path / "a.zip").read_bytes()
    assert data == (tmp_path / "b.zip").read_bytes()
    assert first == second == hashlib.sha256(data).hexdigest() and size == len(data)


def test_members_are_sorted_with_fixed_metadata(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    write_bundle(tmp_path / "a.zip", TOP, _stage(tmp_path / "a"), MANIFEST)
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        infos = archive.infolist()
        assert archive.comment == b""
    names = [info.filename for info in infos]
    assert (
        names
        == sorted(names)
        == [
            "MANIFEST.json",
            "SHA256SUMS",
            "study/dataset_description.json",
            "study/sub-01/anat/sub-01_T1w.json",
            "study/sub-01/anat/sub-01_T1w.nii.gz",
        ]
    )
    for info in infos:
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == 0o100644 and info.create_system == 3
        assert info.extra == b"" and info.comment == b""
        expected = zipfile.ZIP_STORED if info.filename.endswith(".gz") else zipfile.ZIP_DEFLATED
        assert info.compress_type == expected, info.filename


def test_sha256sums_cover_manifest_and_every_member(tmp_path):
    write_bundle(tmp_path / "a.zip", TOP, _stage(tmp_path / "a"), MANIFEST)
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        lines = archive.read("SHA256SUMS").decode().splitlines()
        sums = {name: digest for digest, name in (line.split("  ") for line in lines)}  # sha256sum -c format
        assert set(sums) == set(archive.namelist()) - {"SHA256SUMS"}
        for name, digest in sums.items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == digest, name
        assert archive.read("MANIFEST.json") == MANIFEST


@pytest.mark.parametrize("epoch", ["1700000000", "0", "not-a-number"])
def test_source_date_epoch_is_ignored(tmp_path, monkeypatch, epoch):
    # set to a scan's time it would publish a source date in every entry (issue 15)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    write_bundle(tmp_path / "a.zip", TOP, _stage(tmp_path / "a"), MANIFEST)
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_digest_can_be_left_to_the_caller(tmp_path):
    digest, size = write_bundle(tmp_path / "a.zip", TOP, _stage(tmp_path / "a"), MANIFEST, digest=False)
    assert digest == "" and size == (tmp_path / "a.zip").stat().st_size


def test_progress_counts_streamed_bytes(tmp_path):
    staged = _stage(tmp_path / "a")
    seen = []
    write_bundle(tmp_path / "a.zip", TOP, staged, MANIFEST, progress=seen.append)
    # only stored (.nii.gz) members stream from disk; small text members are compressed in memory
    assert sum(seen) == sum(item.size for item in staged if item.relpath.endswith(".gz"))


def test_a_known_crc_copies_the_image_with_the_same_bytes_as_streaming_it(tmp_path):
    """Stored members with a CRC-32 from staging (or the build cache) are copied by the kernel
    behind a hand-made local header; the zip must equal the one zipfile streams, byte for byte."""
    staged = _stage(tmp_path / "a")
    big = stage_bytes(
        tmp_path / "a", "sub-01/func/sub-01_bold.nii.gz", gzip.compress(bytes(range(256)) * 9000, mtime=0)
    )
    staged.append(big)
    assert all(item.crc32 is not None for item in staged)
    write_bundle(tmp_path / "copied.zip", TOP, staged, MANIFEST)
    unknown = [dataclasses.replace(item, crc32=None) for item in staged]
    write_bundle(tmp_path / "streamed.zip", TOP, unknown, MANIFEST)
    assert (tmp_path / "copied.zip").read_bytes() == (tmp_path / "streamed.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "copied.zip") as archive:
        assert archive.testzip() is None
        assert archive.read(f"{TOP}/{big.relpath}") == big.path.read_bytes()


def test_a_wrong_crc_is_caught_by_the_zip_check(tmp_path):
    """The copied member's CRC-32 is taken on trust from staging: a wrong one is not hidden (any
    reader, and verify's digest of every member, sees the member as damaged)."""
    staged = [
        dataclasses.replace(s, crc32=(s.crc32 or 0) ^ 1) if s.relpath.endswith(".gz") else s
        for s in _stage(tmp_path / "a")
    ]
    write_bundle(tmp_path / "a.zip", TOP, staged, MANIFEST)
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.testzip() == f"{TOP}/sub-01/anat/sub-01_T1w.nii.gz"


def test_read_back_digests_the_file_and_finds_every_damaged_member(tmp_path):
    """``read_back`` (the build's one pass over its own bundle) gives the file's SHA-256 and
    names each member whose bytes no longer match its recorded CRC-32: a flipped byte in an image
    (stored), in a text member (deflated), a wrong CRC-32 taken from staging, a cut-short file."""
    staged = _stage(tmp_path / "a")
    staged.append(
        stage_bytes(tmp_path / "a", "sub-01/func/sub-01_bold.nii.gz", gzip.compress(bytes(range(256)) * 9000, mtime=0))
    )
    sound = tmp_path / "sound.zip"
    write_bundle(sound, TOP, staged, MANIFEST)
    found = read_back(sound)
    assert found == ReadBack(hashlib.sha256(sound.read_bytes()).hexdigest(), sound.stat().st_size, ())
    assert verify(sound, validate=False, checked=found).problems == verify(sound, validate=False).problems

    with zipfile.ZipFile(sound) as archive:
        offsets = {i.filename: i.header_offset for i in archive.infolist()}
    data = sound.read_bytes()
    image, text = f"{TOP}/sub-01/func/sub-01_bold.nii.gz", f"{TOP}/sub-01/anat/sub-01_T1w.json"
    for name in (image, text):
        broken = bytearray(data)
        broken[offsets[name] + 30 + len(name) + 20] ^= 0x40  # a byte of the member's data
        path = tmp_path / "broken.zip"
        path.write_bytes(bytes(broken))
        assert read_back(path).damaged == (name,)
        assert f"{name}: checksum mismatch" in verify(path, validate=False, checked=read_back(path)).problems
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: offsets[image] + 30 + len(image) + 100] + data[offsets[image] + 30 + len(image) + 200 :])
    assert read_back(cut).damaged  # the image, and the members after it shifted
    assert verify(cut, validate=False).problems  # `dcmpack verify` too: a problem, not a traceback
    wrong = [
        dataclasses.replace(s, crc32=(s.crc32 or 0) ^ 1) if s.relpath.endswith("bold.nii.gz") else s for s in staged
    ]
    write_bundle(tmp_path / "wrong.zip", TOP, wrong, MANIFEST)
    assert read_back(tmp_path / "wrong.zip").damaged == (image,)


def test_a_staged_file_changed_after_its_digest_is_caught(tmp_path):
    """SHA256SUMS lists the digests taken as files were staged: a text member changed afterwards
    (zipped with a CRC-32 of its new bytes) fails the build's verify, and an image that changed
    size (streamed instead of copied) stops the zip being written."""
    staged = _stage(tmp_path / "a")
    text = next(s for s in staged if s.relpath.endswith("T1w.json"))
    text.path.write_bytes(text.path.read_bytes().replace(b"0.003", b"0.004"))  # same size, other bytes
    write_bundle(tmp_path / "text.zip", TOP, staged, MANIFEST)
    found = read_back(tmp_path / "text.zip")
    assert found.damaged == ()  # its CRC-32 is the new bytes'...
    problems = verify(tmp_path / "text.zip", validate=False, checked=found).problems
    assert f"{TOP}/{text.relpath}: checksum mismatch" in problems  # ...its SHA256SUMS digest is not

    staged = _stage(tmp_path / "b")
    image = next(s for s in staged if s.relpath.endswith(".nii.gz"))
    image.path.write_bytes(image.path.read_bytes() + b"\0")
    with pytest.raises(VerifyError, match="changed after its digest was taken"):
        write_bundle(tmp_path / "image.zip", TOP, staged, MANIFEST)


def test_verify_reports_a_damaged_text_member_without_a_traceback(tmp_path):
    staged = _stage(tmp_path / "a")
    sound = tmp_path / "sound.zip"
    write_bundle(sound, TOP, staged, MANIFEST)
    name = f"{TOP}/dataset_description.json"
    with zipfile.ZipFile(sound) as archive:
        offset = archive.getinfo(name).header_offset + 30 + len(name) + 2
    data = bytearray(sound.read_bytes())
    data[offset] ^= 0x40
    sound.write_bytes(bytes(data))
    report = verify(sound)  # with the validator, which a damaged member never reaches
    assert f"{name}: checksum mismatch" in report.problems and not report.ok
