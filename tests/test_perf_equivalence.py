"""Speed-ups change nothing: each fast path gives exactly what the plain version gives.

- the header pass in parallel (any ``jobs``) gives the serial pass's sessions and series, and the
  PHI values it collects on the way equal a separate second read of every header (what the
  audit used to do);
- ``phi._decode`` (byte tables, numpy) equals the character-by-character definition;
- report thumbnails scaled plane by plane equal the whole-volume window they replaced.
"""

from __future__ import annotations

import dataclasses
import random

import nibabel as nib
import numpy as np
import pytest

from packager import index, sources
from packager.config import ExcludeConfig
from packager.dicom.reader import looks_like_dicom, read_dataset
from packager.phi import collect as phi
from packager.release import report, review


@pytest.fixture(scope="module")
def corpus_sets(corpus, tmp_path_factory):
    staging = tmp_path_factory.mktemp("sets")
    return [sources.open_source(str(corpus / name / "In"), staging) for name in ("dcm_qa", "dcm_qa_xa30")]


def test_parallel_header_pass_equals_serial_and_collects_the_audit_values(corpus_sets, reader_core):
    files = [f for s in corpus_sets for f in s.files]
    serial = index.index_files(files, ExcludeConfig(), jobs=1)
    parallel = index.index_files(files, ExcludeConfig(), jobs=2, collect_phi=True)
    assert dataclasses.replace(parallel, phi_values=frozenset(), public_values=frozenset()) == serial
    found, public = parallel.phi_values, parallel.public_values
    assert review.source_phi(corpus_sets, found, public) == review.collect_source_phi(corpus_sets)
    assert len(found) > 100


def _reference_decode(value: bytes) -> list[str]:
    texts = []
    try:
        texts.append(value.decode("utf-8"))
    except UnicodeDecodeError:
        texts.append(value.decode("latin-1"))
    if len(value) >= 4 and value.count(0) * 3 >= len(value):
        for start in (0, 1):
            texts.append(value[start : len(value) - ((len(value) - start) % 2)].decode("utf-16-le", "replace"))
    return ["".join(c if c.isprintable() else "\x00" for c in text) for text in texts]


def test_fast_decode_equals_the_definition_on_real_headers(corpus_sets):
    values = []
    for source_set in corpus_sets:
        for item in source_set.files[:10]:
            if looks_like_dicom(item.path):
                values += [
                    e.value for e in read_dataset(item.path, headers_only=True).iterall() if isinstance(e.value, bytes)
                ]
    assert values
    for value in values:
        assert phi._decode(value) == _reference_decode(value)


def test_fast_decode_equals_the_definition_on_random_bytes():
    rng = random.Random(7)
    for _ in range(5000):
        kind = rng.random()
        if kind < 0.4:
            value = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        elif kind < 0.6:
            value = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(12)).encode("utf-8")
        elif kind < 0.8:  # surrogate pairs, astral characters, lone surrogates
            value = (
                "".join(
                    chr(rng.choice([rng.randrange(0x10000, 0x110000), rng.randrange(0x100)])) for _ in range(6)
                ).encode("utf-16-le")
                + bytes(12)
                + bytes([0xD8, 0x00])
            )
        else:
            value = bytes(rng.choice([0, 0, 0, rng.randrange(256)]) for _ in range(rng.randrange(4, 40)))
        assert phi._decode(value) == _reference_decode(value), value


def _reference_planes(volume: np.ndarray, affine: np.ndarray) -> list[tuple]:
    """The thumbnails as first written: the whole reoriented volume windowed, then cut."""
    ornt = nib.orientations.io_orientation(affine)
    window = report._window(nib.orientations.apply_orientation(volume, ornt))
    nx, ny, nz = window.shape
    cuts = (window[:, :, nz // 2], window[:, ny // 2, :], window[nx // 2, :, :])
    return [report.png_gray(slab.T[::-1]) for slab in cuts]


@pytest.mark.parametrize("case", ["noise", "constant", "all-nan", "some-nan", "oblique"])
def test_plane_by_plane_thumbnails_equal_the_whole_volume_window(case):
    rng = np.random.default_rng(3)
    volume = rng.normal(100, 30, size=(24, 20, 12)).astype(np.float32)
    affine = np.diag([1.0, -2.0, 3.0, 1.0])
    if case == "constant":
        volume[:] = 7
    elif case == "all-nan":
        volume[:] = np.nan
    elif case == "some-nan":
        volume[rng.random(volume.shape) > 0.7] = np.nan
    elif case == "oblique":
        affine = np.array([[0.0, 0.0, 2.0, 1.0], [-1.5, 0.0, 0.0, 2.0], [0.0, 1.0, 0.0, 3.0], [0, 0, 0, 1]])
    assert [t.png for t in report._planes(volume, affine)] == _reference_planes(volume, affine)
