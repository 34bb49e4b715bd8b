"""The fast reader: a byte-level walk over explicit VR little endian DICOM -> pydicom datasets.

It covers every native and encapsulated transfer syntax but implicit VR, big endian and
deflate (all the MR data we have seen), and is written by hand because pydicom spends ~15 us
of Python per element building objects the header pass then discards, where the walk needs
~1 us. It builds the same datasets pydicom would (``RawDataElement`` values, converted by
pydicom when accessed) and also hands back the parsed element tree (``Element``) so the PHI
collection (``phi.collect_elements``) needs no pydicom objects at all. It checks every value
the way the pydicom path's ``parse_all`` does (numbers of the stated length, decimal and
integer strings that parse), delegating anything unusual to pydicom's own converter. Whatever
it does not cover exactly (another transfer syntax, a UN element that may hide a sequence,
elements out of order, a structure error, a value pydicom would refuse) raises ``NotFast``:
the caller then reads the file with ``reader.read_dataset``, so results and error messages
never depend on which reader ran. ``tests/test_fast_reader.py`` checks that both give equal
datasets, headers and PHI values on every corpus, sample and fuzzed file.

The per-element work (the walk, the value checks, the raw elements) is in ``dicom.walk``,
compiled with Cython when installed; ``dicom.core`` picks the build (``CORE``).
"""

from __future__ import annotations

import gzip
import itertools
import os
import zlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pydicom
import pydicom.config
import pydicom.datadict
import pydicom.uid
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from packager.dicom.core import CORE  # looked up at each call: the tests swap it
from packager.dicom.notfast import NotFast
from packager.dicom.notfast import Short as _Short
from packager.dicom.reader import BIG_ENDIAN, DEFLATED, IMPLICIT_LE, reading_settings

__all__ = ["NotFast"]  # re-exported: callers catch it from here


#: One element of the walked tree, a plain tuple (namedtuples cost a Python call each):
#: ``(tag, vr, start, end, items, undefined)``. The value is ``buffer[start:end]``; ``vr`` is the
#: VR pydicom gives the element (a private UN resolved through the private dictionary, as
#: pydicom does); ``items`` is None, or for a sequence one tuple of elements per item;
#: ``undefined`` marks an undefined length (sequences, encapsulated pixel data).
Element = tuple
TAG, VR, START, END, ITEMS, UNDEFINED = range(6)


@dataclass(frozen=True, slots=True)
class FastFile:
    """What ``read_fast`` read: the dataset, its element tree and where the pixel data starts.

    ``pixel_at`` is the offset of the pixel data element (None when there is none);
    ``size`` the file's (decompressed) size. ``elements`` and ``meta_elements`` index into
    ``buffer``; ``encodings`` are the top level's character set encodings.
    """

    dataset: FileDataset
    buffer: bytes
    elements: tuple[Element, ...]
    meta_elements: tuple[Element, ...]
    encodings: tuple[str, ...]
    pixel_at: int | None
    size: int
    checks: tuple[Element, ...] = ()


#: Encodings of the file meta group (always explicit VR little endian, default character set).
META_ENCODINGS = ("iso8859",)
#: Read this much first in a headers-only read; the rest only when the header is longer.
_FIRST_READ = 1 << 16


@reading_settings()
def read_fast(path: Path, *, headers_only: bool, data: bytes | None = None, lazy: bool = False) -> FastFile:
    """Read ``path`` (or its bytes ``data``) with the fast reader; raises ``NotFast`` or OSError.

    With ``headers_only`` the walk stops at the pixel data, and a plain file is read only as far
    as its header goes. With ``lazy`` the top-level elements become pydicom elements only when
    the dataset is asked for them (``_LazyElements``): for a reader of a few dozen elements, such
    as the header pass, out of several hundred.
    """
    if data is None:
        with open(path, "rb") as handle:
            head = handle.read(2)
            if head == b"\x1f\x8b":
                handle.seek(0)
                try:
                    with gzip.open(handle) as inner:
                        data = inner.read()
                except (EOFError, zlib.error):  # truncated or corrupt: pydicom's path names the file
                    raise NotFast("gzip stream") from None
            else:
                handle.seek(0)
                if headers_only:
                    data = handle.read(_FIRST_READ)
                    size = os.fstat(handle.fileno()).st_size
                    if len(data) < size:
                        try:
                            return _read(path, data, headers_only, size, lazy)
                        except _Short:
                            data += handle.read()
                else:
                    data = handle.read()
    try:
        return _read(path, data, headers_only, len(data), lazy)
    except _Short:
        raise NotFast("truncated") from None


