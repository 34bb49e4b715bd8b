"""Log masking for the phi service: an ``error:``/``warning:`` line -> the same line with identifying path parts masked.

Source folders are often named after the patient (``DOE_JANE_19690412``) and key files after a
study or a person; stderr reaches CI logs. Every path in a message (a token holding ``/`` or
``\\``) is checked part by part:

* against the source's PHI terms once they are known (``remember``, called when the build's
  matcher exists): a part holding one is shown as ``[name]``, ``[date]``, ... (its PHI class);
* always, by shape, because the terms are not known yet when the source itself cannot be read
  (a missing folder, a corrupt first file): a part with 6+ digits in a row (a date or an ID)
  or made of two or more words joined by ``_``, ``^``, ``,`` or spaces, one of them a
  capitalised word that is not an ordinary path word (``SURNAME_GIVEN``), is shown as
  ``[path part N]``: its position, never its text.

Conservative on purpose: an ordinary folder called ``Pilot_2024_03`` or ``Sherlock_scans`` is
masked too; the position is enough to find it on one's own disk.
"""

from __future__ import annotations

import re

from packager.phi.matcher import Matcher
from packager.phi.terms import GENERIC_WORDS, STOP_WORDS

_KNOWN: list[Matcher] = []
#: A path inside a message: a run without spaces or quotes holding a path separator.
_PATH = re.compile(r"[^\s\"'()\[\]<>,;]*[/\\][^\s\"'()\[\]<>,;]*")
_DIGIT_RUN = re.compile(r"\d{6,}")
_WORD = re.compile(r"[A-Za-z]{2,}")
#: Words of ordinary paths that never make a part look like a name on their own.
_PATH_WORDS = frozenset(
    """
tmp temp home work users user var data dicom dcm sample in out output outputs input inputs src source sources
release releases key keys config file files folder bundle bundles dataset datasets raw bids study studies
session sessions scan scans series subject subjects test tests build builds cache local mnt media opt srv
""".split()
)


_KNOWN_WORDS = _PATH_WORDS | GENERIC_WORDS | STOP_WORDS


def remember(matcher: Matcher | None) -> None:
    """Use ``matcher``'s terms for the messages printed from now on (None: forget them)."""
    _KNOWN[:] = [matcher] if matcher else []


def _looks_identifying(part: str) -> bool:
    """A date or ID (6+ digits in a row), or a ``SURNAME_GIVEN`` shape: two or more pieces joined
    by ``_``, ``^``, ``,`` or spaces, one of them a capitalised or upper-case word of 3+ letters
    that is not an ordinary path word (``Doe_release.key``; not ``test_missing_key_file``)."""
    stem = part.split(".", 1)[0] if not part.startswith(".") else part
    if _DIGIT_RUN.search(stem):
        return True
    pieces = [p for p in re.split(r"[_^,\s]+", stem) if p]
    names = [
        word
        for piece in pieces
        for word in _WORD.findall(piece)
        if len(word) >= 3 and word[0].isupper() and word.lower() not in _KNOWN_WORDS
    ]
    return len(pieces) >= 2 and bool(names)


def _mask_path(path: str) -> str:
    parts = re.split(r"([/\\])", path)
    position = 0
    for index, part in enumerate(parts):
        if part in ("/", "\\") or not part:
            continue
        position += 1
        # the source's own path names are search terms for the output (kind "path"), but in a
        # message about the source they are where the problem is: only header values (names,
        # IDs, dates) inside them are masked here, and identifying shapes below
        found = [
            value for matcher in _KNOWN for value in matcher.find_text(part, member_name=True) if value.kind != "path"
        ]
        if found:
            parts[index] = f"[{found[0].kind}]"
        elif _looks_identifying(part):
            parts[index] = f"[path part {position}]"
    return "".join(parts)


def mask_message(message: str) -> str:
    """``message`` with every identifying part of every path in it masked (module doc)."""
    if "/" not in message and "\\" not in message:
        return message
    return _PATH.sub(_mask_match, message)


def _mask_match(match: re.Match) -> str:
    path = match.group(0).rstrip(":.")  # the punctuation after a path is the message's
    return _mask_path(path) + match.group(0)[len(path) :]


def mask_labels(path: str) -> str:
    """A BIDS path for a pipe or a file (``plan`` into a log): every label holding one of the
    source's PHI values, in any spelling the matcher knows, shown as ``[kind]``. An approved
    label (``[labels]``) passes the label policy unsearched, and the audit stops the build that
    would publish it; the plan printed before must not carry it into a log meanwhile."""
    for matcher in _KNOWN:
        path = matcher.redact(path, member_name=True)
    return path
