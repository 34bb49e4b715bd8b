"""Stage unit test, config: release.toml -> ReleaseConfig (``load_config``), flags over it (``merge_flags``)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from packager.config import FLAGS, DefaceConfig, ReleaseConfig, load_config, merge_flags
from packager.errors import ConfigError

ENV_KEY = "29b43dbd23b81f9c8e151e53f67cd27f0440c698caa1751e034f1bddf7d1ce20"
KEY = "df68d29a2f13d372809eedd23cd741d0f8d2483e76d7ec47525584a185fcdb53"


def _toml(tmp_path, text: str) -> Path:
    path = tmp_path / "release.toml"
    path.write_text(text)
    return path


def test_no_file_gives_the_defaults():
    config = load_config(None)
    assert config == ReleaseConfig()
    assert (config.dataset.name, config.deid.dates, config.convert.engine) == ("dataset", "shift", "dicom2nifti")


def test_values_paths_and_digest(tmp_path):
    text = (
        '[dataset]\nname = "study-1"\nauthors = ["A. Researcher"]\n'
        '[deid]\nkey_file = "secret/release.key"\ndates = "remove"\n'
        "[exclude]\nlocalizers = false\n"
    )
    config = load_config(_toml(tmp_path, text))
    assert config.dataset.name == "study-1" and config.dataset.authors == ("A. Researcher",)
    assert config.deid.key_file == tmp_path / "secret" / "release.key"  # relative to the file
    assert config.deid.dates == "remove" and config.exclude.localizers is False
    assert config.config_path == tmp_path / "release.toml"
    assert config.config_digest == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[dataset]\nname = "x"\n\n[deid]\ndate = "shift"\n',
            'release.toml:5 [deid] "date": unknown key (did you mean "dates"?)',
        ),
        ("[bundel]\nname = 'x'\n", 'release.toml:1 [bundel]: unknown table (did you mean "bundle"?)'),
        ("[exclude]\nlocalizers = 'yes'\n", 'release.toml:2 [exclude] "localizers": must be true or false'),
        ('[deid]\ndates = "blur"\n', 'release.toml:2 [deid] "dates": '),
        ('[dataset]\nname = "my study"\n', 'release.toml:2 [dataset] "name": must be letters, digits'),
        ("[dataset]\nname = \n", "release.toml: invalid TOML ("),
    ],
)
def test_mistakes_name_file_line_table_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(_toml(tmp_path, text))
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.exit_code == 2


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_flags_win_over_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DCMPACK_KEY", KEY)
    base = load_config(_toml(tmp_path, '[convert]\nengine = "dicom2nifti"\n'))
    merged = merge_flags(
        base, sources=("a", "b"), output=tmp_path / "out", jobs=3, engine="dcm2niix", heuristic="rules", force=True
    )
    assert merged.sources == ("a", "b") and merged.output == tmp_path / "out" and merged.jobs == 3
    assert merged.convert.engine == "dcm2niix" and merged.heuristic.name == "rules" and merged.force
    assert merged.key == KEY.encode()
    # flags not given leave the file's values alone
    assert merge_flags(base, jobs=0, output=None).output == base.output


def test_heuristic_file_flag_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DCMPACK_KEY", KEY)
    merged = merge_flags(ReleaseConfig(), heuristic="mine.py")
    assert merged.heuristic.name == "file" and merged.heuristic.path == tmp_path / "mine.py"


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"heuristic": "magic"}, '--heuristic: unknown heuristic "magic"'),
        ({"engine": "dcm3niix"}, "--engine: must be dicom2nifti or dcm2niix or auto"),
        ({"jobs": -1}, "--jobs must be 0 (all cores) or a positive number"),
        ({"executor": "dask://"}, "--executor: "),
    ],
)
def test_bad_flags(monkeypatch, flags, message):
    monkeypatch.setenv("DCMPACK_KEY", KEY)
    with pytest.raises(ConfigError) as info:
        merge_flags(ReleaseConfig(), **flags)
    assert str(info.value).startswith(message), str(info.value)


def test_an_unknown_flag_is_a_type_error_naming_it(monkeypatch):
    monkeypatch.setenv("DCMPACK_KEY", KEY)
    # a config section passed as a flag used to be dropped silently: the build ran with defacing on
    with pytest.raises(TypeError, match=r"unknown flag\(s\): deface$"):
        merge_flags(ReleaseConfig(), deface=DefaceConfig(enabled=False, reason="x"))
    with pytest.raises(TypeError, match=r"unknown flag\(s\): jbos, ouptut$"):
        merge_flags(ReleaseConfig(), ouptut="out", jbos=2, jobs=1)
    # every flag name the CLI and the API pass is still known (given as "not set")
    merged = merge_flags(ReleaseConfig(), **dict.fromkeys(FLAGS))
    assert merged == dataclasses.replace(ReleaseConfig(), key=KEY.encode())


def test_key_file_wins_over_the_environment_and_stays_out_of_repr(tmp_path, monkeypatch):
    monkeypatch.setenv("DCMPACK_KEY", ENV_KEY)
    key_file = tmp_path / "release.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    merged = merge_flags(ReleaseConfig(), key_file=key_file)
    assert merged.key == KEY.encode()  # stripped
    assert KEY not in repr(merged) and ENV_KEY not in repr(merged)
    assert KEY not in str(merged.digest_view())


def test_key_problems(tmp_path, monkeypatch):
    monkeypatch.setenv("DCMPACK_KEY", "")
    assert merge_flags(ReleaseConfig()).key == b""  # no key: api refuses later, unless a subject map
    short = tmp_path / "short.key"
    short.write_text("tooshort")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="not a strong random key"):
        merge_flags(ReleaseConfig(), key_file=short)
    with pytest.raises(ConfigError, match=f"key file not found: {tmp_path / 'nope.key'}"):
        merge_flags(ReleaseConfig(), key_file=tmp_path / "nope.key")
