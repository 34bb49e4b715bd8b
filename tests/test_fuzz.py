"""Fuzzing: mutated DICOM headers from the sample build or fail with a documented error, never a crash.

Hypothesis mutates a small real series (``fmap-epi_dir-PA`` of the sample, 12 files): it deletes
elements, rewrites values with random bytes or text (read back through the dictionary VR, so
wrong lengths and wrong types), re-types elements with a wrong VR, truncates files and flips
header bytes, in one file or in all of them. Each example runs ``packager.api.build`` in-process
and must either return a ``BuildResult`` (exit 0 or 1, bundle and report published) or raise a
``DcmpackError`` with exit code 2 or 3 (or 4: see ``ALLOWED_ERRORS``) and a one-line message,
leaving nothing behind. Anything
else (an unhandled exception: exit 70 at the command line) fails the test with the shrunk example.

The bids-validator subprocess is switched off here (``find_validator`` -> None): it checks the
BIDS output, not header handling, and would cost 0.5 s per example; everything else is real.
"""

from __future__ import annotations

import importlib
import io
import os
import struct
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from conftest import REPO, TEST_KEY, leftovers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement

from packager import api
from packager.config import load_config, merge_flags
from packager.errors import DcmpackError

SERIES = REPO / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312" / "04_fmap-epi_dir-PA"
EXAMPLES = int(os.environ.get("DCMPACK_FUZZ_EXAMPLES", "500"))
# 2 config, 3 input; 4 when a garbage value collides with released text (StudyInstanceUID = "ORIGINAL"
# and ImageType ORIGINAL in a sidecar): the audit cannot tell them apart and refuses to publish.
ALLOWED_ERRORS = {2, 3, 4}

# Elements every stage reads (grouping, geometry, pixels, timing, identity, naming), fuzzed most.
KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "SeriesNumber",
    "InstanceNumber",
    "AcquisitionNumber",
    "SeriesDescription",
    "ProtocolName",
    "ImageType",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "EchoTime",
    "RepetitionTime",
    "FlipAngle",
    "InversionTime",
    "EchoNumbers",
    "MagneticFieldStrength",
    "InPlanePhaseEncodingDirection",
    "BurnedInAnnotation",
    "PixelData",
    "SliceLocation",
    "AcquisitionMatrix",
    "PercentPhaseFieldOfView",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "DiffusionBValue",
    "FrameOfReferenceUID",
)
VRS = ("UN", "OB", "LO", "SH", "DS", "IS", "US", "SS", "UL", "FL", "FD", "DA", "TM", "UI", "CS", "AT")

_RESULTS: Counter = Counter()
# pydicom warns about every corrupt element it meets (quoting it); expected here, by the thousand.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


def _base() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(SERIES.iterdir())]


BASE = _base()


@pytest.fixture(scope="module", autouse=True)
def no_validator():
    """See the module docstring: the validator subprocess is off for the fuzz builds only."""
    verify_module = importlib.import_module("packager.release.verify")
    original = verify_module.find_validator
    verify_module.find_validator = lambda: None
    yield
    verify_module.find_validator = original


@pytest.fixture(scope="module")
def key_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-key") / "release.key"
    path.write_text(TEST_KEY)
    path.chmod(0o600)  # a key others can read is refused
    return path


# ---------------------------------------------------------------- mutations

_values = st.one_of(
    st.binary(max_size=24),
    st.text(max_size=24).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"",
            b"\x00",
            b"-1",
            b"0",
            b"NaN",
            b"inf",
            b"1e308",
            b"-0.0\\nan",
            b"65535",
            b"\\\\",
            b"99999999999999999999",
            b"1\\2\\3",
            b"20240230",
            b"250000",
            b"ORIGINAL\\PRIMARY\\M",
            b"1.2.840.10008.5.1.4.1.1.7",
            b"1.2.840.10008.5.1.4.1.1.4",
            b"\xff\xfe\x00",
        ]
    ),
)

_mutation = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(KEYWORDS)),
    st.tuples(st.just("raw"), st.sampled_from(KEYWORDS), _values),  # UN bytes read as the dictionary VR
    st.tuples(st.just("retype"), st.sampled_from(KEYWORDS), st.sampled_from(VRS), _values),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("flip"), st.integers(0, 1200), st.binary(min_size=1, max_size=8)),
    st.tuples(
        st.just("duplicate"),
    ),
)

