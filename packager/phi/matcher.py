"""The phi service's matcher: PHI values -> one compiled search -> the values found in a text or byte stream.

Used by the sidecar scrub, the report scrubber and the audit (every output byte stream). One
scan per text, however many terms: text terms in one Aho-Corasick automaton, digit terms looked
up per number-like run (see ``Matcher``); case-insensitive; the match modes are ``terms``'.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from packager.phi.terms import PhiValue, terms

#: A digit term: digits with date/time/UID separators. Runs of such characters are what we look up.
_DIGIT_TERM = re.compile(r"[0-9][0-9.:/\-]*[0-9]")
_DIGIT_RUN = re.compile(r"[0-9][0-9.:/\-]*")
_SUB, _WORD, _LABEL = 0, 1, 2


#: A hex token this long holding a letter is a digest (SHA-256, MD5, a UUID's hex): the digits
#: inside it are chance, not a value (an MRN inside a checksum made releases unpublishable).
_DIGEST_CHARS = 32
_HEX = frozenset("0123456789abcdef")


def _inside_digest(text: str, start: int, end: int) -> bool:
    """True when text[start:end] lies inside a hex token of at least ``_DIGEST_CHARS``
    characters that holds a letter (``text`` is lower case)."""
    if not ((start > 0 and text[start - 1] in _HEX) or (end < len(text) and text[end] in _HEX)):
        return False  # no hex touches the digits: not inside a token
    left = start
    while left > 0 and text[left - 1] in _HEX:
        left -= 1
    right = end
    while right < len(text) and text[right] in _HEX:
        right += 1
    token = text[left:right]
    return len(token) >= _DIGEST_CHARS and not token.isdigit()


class Matcher:
    """All search terms of a set of PHI values, compiled once; ``find`` scans a text for them.

    Text terms (``sub``, ``word``, ``label``) go into one Aho-Corasick automaton (pyahocorasick,
    C): one pass over a text finds every occurrence of every term, however many terms there are,
    and building it for tens of thousands of terms takes milliseconds (the trie-shaped regular
    expression it replaced took seconds to compile). ``word`` and ``label`` occurrences count
    only when no letter or digit touches them (``label``: in member names only). Digit terms
    (dates, times, UIDs, numeric IDs: often tens of thousands per source) are kept in a set and
    looked up for every number-like run of the text.

    Parameters
    ----------
    values : iterable of PhiValue
    """

    def __init__(self, values: Iterable[PhiValue]):
        import ahocorasick

        self.owner: dict[str, PhiValue] = {}
        modes: dict[str, set[str]] = {"sub": set(), "word": set(), "digits": set(), "label": set()}
        for value in sorted(set(values), key=lambda v: (v.kind, v.tag, v.value)):
            for term in terms(value):
                mode = term.mode
                if mode == "digits" and not _DIGIT_TERM.fullmatch(term.text):
                    mode = "sub"
                self.owner.setdefault(term.text, value)
                modes[mode].add(term.text)
        self.count = sum(len(v) for v in modes.values())
        self.longest = max((len(t) for t in self.owner), default=0)
        self._digits = frozenset(modes["digits"])
        self._automaton = None
        words: dict[str, int] = {}
        for mode, code in (("label", _LABEL), ("word", _WORD), ("sub", _SUB)):  # the loosest mode wins
            for text in modes[mode]:
                words[text] = code
        if words:
            automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
            for text in sorted(words):
                automaton.add_word(text, (text, words[text]))
            automaton.make_automaton()
            self._automaton = automaton

    def __bool__(self) -> bool:
        return bool(self.owner)

    def _digit_hits(self, text: str) -> list[tuple[int, int, PhiValue]]:
        found = []
        for match in _DIGIT_RUN.finditer(text):
            run = match.group(0).rstrip(".:/-")
            if match.start() > 0 and text[match.start() - 1] == ".":
                continue  # the fraction of a decimal number, never a date or time
            if _inside_digest(text, match.start(), match.start() + len(run)):
                continue  # digits inside a hex digest (a checksum): chance, never a source value
            starts = [0] + [i for i in range(1, len(run)) if run[i - 1] in ":/-" and run[i].isdigit()]
            ends = [j for j in range(1, len(run) + 1) if run[j - 1].isdigit() and (j == len(run) or run[j] in ".:/-")]
            for start in starts:
                for end in ends:
                    if end - start >= 6 and run[start:end] in self._digits:
                        found.append((match.start() + start, match.start() + end, self.owner[run[start:end]]))
        return found

    def spans(self, text: str, *, member_name: bool = False) -> list[tuple[int, int, PhiValue]]:
        """(start, end, value) of every term found in ``text`` (case-insensitive); the offsets
        index ``text.casefold()``, which may be longer than ``text`` (``redact`` maps them back)."""
        if not self.owner or not text:
            return []
        lowered = text.casefold()
        found = self._digit_hits(lowered) if self._digits else []
        if self._automaton is not None:
            last = len(lowered) - 1
            for end, (term, mode) in self._automaton.iter(lowered):
                start = end - len(term) + 1
                if mode != _SUB:
                    if mode == _LABEL and not member_name:
                        continue
                    if (start > 0 and lowered[start - 1].isalnum()) or (end < last and lowered[end + 1].isalnum()):
                        continue
                found.append((start, end + 1, self.owner[term]))
        return found

    def find_text(self, text: str, *, member_name: bool = False) -> list[PhiValue]:
        """PHI values whose terms occur in ``text`` (case-insensitive)."""
        return [value for _, _, value in self.spans(text, member_name=member_name)]

    def redact(self, text: str, *, member_name: bool = False) -> str:
        """``text`` with every found term replaced by ``[kind]`` (to name a leaking member safely)."""
        # spans index the case-folded text, which can be longer ("ß" -> "ss"): map them back
        origin = [index for index, char in enumerate(text) for _ in char.casefold()]
        spans = sorted(
            (
                (origin[start], origin[end - 1] + 1, value)
                for start, end, value in self.spans(text, member_name=member_name)
            ),
            key=lambda s: (s[0], -s[1]),
        )
        out, position = [], 0
        for start, end, value in spans:
            if start < position:
                continue
            out.append(text[position:start] + f"[{value.kind}]")
            position = end
        return "".join(out) + text[position:]

    def find(self, data: bytes, *, member_name: bool = False) -> list[PhiValue]:
        """PHI values in ``data`` read as UTF-8, Latin-1 and (when it holds NULs) UTF-16LE."""
        if not self.owner or not data:
            return []
        found = self.find_text(data.decode("utf-8", "replace"), member_name=member_name)
        if not data.isascii():
            found += self.find_text(data.decode("latin-1"), member_name=member_name)
        if b"\x00" in data:
            for start in (0, 1):
                chunk = data[start : len(data) - ((len(data) - start) % 2)]
                found += self.find_text(chunk.decode("utf-16-le", "replace"), member_name=member_name)
        return found
