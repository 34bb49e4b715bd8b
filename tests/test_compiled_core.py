"""The fast reader's per-file core (``dicom/walk.py``): compiled and interpreted give the same.

- the compiled build IS what runs here (``pip install -e .`` built it; a build that failed
  quietly, or a stale one, fails this suite instead of silently running slower code);
- on every DICOM file of the corpus (all its datasets), the sample session and the PHI torture
  set, and on thousands of byte-mutated variants of them, both builds give the same element
  trees, pixel offsets, value checks, pydicom raw elements and exceptions, read whole and
  headers-only (the pydicom equivalence in ``test_fast_reader.py`` runs against both builds too);
- the fallback: ``DCMPACK_PURE_PYTHON=1`` and a stale build select the interpreted core, and
  ``dcmpack version`` says which core runs;
- a bundle built with the interpreted core is byte-identical to the compiled one's.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli, spawn_cli
from phi_torture import make_torture

from packager.dicom import core, walk
from packager.dicom import fast as fast_reader
from packager.dicom.fast import NotFast, check_values, make_all, read_fast
from packager.dicom.reader import looks_like_dicom

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


def _compiled():
    from packager.dicom import _walk_c  # an ImportError here is a failed build: fail, do not skip

    return _walk_c


def test_the_compiled_core_is_active():
    assert core.WHY_NOT_COMPILED is None, core.describe()
    assert core.CORE is _compiled()
    assert fast_reader.CORE is _compiled()
    assert _compiled().BUILT_FROM == core.source_digest()
    assert "compiled (Cython)" in core.describe()


def test_the_compiled_core_is_native_code():
    # a .py that Python imported under the extension's name would pass the test above
    assert Path(_compiled().__file__).suffix == ".so"
    assert type(_compiled().walk).__name__ == "cython_function_or_method"
    assert type(walk.walk).__name__ == "function"


def _outcome(module, data: bytes, headers_only: bool):
    """Everything the core decides for one file, with ``module`` as the core."""
    saved = fast_reader.CORE
    fast_reader.CORE = module
    try:
        try:
            scanned = read_fast(Path("x.dcm"), headers_only=headers_only, data=data, lazy=True)
        except NotFast as exc:
            return ("NotFast", str(exc))
        try:
            check_values(scanned)
            checked = "ok"
        except NotFast as exc:
            checked = f"NotFast {exc}"
        elements = dict(make_all(scanned.dataset)._dict)
        raw = {tag: tuple(e) if isinstance(e, tuple) else (e.tag, e.VR, len(e.value)) for tag, e in elements.items()}
        meta = {tag: tuple(e) for tag, e in scanned.dataset.file_meta._dict.items()}
        return (scanned.elements, scanned.meta_elements, scanned.checks, scanned.pixel_at, checked, raw, meta)
    finally:
        fast_reader.CORE = saved


@pytest.fixture(scope="module")
def test_files(corpus, tmp_path_factory) -> list[bytes]:
    torture = tmp_path_factory.mktemp("torture")
    make_torture(torture)
    folders = [p / "In" for p in sorted(corpus.iterdir()) if (p / "In").is_dir()]
    folders += [REPO / "sample_data" / "dicom", torture]
    return [
        p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file() and looks_like_dicom(p)
    ]


@pytest.mark.slow
def test_both_builds_give_the_same_on_every_test_file(test_files):
    compiled = _compiled()
    covered = 0
    for number, data in enumerate(test_files):
        for headers_only in (True, False) if number % 4 == 0 else (True,):
            a, b = _outcome(compiled, data, headers_only), _outcome(walk, data, headers_only)
            assert a == b, (number, headers_only)
            covered += a[0] != "NotFast"
    assert len(test_files) > 2500
    assert covered > 2500  # read, not just refused alike


@pytest.mark.slow
def test_both_builds_give_the_same_on_mutated_files(test_files):
    """Flipped bytes, truncations and rewritten VRs and lengths of element headers."""
    compiled = _compiled()
    rng = random.Random(18)
    bases = [d for d in test_files if len(d) < 200_000]
    outcomes: set[str] = set()
    for _ in range(3000):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            kind = rng.randrange(5)
            at = rng.randrange(132, len(data))
            if kind == 0:
                data[at : at + 2] = rng.randbytes(rng.randint(1, 2))
            elif kind == 1:
                del data[at:]
            elif kind == 2:  # a VR: the next element-like header after ``at``
                near = range(at, min(len(data) - 6, at + 400))
                found = next((i for i in near if data[i + 4 : i + 6].isupper()), None)
                if found is not None:
                    data[found + 4 : found + 6] = rng.choice([b"UN", b"OB", b"SQ", b"LO", b"DS", b"US", b"XX", b"ss"])
            elif kind == 3:  # a length, undefined sometimes
                data[at : at + 4] = b"\xff\xff\xff\xff" if rng.random() < 0.3 else rng.randbytes(2) + b"\x00\x00"
            else:  # a US of 3 bytes (pydicom refuses it): the file grows by one byte there
                found = data.find(b"US\x02\x00", at)
                if found > 0:
                    data[found + 2 : found + 6] = b"\x03\x00" + data[found + 4 : found + 6] + b"\x00"
            if len(data) < 140:
                break
        data = bytes(data)
        headers_only = rng.random() < 0.5
        a, b = _outcome(compiled, data, headers_only), _outcome(walk, data, headers_only)
        assert a == b
        outcomes.add("refused" if a[0] == "NotFast" else "read" if a[4] == "ok" else "values refused")
    assert outcomes == {"refused", "read", "values refused"}


def test_the_fallback_is_chosen_when_asked_or_stale(monkeypatch, tmp_path):
    monkeypatch.setenv(core.PURE_ENV, "1")
    assert core._choose()[0] is walk
    assert core._choose()[2] == "DCMPACK_PURE_PYTHON is set"
    monkeypatch.setenv(core.PURE_ENV, "0")
    assert core._choose()[0] is _compiled()
    edited = tmp_path / "walk.py"
    edited.write_bytes(core.SOURCE.read_bytes() + b"\n# edited after the build\n")
    monkeypatch.setattr(core, "SOURCE", edited)
    module, name, why = core._choose()
    assert module is walk and name == "pure Python" and "stale" in (why or "")
    assert hashlib.sha256(edited.read_bytes()).hexdigest() != _compiled().BUILT_FROM


def test_the_interpreted_core_runs_without_cython_installed(tmp_path):
    """Cython is a build requirement only: a wheel's fallback imports ``walk.py`` with the shim."""
    script = tmp_path / "no_cython.py"
    script.write_text(
        "import sys\n"
        "sys.modules['cython'] = None  # as if not installed: import cython raises ImportError\n"
        "from packager.dicom import walk\n"
        "assert walk.cython.__name__ == 'packager.dicom._cython_shim', walk.cython\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "elements, end, pixel_at = walk.walk(data, 132, len(data), walk.MODES[2], [])\n"
        "print(len(elements), pixel_at is not None)\n"
    )
    sample = next(p for p in sorted((REPO / "sample_data" / "dicom").rglob("*")) if looks_like_dicom(p))
    proc = subprocess.run(
        [sys.executable, str(script), str(sample)], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    count, pixels = proc.stdout.split()
    assert int(count) > 20 and pixels == "True"


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO))


def test_version_says_which_core_runs():
    compiled = run_cli("version", "--verbose")
    assert compiled.returncode == 0, compiled.stderr
    assert "per-file core: compiled (Cython)" in compiled.stdout
    # the core is chosen when the process starts: a new one, as a user would run it
    pure = spawn_cli("version", "--verbose", env={core.PURE_ENV: "1"})
    assert pure.returncode == 0, pure.stderr
    assert pure.stdout.splitlines()[1] == "per-file core: pure Python (DCMPACK_PURE_PYTHON is set)"


@pytest.mark.slow
def test_bundles_are_byte_identical_with_either_core(sample_build, tmp_path):
    """The sample built again with the interpreted core (``sample_build`` used the compiled one)."""
    result = spawn_cli("build", "-o", str(tmp_path), "--verbose", env={core.PURE_ENV: "1"})
    assert result.returncode == 0, result.stderr
    assert "per-file core: pure Python (DCMPACK_PURE_PYTHON is set)" in result.stderr
    pure_bundle = tmp_path / sample_build["bundle"].name
    assert pure_bundle.read_bytes() == sample_build["bundle"].read_bytes()
