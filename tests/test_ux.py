"""Issue 19, the first hour with dcmpack: ``inspect``, rules checked before any work, outputs and
keys, command-line conventions. Real corpus data, real CLI runs (``run_cli``, no TTY)."""

from __future__ import annotations

import csv
import re
import stat
from pathlib import Path

import pytest
from conftest import run_cli

from heuristics.rules import FIELDS
from packager.inspection import BOOKKEEPING

DATASETS = (
    "dcm_qa",
    "dcm_qa_enh",
    "dcm_qa_fmap",
    "dcm_qa_ge",
    "dcm_qa_mosaic",
    "dcm_qa_nih",
    "dcm_qa_philips",
    "dcm_qa_philips_enh",
    "dcm_qa_stc",
    "dcm_qa_uih",
    "dcm_qa_xa30",
)


def _table(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.parametrize("dataset", DATASETS)
def test_inspect_every_corpus_dataset(dataset, corpus, tmp_path):
    """One row per series with every rule field as a column; the file is 0600; a pipe gets only
    the file's path (stdout) and counts (stderr), never a header value."""
    tsv = tmp_path / "private" / "series.tsv"
    proc = run_cli("inspect", str(corpus / dataset / "In"), "-o", str(tsv))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{tsv}\n"
    assert stat.S_IMODE(tsv.stat().st_mode) == 0o600
    rows = _table(tsv)
    assert rows, "no series"
    header = tsv.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert set(FIELDS) <= set(header) and set(BOOKKEEPING) <= set(header)
    assert len(header) == len(FIELDS) + len(BOOKKEEPING)
    texts = {row[f] for row in rows for f in ("SeriesDescription", "ProtocolName", "folder") if len(row[f]) > 3}
    for text in texts:
        assert text not in proc.stderr and text not in proc.stdout
    assert f"{len(rows)} series" in proc.stderr
    assert all(row["folder"] and not row["folder"].startswith("/") for row in rows)


def test_inspect_mosaic_shows_tiles_and_slices(corpus, tmp_path):
    """A Siemens mosaic is described by its tiles (64x64, 36 slices), not the 384x384 image holding them."""
    tsv = tmp_path / "series.tsv"
    assert run_cli("inspect", str(corpus / "dcm_qa_mosaic" / "In"), "-o", str(tsv)).returncode == 0
    rows = _table(tsv)
    mosaics = [r for r in rows if r["IsMosaic"] == "true"]
    assert mosaics
    assert {(r["Columns"], r["Rows"]) for r in mosaics} == {("64", "64")}
    assert {r["NumberOfSlices"] for r in mosaics} <= {"36", "40"} and all(r["NumberOfVolumes"] == "6" for r in mosaics)
    assert {r["ScanningSequence"] for r in mosaics} == {"EP"}
    assert {r["PhaseEncodingDirection"] for r in mosaics} <= {"AP", "PA"}


def test_inspect_lists_b_values(corpus, tmp_path):
    tsv = tmp_path / "series.tsv"
    assert run_cli("inspect", str(corpus / "dcm_qa_philips" / "In"), "-o", str(tsv)).returncode == 0
    dwi = [r for r in _table(tsv) if r["HasDiffusion"] == "true" and r["NumberOfVolumes"] != "1"]
    assert any(r["b_values"] == "0 2000" for r in dwi), [r["b_values"] for r in dwi]


def test_inspect_refuses_the_output_folder_and_defaults_beside_the_config(corpus, tmp_path):
    """The series table never lands where bundles are published; without -o it goes beside -c."""
    config = tmp_path / "cfg" / "release.toml"
    config.parent.mkdir()
    config.write_text('[dataset]\nname = "x"\n')
    source = str(corpus / "dcm_qa_nih" / "In")
    proc = run_cli("inspect", source, "-c", str(config), "-o", str(tmp_path / "release" / "s.tsv"), cwd=tmp_path)
    assert proc.returncode == 2 and "inside the output folder" in proc.stderr
    assert not (tmp_path / "release").exists()
    proc = run_cli("inspect", source, "-c", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(config.parent / "series.tsv")
    assert stat.S_IMODE((config.parent / "series.tsv").stat().st_mode) == 0o600


def test_inspect_rows_match_rules(corpus, tmp_path):
    """A rule written from a TSV row matches that series in ``plan`` (same field names, same spelling)."""
    source = corpus / "dcm_qa_nih" / "In"
    tsv = tmp_path / "series.tsv"
    assert run_cli("inspect", str(source), "-o", str(tsv)).returncode == 0
    row = next(r for r in _table(tsv) if r["IsMosaic"] == "true")
    config = tmp_path / "release.toml"
    config.write_text(
        '[heuristic]\nname = "rules"\n\n[[heuristic.rules]]\n'
        f'match = {{ ScanningSequence = "{row["ScanningSequence"]}", '
        f'SequenceVariant = "{row["SequenceVariant"]}", ImageType = "MOSAIC", '
        f'PhaseEncodingDirection = "{row["PhaseEncodingDirection"]}", '
        f"EchoTime = {row['EchoTime']}, NumberOfSlices = {row['NumberOfSlices']} }}\n"
        'datatype = "func"\nsuffix = "bold"\nentities = { task = "rest" }\n'
    )
    key = tmp_path / "k.key"
    key.write_text("5d1c0f7e3b9a8c6d4e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d\n")
    key.chmod(0o600)
    proc = run_cli("plan", str(source), "-c", str(config), "--key-file", str(key), "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    plan = json.loads(proc.stdout)
    converted = [p for p in plan if p["decision"] == "convert"]
    assert row["series"] in {str(p["series"]) for p in converted}


RULES_HEAD = (
    '[heuristic]\nname = "rules"\n\n[[heuristic.rules]]\nmatch = { SeriesDescription = "*T1*" }\n'
    'datatype = "anat"\nsuffix = "T1w"\n\n'
)


@pytest.mark.parametrize(
    ("rule", "line", "says"),
    [
        (
            '[[heuristic.rules]]\nmatch = { ImageType = "MOSAIC" }\ndatatype = "func"\nsuffix = "BOLD"\n'
            'entities = { task = "rest" }\n',
            12,
            'suffix "BOLD" is not a BIDS func suffix (did you mean "bold"?)',
        ),
        (
            '[[heuristic.rules]]\nmatch = { ImageType = "M" }\ndatatype = "anat"\nsuffix = "T2w"\n'
            'entities = { dir = "AP" }\n',
            13,
            'entity "dir" is not allowed in BIDS anat/*_T2w names',
        ),
        (
            '[[heuristic.rules]]\nmatch = { ImageType = "M" }\ndatatype = "anat"\nsuffix = "MP2RAGE"\n',
            9,
            "require the entity inv",
        ),
        (
            '[[heuristic.rules]]\nmatch = { SeriesDescripton = "*EPI*" }\ndatatype = "func"\nsuffix = "bold"\n'
            'entities = { task = "rest" }\n',
            10,
            'unknown match field "SeriesDescripton" (did you mean "SeriesDescription"?)',
        ),
    ],
)
def test_rules_checked_against_bids_before_any_work(rule, line, says, tmp_path):
    """A rule BIDS does not allow is exit 2 naming the file and line, before any file is read
    (the SOURCE here does not even exist), never a run silently left out with exit 0."""
    config = tmp_path / "rules.toml"
    config.write_text(RULES_HEAD + rule)
    missing = str(tmp_path / "no-such-source")
    for args in (("-c", str(config)), ("--heuristic", str(config))):
        proc = run_cli("plan", missing, *args, "--key-file", str(_key(tmp_path)))
        assert proc.returncode == 2, proc.stderr
        assert f"rules.toml:{line}: [[heuristic.rules]] rule 2: " in proc.stderr and says in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = run_cli("build", missing, "-c", str(config), "--key-file", str(_key(tmp_path)), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and says in proc.stderr
    assert not (tmp_path / "out").exists()


def test_python_heuristic_names_checked(corpus, tmp_path):
    """A Python heuristic answering an invalid BIDS name stops the plan (exit 2), naming the series."""
    heuristic = tmp_path / "mine.py"
    heuristic.write_text(
        "from packager.model import BidsName\n\n"
        "def classify(series):\n    return BidsName('func', 'BOLD', (('task', 'rest'),), reason='x')\n"
    )
    proc = run_cli(
        "plan", str(corpus / "dcm_qa_nih" / "In"), "--heuristic", str(heuristic), "--key-file", str(_key(tmp_path))
    )
    assert proc.returncode == 2
    assert 'heuristic: series 1: suffix "BOLD" is not a BIDS func suffix' in proc.stderr


def _key(folder: Path) -> Path:
    key = folder / "test.key"
    if not key.exists():
        key.write_text("5d1c0f7e3b9a8c6d4e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d\n")
        key.chmod(0o600)
    return key


# ---------------------------------------------------------------- outputs and keys

T1W = Path(__file__).resolve().parent.parent / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312" / "02_anat-T1w"


def test_world_readable_key_refused_with_the_chmod(tmp_path):
    key = _key(tmp_path)
    key.chmod(0o644)
    proc = run_cli("plan", str(T1W), "--key-file", str(key))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        f"error: key file {key} can be read by other users (mode 0644): make it private with: chmod 600 {key}"
    )
    key.chmod(0o600)
    assert run_cli("plan", str(T1W), "--key-file", str(key), "--json").returncode == 0


def test_the_sample_key_is_public_and_said_so(tmp_path):
    """sample_data/sample.key is published with the code: accepted at any mode, with a warning."""
    demo = tmp_path / "sample.key"
    demo.write_bytes((T1W.parents[2] / "sample.key").read_bytes())
    demo.chmod(0o644)
    proc = run_cli("plan", str(T1W), "--key-file", str(demo), "--json")
    assert proc.returncode == 0
    assert "public demo key" in proc.stderr and "not secret" in proc.stderr


def test_output_zip_name_force_and_new_key(tmp_path):
    """``-o NAME.zip`` writes that file; --force keeps the key: another key needs --new-key (exit 6)."""
    bundle = tmp_path / "out" / "mine.zip"
    first = _key(tmp_path)
    proc = run_cli("build", str(T1W), "-o", str(bundle), "--key-file", str(first), "-j", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(bundle) and bundle.is_file()
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["mine.zip", "report.html"]
    other = tmp_path / "other.key"
    other.write_text("0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0\n")
    other.chmod(0o600)
    before = bundle.read_bytes()
    proc = run_cli("build", str(T1W), "-o", str(bundle), "--key-file", str(other), "--force", "-q")
    assert proc.returncode == 6
    assert "was built with key fingerprint" in proc.stderr and "--new-key" in proc.stderr
    assert bundle.read_bytes() == before
    proc = run_cli("build", str(T1W), "-o", str(bundle), "--key-file", str(other), "--force", "--new-key", "-q")
    assert proc.returncode == 0, proc.stderr
    assert bundle.read_bytes() != before


def test_failed_build_leaves_no_empty_output_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "a" / "b" / "out"
    proc = run_cli("build", str(tmp_path / "empty"), "-o", str(out), "--key-file", str(_key(tmp_path)))
    assert proc.returncode == 3
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- command-line conventions

COMMANDS = ("build", "plan", "inspect", "pull", "verify", "audit", "init", "version")


def test_help_version_and_no_type_noise():
    from packager import __version__

    for flag in ("-h", "--help"):
        proc = run_cli(flag)
        assert proc.returncode == 0 and "Usage:" in proc.stdout and "inspect" in proc.stdout
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"{__version__}\n"
    for command in COMMANDS:
        proc = run_cli(command, "-h")
        assert proc.returncode == 0 and "Usage:" in proc.stdout, command
        assert "<bool>" not in proc.stdout and "BOOLEAN" not in proc.stdout, command
    assert "--new-key" in run_cli("build", "--help").stdout


def test_shell_completion_is_offered():
    """The named shell's script, whatever process started the tests: typer otherwise ignores the
    name and asks shellingham, which finds no shell when the run's parent has exited (nohup, CI)."""
    proc = run_cli("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert proc.returncode == 0 and "complete -o default -F" in proc.stdout and "COMP_WORDS" in proc.stdout


def test_audit_takes_several_sources_after_one_flag(sample_build):
    """``--source A B`` (and the repeated flag) audit against every source; --show-values is
    ignored into a pipe, with a note."""
    sessions = sorted(str(p) for p in (T1W.parents[1]).iterdir())
    bundle = str(sample_build["bundle"])
    one = run_cli("audit", bundle, "--source", sessions[0])
    several = run_cli("audit", bundle, "--source", *sessions, "--show-values")
    repeated = run_cli("audit", bundle, *(a for s in sessions for a in ("-s", s)))
    assert one.returncode == several.returncode == repeated.returncode == 0, several.stderr
    values = [int(p.stderr.split("; ")[1].split()[0]) for p in (one, several, repeated)]
    assert values[1] == values[2] > values[0]
    assert "note: --show-values ignored" in several.stderr
    assert run_cli("audit", bundle).returncode == 2


# ---------------------------------------------------------------- the sample anywhere


def test_every_subpackage_is_in_the_wheel():
    """pyproject lists the packages (packager.sample_data lives outside packager/): none forgotten."""
    import tomllib

    repo = T1W.parents[3]
    listed = set(tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(folder.relative_to(repo).parts)
        for top in ("packager", "heuristics")
        for folder in [repo / top, *(repo / top).rglob("*")]
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py"))
    }
    assert found | {"packager.sample_data", "packager.data"} == listed


def test_sample_builds_from_an_empty_folder_after_a_wheel_install(sample_build, tmp_path):
    """``pip wheel`` + a non-editable install into a fresh venv (dependencies from this one), then
    ``dcmpack build`` with no arguments in an empty folder: the sample is generated from the
    installed package into a cache folder and gives the same bundle, byte for byte."""
    import hashlib
    import os
    import site
    import subprocess
    import sys

    repo = T1W.parents[3]
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(repo)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("dcmpack-*.whl")
    assert wheel.stat().st_size < 2_000_000  # the generator and the defacing template (0.7 MB) ship, not 7 MB of DICOM
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    # the dependencies: this environment's site-packages as a plain path (its .pth files, e.g. an
    # editable install of this checkout, are not run from there)
    (Path(target) / "dcmpack_deps.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    where = subprocess.run(
        [str(python), "-c", "import packager; print(packager.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not this checkout
    proc = subprocess.run(
        [str(venv / "bin" / "dcmpack"), "build", "-q"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    bundle = empty / "release" / "dcmpack-sample-1.0.0.zip"
    assert proc.stdout.strip() == "release/dcmpack-sample-1.0.0.zip" and bundle.is_file()
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(sample_build["bundle"].read_bytes()).hexdigest()


# ---------------------------------------------------------------- the QC report


def test_report_is_private_and_names_sources_keys_and_validator_files(sample_build):
    report = sample_build["out"] / "report.html"
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    page = report.read_text(encoding="utf-8")
    assert "source folder <code>[withheld: contains a source value]/02_anat-T1w</code>" in page
    assert "description <code>anat-T1w</code>" in page
    # validator issues come with the files they name (BIDS paths)
    row = page.split("<code>SIDECAR_KEY_RECOMMENDED</code>", 1)[1].split("</tr>", 1)[0]
    assert "_T1w.nii.gz</code>" in row


def test_dropped_sidecar_keys_are_named_with_their_reason():
    from packager.sidecar.allowlist import apply_allowlist

    filtered = apply_allowlist(
        {"EchoTime": -3.0, "InstitutionName": "x", "RepetitionTime": 2.0, "SeriesDescription": "zzphi x"},
        allow_free_text=("SeriesDescription",),
        phi_terms=frozenset({"zzphi x"}),
    )
    assert dict(filtered.dropped_keys) == {
        "EchoTime": "invalid",
        "InstitutionName": "denied",
        "SeriesDescription": "phi",
    }
    assert filtered.fields == {"RepetitionTime": 2.0}


def test_failed_build_still_writes_its_report(tmp_path):
    """A build stopped after planning (here: every series skipped) leaves report.html (0600) with
    the error, every exclusion, its source folder and what to do; no bundle."""
    rules = tmp_path / "skip.toml"
    rules.write_text('[heuristic]\nname = "rules"\n\n[[heuristic.rules]]\nmatch = { Modality = "MR" }\nskip = true\n')
    out = tmp_path / "out"
    proc = run_cli("build", str(T1W), "-c", str(rules), "--key-file", str(_key(tmp_path)), "-o", str(out))
    assert proc.returncode == 3 and "nothing to release" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    report = out / "report.html"
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    page = report.read_text(encoding="utf-8")
    assert "Build failed: nothing published" in page and "nothing to release" in page
    # the SOURCE is the series folder itself: its folder is "."
    assert "<td><code>.</code></td><td><code>anat-T1w</code></td>" in page
    assert "write a rule for it" in page


# ---------------------------------------------------------------- the README tutorial


def _tutorial(readme: str) -> tuple[list[str], str]:
    """The tutorial's shell command lines (in order, comments stripped) and its rules.toml."""
    section = readme.split("## Tutorial", 1)[1].split("\n## ", 1)[0]
    shell = [block for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]
    (rules,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in shell for line in block.splitlines()]
    return [line for line in lines if line], rules


def test_readme_tutorial_runs_as_written(corpus, tmp_path):
    """Every command of the README tutorial, as written (SRC = the corpus folder it names), in an
    empty folder with `dcmpack` on PATH: each exits 0, the bundle verifies, the table is private."""
    import os
    import shlex
    import subprocess
    import sys

    repo = T1W.parents[3]
    commands, rules = _tutorial((repo / "README.md").read_text(encoding="utf-8"))
    assert commands[0].startswith("SRC=") and [c.split()[1] for c in commands[1:]] == [
        "init",
        "inspect",
        "plan",
        "build",
        "verify",
    ]
    source = corpus / commands[0].split("=", 1)[1].split("shared/corpus/", 1)[1]
    assert source.is_dir()
    shim = tmp_path / "bin" / "dcmpack"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m packager "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{shim.parent}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(repo))
    work = tmp_path / "work"
    work.mkdir()
    script = "set -e\n" + "\n".join([f"SRC={shlex.quote(str(source))}", commands[1], commands[2]])
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((work / "study" / "series.tsv").stat().st_mode) == 0o600
    assert proc.stdout.strip().splitlines()[-1] == str(work / "study" / "series.tsv")  # path only into a pipe
    (work / "study" / "rules.toml").write_text(rules)
    script = "set -e\n" + "\n".join([f"SRC={shlex.quote(str(source))}", *commands[3:]])
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ok: " in proc.stderr and (work / "study" / "out" / "my-study-1.0.0.zip").is_file()
    assert "8 to convert, 0 excluded" in proc.stdout
