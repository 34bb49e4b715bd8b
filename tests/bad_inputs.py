#!/usr/bin/env python3
"""Generate dcmpack's bad-input fixtures: one per failure mode, named after it.

Usage::

    python tests/bad_inputs.py OUTDIR [NAME ...]

writes ``OUTDIR/<name>/`` (or ``OUTDIR/<name>.zip``) for every fixture (or the named ones).
Each fixture starts from the synthetic sample (``sample_data/dicom``, never the real corpus)
and breaks exactly one thing. Per-series failure modes keep a healthy companion series
(``fmap-epi_dir-PA``) so the build can go on without the broken one: the broken series is
always the first in plan order (``fmap-epi_dir-AP``, series number 3). The expected outcome of
each fixture (exit code, message) lives in ``tests/test_bad_input.py``, not here.

Fixtures that need the environment rather than files (permissions, a full disk, Ctrl-C, a
missing decoder) are set up by the tests themselves; the files they start from come from here.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parent.parent
SESSION = REPO / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312"
VICTIM = "03_fmap-epi_dir-AP"  # plan series 1, series number 3
GOOD = "04_fmap-epi_dir-PA"  # plan series 2, series number 4

FIXTURES: dict[str, Callable[[Path], Path]] = {}


def fixture(function: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """Register ``function`` under its name without the ``make_`` prefix."""
    FIXTURES[function.__name__.removeprefix("make_")] = function
    return function


def make(name: str, root: Path) -> Path:
    """Write fixture ``name`` under ``root``; returns the SOURCE to give dcmpack."""
    return FIXTURES[name](Path(root))


# ---------------------------------------------------------------- helpers


def _copy(series: str, target: Path) -> Path:
    shutil.copytree(SESSION / series, target / series)
    return target / series


def _pair(root: Path, name: str) -> tuple[Path, Path]:
    """``root/name/{victim,good}``: the broken series and its healthy companion."""
    folder = root / name
    folder.mkdir(parents=True)
    return _copy(VICTIM, folder), folder


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=False)


# ---------------------------------------------------------------- whole-input failures


@fixture
def make_empty_dir(root: Path) -> Path:
    folder = root / "empty_dir"
    folder.mkdir(parents=True)
    return folder


@fixture
def make_only_non_dicom(root: Path) -> Path:
    folder = root / "only_non_dicom"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    return folder


@fixture
def make_non_dicom_mixed(root: Path) -> Path:
    """A healthy series with three stray non-DICOM files (skipped and counted)."""
    folder = root / "non_dicom_mixed"
    folder.mkdir(parents=True)
    series = _copy(GOOD, folder)
    (series / "DICOMDIR.txt").write_text("index\n")
    (series / "Thumbs.db").write_bytes(bytes(range(256)) * 4)
    (folder / "README").write_text("exported by a PACS\n")
    return folder


@fixture
def make_truncated_pixels(root: Path) -> Path:
    folder = root / "truncated_pixels"
    folder.mkdir(parents=True)
    series = _copy(GOOD, folder)
    victim = _files(series)[5]
    victim.write_bytes(victim.read_bytes()[:-700])
    return folder


@fixture
def make_truncated_header(root: Path) -> Path:
    folder = root / "truncated_header"
    folder.mkdir(parents=True)
    series = _copy(GOOD, folder)
    victim = _files(series)[0]
    victim.write_bytes(victim.read_bytes()[:400])
    return folder


def _gzipped(root: Path, name: str) -> list[Path]:
    """The good series with every file gzip-compressed; returns the ``.dcm.gz`` files."""
    folder = root / name
    folder.mkdir(parents=True)
    series = _copy(GOOD, folder)
    for path in _files(series):
        with gzip.GzipFile(path.with_name(path.name + ".gz"), "wb", mtime=0) as handle:
            handle.write(path.read_bytes())
        path.unlink()
    return _files(series)


@fixture
def make_gzip_truncated(root: Path) -> Path:
    """A ``.dcm.gz`` cut in half (its gzip stream ends early)."""
    victim = _gzipped(root, "gzip_truncated")[2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return root / "gzip_truncated"


@fixture
def make_gzip_corrupt(root: Path) -> Path:
    """A ``.dcm.gz`` whose deflate stream is damaged right after the gzip header."""
    victim = _gzipped(root, "gzip_corrupt")[2]
    data = bytearray(victim.read_bytes())
    data[12:52] = bytes(b ^ 0x55 for b in data[12:52])
    victim.write_bytes(bytes(data))
    return root / "gzip_corrupt"


@fixture
def make_zero_byte(root: Path) -> Path:
    """An interrupted copy: one slice is an empty ``.dcm`` file."""
    folder = root / "zero_byte"
    folder.mkdir(parents=True)
    series = _copy(GOOD, folder)
    _files(series)[6].write_bytes(b"")
    return folder


@fixture
def make_damaged_among_good(root: Path) -> Path:
    """Issue 19's bad-file policy: among healthy series, a truncated file whose header names its
    series (``03_fmap-epi_dir-AP``), a zero-byte file in a folder of one series (``02_anat-T1w``),
    and a zero-byte file beside no series at all (the export's root: not attributable)."""
    folder = root / "damaged_among_good"
    folder.mkdir(parents=True)
    cut = _files(_copy(VICTIM, folder))[5]
    cut.write_bytes(cut.read_bytes()[:-700])
    _files(_copy("02_anat-T1w", folder))[3].write_bytes(b"")
    _copy(GOOD, folder)
    (folder / "IM9999.dcm").write_bytes(b"")
    return folder


@fixture
def make_huge_dimensions(root: Path) -> Path:
    """Rows = Columns = 65535 and 1000 frames claimed, 2 KiB of pixels present (must not allocate)."""
    folder = root / "huge_dimensions"
    folder.mkdir(parents=True)
    series = _copy(GOOD, folder)

    def change(ds):
        ds.Rows = 65535
        ds.Columns = 65535
        ds.NumberOfFrames = 1000

    _edit(_files(series)[3], change)
    return folder


@fixture
def make_huge_dimensions_compressed(root: Path) -> Path:
    """Rows = Columns = 65535 behind an encapsulated syntax (no size check possible from the header)."""
    folder = root / "huge_dimensions_compressed"
    folder.mkdir(parents=True)
    series = _copy(GOOD, folder)
    for path in _files(series):

        def change(ds):
            ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
            ds.Rows = 65535
            ds.Columns = 65535

        _edit(path, change)
    return folder


# ---------------------------------------------------------------- per-series failures


@fixture
def make_missing_pixel_data(root: Path) -> Path:
    victim, folder = _pair(root, "missing_pixel_data")
    for path in _files(victim):
        _edit(path, lambda ds: ds.__delattr__("PixelData"))
    _copy(GOOD, folder)
    return folder


@fixture
def make_missing_pixel_data_only(root: Path) -> Path:
    """As above without the healthy companion: nothing converts."""
    victim, folder = _pair(root, "missing_pixel_data_only")
    for path in _files(victim):
        _edit(path, lambda ds: ds.__delattr__("PixelData"))
    return folder


@fixture
def make_missing_geometry(root: Path) -> Path:
    """ImagePositionPatient and ImageOrientationPatient deleted from every slice."""
    victim, folder = _pair(root, "missing_geometry")

    def change(ds):
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient

    for path in _files(victim):
        _edit(path, change)
    _copy(GOOD, folder)
    return folder


@fixture
def make_inconsistent_spacing(root: Path) -> Path:
    """One slice moved 7 mm along the slice normal: spacing 3, 3, 10, 3 ..."""
    victim, folder = _pair(root, "inconsistent_spacing")
    files = _files(victim)

    def change(ds):
        row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        normal = np.cross(row, col)
        ds.ImagePositionPatient = [round(float(v), 4) for v in np.array(ds.ImagePositionPatient, float) + 7 * normal]

    for path in files[6:]:
        _edit(path, change)
    _copy(GOOD, folder)
    return folder


@fixture
def make_high_bit(root: Path) -> Path:
    """12 stored bits kept in the upper bits of each 16 (HighBit 15, an old ACR-NEMA layout)."""
    victim, folder = _pair(root, "high_bit")

    def change(ds):
        ds.BitsStored, ds.HighBit = 12, 15
        ds.PixelData = (np.minimum(ds.pixel_array, 4095).astype(np.uint16) << 4).tobytes()

    for path in _files(victim):
        _edit(path, change)
    _copy(GOOD, folder)
    return folder


@fixture
def make_mixed_matrix(root: Path) -> Path:
    """Three slices of the series stored at 16x16 instead of 32x32."""
    victim, folder = _pair(root, "mixed_matrix")

    def change(ds):
        pixels = ds.pixel_array[::2, ::2].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(v) * 2 for v in ds.PixelSpacing]
        ds.PixelData = pixels.tobytes()

    for path in _files(victim)[4:7]:
        _edit(path, change)
    _copy(GOOD, folder)
    return folder