def _read(path: Path, buffer: bytes, headers_only: bool, size: int, lazy: bool = False) -> FastFile:
    if len(buffer) < 132 or buffer[128:132] != b"DICM":
        raise NotFast("no DICM prefix")
    limit = len(buffer)
    checks: list[Element] = []
    meta, position, _ = CORE.walk(buffer, 132, limit, _META, checks)
    syntax = ""
    for tag, _, start, end, _, _ in meta:
        if tag == 0x00020010:
            syntax = buffer[start:end].decode("latin-1").rstrip("\x00 ")
    if not syntax or syntax in (IMPLICIT_LE, BIG_ENDIAN, DEFLATED) or syntax in pydicom.uid.PrivateTransferSyntaxes:
        raise NotFast("transfer syntax")
    elements, position, pixel_at = CORE.walk(buffer, position, limit, _HEADERS if headers_only else _TOP, checks)
    if pixel_at is None and limit < size:
        raise _Short  # the header goes on past what was read
    try:
        encodings = encodings_of(buffer, elements, ("iso8859",))
    except (ValueError, LookupError):  # a corrupt (0008,0005), e.g. a NUL byte: pydicom's path names the file
        raise NotFast("character set") from None
    file_meta = FileMetaDataset(_raw_dict(buffer, meta, META_ENCODINGS))
    file_meta.set_original_encoding(False, True, "iso8859")
    top = _LazyElements(buffer, elements, encodings) if lazy else _raw_dict(buffer, elements, encodings)
    ds = FileDataset(str(path), top, buffer[:128], file_meta, False, True)
    ds.set_original_encoding(False, True, one_encoding(encodings))
    return FastFile(ds, buffer, tuple(elements), tuple(meta), encodings, pixel_at, size, tuple(checks))


# ``walk`` modes (``dicom.walk``): the file meta group, the top level (to the end, or up to
# the pixel data), an item of known length, an item that ends with an item delimiter.
_META, _TOP, _HEADERS, _ITEM_MODE, _DELIMITED = CORE.MODES


@lru_cache(maxsize=64)
def _python_encodings(charset: bytes) -> tuple[str, ...]:
    from pydicom.values import convert_string

    return tuple(convert_encodings(convert_string(charset, True)))


def encodings_of(buffer: bytes, elements, parent: tuple[str, ...]) -> tuple[str, ...]:
    """Character set encodings of a dataset: its (0008,0005) or its parent's."""
    for tag, vr, start, end, _, _ in elements:
        if tag == 0x00080005:
            if vr not in ("CS", "UN", None):
                # pydicom reads a character set stated as numbers (e.g. VR US) as numbers and
                # fails on them: leave such a file to it, so both readers fail alike
                raise NotFast("SpecificCharacterSet with a VR other than CS")
            return _python_encodings(buffer[start:end])
        if tag > 0x00080005:
            break
    return parent


#: The field order ``_raw_dict`` builds RawDataElements in (tests/test_fast_reader.py checks it).
RAW_FIELDS = (
    "tag",
    "VR",
    "length",
    "value",
    "value_tell",
    "is_implicit_VR",
    "is_little_endian",
    "is_raw",
    "is_buffered",
)


#: Sequences built from our walk when the file is read, with everything nested in them: the
#: ones every stage reads (enhanced functional groups, the MR diffusion macro). Any other
#: sequence stays a raw element that pydicom parses itself if some stage ever asks for it.
_EAGER_SEQUENCES = CORE.EAGER_SEQUENCES


def _raw_dict(buffer: bytes, elements, encodings: tuple[str, ...], eager: bool = False) -> dict:
    """``{tag: RawDataElement}`` as pydicom's reader makes it (see ``_EAGER_SEQUENCES``)."""
    return CORE.make_elements(buffer, elements, encodings, eager, _sequence)


def _make(buffer: bytes, element: Element, key: BaseTag, encodings: tuple[str, ...], eager: bool):
    """The pydicom element for one walked element: raw, or a built sequence (see ``_raw_dict``)."""
    if element[ITEMS] is None or not (eager or element[TAG] in _EAGER_SEQUENCES):
        return CORE.raw_element(buffer, element, key)
    return _sequence(buffer, element, key, encodings)


def _sequence(buffer: bytes, element: Element, key: BaseTag, encodings: tuple[str, ...]) -> DataElement:
    """A walked sequence built now, items and all (``_make``)."""
    tag, vr, start, end, items, undefined = element
    parent = one_encoding(encodings)
    datasets = []
    for item in items:
        own = encodings_of(buffer, item, encodings)
        datasets.append(_item_dataset(_raw_dict(buffer, item, own, True), parent, one_encoding(own)))
    return DataElement(key, "SQ", Sequence(datasets), file_value_tell=start, is_undefined_length=undefined)


