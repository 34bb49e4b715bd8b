"""Export-style variants of corpus series, made deterministically by our own code (for outside.py).

``cases(corpus)`` lists ``(set, case, builder)``; ``builder(in_dir)`` writes the variant's DICOM
into ``in_dir``. Nothing here is random: names come from hashes of relative paths, new UIDs from
pydicom's ``generate_uid`` with fixed entropy sources. The variants:

- transfer syntaxes (``tests/transfer_syntaxes.py``'s real encoders): implicit VR, big endian,
  deflated, RLE, JPEG 2000 lossless, JPEG-LS lossless, JPEG lossless (process 14), and files
  written without the preamble or without any file meta information;
- ``cd-dicomdir``: pydicom's FileSet writes a CD/DVD layout (DICOMDIR, 8-character uppercase
  names in PT/ST/SE folders);
- ``split-shuffled``: every file under a hashed name in one of three folders;
- ``zip-in-folder``: half of the series inside a zip archive within the folder;
- ``reexport``: a second copy of one series under the same SeriesInstanceUID with a new
  SeriesNumber and new SOPInstanceUIDs (what a PACS re-export or an edited copy looks like);
- ``xa-interop``: Siemens XA enhanced files split into one classic MR instance per frame, the
  functional groups flattened into the instance (Siemens XA "interoperable" export style).
"""

from __future__ import annotations

import copy
import hashlib
import io
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests import transfer_syntaxes

Builder = Callable[[Path], None]

#: styles dcm2niix cannot read as they are: their reference is dcm2niix on the original files
#: (it skips archives inside a folder)
REFERENCE_FROM_ORIGINAL = ("zip-in-folder",)

#: corpus series re-encoded in every lossless transfer syntax: one per vendor and layout
SYNTAX_BASES = {
    "siemens-mosaic": "dcm_qa_mosaic/In/ep2d_Asc_2",
    "siemens-classic": "dcm_qa_nih/In/20180918Si",
    "ge-dwi": "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2",
    "philips-classic": "dcm_qa_philips/In/Magdeburg_2014",
    "enhanced": "dcm_qa_enh/In",
    "uih": "dcm_qa_stc/In/UIH",
    "ge-fieldmap": "dcm_qa_fmap/In/GE",
    "siemens-fieldmap": "dcm_qa_fmap/In/Siemens",
    "ge-multiband": "dcm_qa_ge/In/SliceTimingRT",
    "philips-enhanced-phase": "dcm_qa_philips_enh/In/enh",
}
#: encodings that change more than the pixel encoding: GDCM's JPEG lossless writer moves an
#: enhanced file's per-frame rescale into the shared group (one slope for the magnitude and
#: the Hz frames of dcm_qa_enh's Philips B0 map) and rewrites frame positions, so the variant
#: is no longer the same data for anyone
NOT_FAITHFUL = {("enhanced", "jpeg-lossless"), ("philips-enhanced-phase", "jpeg-lossless")}
#: multi-series folders laid out in each export style
EXPORT_BASES = {
    "siemens-mosaic": "dcm_qa_mosaic/In",
    "siemens-classic": "dcm_qa_nih/In/20180918Si",
    "philips-classic": "dcm_qa_philips/In/Magdeburg_2014",
    "ge-dwi": "dcm_qa_ge/In",
}
EXPORT_STYLES = ("cd-dicomdir", "split-shuffled", "zip-in-folder", "reexport")
#: XA30 enhanced series split into classic instances (grayscale only)
XA_SERIES = (
    "5_anat-T1w_acq-tfl",
    "8_gre_field_mapping",
    "9_gre_field_mapping",
    "12_DWI_dir80_PA",
    "25_asl_2d_tra",
    "28_asl_2d_tra",
)


def cases(corpus: Path) -> Iterator[tuple[str, str, Builder, Path]]:
    """Every derived case: (set name, case name, builder, the original folder it derives from)."""
    for base, rel in SYNTAX_BASES.items():
        for style in transfer_syntaxes.LOSSLESS:
            if (base, style) in NOT_FAITHFUL:
                continue
            yield f"syntax-{style}", f"{base}__{style}", _syntax_builder(corpus / rel, style), corpus / rel
    for base, rel in EXPORT_BASES.items():
        for style in EXPORT_STYLES:
            yield f"export-{style}", f"{base}__{style}", _export_builder(corpus / rel, style), corpus / rel
    xa = corpus / "dcm_qa_xa30" / "In"
    for series in XA_SERIES:
        yield "xa-interop", f"xa30__{series}", _xa_builder(xa / series), xa / series


def _syntax_builder(source: Path, style: str) -> Builder:
    def build(in_dir: Path) -> None:
        transfer_syntaxes.encode(source, in_dir, style)

    return build


def _export_builder(source: Path, style: str) -> Builder:
    def build(in_dir: Path) -> None:
        {
            "cd-dicomdir": _cd_dicomdir,
            "split-shuffled": _split_shuffled,
            "zip-in-folder": _zip_in_folder,
            "reexport": _reexport,
        }[style](source, in_dir)

    return build


