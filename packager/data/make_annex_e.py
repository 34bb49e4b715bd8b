#!/usr/bin/env python3
"""Regenerate ``annex_e.tsv`` from a machine-readable copy of DICOM PS3.15 Table E.1-1.

Usage::

    python packager/data/make_annex_e.py confidentiality_profile_attributes.json > packager/data/annex_e.tsv

Input: ``standard/confidentiality_profile_attributes.json`` of the innolitics/dicom-standard
repository (a list of ``{"name", "tag", "basicProfile", ...}`` rows parsed from the standard).
The committed ``annex_e.tsv`` was made from commit 0d01bf11dfc1d0b73b6df85bbf6e1764d3c558a3 of
that repository (460 rows). Only the columns dcmpack uses are kept: the table is data (facts of
the standard), not code.

Output columns (tab-separated, one header line, rows sorted by tag):

``tag``      ``GGGGEEEE`` in upper-case hex; ``X`` for repeating-group digits (``60XX3000``);
             the private-attribute row is written as ``ODD`` (any odd group)
``keyword``  the pydicom keyword for the tag (empty when pydicom has none)
``name``     the attribute name as printed in the table
``action``   the Basic Profile action code(s): D, Z, X, U, combinations like ``X/Z/D``
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _tag(text: str) -> str | None:
    match = re.fullmatch(r"\(([0-9A-Fa-fXx]{4}),([0-9A-Fa-fXx]{4})\)", text.strip())
    if match:
        return (match.group(1) + match.group(2)).upper()
    if "ODD" in text.upper():
        return "ODD"
    return None


def _keyword(tag: str) -> str:
    from pydicom.datadict import keyword_for_tag

    if tag == "ODD":
        return ""
    try:
        return keyword_for_tag(int(tag.replace("X", "0"), 16)) or ""
    except (ValueError, KeyError):
        return ""


def rows(source: list[dict]) -> list[tuple[str, str, str, str]]:
    """(tag, keyword, name, action) for every row of the profile table."""
    out = []
    for item in source:
        tag = _tag(str(item.get("tag", "")))
        if tag is None:
            raise SystemExit(f"unparseable tag in row {item.get('name')!r}")
        name = " ".join(str(item.get("name", "")).split("(see")[0].split())
        out.append((tag, _keyword(tag), name, str(item.get("basicProfile", "")).strip()))
    return sorted(set(out))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    sys.stdout.write("tag\tkeyword\tname\taction\n")
    for row in rows(source):
        sys.stdout.write("\t".join(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
