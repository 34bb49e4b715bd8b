"""Shared fixtures: repository and corpus roots, the validator, the sample build; running dcmpack.

``run_cli`` runs the command line in this process (most CLI tests), ``spawn_cli`` as a new process
(where only a real process shows the behaviour). Tests use benchmarks/ modules as a package,
``from benchmarks import synthetic`` (pyproject's ``pythonpath`` puts the repository first).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import io
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ("conftest_remote",)  # the real Orthanc and the XNAT stand-in

TEST_KEY = (
    "729c378de1024c952d0b2c97e14bfb0a31d8dcef9469e257114215cfbbd2a2f1"  # a fixed random test key (public: tests only)
)


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # Builds convert everything unless a test names a cache (--cache): a test's result must not
    # depend on what an earlier test (or run) left in the user's cache. tests/test_cache.py covers it.
    os.environ["DCMPACK_CACHE"] = "off"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def corpus() -> Path:
    """../shared/corpus (or $DCMPACK_CORPUS). Missing corpus fails the test, never skips it."""
    root = Path(os.environ.get("DCMPACK_CORPUS", REPO.parent / "shared" / "corpus"))
    if not (root / "INDEX.tsv").is_file():
        pytest.fail(f"real DICOM corpus not found at {root} (set DCMPACK_CORPUS)")
    return root


@pytest.fixture(scope="session")
def sample_module():
    """sample_data/make_sample.py imported by path (for its CANARIES)."""
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "sample_data" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def validator():
    """Run bids-validator-deno; fails (never skips) when it is not installed."""
    from packager.release.verify import find_validator, run_validator

    if find_validator() is None:
        pytest.fail("bids-validator-deno is not installed (pip install -e '.[test]')")
    return run_validator


@pytest.fixture(scope="session")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("key") / "release.key"
    path.write_text(TEST_KEY)
    path.chmod(0o600)  # a key others can read is refused
    return path


def spawn_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m packager ARGS`` in a new process, as a user would run it (no TTY).

    For what only a real process shows: the README's quick start, an environment that acts at
    interpreter start (``PYTHONPATH`` shadowing a package), signals, terminals, other users.
    """
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "packager", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=full_env,
        timeout=900,
    )


def _pristine_cli_state() -> dict:
    from packager import cli

    return {name: value for name, value in vars(cli._State).items() if not name.startswith("__")}


#: ``packager.cli`` keeps what its error handler needs on a class (set per command, counted per
#: process); a new process starts from these values, so every in-process run does too.
_CLI_STATE = _pristine_cli_state()
_QUIETED_LOGGERS = ("packager", "dicom2nifti", "pydicom", "bids", "nibabel")


@contextlib.contextmanager
def _as_a_fresh_process(cwd: Path, env: dict):
    """Working folder, environment and the process-wide state a CLI run changes, restored after it.

    The CLI sets logging handlers and levels, ``warnings.showwarning``, the collector's
    thresholds, and freezes the heap before forking workers; ``cli._State`` is reset to its
    import-time values (copies, as its counter is updated in place).
    """
    from packager import cli

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_loggers = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name in _QUIETED_LOGGERS
        for logger in [logging.getLogger(name)]
    }
    saved_showwarning, saved_threshold, frozen = warnings.showwarning, gc.get_threshold(), gc.get_freeze_count()
    for name, value in _CLI_STATE.items():
        setattr(cli._State, name, copy.copy(value))
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for name, (handlers, level, propagate) in saved_loggers.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
        warnings.showwarning = saved_showwarning
        gc.set_threshold(*saved_threshold)
        if gc.get_freeze_count() > frozen:
            gc.unfreeze()
        for name, value in _CLI_STATE.items():
            setattr(cli._State, name, value)


