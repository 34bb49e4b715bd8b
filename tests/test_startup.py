"""Start-up: ``dcmpack --help`` and ``version`` load none of the conversion stack (issue 18).

Timing is the benchmark's (``benchmarks/bench.py`` measures ``dcmpack version``); what can fail
here is which modules an import chain pulls in, in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, TEST_KEY

#: Loaded by a build when it needs them; never by the CLI's start-up.
HEAVY = ("pydicom", "numpy", "nibabel", "scipy", "SimpleITK", "dicom2nifti", "bids", "dask", "packager.api")

_PROBE = """
import json, sys
sys.argv = ["dcmpack", *json.loads(sys.argv[1])]
from packager import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules)), file=sys.stderr)
"""


def _printed(code: str) -> list[str]:
    """The words ``code`` prints, run in a fresh interpreter from the repository."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.split()


def _loaded(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(args))],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def test_help_and_version_load_no_conversion_stack():
    for args in (("--help",), ("build", "--help"), ("version",)):
        loaded = _loaded(*args)
        assert "packager.cli" in loaded
        assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}, args


def test_lazy_api_names_still_resolve():
    import packager

    assert packager.build is __import__("packager.api").api.build
    assert packager.phi.released is __import__("packager.phi.collect").phi.collect.released
    try:
        packager.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown attribute resolved")


def test_a_run_without_head_runs_never_imports_the_defacer():
    code = (
        "import sys, numpy as np\n"
        "from packager import deface\n"
        "from packager.config import DefaceConfig\n"
        "data, record = deface.apply(np.zeros((4, 4, 4)), np.eye(4), 'func', 'bold', None, DefaceConfig())\n"
        "assert record is None\n"
        "print('SimpleITK' in sys.modules, 'scipy.ndimage' in sys.modules)\n"
    )
    assert _printed(code) == ["False", "False"]


#: Not loaded when a build reads its first source file: the conversion's own stack (imported by the
#: workers when they convert, nibabel also where the QC report draws), the defacer, the cluster
#: client, pybids (a test dependency only: paths come from the BIDS schema) and requests (pydicom's
#: test-file downloads: ``dicom.without_requests``).
NOT_AT_FIRST_READ = (
    "dicom2nifti",
    "scipy.ndimage",
    "nibabel",
    "SimpleITK",
    "dask",
    "distributed",
    "bids",
    "requests",
)


def test_pydicom_comes_in_without_requests_which_still_imports_afterwards():
    code = (
        "import sys\n"
        "from packager.dicom import without_requests\n"
        "with without_requests():\n"
        "    import pydicom, pydicom.data\n"
        "print('requests' in sys.modules)\n"
        "import requests, dicomweb_client\n"
        "print(requests.get.__module__)\n"
    )
    assert _printed(code) == ["False", "requests.api"]


#: Imported by ``packager.api`` where they are used, in a build once the header pass is done (issue
#: 18): the conversion task (with numpy, the defacer's and the QC report's modules), the planner,
#: the audit, the review and the verification; ``dcmpack inspect``'s module.
AFTER_THE_HEADER_PASS = (
    "packager.convert.task",
    "packager.naming.planner",
    "packager.release.review",
    "packager.release.audit",
    "packager.release.report",
    "packager.release.verify",
    "packager.inspection",
)


def test_importing_the_api_loads_no_reader_and_no_later_stage():
    code = (
        "import sys, packager.api\n"
        f"later = {AFTER_THE_HEADER_PASS!r}\n"
        "print(*sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pydicom') or m in later))\n"
    )
    assert _printed(code) == []


def test_a_build_reads_its_first_file_before_the_conversion_stack(tmp_path):
    from benchmarks import first_read

    key = tmp_path / "key"
    key.write_text(TEST_KEY + "\n")
    key.chmod(0o600)
    flags = ["--key-file", str(key), "-c", str(REPO / "sample_data" / "release.toml"), "--no-cache", "--jobs", "2"]
    seconds, _, loaded = first_read.one_round([REPO / "sample_data" / "dicom"], flags, tmp_path)
    assert seconds > 0
    assert "packager.dicom.fast" in loaded  # the hook saw the header pass's first read, not an earlier open
    early = {m for m in loaded if m in NOT_AT_FIRST_READ or m.split(".")[0] in NOT_AT_FIRST_READ}
    assert not early
    assert not set(AFTER_THE_HEADER_PASS) & set(loaded)


def test_plan_loads_no_conversion_stack():
    loaded = _loaded("plan")  # the embedded sample: every file's header read, every series named
    assert "packager.index.scan" in loaded and "packager.naming.layout" in loaded  # it did plan
    assert not {m for m in loaded if m in NOT_AT_FIRST_READ or m.split(".")[0] in NOT_AT_FIRST_READ}


def test_dicom2nifti_is_imported_without_scipy_ndimage_which_still_works_where_used():
    code = (
        "import sys\n"
        "from packager.convert import check, ConversionFailed\n"
        "try:\n"
        "    check.run_dicom2nifti([])\n"  # imports dicom2nifti, then refuses the empty series
        "except ConversionFailed:\n"
        "    pass\n"
        "print('dicom2nifti.resample' in sys.modules, 'scipy.ndimage' in sys.modules)\n"
        "import dicom2nifti.resample as resample\n"
        "from scipy import ndimage\n"
        "print(resample.scipy.ndimage.affine_transform is ndimage.affine_transform,"
        " type(sys.modules['scipy.ndimage']).__name__)\n"
    )
    assert _printed(code) == ["True", "False", "True", "module"]


def test_the_scipy_ndimage_stand_in_answers_from_the_real_module_if_read():
    code = (
        "import sys\n"
        "from packager.convert import check\n"
        "with check._scipy_ndimage_on_use():\n"
        "    stand_in = sys.modules['scipy.ndimage']\n"
        "    print(type(stand_in).__name__, callable(stand_in.affine_transform))\n"  # imports the real one
        "    print(type(sys.modules['scipy.ndimage']).__name__)\n"
        "print(type(sys.modules['scipy.ndimage']).__name__)\n"
    )
    assert _printed(code) == ["_NotYet", "True", "module", "module"]


def test_the_cli_lets_idle_blas_threads_sleep_before_numpy_is_imported_keeping_a_users_setting():
    code = (
        "import os, sys\n"
        "from packager import cli\n"
        "try:\n"
        "    cli.main(['version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), 'numpy' in sys.modules)\n"
    )
    assert _printed(code)[-2:] == ["4", "False"]
    assert _printed(f"import os\nos.environ['OPENBLAS_THREAD_TIMEOUT'] = '9'\n{code}")[-2:] == ["9", "False"]


def test_pydicom_is_imported_without_a_collection_and_kept_out_of_the_collectors_reach():
    code = (
        "import gc, sys\n"
        "gc.set_threshold(700, 10, 10)\n"  # Python's own: a collection every 700 new objects
        "from packager.dicom import load_pydicom\n"
        "runs = []\n"
        "gc.callbacks.append(lambda phase, info: runs.append(phase))\n"
        "load_pydicom()\n"
        "from pydicom.datadict import DicomDictionary\n"
        "frozen = gc.get_freeze_count()\n"
        "print(len(runs), gc.isenabled(), frozen > 40000, any(o is DicomDictionary for o in gc.get_objects()))\n"
        "load_pydicom()\n"  # loaded already: nothing more is frozen
        "print(gc.get_freeze_count() == frozen)\n"
    )
    assert _printed(code) == ["0", "True", "True", "False", "True"]
