"""Stage unit test, sources: a SOURCE argument -> SourceSet (``open_source``), folders and zips."""

from __future__ import annotations

import gzip
import io
import logging
import stat
import tarfile
import zipfile

import pytest
import synthetic_dicom as dicom

from packager.errors import InputError
from packager.sources import is_remote, open_source
from packager.sources.archives import MAX_DEPTH, archive_kind


@pytest.fixture
def staging(tmp_path):
    folder = tmp_path / "staging"
    folder.mkdir(mode=0o700)
    return folder


def test_folder_is_walked_recursively_in_name_order(tmp_path, staging):
    root = tmp_path / "in"
    dicom.write_series(root / "b_series", 2)
    dicom.write_series(root / "a_series" / "deeper", 1)
    (root / "notes.txt").write_text("x")
    found = open_source(str(root), staging)
    assert found.root == root and found.label == str(root)
    assert [f.relpath for f in found.files] == [
        "a_series/deeper/IM0001.dcm",
        "b_series/IM0001.dcm",
        "b_series/IM0002.dcm",
        "notes.txt",
    ]
    assert all(f.path == root / f.relpath for f in found.files)
    assert list(staging.iterdir()) == []  # a folder is read in place


def test_single_file(tmp_path, staging):
    path = dicom.write(dicom.mr_image(), tmp_path / "one.dcm")
    found = open_source(str(path), staging)
    assert found.root == tmp_path and [(f.path, f.relpath) for f in found.files] == [(path, "one.dcm")]


def test_zip_is_extracted_under_neutral_names(tmp_path, staging):
    paths = dicom.write_series(tmp_path / "series", 2)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("ZZUNIT_DOE_JANE/", b"")  # a folder entry: nothing to extract
        for path in paths:
            handle.write(path, f"ZZUNIT_DOE_JANE/{path.name}")
    found = open_source(str(archive), staging)
    assert found.label == "upload.zip" and found.root == staging
    assert [f.relpath for f in found.files] == [
        "upload.zip:ZZUNIT_DOE_JANE/IM0001.dcm",
        "upload.zip:ZZUNIT_DOE_JANE/IM0002.dcm",
    ]
    for item, original in zip(found.files, paths, strict=False):
        assert item.path.is_relative_to(staging) and "ZZUNIT" not in str(item.path)  # member names may be PHI
        assert item.path.read_bytes() == original.read_bytes()


@pytest.mark.parametrize("member", ["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm", "C:/evil.dcm"])
def test_unsafe_zip_member_refuses_the_whole_archive(tmp_path, staging, member):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("ok/one.dcm", b"x")
        handle.writestr(member, b"x")
    with pytest.raises(InputError, match=r"upload.zip: member 2 has an unsafe path") as info:
        open_source(str(archive), staging)
    assert info.value.exit_code == 3
    assert list(staging.iterdir()) == [] and not (tmp_path / "evil.dcm").exists()  # nothing extracted


def test_symlink_zip_member_is_refused(tmp_path, staging):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        link = zipfile.ZipInfo("link.dcm")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(link, "/etc/passwd")
    with pytest.raises(InputError, match="member 1 is a symbolic link"):
        open_source(str(archive), staging)


def test_missing_source(tmp_path, staging):
    with pytest.raises(InputError, match="no such file or folder"):
        open_source(str(tmp_path / "nope"), staging)


def test_symlink_loop_is_counted_and_skipped(tmp_path, staging, caplog):
    root = tmp_path / "in"
    dicom.write_series(root / "series", 1)
    (root / "series" / "loop").symlink_to(root)
    (root / "dangling").symlink_to(tmp_path / "gone")
    with caplog.at_level(logging.WARNING, logger="packager"):
        found = open_source(str(root), staging)
    assert [f.relpath for f in found.files] == ["series/IM0001.dcm"]  # walked once, not through the loop
    assert "skipped 2 symlink loop(s) or dangling link(s)" in caplog.text


def test_remote_specs_are_recognised():
    assert is_remote("dicomweb+https://pacs.example/dicom-web/studies/1.2.3")
    assert is_remote("dimse://AET@pacs.example:104/1.2.3") and is_remote("xnat://xnat.example/experiments/X")
    assert not is_remote("/data/dicomweb+https") and not is_remote("https://example.org/data.zip")


# ---------------------------------------------------------------- archives inside a folder


def _tar(path, members: dict[str, bytes], mode: str = "w:gz", links: dict[str, tuple[bytes, str]] | None = None):
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            archive.addfile(info)
    return path


