"""The fast reader's per-file core: the byte-level walk, the value checks and the raw elements.

``dicom.fast`` reads a file with these functions (it documents what the walk covers). One
source, two builds: ``pip install`` compiles this file with Cython (pure Python mode) into the
extension ``packager.dicom._walk_c``, and the same file runs as it is when that extension is
missing or was built from another version of this text (``dicom.core`` chooses, and says
which). Hence the ``cython`` annotations and the ``if cython.compiled:`` branches: the compiled
build reads little-endian integers straight from the bytes into C variables, the interpreted
one with ``struct`` (indexing bytes one at a time would be slower in Python). Both give the
same tuples, elements and errors (``tests/test_fast_reader.py`` runs against both).
"""

from __future__ import annotations

import struct

import pydicom.datadict
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.tag import BaseTag

from packager.dicom.notfast import NotFast, Short
from packager.dicom.reader import ALL_VRS, LONG_VRS, VR_NAMES

try:
    import cython
except ImportError:  # interpreted without Cython installed (a wheel needs no Cython at run time)
    from packager.dicom import _cython_shim as cython

#: ``walk`` modes: the file meta group, the top level (to the end, or up to the pixel data),
#: an item of known length, an item that ends with an item delimiter. C constants when compiled
#: (a Python global would be boxed at every comparison); Python sees them through ``MODES``.
META = cython.declare(cython.int, 0)
TOP = cython.declare(cython.int, 1)
HEADERS = cython.declare(cython.int, 2)
ITEM_MODE = cython.declare(cython.int, 3)
DELIMITED = cython.declare(cython.int, 4)
MODES = (META, TOP, HEADERS, ITEM_MODE, DELIMITED)
#: Fields of a walked element (``dicom.fast.Element``).
TAG = cython.declare(cython.Py_ssize_t, 0)
VR = cython.declare(cython.Py_ssize_t, 1)
START = cython.declare(cython.Py_ssize_t, 2)
END = cython.declare(cython.Py_ssize_t, 3)
ITEMS = cython.declare(cython.Py_ssize_t, 4)
UNDEFINED = cython.declare(cython.Py_ssize_t, 5)
#: An undefined length (sequences, items, encapsulated pixel data).
UNDEFINED_LENGTH = cython.declare(cython.ulonglong, 0xFFFFFFFF)
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # pydicom's stop_before_pixels set
#: Binary numbers: pydicom refuses a value whose length is not a multiple of the item size.
NUMBER_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8, "AT": 4}
CHECKED = frozenset(NUMBER_SIZES) | {"DS", "IS", "UN"}
#: Sequences built from the walk when the file is read (see ``dicom.fast._EAGER_SEQUENCES``).
EAGER_SEQUENCES = frozenset({0x52009229, 0x52009230, 0x00189117})
_HEAD = struct.Struct("<HH2sH").unpack_from
_ITEM = struct.Struct("<HHI").unpack_from
_U32 = struct.Struct("<I").unpack_from


def _vr_table() -> list:
    """VR names by ``(first - 65) * 26 + (second - 65)`` of their two capital letters."""
    table: list = [None] * (26 * 26)
    for code, name in VR_NAMES.items():
        if len(code) == 2 and 65 <= code[0] <= 90 and 65 <= code[1] <= 90:
            table[(code[0] - 65) * 26 + (code[1] - 65)] = name
    return table


_VR_TABLE = _vr_table()
#: The VR names ``_VR_TABLE`` does not hold (none today): the compiled walk looks them up by bytes.
_OTHER_VRS = {code: name for code, name in VR_NAMES.items() if name not in _VR_TABLE}
_new_tuple = tuple.__new__
_EMPTY: dict = {}
#: One ``BaseTag`` per tag number, shared by every element made (an immutable int: making one
#: costs more than finding it; a few thousand tags at most, private ones included).
_TAGS: dict = {}


@cython.cfunc
@cython.inline
def _u16(data: cython.p_const_uchar, at: cython.Py_ssize_t) -> cython.uint:
    return data[at] | (data[at + 1] << 8)


@cython.cfunc
@cython.inline
def _u32(data: cython.p_const_uchar, at: cython.Py_ssize_t) -> cython.ulonglong:
    return (
        cython.cast(cython.ulonglong, data[at])
        | (cython.cast(cython.ulonglong, data[at + 1]) << 8)
        | (cython.cast(cython.ulonglong, data[at + 2]) << 16)
        | (cython.cast(cython.ulonglong, data[at + 3]) << 24)
    )


