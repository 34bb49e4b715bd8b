"""Build hook (``pip install .`` / ``pip install -e .``): everything else is in pyproject.toml.

Compiles the fast reader's per-file core, ``packager/dicom/walk.py`` (Cython pure Python mode),
into the extension ``packager.dicom._walk_c`` with the machine's C compiler. The module is
compiled from a copy under ``build/cython/`` that ends with ``BUILT_FROM = "<sha256 of
walk.py>"``: ``packager/dicom/core.py`` uses the extension only while ``walk.py`` still has
that digest, so an edited source is never shadowed by an old build. The extension is
optional: without a compiler (or Cython) the install succeeds and the same code runs
interpreted (``dcmpack version`` says which core is active; the test suite requires the
compiled one).
"""

import hashlib
import sys
from pathlib import Path

from setuptools import Extension, setup

SOURCE = Path("packager/dicom/walk.py")
STAGE = Path("build/cython/packager/dicom/_walk_c.py")


def extensions() -> list:
    text = SOURCE.read_bytes()
    stamped = text + f'\nBUILT_FROM = "{hashlib.sha256(text).hexdigest()}"\n'.encode()
    STAGE.parent.mkdir(parents=True, exist_ok=True)
    if not STAGE.is_file() or STAGE.read_bytes() != stamped:  # keep the mtime: no needless rebuild
        STAGE.write_bytes(stamped)
    try:
        from Cython.Build import cythonize
    except ImportError:  # e.g. --no-build-isolation without Cython: install, run interpreted
        print("warning: Cython is not installed: the per-file core will run interpreted", file=sys.stderr)
        return []
    extension = Extension("packager.dicom._walk_c", [str(STAGE)], optional=True)
    return cythonize([extension], compiler_directives={"language_level": 3, "wraparound": False}, quiet=True)


setup(ext_modules=extensions())
