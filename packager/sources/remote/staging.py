"""Remote sources, the staging journal: downloaded bytes -> finished files under one dir.

Every file is written to a temporary name beside its target and renamed into place
(``os.replace``: atomic on one filesystem), then its size is appended to ``.journal``. A rerun
into the same dir trusts a file only when the journal has it and the size on disk still matches
(resume without re-downloading). File names are digests (``digest``): no UID, no patient name.
Refuses: a staging dir that cannot be created, read or written (``OutputError``, value-free);
a download whose size differs from the size the server announced (nothing is kept).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from packager.errors import OutputError
from packager.model import SourceFile

_JOURNAL: Final = ".journal"


def digest(text: str, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text`` (names without identifiers)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class Stage:
    """The files of one fetch: atomic writes, a journal of finished sizes, resume checks.

    Thread-safe: DIMSE stores arrive on pynetdicom's association threads.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self.extras: list[SourceFile] = []
        self.written = 0
        self.not_fetched = 0  # non-image series left at the archive (reported as excluded)
        try:
            root.mkdir(mode=0o700, parents=False, exist_ok=True)
            journal = root / _JOURNAL
            if journal.exists():
                for line in journal.read_text(errors="replace").splitlines():
                    size, tab, relpath = line.partition("\t")
                    if tab and size.isdigit():
                        self._sizes[relpath] = int(size)
        except OSError as exc:
            raise OutputError(f"staging: cannot create or read the staging dir ({type(exc).__name__})") from None

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def has(self, relpath: str, expected: int | None = None) -> bool:
        """True when the file was finished earlier and still has its recorded size."""
        recorded = self._sizes.get(relpath)
        if recorded is None or (expected is not None and recorded != expected):
            return False
        try:
            return self.path(relpath).stat().st_size == recorded
        except OSError:
            return False

    def write(self, relpath: str, chunks: Iterable[bytes], expected: int | None = None) -> bool:
        """Write atomically and journal the size; False (nothing kept) on a size mismatch."""
        target = self.path(relpath)
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(handle, "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                    size = out.tell()
                if expected is not None and size != expected:
                    tmp.unlink()
                    return False
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            with self._lock:
                with open(self.root / _JOURNAL, "a", encoding="ascii") as journal:
                    journal.write(f"{size}\t{relpath}\n")
                self._sizes[relpath] = size
                self.written += 1
        except OSError as exc:
            raise OutputError(f"staging: cannot write {relpath} ({type(exc).__name__}); check free space") from None
        return True

    def staged_in(self, dirname: str) -> list[str]:
        """Relpaths finished earlier in one series dir (recorded and still the recorded size)."""
        prefix = dirname + "/"
        with self._lock:
            relpaths = [r for r in self._sizes if r.startswith(prefix)]
        return [r for r in relpaths if self.has(r)]

    def add_extra(self, relpath: str) -> None:
        with self._lock:
            self.extras.append(SourceFile(self.path(relpath), relpath))
