#!/usr/bin/env bash
# Install everything the test suite needs, check the code (ruff lint and format, mypy), then run
# the tests. One command for newcomers and CI:
#   ./scripts/test.sh [pytest args]
# - Debian packages: Orthanc + DICOMweb plugin (real PACS tests), Chromium (QC report test).
# - A virtualenv (.venv, or $DCMPACK_VENV) with dcmpack and its test extras: bids-validator-deno,
#   the dcm2niix wheel, pynetdicom, dicomweb-client, dask, hypothesis, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v Orthanc >/dev/null 2>&1 || need_apt+=(orthanc orthanc-dicomweb dcmtk)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v pigz >/dev/null 2>&1 || need_apt+=(pigz)  # the benchmark's fastest dcm2niix uses it
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: the tests need Debian packages: ${need_apt[*]} (run as root, or install them)" >&2
    exit 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

VENV=${DCMPACK_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"
export PATH="$PWD/$VENV/bin:$PATH"
# Static checks first (set -e stops at the first failure); settings in pyproject.toml.
CHECKED=(packager heuristics tests benchmarks sample_data)
"$VENV/bin/ruff" check "${CHECKED[@]}"
"$VENV/bin/ruff" format --check "${CHECKED[@]}"
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
