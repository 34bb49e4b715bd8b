"""PHI hardening (issue 15): one test per class of leak found by the adversarial review, each
asserting what is published."""

from __future__ import annotations

import calendar
import zipfile

from packager import api


def test_source_date_epoch_never_reaches_zip_timestamps(tmp_path, key_file, monkeypatch):
    # a build environment that sets SOURCE_DATE_EPOCH to the scan's own time (2023-04-17 14:22:10)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(calendar.timegm((2023, 4, 17, 14, 22, 10))))
    result = api.build(api.sample_config(output=tmp_path, key_file=str(key_file)))
    assert result.exit_code == 0
    with zipfile.ZipFile(result.bundle) as archive:
        stamps = {info.date_time for info in archive.infolist()}
    assert stamps == {(1980, 1, 1, 0, 0, 0)}