_plan = st.lists(st.tuples(st.one_of(st.just(None), st.integers(0, len(BASE) - 1)), _mutation), min_size=1, max_size=3)


def _save(ds) -> bytes | None:
    out = io.BytesIO()
    try:
        with pydicom.config.disable_value_validation():
            ds.save_as(out, enforce_file_format=False, implicit_vr=False, little_endian=True)
    except Exception:  # pydicom refuses to write this value in this VR
        return None
    return out.getvalue()


def _raw(ds, tag: int, value: bytes) -> bytes | None:
    """``ds`` with element ``tag`` holding ``value`` as UN: a reader parses it as the dictionary VR.

    pydicom turns a UN element of a known tag into its dictionary VR as soon as it is created, so
    it is written as OB and its VR bytes are patched afterwards (explicit VR little endian).
    """
    ds[tag] = DataElement(tag, "OB", value)
    data = _save(ds)
    if data is None:
        return None
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"OB\0\0"
    at = data.find(header, 132)
    return data if at < 0 else data[: at + 4] + b"UN" + data[at + 6 :]


def _apply(blob: bytes, mutation: tuple) -> bytes:
    kind = mutation[0]
    if kind == "truncate":
        return blob[: int(len(blob) * mutation[1])]
    if kind == "flip":
        offset, data = mutation[1], mutation[2]
        offset = min(offset, max(len(blob) - len(data), 0))
        return blob[:offset] + data + blob[offset + len(data) :]
    try:
        ds = pydicom.dcmread(io.BytesIO(blob), force=True)
    except Exception:  # an earlier mutation broke it beyond parsing: leave it broken
        return blob
    tag = tag_for_keyword(mutation[1])
    if kind == "delete":
        if tag in ds:
            del ds[tag]
        return _save(ds) or blob
    if kind == "raw":
        return _raw(ds, tag, mutation[2]) or blob
    vr, value = mutation[2], mutation[3]  # retype: the element written with another VR
    try:
        ds[tag] = DataElement(tag, vr, value if vr in ("UN", "OB") else value.decode("latin-1"))
        data = _save(ds)
    except Exception:
        data = None
    return data or _raw(ds, tag, value) or blob


def _write(folder: Path, plan) -> None:
    files = dict(BASE)
    names = [name for name, _ in BASE]
    for target, mutation in plan:
        if mutation[0] == "duplicate":
            name = names[target or 0]
            files[f"copy-{name}"] = files[name]
            continue
        for name in names if target is None else [names[target]]:
            files[name] = _apply(files[name], mutation)
    folder.mkdir(parents=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)


# ---------------------------------------------------------------- the property


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plan=_plan)
def test_mutated_headers_never_crash(plan, key_path):
    with tempfile.TemporaryDirectory(prefix="dcmpack-fuzz-") as tmp:
        source, out = Path(tmp) / "in", Path(tmp) / "out"
        _write(source, plan)
        config = merge_flags(load_config(None), sources=(str(source),), output=out, key_file=key_path, jobs=1)
        try:
            result = api.build(config)
        except DcmpackError as exc:
            message = str(exc)
            assert exc.exit_code in ALLOWED_ERRORS, f"{type(exc).__name__} (exit {exc.exit_code}): {message}"
            assert message and "\n" not in message and "Traceback" not in message
            assert leftovers(out) == []
            _RESULTS[f"exit {exc.exit_code}"] += 1
            return
        assert result.exit_code in (0, 1)
        assert leftovers(out) == ["dataset-1.0.0.zip", "report.html"]
        assert all(e.detail and "\n" not in e.detail for e in result.excluded)
        _RESULTS[f"exit {result.exit_code}"] += 1


def test_fuzz_ran():
    """Runs after the property (file order): every example reached an outcome; print the count."""
    total = sum(_RESULTS.values())
    summary = ", ".join(f"{n} {k}" for k, n in sorted(_RESULTS.items()))
    print(f"\nfuzz: {total} mutated builds without an unhandled exception ({summary})", file=sys.__stderr__)
    assert total >= min(EXAMPLES, 100) * 0.9, _RESULTS