@cython.ccall
@cython.locals(
    previous=cython.longlong,
    tag=cython.longlong,
    group=cython.uint,
    number=cython.uint,
    length=cython.ulonglong,
    start=cython.Py_ssize_t,
    end=cython.Py_ssize_t,
    first=cython.uint,
    second=cython.uint,
    top=cython.bint,
)
def walk(buffer: bytes, position: cython.Py_ssize_t, limit: cython.Py_ssize_t, mode: cython.int, checks: list) -> tuple:
    """``(elements, position, pixel_at)``: elements from ``position`` up to ``limit`` (see the
    modes above), where the walk ended, and the pixel data element's offset (or None).

    Elements whose value pydicom might refuse (numbers, decimal and integer strings, UN) are
    appended to ``checks`` for ``check_values``."""
    data: cython.p_const_uchar = buffer
    elements: list = []
    previous = -1
    pixel_at: object = None
    top = mode == TOP or mode == HEADERS
    while position < limit:
        if limit - position < 8:
            raise Short
        if cython.compiled:
            group = _u16(data, position)
            number = _u16(data, position + 2)
            first, second = data[position + 4], data[position + 5]
            if 65 <= first <= 90 and 65 <= second <= 90:
                vr = _VR_TABLE[(first - 65) * 26 + (second - 65)]
            else:
                vr = _OTHER_VRS.get(buffer[position + 4 : position + 6])
            length = _u16(data, position + 6)
        else:
            group, number, vr_bytes, length = _HEAD(buffer, position)
            vr = VR_NAMES.get(vr_bytes)
        if group == 0xFFFE:
            if mode == DELIMITED and number == 0xE00D:
                return elements, position + 8, None
            raise NotFast("delimiter out of place")
        if mode == META:
            if group != 2:
                break
        elif group == 0:
            raise NotFast("command group")
        tag = group << 16 | number
        if tag <= previous:
            raise NotFast("elements out of order")
        previous = tag
        if vr is None:
            raise NotFast("unknown VR")
        if vr in LONG_VRS:
            if limit - position < 12:
                raise Short
            if cython.compiled:
                length = _u32(data, position + 8)
            else:
                length = _U32(buffer, position + 8)[0]
            start = position + 12
        else:
            start = position + 8
        if top and group == 0x7FE0 and pixel_at is None and tag in PIXEL_TAGS:
            pixel_at = position
            if mode == HEADERS:
                return elements, position, pixel_at
            if length == UNDEFINED_LENGTH and (vr == "OB" or vr == "OW"):  # encapsulated (compressed) frames
                end = _fragments_end(buffer, start, limit)
                elements.append((tag, vr, start, end, None, True))
                position = end + 8
                continue
        if length == UNDEFINED_LENGTH:
            if vr != "SQ":
                raise NotFast("undefined length")  # e.g. a UN that may hide a sequence
            items, position = _items(buffer, start, -1, limit, checks)
            elements.append((tag, vr, start, position - 8, items, True))
            continue
        end = start + cython.cast(cython.Py_ssize_t, length)
        if end > limit:
            raise Short
        if vr == "SQ":
            elements.append((tag, vr, start, end, _items(buffer, start, end, end, checks)[0], False))
        else:
            if vr == "UN" and group & 1:
                vr = _private_vr(buffer, elements, tag)
            element = (tag, vr, start, end, None, False)
            elements.append(element)
            if vr in CHECKED:
                checks.append(element)
        position = end
    if mode == DELIMITED:
        raise Short
    if top and position != limit:
        raise NotFast("trailing bytes")
    return elements, position, pixel_at


@cython.cfunc
def _private_vr(buffer: bytes, elements: list, tag: cython.longlong) -> str:
    """The VR pydicom gives a private UN element: from the private dictionary by its creator."""
    number = tag & 0xFFFF
    if 0x10 <= number <= 0xFF:
        return "LO"  # a private creator
    if not number & 0xFF00:
        return "UN"
    creator_tag = (tag & 0xFFFF0000) | (number >> 8)
    creator = next((e for e in reversed(elements) if e[TAG] == creator_tag), None)
    if creator is None:
        return "UN"
    name = buffer[creator[START] : creator[END]]
    if not name.isascii() or b"\\" in name or b"\x1b" in name:
        raise NotFast("private creator")
    try:
        vr = pydicom.datadict.private_dictionary_VR(tag, name.decode("ascii").rstrip("\x00 "))
    except KeyError:
        return "UN"
    if vr not in ALL_VRS or vr == "SQ":
        raise NotFast("private VR")  # ambiguous ("US or SS") or a sequence stored as UN
    return vr


@cython.ccall
@cython.locals(group=cython.uint, number=cython.uint, length=cython.ulonglong)
def _fragments_end(buffer: bytes, position: cython.Py_ssize_t, limit: cython.Py_ssize_t) -> cython.Py_ssize_t:
    """Offset of the sequence delimiter that ends encapsulated pixel data."""
    data: cython.p_const_uchar = buffer
    while True:
        if limit - position < 8:
            raise NotFast("encapsulated pixel data not terminated")
        if cython.compiled:
            group, number, length = _u16(data, position), _u16(data, position + 2), _u32(data, position + 4)
        else:
            group, number, length = _ITEM(buffer, position)
        if group != 0xFFFE:
            raise NotFast("bad fragment")
        if number == 0xE0DD:
            return position
        if number != 0xE000 or length == UNDEFINED_LENGTH:
            raise NotFast("bad fragment")
        position += 8 + cython.cast(cython.Py_ssize_t, length)
        if position > limit:
            raise NotFast("bad fragment")