@fixture
def make_duplicate_instances(root: Path) -> Path:
    """Every slice of the series copied a second time under another name (same SOP instance)."""
    victim, folder = _pair(root, "duplicate_instances")
    for path in _files(victim):
        shutil.copyfile(path, path.with_name(path.stem + " (copy).dcm"))
    _copy(GOOD, folder)
    return folder


@fixture
def make_conflicting_duplicates(root: Path) -> Path:
    """Two different files claim the same SOP instance (a slice and an edited copy of it)."""
    victim, folder = _pair(root, "conflicting_duplicates")
    source = _files(victim)[4]
    copy = source.with_name("IM0005b.dcm")
    shutil.copyfile(source, copy)

    def change(ds):
        pixels = ds.pixel_array.copy()
        pixels[:4] = 0
        ds.PixelData = pixels.tobytes()

    _edit(copy, change)
    _copy(GOOD, folder)
    return folder


@fixture
def make_jpeg2000(root: Path) -> Path:
    """The broken series stored as JPEG 2000 (test hides every decoder for it)."""
    victim, folder = _pair(root, "jpeg2000")
    for path in _files(victim):
        _edit(path, lambda ds: ds.compress(pydicom.uid.JPEG2000Lossless, encoding_plugin="pylibjpeg"))
    _copy(GOOD, folder)
    return folder


