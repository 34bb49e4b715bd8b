"""Scale: a bundle past 4 GiB is still publishable.

zip must give members beyond 4 GiB a ZIP64 extended-information extra field (sizes and offsets,
no text); the audit accepts exactly that record and still reports any other extra field. Found
by the 10-GB synthetic session of benchmarks/bench.py --huge; here zipfile's 4 GiB limit is
lowered so that a small bundle has the same structure.
"""

from __future__ import annotations

import struct
import zipfile

from packager.phi import PhiValue
from packager.release import bundle
from packager.release.audit import audit_bundle


def _bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64)  # every member after the first lies "past 4 GiB"
    staged = [
        bundle.stage_bytes(tmp_path / "dataset", f"sub-01/anat/sub-01_acq-{i}_T1w.json", b'{"EchoTime": 0.0%d}' % i)
        for i in range(3)
    ]
    target = tmp_path / "ds.zip"
    bundle.write_bundle(target, "ds", staged, b"{}")
    return target


def test_zip64_records_are_not_findings(tmp_path, monkeypatch):
    target = _bundle(tmp_path, monkeypatch)
    with zipfile.ZipFile(target) as archive:
        extras = [info.extra for info in archive.infolist() if info.extra]
    assert extras and all(struct.unpack("<H", e[:2])[0] == 0x0001 for e in extras)
    result = audit_bundle(target, {PhiValue("name", "PatientName", "DOE^JANE")})
    assert result.clean, result.hits


def test_other_extra_fields_are_still_findings(tmp_path, monkeypatch):
    target = _bundle(tmp_path, monkeypatch)
    data = bytearray(target.read_bytes())
    # turn the first ZIP64 record of the central directory into an unknown record (same length)
    at = data.index(b"PK\x01\x02")
    while True:
        name_length, extra_length = struct.unpack("<HH", data[at + 28 : at + 32])
        if extra_length:
            break
        at = data.index(b"PK\x01\x02", at + 46)
    extra = at + 46 + name_length
    assert data[extra : extra + 2] == b"\x01\x00"
    data[extra : extra + 2] = b"\x55\x54"
    target.write_bytes(bytes(data))
    result = audit_bundle(target, set())
    assert any(hit.stream == "zip extra field" for hit in result.hits)