@contextlib.contextmanager
def _std_streams_to_files():
    """File descriptors 1 and 2, and ``sys.stdout``/``sys.stderr`` over them, into two temporary
    files (not terminals), for the duration: what forked workers or child processes write there
    is captured too, as it would be from a new process. Yields a function reading both files."""
    files = [tempfile.TemporaryFile() for _ in range(2)]
    saved_fds = [os.dup(1), os.dup(2)]
    saved_streams = sys.stdout, sys.stderr
    for stream in saved_streams:
        stream.flush()
    try:
        for fd, handle in zip((1, 2), files, strict=True):
            os.dup2(handle.fileno(), fd)
        # Unbuffered: a worker forked mid-write must not inherit (and write twice) pending text.
        sys.stdout, sys.stderr = (
            io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", write_through=True) for fd in (1, 2)
        )
        yield lambda: tuple(_read_all(handle) for handle in files)
    finally:
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        for handle in files:
            handle.close()


def _read_all(handle) -> str:
    handle.seek(0)
    return handle.read().decode()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``dcmpack ARGS`` in this process (``packager.cli.main``), as if run with no TTY.

    Same result as ``spawn_cli`` (exit code, stdout, stderr) without a second of interpreter
    start-up: stdout and stderr are files, not terminals (see ``_std_streams_to_files``), the
    working folder defaults to the repository, ``env`` is applied for the run only.
    """
    from packager import cli

    if env and "PYTHONPATH" in env:
        raise ValueError("PYTHONPATH acts when an interpreter starts: use spawn_cli")
    with _as_a_fresh_process(cwd or REPO, env or {}), _std_streams_to_files() as captured:
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        stdout, stderr = captured()
    return subprocess.CompletedProcess(["dcmpack", *args], code, stdout, stderr)


@pytest.fixture(scope="session")
def sample_build(tmp_path_factory):
    """The sample built once by ``python -m packager`` with no arguments (the README's quick start)."""
    out = tmp_path_factory.mktemp("sample-build")
    proc = spawn_cli("build", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    bundle = out / "dcmpack-sample-1.0.0.zip"
    assert bundle.is_file()
    extracted = out / "extracted"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(extracted)
    return {"bundle": bundle, "extracted": extracted, "stdout": proc.stdout, "stderr": proc.stderr, "out": out}


def leftovers(folder: Path) -> list[str]:
    """Anything a build left in its output folder: after a failure that must be nothing but the
    private report of a build that failed after planning (kept for the reviewer, 0600, not listed)."""
    if not folder.exists():
        return []
    names = sorted(p.name for p in folder.iterdir())
    report = folder / "report.html"
    if report.is_file():
        assert stat.S_IMODE(report.stat().st_mode) == 0o600, "report.html readable by others"
        if "Build failed: nothing published" in report.read_text(encoding="utf-8"):
            names.remove("report.html")
    return names


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def assert_hygienic_nifti_headers(root: Path) -> None:
    """Every NIfTI under ``root`` carries our fixed header text, units and codes, no extension."""
    import nibabel as nib

    paths = list(root.rglob("*.nii.gz"))
    assert paths, root
    for path in paths:
        header = nib.load(path).header
        assert header["descrip"].tobytes().rstrip(b"\0") == b"dcmpack"
        for field in ("aux_file", "intent_name", "db_name", "data_type"):
            assert header[field].tobytes().strip(b"\0") == b"", field
        assert not header.extensions
        assert header.get_xyzt_units() == ("mm", "sec")
        assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1


@pytest.fixture(params=["compiled", "pure"])
def reader_core(request, monkeypatch) -> str:
    """The test runs twice: with the compiled and with the interpreted build of the fast reader's
    per-file core (``dicom/walk.py``; ``test_compiled_core.py`` checks the compiled one is built)."""
    from packager.dicom import fast, walk

    if request.param == "compiled":
        from packager.dicom import _walk_c as module  # type: ignore[attr-defined]
    else:
        module = walk
    monkeypatch.setattr(fast, "CORE", module)
    return request.param