@fixture
def make_undecodable_syntax(root: Path) -> Path:
    """Transfer syntax MPEG2 video (MP@ML): no pixel decoder exists for it in pydicom at all."""
    victim, folder = _pair(root, "undecodable_syntax")

    def change(ds):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
        frame = b"\x00\x00\x01\xb3" + bytes(60)  # an MPEG-2 sequence header start, then nothing useful
        ds.PixelData = pydicom.encaps.encapsulate([frame])
        ds["PixelData"].VR = "OB"

    for path in _files(victim):
        _edit(path, change)
    _copy(GOOD, folder)
    return folder


# ---------------------------------------------------------------- inputs that must build


@fixture
def make_gzip_dicom(root: Path) -> Path:
    """Every file gzip-compressed (``IM0001.dcm.gz``): builds like the plain series."""
    _gzipped(root, "gzip_dicom")
    return root / "gzip_dicom"


@fixture
def make_symlink_loop(root: Path) -> Path:
    """A healthy series plus a link back to the source root and a self-referencing link."""
    folder = root / "symlink_loop"
    folder.mkdir(parents=True)
    series = _copy(GOOD, folder)
    os.symlink("..", series / "loop")
    os.symlink("self", folder / "self")
    return folder


# ---------------------------------------------------------------- unsafe archives


def _zip(root: Path, name: str, member: str) -> Path:
    archive = root / f"{name}.zip"
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as handle:
        for path in _files(SESSION / GOOD):
            handle.write(path, f"{GOOD}/{path.name}")
        handle.writestr(member, b"evil")
    return archive


@fixture
def make_zip_traversal(root: Path) -> Path:
    return _zip(root, "zip_traversal", "../../evil.dcm")


@fixture
def make_zip_absolute(root: Path) -> Path:
    return _zip(root, "zip_absolute", "/tmp/evil.dcm")


@fixture
def make_zip_symlink(root: Path) -> Path:
    archive = root / "zip_symlink.zip"
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as handle:
        for path in _files(SESSION / GOOD):
            handle.write(path, f"{GOOD}/{path.name}")
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = 0o120777 << 16
        handle.writestr(info, "/etc/passwd")
    return archive


# ---------------------------------------------------------------- configuration


@fixture
def make_config_syntax_error(root: Path) -> Path:
    folder = root / "config_syntax_error"
    folder.mkdir(parents=True)
    (folder / "release.toml").write_text('[dataset]\nname = "study"\nversion = 1.0.0\n')
    return folder / "release.toml"


@fixture
def make_config_unknown_key(root: Path) -> Path:
    folder = root / "config_unknown_key"
    folder.mkdir(parents=True)
    (folder / "release.toml").write_text('[dataset]\nname = "study"\n\n[deid]\ndate = "shift"\n')
    return folder / "release.toml"


@fixture
def make_config_wrong_type(root: Path) -> Path:
    folder = root / "config_wrong_type"
    folder.mkdir(parents=True)
    (folder / "release.toml").write_text('[dataset]\nname = "study"\n[exclude]\nlocalizers = "yes"\n')
    return folder / "release.toml"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    for name in argv[1:] or sorted(FIXTURES):
        print(make(name, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
