"""Fixture generator: a DICOM folder re-encoded in another transfer syntax or file style.

``encode(source, target, style)`` copies every DICOM file under ``source`` to the same relative
path under ``target``, re-encoded with real encoders: pydicom's own (RLE, deflate, implicit VR,
big endian), pylibjpeg-openjpeg (JPEG 2000), pyjpegls (JPEG-LS), GDCM (JPEG lossless, process
14) and Pillow (JPEG baseline, 8-bit, lossy), or written without the 128-byte preamble, or as a
bare dataset without file meta information. Files that are not images are copied as they are.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

LOSSLESS = (
    "implicit",
    "big-endian",
    "deflated",
    "rle",
    "jpeg2000",
    "jpeg-ls",
    "jpeg-lossless",
    "no-preamble",
    "no-meta",
)
LOSSY = ("jpeg-baseline",)


def encode(source: Path, target: Path, style: str) -> None:
    """Re-encode every image file under ``source`` into ``target`` in ``style``."""
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            shutil.copyfile(path, out)
            continue
        if "PixelData" not in ds:
            shutil.copyfile(path, out)
            continue
        out.write_bytes(_encoded(ds, style))


def _encoded(ds: Dataset, style: str) -> bytes:
    buffer = io.BytesIO()
    if style == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        dcmwrite(buffer, ds, implicit_vr=True, little_endian=True, enforce_file_format=True)
    elif style == "big-endian":
        pixels = ds.pixel_array  # decoded before the transfer syntax changes
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        if ds.BitsAllocated > 8:  # OW words are stored in the file's byte order
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        dcmwrite(buffer, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    elif style == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        dcmwrite(buffer, ds, enforce_file_format=True)
    elif style in ("rle", "jpeg2000", "jpeg-ls"):
        syntax = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless, "jpeg-ls": JPEGLSLossless}[style]
        ds.compress(syntax)
        dcmwrite(buffer, ds, enforce_file_format=True)
    elif style == "jpeg-lossless":
        return _gdcm_jpeg_lossless(ds)
    elif style == "jpeg-baseline":
        _jpeg_baseline(ds)
        dcmwrite(buffer, ds, enforce_file_format=True)
    elif style == "no-preamble":
        ds.preamble = None
        dcmwrite(buffer, ds)
    elif style == "no-meta":  # an old ACR-NEMA-style file: the bare data set, implicit VR
        ds.file_meta = FileMetaDataset()
        ds.preamble = None
        dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    else:
        raise ValueError(style)
    return buffer.getvalue()


def _gdcm_jpeg_lossless(ds: Dataset) -> bytes:
    """JPEG lossless, first-order prediction (process 14, SV1), encoded by GDCM."""
    import gdcm

    plain = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dcmwrite(plain, ds, enforce_file_format=True)
    reader = gdcm.ImageReader()
    stream = plain.getvalue()
    # GDCM reads from a file name: go through a temporary file
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        src.write_bytes(stream)
        reader.SetFileName(str(src))
        if not reader.Read():
            raise RuntimeError("GDCM could not read the plain file")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("GDCM could not encode JPEG lossless")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM could not write the JPEG lossless file")
        data = dst.read_bytes()
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    return data


def eight_bit(ds: Dataset) -> np.ndarray:
    """The 8-bit image a lossy JPEG baseline file of ``ds`` starts from (the values scaled down)."""
    pixels = ds.pixel_array.astype(np.float64)
    top = max(float(pixels.max()), 1.0)
    return np.clip(np.round(pixels * (255.0 / top)), 0, 255).astype(np.uint8)


def _jpeg_baseline(ds: Dataset) -> None:
    """8-bit JPEG baseline (lossy, Pillow), one fragment per frame."""
    from PIL import Image

    frame = eight_bit(ds)
    jpeg = io.BytesIO()
    Image.fromarray(frame, mode="L").save(jpeg, format="JPEG", quality=95)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in (
        "RescaleSlope",
        "RescaleIntercept",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "WindowCenter",
        "WindowWidth",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
