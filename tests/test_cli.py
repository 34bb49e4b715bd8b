"""The command line: exit codes, progress (TTY and plain), --quiet/--verbose/--json, summary, plan."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys

import pytest
from conftest import REPO, leftovers, run_cli

from packager import api, cli
from packager.errors import EXIT_CODES, ConfigError, InputError, OutputError, PhiAuditError, VerifyError

T1W = REPO / "sample_data" / "dicom" / "ZZPHIDOE_JANE_20240312" / "02_anat-T1w"


@pytest.fixture(scope="module")
def t1w_build(tmp_path_factory, key_file):
    """One small real build through the CLI (no TTY), with --json."""
    out = tmp_path_factory.mktemp("cli") / "out"
    proc = run_cli("build", str(T1W), "-o", str(out), "--key-file", str(key_file), "--jobs", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    return proc, out


def _run_in_pty(*args: str, stdout_tty: bool = False) -> tuple[int, str, str]:
    """Run ``python -m packager ARGS`` with stderr (and stdin, and stdout if asked) on a pseudo-terminal."""
    master, slave = pty.openpty()
    full_env = dict(os.environ, PYTHONPATH=str(REPO), TERM="xterm-256color", COLUMNS="160")
    proc = subprocess.Popen(
        [sys.executable, "-m", "packager", *args],
        cwd=REPO,
        env=full_env,
        stdin=slave,
        stdout=slave if stdout_tty else subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait(timeout=300)
    return proc.returncode, stdout, b"".join(chunks).decode(errors="replace")


# ---------------------------------------------------------------- exit codes


def test_exit_codes_table_matches_the_docs():
    """docs/commands.md "Exit codes" lists exactly the codes the code uses, and so does the README's line."""
    text = (REPO / "docs" / "commands.md").read_text()
    section = text.split("# Exit codes", 1)[1].split("\n# ", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert documented == set(EXIT_CODES)
    for error in (ConfigError, InputError, PhiAuditError, VerifyError, OutputError):
        assert error.exit_code in documented
    readme = (REPO / "README.md").read_text().split("Exit codes:", 1)[1].split("\n\n", 1)[0]
    assert {int(m) for m in re.findall(r"\b(\d+) [a-zA-Z]", readme)} == set(EXIT_CODES)


def test_usage_error_is_exit_2():
    proc = run_cli("build", "--no-such-flag")
    assert proc.returncode == 2
    assert "No such option" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_command_is_exit_2():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_version():
    proc = run_cli("version")
    assert proc.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+\S*\n", proc.stdout)


def _main(monkeypatch, capsys, argv, raises):
    def boom(*args, **kwargs):
        raise raises

    monkeypatch.setattr(api, "build", boom)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_bug_is_one_line_exit_70(monkeypatch, capsys, key_file):
    code, out, err = _main(
        monkeypatch, capsys, ["build", str(T1W), "--key-file", str(key_file)], RuntimeError("secret header value ZZPHI")
    )
    assert code == 70
    assert err.strip().splitlines() == [
        "error: internal error: RuntimeError (a bug in dcmpack; rerun with --verbose for the traceback and report it)"
    ]
    assert "ZZPHI" not in err  # the exception text (which may hold a header value) is not printed


def test_bug_traceback_with_verbose(monkeypatch, capsys, key_file):
    code, _, err = _main(
        monkeypatch, capsys, ["build", str(T1W), "--key-file", str(key_file), "--verbose"], RuntimeError("boom")
    )
    assert code == 70
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: internal")


def test_keyboard_interrupt_is_130(monkeypatch, capsys, key_file):
    code, _, err = _main(monkeypatch, capsys, ["build", str(T1W), "--key-file", str(key_file)], KeyboardInterrupt())
    assert code == 130
    assert err.strip() == "error: interrupted: staging removed, nothing published"


@pytest.mark.parametrize(
    "error", [ConfigError("c"), InputError("i"), PhiAuditError("p"), VerifyError("v"), OutputError("o")]
)
def test_each_error_class_maps_to_its_code(monkeypatch, capsys, key_file, error):
    code, out, err = _main(monkeypatch, capsys, ["build", str(T1W), "--key-file", str(key_file), "--json"], error)
    assert code == error.exit_code
    assert err.strip() == f"error: {error}"
    assert json.loads(out) == {"error": str(error), "exit_code": error.exit_code}


# ---------------------------------------------------------------- build output


def test_json_build(t1w_build):
    proc, out = t1w_build
    summary = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert summary["bundle"] == str(out / "dataset-1.0.0.zip")
    assert summary["report"] == str(out / "report.html")
    assert re.fullmatch(r"[0-9a-f]{64}", summary["sha256"])
    assert summary["size"] == (out / "dataset-1.0.0.zip").stat().st_size
    assert summary["subjects"] == 1 and summary["sessions"] == 1
    assert summary["runs"] == {"anat": 1}
    assert summary["exit_code"] == 0 and summary["failed"] == []
    assert leftovers(out) == ["dataset-1.0.0.zip", "report.html"]
    # no TTY: plain progress lines for every long step
    for line in (
        "scanning headers: 68/68 files",
        "converting series: 1/1 series",
        "auditing for PHI ...",
        "verifying ...",
        "writing QC report: 1/1 runs",
    ):
        assert line in proc.stderr.splitlines(), proc.stderr
    assert re.search(r"^zipping: \d+(\.\d)? [kM]B/\d+(\.\d)? [kM]B$", proc.stderr, flags=re.M)
    assert "built " not in proc.stderr  # --json: no human summary


def test_plain_progress_is_sparse(t1w_build):
    proc, _ = t1w_build
    scans = [line for line in proc.stderr.splitlines() if line.startswith("scanning headers")]
    assert 2 <= len(scans) <= 6, scans  # the start, each quarter, the end


def test_summary_text(tmp_path, key_file):
    out = tmp_path / "out"
    proc = run_cli("build", str(T1W), "-o", str(out), "--key-file", str(key_file), "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out / 'dataset-1.0.0.zip'}\n"  # stdout: the bundle path only
    lines = proc.stderr.splitlines()
    start = lines.index(f"built {out / 'dataset-1.0.0.zip'}")
    summary = "\n".join(lines[start:])
    assert re.search(r"^  sha256     [0-9a-f]{64}$", summary, flags=re.M)
    assert re.search(r"^  size       \d+(\.\d)? [kM]B$", summary, flags=re.M)
    assert "  subjects   1   sessions: 1" in summary
    assert "  runs       1: 1 anat" in summary
    assert "  excluded   0" in summary
    assert f"  report     {out / 'report.html'}  (PRIVATE: do not share)" in summary
    assert re.search(r"^  time       \d+\.\d s$", summary, flags=re.M)


def test_quiet(tmp_path, key_file):
    out = tmp_path / "out"
    proc = run_cli("build", str(T1W), "-o", str(out), "--key-file", str(key_file), "--jobs", "1", "--quiet")
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout == f"{out / 'dataset-1.0.0.zip'}\n"


def test_progress_bars_on_a_terminal(tmp_path, key_file):
    code, stdout, terminal = _run_in_pty(
        "build", str(T1W), "-o", str(tmp_path / "out"), "--key-file", str(key_file), "--jobs", "1"
    )
    assert code == 0, terminal
    assert "scanning headers" in terminal and "converting series" in terminal and "zipping" in terminal
    assert "\u2501" in terminal  # rich's bar glyph
    assert "scanning headers: 68/68 files" not in terminal  # bars, not plain lines
    assert "built " in terminal and stdout.strip().endswith("dataset-1.0.0.zip")


def test_exit_1_reaches_the_shell(tmp_path, key_file):
    """Regression: typer's standalone_mode=False returned the code instead of exiting with it."""
    from bad_inputs import make

    source = make("missing_geometry", tmp_path / "in")
    proc = run_cli(
        "build", str(source), "-o", str(tmp_path / "out"), "--key-file", str(key_file), "--jobs", "1", "--json"
    )
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["exit_code"] == 1
    assert summary["failed"] == [
        {"series": 1, "number": 3, "reason": "conversion failed", "detail": summary["failed"][0]["detail"]}
    ]
    assert proc.stderr.splitlines()[-1].startswith("error: series 1 (no. 3) not converted: ")


# ---------------------------------------------------------------- plan


def test_plan_piped_is_a_full_table_without_descriptions(sample_module):
    proc = run_cli("plan")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "15 to convert, 15 excluded, 0 non-DICOM file(s) skipped" in text
    assert "description" not in text
    # full BIDS paths, never cut with an ellipsis, and no PHI at all
    assert re.search(r"sub-\w+/ses-01/func/sub-\w+_ses-01_task-rest_bold\.nii\.gz", text)
    assert "\u2026" not in text
    for canary in sample_module.CANARIES:
        assert canary.lower() not in text.lower(), canary
    row = next(line for line in text.splitlines() if "_T1w.nii.gz" in line)
    assert re.search(r"\b90x84x68\b", row) and "convert" in row


def test_plan_on_a_terminal_shows_descriptions():
    code, _, terminal = _run_in_pty("plan", stdout_tty=True)
    assert code == 0, terminal
    assert "description" in terminal and "anat-T1w" in terminal  # the user's own terminal only


def test_plan_json():
    proc = run_cli("plan", "--json", "--quiet")
    assert proc.returncode == 0 and proc.stderr == ""
    rows = json.loads(proc.stdout)
    assert len(rows) == 30
    assert {r["decision"] for r in rows} == {"convert", "exclude"}
    localizer = next(r for r in rows if r["decision"] == "exclude" and r["reason"] == "localizer")
    assert localizer["number"] == 1 and localizer["path"] == "" and localizer["error"] is False
    assert all(r["path"].endswith(".nii.gz") for r in rows if r["decision"] == "convert")
    assert not any("description" in r for r in rows)


def test_plan_bad_input_exit_3(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("plan", str(tmp_path / "empty"), "--key-file", str(REPO / "sample_data" / "sample.key"))
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1] == "error: input: no DICOM files found (0 other file(s) skipped)"


def test_plan_bad_config_exit_2(tmp_path):
    config = tmp_path / "release.toml"
    config.write_text("[bundel]\nname = 'x'\n")
    proc = run_cli("plan", str(T1W), "-c", str(config), "--key-file", str(REPO / "sample_data" / "sample.key"))
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1] == 'error: release.toml:1 [bundel]: unknown table (did you mean "bundle"?)'
    )
