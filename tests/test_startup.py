"""Start-up: ``dcmpack --help`` and ``version`` load none of the conversion stack (issue 18).

Timing is the benchmark's (``benchmarks/bench.py`` measures ``dcmpack version``); what can fail
here is which modules an import chain pulls in, in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

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
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
