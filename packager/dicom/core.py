"""Which build of the fast reader's per-file core runs: compiled when it is current, else the source.

``pip install`` (``setup.py``) compiles ``dicom/walk.py`` with Cython into the extension
``packager.dicom._walk_c`` and stamps it with the SHA-256 of the text it compiled. The
extension has its own name, so it never shadows ``walk.py``; it is used only when its stamp
matches the ``walk.py`` beside it. An edited source in an editable install therefore runs as
edited (interpreted, and said once with ``--verbose``) until ``pip install -e .`` rebuilds
it, instead of silently running the old compiled code. ``DCMPACK_PURE_PYTHON=1`` forces the
interpreted build (the tests run both).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("walk.py")
#: Environment switch: any value but "" and "0" runs the interpreted core.
PURE_ENV = "DCMPACK_PURE_PYTHON"
log = logging.getLogger(__name__)


def source_digest() -> str:
    """SHA-256 of ``walk.py`` as it is now (what a current compiled build was made from)."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def _choose() -> tuple[ModuleType, str, str | None]:
    """(core module, which one, why not compiled: None when compiled)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return _interpreted(), "pure Python", f"{PURE_ENV} is set"
    try:
        from packager.dicom import _walk_c  # type: ignore[attr-defined]
    except ImportError as exc:  # not built (no compiler at install), or built for another Python
        return _interpreted(), "pure Python", f"the compiled core is not installed ({type(exc).__name__})"
    if getattr(_walk_c, "BUILT_FROM", None) != source_digest():
        why = "the compiled core is stale: walk.py changed since it was built; pip install -e ."
        return _interpreted(), "pure Python", why
    return _walk_c, "compiled (Cython)", None


def _interpreted() -> ModuleType:
    """``walk.py`` itself, imported only when it runs (with Cython installed its import brings
    ``Cython.Shadow``: a few ms of every build's start-up for nothing)."""
    from packager.dicom import walk

    return walk


CORE, CORE_NAME, WHY_NOT_COMPILED = _choose()
_said = False


def describe() -> str:
    """One line for ``dcmpack version`` and ``--verbose``: which core runs, and why not compiled."""
    if WHY_NOT_COMPILED is None:
        return f"per-file core: {CORE_NAME} ({Path(CORE.__file__ or '').name})"
    return f"per-file core: {CORE_NAME} ({WHY_NOT_COMPILED})"


def say_once() -> None:
    """Log ``describe()`` at INFO (shown with ``--verbose``), once per process."""
    global _said
    if not _said:
        _said = True
        log.info(describe())