class _LazyElements(dict):
    """A dataset's ``_dict`` whose top-level elements are made (``_make``) when first asked for.

    pydicom reaches ``Dataset._dict`` through ``[]``, ``get``, ``in``, ``keys()`` and friends, all
    answered here as if every element were present; anything that lists, counts or copies the
    elements through these methods makes them all first. ``dict(lazy)`` would copy only the
    elements made so far: copy with ``copy_elements`` (the dicom2nifti probe does).
    """

    def __init__(self, buffer: bytes, elements, encodings: tuple[str, ...]):
        super().__init__()
        self._buffer = buffer
        self._encodings = encodings
        self._pending = {element[0]: element for element in elements}
        self._items: dict[int, dict[int, Dataset]] = {}  # sequence items made one at a time

    def _take(self, key):
        element = self._pending.pop(key)  # KeyError: not in the file
        made = _make(self._buffer, element, BaseTag(element[0]), self._encodings, False)
        dict.__setitem__(self, made.tag, made)
        return made

    def _all(self) -> None:
        if self._pending:
            made = _raw_dict(self._buffer, self._pending.values(), self._encodings)
            self._pending = {}
            dict.update(self, made)

    def __missing__(self, key):
        return self._take(key)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or key in self._pending

    def get(self, key, default=None):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        return self._take(key) if key in self._pending else default

    def __setitem__(self, key, value) -> None:
        self._pending.pop(key, None)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key) -> None:
        if self._pending.pop(key, None) is None:
            dict.__delitem__(self, key)

    def __len__(self) -> int:
        return dict.__len__(self) + len(self._pending)

    def __iter__(self):
        self._all()
        return dict.__iter__(self)

    def keys(self):
        self._all()
        return dict.keys(self)

    def values(self):
        self._all()
        return dict.values(self)

    def items(self):
        self._all()
        return dict.items(self)

    def copy(self):
        self._all()
        return dict(self)

    def pop(self, key, *default):
        if key in self._pending:
            self._take(key)
        return dict.pop(self, key, *default)

    def popitem(self):
        self._all()
        return dict.popitem(self)

    def setdefault(self, key, default=None):
        if key in self._pending:
            return self._take(key)
        return dict.setdefault(self, key, default)

    def clear(self) -> None:
        self._pending.clear()
        dict.clear(self)

    def __reduce__(self):
        self._all()
        return (dict, (dict(self),))

    def branch(self) -> _LazyElements:
        """A copy that makes its own elements (the made ones are shared, as ``dict.copy``)."""
        other = _LazyElements.__new__(_LazyElements)
        dict.update(other, self)
        other._buffer, other._encodings, other._pending = self._buffer, self._encodings, dict(self._pending)
        other._items = {}
        return other

    def tags(self) -> list[int]:
        return sorted(set(dict.keys(self)) | set(self._pending))

    def unmade_and_made(self) -> Iterator[int]:
        """Every top-level tag, in no order, without making anything."""
        return itertools.chain(dict.keys(self), self._pending)


@reading_settings()
def make_all(ds: Dataset) -> Dataset:
    """Make every element of a lazily read dataset now (``read_fast(lazy=True)``); returns ``ds``.

    The file's bytes are let go then (the elements hold copies of their values): a series read
    this way holds its pixel data once, not twice.
    """
    elements = ds.__dict__.get("_dict")
    if isinstance(elements, _LazyElements):
        elements._all()
        elements._buffer = b""
        elements._items.clear()
    return ds


def tags(ds: Dataset) -> list[int]:
    """The dataset's top-level tags, in order, without making lazily read elements."""
    elements = ds.__dict__.get("_dict")
    return elements.tags() if isinstance(elements, _LazyElements) else sorted(ds.keys())


def group_tags(ds: Dataset, group: int) -> list[int]:
    """The dataset's top-level tags of one group, in order, as plain ints, without making lazily
    read elements or sorting the other groups' tags (pydicom's tags compare in Python: sorting a
    header's few hundred costs ~0.1 ms)."""
    elements = ds.__dict__.get("_dict")
    every = elements.unmade_and_made() if isinstance(elements, _LazyElements) else ds.keys()
    return sorted(int(tag) for tag in every if tag >> 16 == group)  # int shifts: no Python compare