def _xa_builder(source: Path) -> Builder:
    def build(in_dir: Path) -> None:
        split_enhanced(sorted(p for p in source.rglob("*") if p.is_file()), in_dir)

    return build


def _files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*") if p.is_file())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- export styles


def _cd_dicomdir(source: Path, in_dir: Path) -> None:
    media = FileSet()
    for path in _files(source):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - not DICOM: left off the disc
            continue
        if not str(ds.get("StudyID", "")).strip():
            # a DICOMDIR STUDY record needs a StudyID: disc writers fill an empty one
            ds.StudyID = "1"
        media.add(ds)
    in_dir.mkdir(parents=True, exist_ok=True)
    media.write(in_dir)


def _split_shuffled(source: Path, in_dir: Path) -> None:
    for path in _files(source):
        name = _digest(str(path.relative_to(source)))
        out = in_dir / f"part{int(name[:8], 16) % 3}" / name[:16]
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)


def _zip_in_folder(source: Path, in_dir: Path) -> None:
    files = _files(source)
    folders = sorted({p.parent for p in files})
    zipped = set(folders[len(folders) // 2 :]) if len(folders) > 1 else set()
    in_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(in_dir / "MORE.ZIP", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            rel = path.relative_to(source)
            if path.parent in zipped or (not zipped and int(_digest(str(rel))[:2], 16) % 2):
                archive.write(path, f"export/{rel}")
            else:
                out = in_dir / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out)


def _reexport(source: Path, in_dir: Path) -> None:
    """The originals, plus the first image series again under SeriesNumber + 100, new instance UIDs."""
    shutil.copytree(source, in_dir / "original")
    first: str | None = None
    for path in _files(source):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - not DICOM: nothing to re-export
            continue
        if "PixelData" not in ds:
            continue
        first = first or str(ds.SeriesInstanceUID)
        if str(ds.SeriesInstanceUID) != first:
            continue
        ds.SeriesNumber = int(ds.get("SeriesNumber") or 0) + 100
        uid = generate_uid(entropy_srcs=["reexport", str(ds.SOPInstanceUID)])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        out = in_dir / "reexport" / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)


# ---------------------------------------------------------------- Siemens XA interoperable


_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
_ENHANCED_ONLY = (
    "NumberOfFrames",
    "DimensionOrganizationSequence",
    "DimensionIndexSequence",
    "PixelData",
    "SourceImageEvidenceSequence",
    "ReferencedImageEvidenceSequence",
)


def _flatten(item: Dataset, into: Dataset) -> None:
    """Copy the public leaf attributes of a functional-group item (recursively) into ``into``."""
    for element in item:
        if element.tag.is_private:
            continue
        if element.VR == "SQ":
            if element.keyword in ("DimensionIndexSequence", "ReferencedImageSequence"):
                continue
            for sub in element.value[:1]:
                _flatten(sub, into)
        elif element.keyword not in ("DimensionIndexValues",):
            into[element.tag] = copy.deepcopy(element)


def split_enhanced(paths: list[Path], out_dir: Path) -> None:
    """One classic MR instance per frame of each enhanced file in ``paths`` (files in order).

    AcquisitionNumber counts volumes: the frame's FrameAcquisitionNumber where the file has one
    volume per file (XA writes one file per volume), else its TemporalPositionIndex.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    instance = 0
    for file_number, path in enumerate(paths, start=1):
        ds = pydicom.dcmread(path)
        if "PerFrameFunctionalGroupsSequence" not in ds or ds.get("SamplesPerPixel", 1) != 1:
            continue
        pixels = ds.pixel_array
        if pixels.ndim == 2:
            pixels = pixels[None]
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
        top = Dataset()
        for element in ds:
            if element.keyword not in _GROUPS + _ENHANCED_ONLY:
                top[element.tag] = copy.deepcopy(element)
        for frame_index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            instance += 1
            new = copy.deepcopy(top)
            _flatten(shared, new)
            _flatten(frame, new)
            content = frame.get("FrameContentSequence", [Dataset()])[0]
            volume = content.get("TemporalPositionIndex") if len(paths) == 1 else None
            new.AcquisitionNumber = int(volume or file_number)
            if "EffectiveEchoTime" in new:  # classic files state EchoTime (MR Echo macro in enhanced)
                new.EchoTime = new.EffectiveEchoTime
                del new.EffectiveEchoTime
            new.InstanceNumber = instance
            stamp = str(content.get("FrameAcquisitionDateTime", ""))
            if len(stamp) >= 14:
                new.AcquisitionTime = stamp[8:]
                new.AcquisitionDate = stamp[:8]
            uid = generate_uid(entropy_srcs=["xa-interop", str(ds.SOPInstanceUID), str(frame_index)])
            new.SOPClassUID = MRImageStorage
            new.SOPInstanceUID = uid
            new.PixelData = pixels[frame_index].tobytes()
            new["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            new.file_meta = meta
            buffer = io.BytesIO()
            new.save_as(buffer, enforce_file_format=True)
            (out_dir / f"MR{instance:06d}.dcm").write_bytes(buffer.getvalue())
