"""Pixel decoding for convert: a full dataset -> its pixels as a numpy array, or what to install to decode them.

Native grey-scale data are viewed straight from the bytes (``pixels``); anything else is
pydicom's ``pixel_array``. ``decoder_problem`` names the decoder plugin a compressed transfer
syntax needs, value-free.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from packager.dicom.header import value

_NATIVE_LITTLE = frozenset({"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"})
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})


def pixels(ds: Dataset):
    """``ds.pixel_array``, decoded directly when the data are native, little-endian, grey-scale
    8/16/32-bit integers (what MR scanners write): numpy views the bytes, and pydicom's own rule
    for unused high bits (shift left, then right: masks unsigned, sign-extends signed values)
    is applied. pydicom's decoder costs ~1 ms a call in option handling for a 64x64 image, ten
    times the decoding; anything else (compressed, colour, float, 1-bit, big endian, a length
    that does not match) is pydicom's ``pixel_array`` (tests/test_fast_reader.py: equal arrays).
    """
    import numpy as np

    meta = getattr(ds, "file_meta", None)
    syntax = str(value(meta, "TransferSyntaxUID") or "") if meta is not None else ""
    element = ds.get_item(0x7FE00010)
    try:
        rows, columns = int(value(ds, "Rows")), int(value(ds, "Columns"))
        allocated, stored = int(value(ds, "BitsAllocated")), int(value(ds, "BitsStored"))
        signed = int(value(ds, "PixelRepresentation"))
        samples = int(value(ds, "SamplesPerPixel") or 1)
        frames = int(value(ds, "NumberOfFrames") or 1)
        photometric = str(value(ds, "PhotometricInterpretation") or "").strip()
    except (TypeError, ValueError):
        return ds.pixel_array
    data = element.value if element is not None else None
    count = rows * columns * frames
    if (
        syntax not in _NATIVE_LITTLE
        or not isinstance(data, bytes)
        or samples != 1
        or photometric not in _MONOCHROME
        or allocated not in (8, 16, 32)
        or not 0 < stored <= allocated
        or signed not in (0, 1)
        or rows <= 0
        or columns <= 0
        or frames <= 0
        or len(data) not in (count * allocated // 8, count * allocated // 8 + 1)
    ):
        return ds.pixel_array
    array = np.frombuffer(data, dtype=f"<{'i' if signed else 'u'}{allocated // 8}", count=count).copy()
    if stored < allocated:
        shift = allocated - stored
        np.left_shift(array, shift, out=array)
        np.right_shift(array, shift, out=array)
    return array.reshape((frames, rows, columns) if frames > 1 else (rows, columns))


# What to install for each family of compressed transfer syntaxes (pydicom's decoder plugins).
_DECODER_PACKAGES = (
    (("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20"), "pylibjpeg pylibjpeg-openjpeg"),  # JPEG 2000, HTJ2K
    (("1.2.840.10008.1.2.4.",), "pylibjpeg pylibjpeg-libjpeg"),  # JPEG baseline/extended/lossless, JPEG-LS
)


def decoder_problem(ds: Dataset) -> str | None:
    """Why the pixel data of ``ds`` cannot be decoded here, naming what to install; None if it can.

    Value-free: names the transfer syntax (a DICOM standard name), never a header value.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    syntax = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
    if not syntax or not syntax.is_transfer_syntax or not syntax.is_compressed:
        return None
    name = syntax.name
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"{name} pixel data: no decoder exists for this transfer syntax (export the series uncompressed)"
    if decoder.is_available:
        return None
    packages = next(
        (pkgs for prefixes, pkgs in _DECODER_PACKAGES if syntax.startswith(prefixes)),
        "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg",
    )
    return (
        f"{name} pixel data and no decoder installed: pip install {packages} "
        "(or python-gdcm; dcmpack installs the pylibjpeg ones: a broken install?)"
    )