@dataclass(frozen=True, slots=True)
class WalkedSequence:
    """A sequence the fast reader walked and has not made into pydicom objects (yet).

    ``item(i)`` makes one item, as ``_make`` would have made it among all the others (cached);
    ``element`` makes one element of the walk, raw (sequences included), ``encodings_of`` finds
    an item's character set. For readers that need a
    few items of a long sequence (one frame's functional groups among thousands), or its
    elements without the items around them (``frames.frame_views``).
    """

    buffer: bytes
    items: tuple
    encodings: tuple[str, ...]
    made: dict

    def __len__(self) -> int:
        return len(self.items)

    def item(self, index: int) -> Dataset:
        made = self.made.get(index)
        if made is None:
            own = encodings_of(self.buffer, self.items[index], self.encodings)
            made = _item_dataset(
                _raw_dict(self.buffer, self.items[index], own, True), one_encoding(self.encodings), one_encoding(own)
            )
            self.made[index] = made
        return made

    def element(self, element: Element, encodings: tuple[str, ...]):
        """One element of the walk, raw (a sequence too: pydicom parses it if it is read)."""
        return _make(self.buffer, element, BaseTag(element[TAG]), encodings, False)

    def encodings_of(self, elements, parent: tuple[str, ...]) -> tuple[str, ...]:
        return encodings_of(self.buffer, elements, parent)


def walked_sequence(ds: Dataset, tag: int) -> WalkedSequence | None:
    """Top-level sequence ``tag`` of ``ds`` as walked by the fast reader, if not made yet."""
    elements = ds.__dict__.get("_dict")
    if not isinstance(elements, _LazyElements):
        return None
    element = elements._pending.get(tag)
    if element is None or element[ITEMS] is None:
        return None
    return WalkedSequence(elements._buffer, element[ITEMS], elements._encodings, elements._items.setdefault(tag, {}))


def copy_elements(elements: MutableMapping) -> dict:
    """A shallow copy of a dataset's ``_dict`` (``_LazyElements`` keep their laziness while some
    elements are not made yet; once all are, a plain dict: its lookups are C, not Python)."""
    if isinstance(elements, _LazyElements) and elements._pending:
        return elements.branch()
    return dict.copy(elements) if isinstance(elements, dict) else dict(elements)


@lru_cache(maxsize=16)
def _item_template(parent, own) -> tuple[dict, tuple[tuple[str, type], ...]]:
    """The attributes ``Dataset(parent_encoding=...)`` + ``set_original_encoding`` give an item:
    (the immutable ones, (name, type) of the containers each item needs afresh)."""
    template = Dataset(parent_encoding=parent)
    template.set_original_encoding(False, True, own)
    fixed, fresh = {}, []
    for name, value in template.__dict__.items():
        if isinstance(value, (dict, list, set)):
            fresh.append((name, type(value)))
        else:
            fixed[name] = value
    return fixed, tuple(fresh)


def _item_dataset(raw: dict, parent, own) -> Dataset:
    """A sequence item: what ``Dataset(raw)`` builds, without its per-attribute ``__setattr__``
    (pydicom's checks cost ~40 us an item and enhanced files have thousands of items). The
    attributes are copied from a real ``Dataset`` made once, so this follows pydicom's own
    ``__init__``; mutable ones (caches) are fresh per item."""
    fixed, fresh = _item_template(
        parent if isinstance(parent, str) else tuple(parent), own if isinstance(own, str) else tuple(own)
    )
    item = Dataset.__new__(Dataset)
    attributes = item.__dict__
    attributes.update(fixed)
    for name, kind in fresh:
        attributes[name] = kind()
    attributes["_dict"] = raw
    return item


def one_encoding(encodings: tuple[str, ...]):
    """Encodings as pydicom keeps them on a dataset (one name, or a list of them)."""
    return encodings[0] if len(encodings) == 1 else list(encodings)


@reading_settings()
def check_values(fast: FastFile) -> None:
    """Raise ``NotFast`` where pydicom's ``parse_all`` would raise (see module doc).

    Only numbers, decimal/integer strings and UN can fail there (text is decoded with
    replacement, sequences were parsed by the walk). The encoding does not matter for those.
    """
    CORE.check_values(fast.buffer, fast.checks, fast.encodings, convert)


@reading_settings()
def convert(buffer: bytes, element: Element, encodings) -> DataElement:
    """pydicom's own conversion of one element (its rules exactly); ``NotFast`` if it raises."""
    tag, vr, start, end, _, _ = element
    raw = RawDataElement(
        BaseTag(tag), vr, end - start, buffer[start:end] if end > start else CORE.empty(vr), start, False, True
    )
    try:
        return convert_raw_data_element(raw, encoding=one_encoding(encodings))
    except Exception as exc:  # whatever pydicom raises here, its own reader would raise too
        raise NotFast(type(exc).__name__) from None