@cython.cfunc
@cython.locals(group=cython.uint, number=cython.uint, length=cython.ulonglong, start=cython.Py_ssize_t)
def _items(
    buffer: bytes, position: cython.Py_ssize_t, end: cython.Py_ssize_t, limit: cython.Py_ssize_t, checks: list
) -> tuple:
    """``(items, position after them)`` of a sequence ending at ``end`` (defined length) or, with
    ``end`` -1, at its delimiter."""
    data: cython.p_const_uchar = buffer
    items: list = []
    while True:
        if end >= 0 and position == end:
            return tuple(items), position
        if limit - position < 8:
            raise Short
        if cython.compiled:
            group, number, length = _u16(data, position), _u16(data, position + 2), _u32(data, position + 4)
        else:
            group, number, length = _ITEM(buffer, position)
        if group != 0xFFFE:
            raise NotFast("not an item")
        if number == 0xE0DD and end < 0:
            return tuple(items), position + 8
        if number != 0xE000:
            raise NotFast("not an item")
        start = position + 8
        if length == UNDEFINED_LENGTH:
            elements, position, _ = walk(buffer, start, limit, DELIMITED, checks)
        else:
            if start + cython.cast(cython.Py_ssize_t, length) > limit:
                raise Short
            elements, position, _ = walk(
                buffer, start, start + cython.cast(cython.Py_ssize_t, length), ITEM_MODE, checks
            )
        items.append(tuple(elements))


def empty(vr: str):
    """pydicom's raw value of an empty element of this VR (cached)."""
    value = _EMPTY.get(vr)
    if value is None:
        value = _EMPTY[vr] = empty_value_for_VR(vr, raw=True)
    return value


@cython.ccall
@cython.locals(start=cython.Py_ssize_t, end=cython.Py_ssize_t)
def raw_element(buffer: bytes, element: tuple, key: object):
    """The ``RawDataElement`` pydicom's reader makes of one walked element (field order:
    ``dicom.fast.RAW_FIELDS``)."""
    vr = element[VR]
    start, end = element[START], element[END]
    value = buffer[start:end] if end > start else empty(vr)
    # tuple.__new__ skips the namedtuple's Python-level constructor (same object)
    return _new_tuple(
        RawDataElement,
        (
            key,
            vr,
            UNDEFINED_LENGTH if element[UNDEFINED] and element[ITEMS] is None else end - start,
            value,
            start,
            False,
            True,
            True,
            False,
        ),
    )


@cython.ccall
def make_elements(buffer: bytes, elements, encodings: tuple, eager: cython.bint, make_sequence) -> dict:
    """``{tag: element}`` of walked elements: a raw element each, or for a sequence that is
    built now (eager, or one of ``EAGER_SEQUENCES``) ``make_sequence(buffer, element, key,
    encodings)``."""
    out: dict = {}
    for element in elements:
        tag = element[TAG]
        key = _TAGS.get(tag)
        if key is None:
            key = _TAGS[tag] = BaseTag(tag)
        if element[ITEMS] is None or not (eager or tag in EAGER_SEQUENCES):
            out[key] = raw_element(buffer, element, key)
        else:
            out[key] = make_sequence(buffer, element, key, encodings)
    return out


@cython.ccall
@cython.locals(start=cython.Py_ssize_t, end=cython.Py_ssize_t)
def check_values(buffer: bytes, checks: tuple, encodings: tuple, convert) -> None:
    """Raise ``NotFast`` where pydicom's ``parse_all`` would raise (see ``dicom.fast``).

    Only numbers, decimal/integer strings and UN can fail there (text is decoded with
    replacement, sequences were parsed by the walk). Doubtful values go to ``convert(buffer,
    element, encodings)``, pydicom's own conversion, which raises ``NotFast`` where it fails."""
    for element in checks:
        vr = element[VR]
        start, end = element[START], element[END]
        if vr == "DS" or vr == "IS":
            try:
                for piece in buffer[start:end].split(b"\\"):
                    if piece.strip(b" \x00"):
                        float(piece) if vr == "DS" else int(piece)
            except ValueError:
                convert(buffer, element, encodings)
        elif vr == "UN":
            if not element[TAG] >> 16 & 1:  # a standard element stated as UN: pydicom re-reads it as its dictionary VR
                raise NotFast("standard element as UN")
        elif (end - start) % NUMBER_SIZES[vr]:
            convert(buffer, element, encodings)


#: The digest of the text a compiled build was made from (``setup.py`` appends it to the copy
#: it compiles); None here, in the source.
BUILT_FROM = None
