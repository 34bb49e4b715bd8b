"""One header accessor for every stage: a dataset and a keyword or tag -> a typed value, None when absent.

``value`` is the element's value as pydicom converts it (each distinct raw value converted once
per process); ``text``, ``number``, ``integer`` and ``numbers`` coerce it, and ``as_number``,
``as_integer``, ``as_numbers`` coerce a value from elsewhere (a private element, a vendor
block). The rules, one for every caller: a number is a finite float (the first of a
multi-value; never raw bytes, whose VR nobody decoded); numbers are all finite, of the count
asked for; text is stripped, multi-values joined by a backslash as DICOM stores them. Nothing
here raises on a malformed value: it is absent.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from packager.dicom.reader import reading_settings

#: What names an element: a keyword, a tag as an int, or a (group, element) pair.
Key = str | int | tuple[int, int]


def value(ds: Dataset, key: Key):
    """``ds.get(key)`` for a keyword or tag: the element's value (None when absent).

    The same raw bytes of the same tag and VR convert to the same value, so each distinct raw
    value is converted by pydicom once per process (``_converted``) rather than once per file:
    most of a series' header repeats from file to file, and pydicom's conversion costs ~15 us
    an element. The value may be shared between datasets: read it, never change it in place.
    """
    tag = _tag(key)
    # Dataset.get_item(tag), less its key parsing: these datasets hold no deferred values
    element = ds.__dict__["_dict"].get(tag)
    if element is None:
        return None
    if type(element) is not RawDataElement:
        return ds[tag].value
    if element.VR in _UNCACHED_VRS or element.value is None:
        with reading_settings():
            return ds[tag].value
    if element.VR in _BYTES_VRS:  # pydicom's value is the raw bytes: nothing to convert or cache
        return element.value
    encoding = decoding_charset(ds)
    return _converted(
        tag,
        element.VR,
        element.value,
        element.is_implicit_VR,
        element.is_little_endian,
        encoding if isinstance(encoding, str) else tuple(encoding),
    )


def decoding_charset(ds: Dataset):
    """The character set pydicom decodes ``ds``'s raw text with (what ``Dataset.__getitem__`` uses)."""
    return ds.original_character_set or ds._character_set


#: Not cached: unknown or ambiguous VRs depend on the dataset around them; sequences hold datasets.
_UNCACHED_VRS = frozenset({None, "UN", "SQ", "US or SS", "OB or OW", "US or OW", "US or SS or OW"})
#: Read as they are (pydicom's OB and OW values are the raw bytes, little endian as read): large
#: vendor blocks (GE user data, Siemens CSA) that caching by value would only fill memory with.
_BYTES_VRS = frozenset({"OB", "OW"})


@lru_cache(maxsize=1 << 14)
def _tag(key: Key) -> BaseTag:
    from pydicom.tag import Tag

    return Tag(key)


@lru_cache(maxsize=1 << 14)
def _converted(tag: int, vr: str, raw: bytes, implicit: bool, little: bool, encoding):
    element = RawDataElement(BaseTag(tag), vr, len(raw), raw, 0, implicit, little)
    with reading_settings():
        as_given = encoding if isinstance(encoding, str) else list(encoding)
        return convert_raw_data_element(element, encoding=as_given).value


def text(ds: Dataset, key: Key) -> str | None:
    """The element's text, stripped (multi-values joined by a backslash); None when absent."""
    found = value(ds, key)
    if found is None:
        return None
    if isinstance(found, MultiValue):
        return "\\".join(str(v) for v in found)
    return str(found).strip()


def number(ds: Dataset, key: Key) -> float | None:
    """``as_number`` of the element's value."""
    return as_number(value(ds, key))


def integer(ds: Dataset, key: Key) -> int | None:
    """``as_integer`` of the element's value."""
    return as_integer(value(ds, key))


def numbers(ds: Dataset, key: Key, count: int | None = None) -> tuple[float, ...] | None:
    """``as_numbers`` of the element's value."""
    return as_numbers(value(ds, key), count)


def as_number(found: Any) -> float | None:
    """A finite float from a DICOM value (first of a multi-value, bytes never), else None."""
    if isinstance(found, (list, tuple, MultiValue)):
        found = found[0] if len(found) else None
    if found is None or isinstance(found, (bytes, bytearray)):
        return None
    try:
        result = float(found)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def as_integer(found: Any) -> int | None:
    """``as_number`` truncated to an int (as ``int(float)`` does), else None."""
    result = as_number(found)
    return None if result is None else int(result)


def as_numbers(found: Any, count: int | None = None) -> tuple[float, ...] | None:
    """Every value as a finite float (a lone number is one value; text is split at backslashes),
    exactly ``count`` of them when given; else None."""
    if found is None or isinstance(found, (bytes, bytearray)):
        return None
    if isinstance(found, str):
        found = found.split("\\")
    elif isinstance(found, (int, float)):
        found = (found,)
    try:
        result = tuple(float(v) for v in found)
    except (TypeError, ValueError):
        return None
    if (count is not None and len(result) != count) or not all(math.isfinite(v) for v in result):
        return None
    return result
