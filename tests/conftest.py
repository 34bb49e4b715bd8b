"""Shared fixtures: repository and corpus roots, the validator, the sample build."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ("conftest_remote",)  # the real Orthanc and the XNAT stand-in

TEST_KEY = "0123456789abcdef0123456789abcdef-test-key"


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")


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
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m packager ARGS`` as a user would run it (no TTY)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "packager", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=full_env, timeout=900)


@pytest.fixture(scope="session")
def sample_build(tmp_path_factory):
    """The sample built once through the CLI with no arguments (as the README's quick start)."""
    out = tmp_path_factory.mktemp("sample-build")
    proc = run_cli("build", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    bundle = out / "dcmpack-sample-1.0.0.zip"
    assert bundle.is_file()
    extracted = out / "extracted"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(extracted)
    return {"bundle": bundle, "extracted": extracted, "stdout": proc.stdout, "stderr": proc.stderr, "out": out}


def leftovers(folder: Path) -> list[str]:
    """Anything a failed build left in its output folder (must be nothing)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir())


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
