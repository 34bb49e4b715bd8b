"""The documentation: the README stays short and links only to pages that exist, and the
reference in docs/ builds into a static site with ``mkdocs build --strict`` (no broken link,
no page missing from the navigation)."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_readme_is_short_and_its_doc_links_exist():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#]*)", text)
    assert links, "the README links to the reference in docs/"
    for link in links:
        assert (REPO / link).exists(), link


def test_docs_build_strict(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-q",
            "-f",
            str(REPO / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("index", "commands", "phi", "architecture"):
        assert (tmp_path / "site" / page / "index.html").is_file() or (tmp_path / "site" / f"{page}.html").is_file()
