#!/usr/bin/env python3
"""Bundle fingerprints: the sha256 of the bundle built from the sample and from every corpus dataset.

Usage::

    python benchmarks/bundle_hashes.py [--out hashes.tsv] [--jobs N] [DATASET ...]

A refactoring that must not change behaviour is checked by running this before and after and
comparing the two lists (``diff before.tsv after.tsv``). Each corpus dataset is built with
``tests/rules/<dataset>.toml`` when there is one, otherwise with
``tests/heuristics/name_everything.py``; all with one fixed, public test key. A build that stops
is recorded by its exit code and the error line's class (never its text, which names files).
Rows: ``name<TAB>exit code<TAB>sha256 or error class``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("DCMPACK_CORPUS", REPO.parent / "shared" / "corpus"))
KEY = "0e519356ecf4206537f932138e6989f69c24742ab33fa24e27e5f211c3a066d9"


def _one(name: str, workdir: Path, jobs: int) -> tuple[int, str]:
    from packager import api
    from packager.config import load_config, merge_flags
    from packager.errors import DcmpackError

    key_file = workdir / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    out = workdir / "out"
    flags = {"output": out, "key_file": str(key_file), "jobs": jobs, "force": True}
    if name == "sample":
        config = api.sample_config(**flags)
    else:
        rules = REPO / "tests" / "rules" / f"{name}.toml"
        source = (str(CORPUS / name / "In"),)
        if rules.is_file():
            config = merge_flags(load_config(rules), sources=source, **flags)
        else:
            heuristic = str(REPO / "tests" / "heuristics" / "name_everything.py")
            config = merge_flags(load_config(None), sources=source, heuristic=heuristic, **flags)
    try:
        result = api.build(config)
    except DcmpackError as exc:
        return exc.exit_code, type(exc).__name__
    return result.exit_code, hashlib.sha256(Path(result.bundle).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    names = args.datasets or ["sample"] + sorted(p.name for p in CORPUS.iterdir() if (p / "In").is_dir())
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="dcmpack-hashes-") as tmp:
            code, digest = _one(name, Path(tmp), args.jobs)
        rows.append(f"{name}\t{code}\t{digest}")
        print(rows[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