def test_archives_inside_a_folder_are_opened_nested(tmp_path, staging):
    """A tar.gz inside a zip inside the folder, and a plain tar beside it: their members are read
    in place of the archives, named ARCHIVE:MEMBER, extracted under neutral names."""
    root = tmp_path / "in"
    slices = dicom.write_series(root / "series", 3)
    inner = _tar(tmp_path / "inner.tar.gz", {"ZZUNIT_ROE/IM0002.dcm": slices[1].read_bytes()})
    with zipfile.ZipFile(root / "series" / "more.zip", "w") as handle:
        handle.write(inner, "nested/inner.tar.gz")
    _tar(root / "plain.tar", {"IM0003.dcm": slices[2].read_bytes()}, mode="w")
    slices[1].unlink()
    slices[2].unlink()
    found = open_source(str(root), staging)
    assert [f.relpath for f in found.files] == [
        "plain.tar:IM0003.dcm",
        "series/IM0001.dcm",
        "series/more.zip:nested/inner.tar.gz:ZZUNIT_ROE/IM0002.dcm",
    ]
    assert all("ZZUNIT" not in str(f.path) for f in found.files)
    assert found.files[2].path.is_relative_to(staging) and found.files[2].path.read_bytes()[128:132] == b"DICM"


def test_gzip_compressed_dicom_is_not_taken_for_an_archive(tmp_path, staging):
    root = tmp_path / "in"
    (path,) = dicom.write_series(root, 1)
    with gzip.open(root / "IM0001.dcm.gz", "wb") as handle:
        handle.write(path.read_bytes())
    path.unlink()
    assert [f.relpath for f in open_source(str(root), staging).files] == ["IM0001.dcm.gz"]


def test_archive_kind_reads_short_empty_and_missing_files(tmp_path):
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("a", b"")
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w") as archive:
        archive.addfile(tarfile.TarInfo("a"), io.BytesIO(b""))
    files = {
        "empty": b"",
        "short": b"PK\x03\x04",  # a zip signature, and nothing after it
        "zip": zipped.getvalue(),  # ~100 bytes: shorter than the 512 looked at
        "tar": tarred.getvalue(),
        "dicom": b"PK\x03\x04" + bytes(124) + b"DICM" + bytes(600),  # a zip signature in the preamble
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    kinds = {name: archive_kind(tmp_path / name) for name in [*files, "missing"]}
    assert kinds == {"empty": None, "short": None, "zip": "zip", "tar": "tar", "dicom": None, "missing": None}


@pytest.mark.parametrize(
    "links, pattern",
    [
        ({"evil.dcm": (tarfile.SYMTYPE, "/etc/passwd")}, "member 2 is a symbolic or hard link"),
        ({"evil.dcm": (tarfile.LNKTYPE, "ok.dcm")}, "member 2 is a symbolic or hard link"),
        ({"evil": (tarfile.FIFOTYPE, "")}, "member 2 is a device or FIFO"),
    ],
)
def test_unsafe_tar_member_in_a_folder_refuses_the_archive(tmp_path, staging, links, pattern):
    root = tmp_path / "in"
    root.mkdir()
    _tar(root / "upload.tgz", {"ok.dcm": b"x"}, links=links)
    with pytest.raises(InputError, match=f"upload.tgz: {pattern}"):
        open_source(str(root), staging)
    assert not any(p.is_file() for p in staging.rglob("*"))  # nothing extracted


@pytest.mark.parametrize("member", ["../evil.dcm", "/abs/evil.dcm"])
def test_unsafe_tar_member_name_refuses_the_archive(tmp_path, staging, member):
    archive = _tar(tmp_path / "upload.tar", {"ok.dcm": b"x", member: b"x"}, mode="w")
    with pytest.raises(InputError, match=r"upload.tar: member 2 has an unsafe path"):
        open_source(str(archive), staging)
    assert not (tmp_path / "evil.dcm").exists()


def test_archives_nested_too_deep_are_refused(tmp_path, staging):
    data = b"x"
    for level in range(MAX_DEPTH + 1):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as handle:
            handle.writestr(f"level{level}.zip" if level else "IM0001.dcm", data)
        data = buffer.getvalue()
    (tmp_path / "deep.zip").write_bytes(data)
    with pytest.raises(InputError, match=f"archives nested more than {MAX_DEPTH} deep"):
        open_source(str(tmp_path / "deep.zip"), staging)
