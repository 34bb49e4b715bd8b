"""The phi service's matcher: PHI values -> one compiled search -> the values found in a text or byte stream.

Used by the sidecar scrub, the report scrubber, the label policy and the audit (every output
byte stream). One scan per text, however many terms: the text is folded (``phi.fold``) once,
text terms are in one Aho-Corasick automaton, digit terms looked up per number-like run (see
``Matcher``); the match modes are ``terms``'.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from packager.phi.accept import accept_hmac
from packager.phi.fold import fold, origin
from packager.phi.terms import PhiValue, terms

#: A digit term: digits with date/time/UID separators. Runs of such characters are what we look up.
_DIGIT_TERM = re.compile(r"[0-9][0-9.:/\-]*[0-9]")
_DIGIT_RUN = re.compile(r"[0-9][0-9.:/\-]*")


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


#: Mode flags of a text term (one term text may carry several).
_SUB, _WORD, _LABEL, _INSIDE = 1, 2, 4, 8
_FLAGS = {"sub": _SUB, "word": _WORD, "label": _LABEL, "inside": _INSIDE, "freeword": _WORD | _INSIDE}
#: Truncated names (``prefix`` terms) are at least this long and end a label.
_MIN_PREFIX = 5
#: Inside member names, a label is one run between these (path and entity separators, and the
#: blanks the audit puts over dcmpack's own words); other punctuation inside it is ignored.
_LABEL_RUN = re.compile(r"[^/_\s]+")
_DIGITS = re.compile(r"[0-9]+")
#: Inside a run shorter terms than this count only as the whole run (``min_inside``).
_MIN_INSIDE = 3


class Matcher:
    """All search terms of a set of PHI values, compiled once; ``find`` scans a text for them.

    Both the terms and the text are folded (``phi.fold``: lower case, accents stripped,
    transliterated to ASCII), so one scan finds every spelling ``terms`` produced. Text terms
    (``sub``, ``word``, ``label``) go into one Aho-Corasick automaton (pyahocorasick, C): one
    pass over a text finds every occurrence of every term, however many terms there are, and
    building it for tens of thousands of terms takes milliseconds. ``word`` and ``label``
    occurrences count only when no letter or digit touches them (``label``: in member names
    only). Digit terms (dates, times, UIDs, numeric IDs: often tens of thousands per source) are
    kept in a set and looked up for every number-like run of the text. In member names a second
    automaton finds ``inside`` terms within each label with its punctuation removed, and short
    numeric IDs are looked up per digit run.

    Parameters
    ----------
    values : iterable of PhiValue
    accept : frozenset of str, optional
        ``[audit] accept``: HMACs (``phi.accept``) of terms reviewed as harmless; needs ``key``.
    key : bytes, optional
        The release key the HMACs were made with.
    """

    def __init__(self, values: Iterable[PhiValue], *, accept: frozenset[str] = frozenset(), key: bytes = b""):
        import ahocorasick

        ordered = sorted(set(values), key=lambda v: (v.kind, v.tag, v.value))
        #: The reviewed exceptions this matcher honours (a matcher for a subset of values keeps them).
        self.exceptions = (accept, key)
        self.owner: dict[str, PhiValue] = {}
        #: Terms not searched because their HMAC is in ``accept`` (a count for the MANIFEST and the audit).
        self.accepted = 0
        refused: set[str] = set()
        flags: dict[str, int] = {}
        inside: dict[str, int] = {}
        digits: set[str] = set()
        short: set[str] = set()
        prefixes: set[str] = set()
        for value in ordered:
            for term in terms(value):
                mode, text = term.mode, term.text
                if accept and key and text not in self.owner:
                    if text in refused or accept_hmac(key, text) in accept:
                        refused.add(text)
                        continue
                self.owner.setdefault(text, value)
                if mode == "digits" and not _DIGIT_TERM.fullmatch(text):
                    mode = "sub"
                if mode == "digits":
                    digits.add(text)
                    continue
                if mode == "prefix":
                    prefixes.add(text)
                    continue
                flag = _FLAGS[mode]
                if flag & _INSIDE:
                    if text.isdigit() and len(text) < 6:
                        short.add(text)
                    else:
                        inside[text] = 0
                if flag & ~_INSIDE:
                    flags[text] = flags.get(text, 0) | (flag & ~_INSIDE)
        self.accepted = len(refused)
        self.count = len(self.owner)
        self.longest = max((len(t) for t in self.owner), default=0)
        self._digits = frozenset(digits)
        self._short = frozenset(short)
        self._prefixes = frozenset(prefixes)
        self._longest_prefix = max(map(len, prefixes), default=0)
        self._automaton = _automaton(ahocorasick, flags)
        self._inside = _automaton(ahocorasick, inside)

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

    def _inside_hits(self, folded: str, min_inside: int) -> list[tuple[int, int, PhiValue]]:
        """``inside`` terms within each label run of a member name, its punctuation removed."""
        found = []
        for run in _LABEL_RUN.finditer(folded):
            kept = [i for i in range(run.start(), run.end()) if folded[i].isalnum()]
            squeezed = "".join(folded[i] for i in kept)
            if self._inside is not None:
                for end, term in self._inside.iter(squeezed):
                    start = end - len(term) + 1
                    if len(term) < min_inside and len(term) != len(squeezed):
                        continue
                    found.append((kept[start], kept[end] + 1, self.owner[term]))
            for match in _DIGITS.finditer(squeezed):
                if match.group(0) in self._short:
                    found.append((kept[match.start()], kept[match.end() - 1] + 1, self.owner[match.group(0)]))
            for size in range(_MIN_PREFIX, min(len(squeezed), self._longest_prefix) + 1):
                if squeezed[-size:] in self._prefixes:  # a truncated name ends the label (acq-T1Quarri)
                    found.append((kept[-size], kept[-1] + 1, self.owner[squeezed[-size:]]))
        return found

    def spans(
        self, text: str, *, member_name: bool = False, min_inside: int = _MIN_INSIDE
    ) -> list[tuple[int, int, PhiValue]]:
        """(start, end, value) of every term found in ``text`` in any spelling; the offsets index
        ``fold(text)``, which may be longer than ``text`` (``redact`` maps them back).

        ``member_name``: ``text`` is a member name or a label (``label`` and ``inside`` terms
        count too). ``min_inside``: inside a label, shorter terms count only as the whole label
        (the audit raises it for the keyed-hash subject label, whose letters are chance)."""
        if not self.owner or not text:
            return []
        folded = fold(text)
        found = self._digit_hits(folded) if self._digits else []
        if self._automaton is not None:
            last = len(folded) - 1
            for end, (term, flag) in self._automaton.iter(folded):
                start = end - len(term) + 1
                if not flag & _SUB:
                    if not member_name and not flag & _WORD:
                        continue
                    if (start > 0 and folded[start - 1].isalnum()) or (end < last and folded[end + 1].isalnum()):
                        continue
                found.append((start, end + 1, self.owner[term]))
        if member_name:
            found += self._inside_hits(folded, min_inside)
        return list(dict.fromkeys(found))  # a term found by two modes counts once

    def find_text(self, text: str, *, member_name: bool = False, min_inside: int = _MIN_INSIDE) -> list[PhiValue]:
        """PHI values whose terms occur in ``text`` in any supported spelling."""
        return [value for _, _, value in self.spans(text, member_name=member_name, min_inside=min_inside)]

    def redact(self, text: str, *, member_name: bool = False, search: str | None = None) -> str:
        """``text`` with every found term replaced by ``[kind]`` (to name a leaking member safely).

        ``search``: a same-length copy of ``text`` to search instead (the audit's member name
        with dcmpack's own words blanked); the spans are applied to ``text``."""
        searched = text if search is None else search
        # spans index the folded text, which can be longer ("ß" -> "ss"): map them back
        back = origin(searched)
        found = self.spans(searched, member_name=member_name)
        spans = sorted(
            ((back[start], back[end - 1] + 1, value) for start, end, value in found), key=lambda s: (s[0], -s[1])
        )
        out, position = [], 0
        for start, end, value in spans:
            if start < position:
                continue
            out.append(text[position:start] + f"[{value.kind}]")
            position = end
        return "".join(out) + text[position:]

    def find_spans(self, data: bytes) -> list[tuple[int, str, PhiValue]]:
        """(character position, matched folded text, value) of every term in ``data`` (decoded as
        ``find`` does): what ``dcmpack audit --explain`` shows the data owner."""
        if not self.owner or not data:
            return []
        texts = [data.decode("utf-8", "replace")]
        if not data.isascii():
            texts.append(data.decode("latin-1"))
        if b"\x00" in data:
            texts += [data[s : len(data) - ((len(data) - s) % 2)].decode("utf-16-le", "replace") for s in (0, 1)]
        found = []
        for text in texts:
            folded, back = fold(text), origin(text)
            found += [(back[start], folded[start:end], value) for start, end, value in self.spans(text)]
        return list(dict.fromkeys(found))

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


def _automaton(ahocorasick, words: dict[str, int]):
    """An Aho-Corasick automaton of ``words`` (term -> flags), or None when there are none."""
    if not words:
        return None
    automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
    for text in sorted(words):
        automaton.add_word(text, (text, words[text]) if words[text] else text)
    automaton.make_automaton()
    return automaton
