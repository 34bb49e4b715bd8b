"""The sidecar allowlist: typed validators, the hard denylist no config can override, free-text
scrubbing, and PHI values that never pass even through allowlisted keys."""

from __future__ import annotations

import pytest

from packager.config import load_config
from packager.errors import ConfigError
from packager.sidecar.allowlist import ALLOWLIST, DENYLIST, apply_allowlist, check_config, is_denied, scrub_text

#: One key per identifying class the denylist must hold (README "PHI policy").
DENIED = (
    "StudyDate",
    "AcquisitionDateTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "OperatorsName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "ImageComments",
    "AccessionNumber",
    "StudyID",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "RequestedProcedureDescription",
    "TimezoneOffsetFromUTC",
    "PerformedProcedureStepID",
    "CountryOfResidence",
    "ReceiveCoilName",
)


@pytest.mark.parametrize("key", DENIED)
def test_denylist_covers_identifying_keys(key):
    assert is_denied(key)
    assert apply_allowlist({key: "x"}, allow=(key,), allow_free_text=(key,)).fields == {}


def test_no_allowlisted_key_is_denied_and_timing_keys_pass():
    assert not [k for k in ALLOWLIST if is_denied(k)]
    for key in ("EchoTime", "RepetitionTime", "InversionTime", "TotalReadoutTime", "SliceTiming"):
        assert key in ALLOWLIST and not is_denied(key)
    assert len(DENYLIST) >= 10


def _config(tmp_path, body: str):
    path = tmp_path / "release.toml"
    path.write_text(body)
    return load_config(path)


@pytest.mark.parametrize(
    "body,message",
    [
        ('[sidecar]\nallow = ["StationName"]\n', "hard denylist"),
        ('[sidecar]\nallow_free_text = ["InstitutionName"]\n', "hard denylist"),
        ('[sidecar]\nallow = ["EchoTme"]\n', 'did you mean "EchoTime"'),
        ('[sidecar]\nallow = ["NotAKey"]\n', "not an allowlisted key"),
        ('[sidecar]\nallow = ["SeriesDescription"]\n', "allow_free_text"),
        ('[sidecar]\nallow_free_text = ["EchoTime"]\n', "not a free-text key"),
    ],
)
def test_config_cannot_switch_on_denied_or_unknown_keys(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message) as error:
        _config(tmp_path, body)
    assert error.value.exit_code == 2
    assert "release.toml:2" in str(error.value)


def test_config_switches_on_optional_keys(tmp_path):
    config = _config(tmp_path, '[sidecar]\nallow = ["SeriesNumber"]\nallow_free_text = ["SeriesDescription"]\n')
    assert check_config(config.sidecar.allow, config.sidecar.allow_free_text) is None
    fields = {"SeriesNumber": 7, "SeriesDescription": "MPRAGE sag", "EchoTime": 0.003}
    assert apply_allowlist(fields).fields == {"EchoTime": 0.003}
    kept = apply_allowlist(fields, allow=config.sidecar.allow, allow_free_text=config.sidecar.allow_free_text)
    assert kept.fields == fields


@pytest.mark.parametrize(
    "key,bad",
    [
        ("EchoTime", 5.0),
        ("EchoTime", "0.03"),
        ("FlipAngle", float("nan")),
        ("RepetitionTime", True),
        ("MagneticFieldStrength", 300),
        ("PhaseEncodingDirection", "y"),
        ("Manufacturer", "Acme Hospital Scanner"),
        ("Modality", "OT"),
        ("ImageType", ["ORIGINAL", "JOHN_DOE"]),
        ("ImageType", "ORIGINAL"),
        ("SliceTiming", [0.1, -1.0]),
        ("MultibandAccelerationFactor", 2.5),
        ("TaskName", "rest task"),
        ("ManufacturersModelName", "Scanner 20240312"),
        ("ManufacturersModelName", "Room 12:30"),
        ("SequenceName", "*tfl3d1 with spaces"),
        ("IntendedFor", ["sub-01/func/x.nii.gz"]),
        ("ScanningSequence", "XX"),
        ("MRAcquisitionType", "4D"),
    ],
)
def test_invalid_values_are_dropped_and_counted(key, bad):
    result = apply_allowlist({key: bad, "EchoTime2": 0.00738})
    assert key not in result.fields and result.fields == {"EchoTime2": 0.00738}
    assert result.dropped_invalid == 1


def test_valid_values_pass():
    fields = {
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC", "ECHO_00"],
        "Manufacturer": "Siemens",
        "ManufacturersModelName": "MAGNETOM Prisma Fit",
        "SequenceName": "*epfid2d1_64",
        "IntendedFor": ["bids::sub-01/func/sub-01_task-rest_bold.nii.gz"],
        "SliceTiming": [0.0, 0.5],
        "ConversionSoftwareVersion": "dcmpack 0.1.0; dcm2niix 1.0.20260724",
    }
    assert apply_allowlist(fields).fields == fields


def test_phi_never_passes_an_open_text_key():
    terms = frozenset({"qqt123stn", "st mary hospital skyra suite", "doe"})
    fields = {"ManufacturersModelName": "DISCOVERY QQT123STN", "SequenceName": "fg_qqt123stn", "Manufacturer": "GE"}
    result = apply_allowlist(fields, phi_terms=terms)
    assert result.fields == {"Manufacturer": "GE"} and result.dropped_phi == 2
    # the other way round: a model name that is part of the institution's name
    assert apply_allowlist({"ManufacturersModelName": "Skyra"}, phi_terms=terms).dropped_phi == 1
    # a short term matches whole words only: "doe" is not inside "Doesburg"
    assert apply_allowlist({"ManufacturersModelName": "Doesburg"}, phi_terms=terms).fields


def test_free_text_is_off_by_default_and_scrubbed_when_allowed():
    terms = frozenset({"qqt123pnfa", "jürgenaäöü"})
    text = "MPRAGE QQT123PNFA Doe^Jane 2023-01-15 10:15:30 AB12345 sag"
    assert apply_allowlist({"SeriesDescription": text}, phi_terms=terms).fields == {}
    kept = apply_allowlist({"SeriesDescription": text}, allow_free_text=("SeriesDescription",), phi_terms=terms)
    assert kept.fields == {"SeriesDescription": "MPRAGE sag"}
    gone = apply_allowlist({"ProtocolName": "QQT123PNFA 20230115"}, allow_free_text=("ProtocolName",), phi_terms=terms)
    assert gone.fields == {} and gone.dropped_phi == 1


@pytest.mark.parametrize(
    "text",
    [
        "Smith, John",
        "DOE^JOHN^^DR",
        "12.03.2024",
        "2024/03/12",
        "20240312",
        "09:15",
        "091530.25",
        "MRN00012345",
        "1234567",
    ],
)
def test_scrub_removes_identifying_shapes(text):
    assert scrub_text(f"T1 {text} axial", frozenset()) == "T1 axial"
