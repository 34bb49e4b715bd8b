"""Spelling normalisation for the phi service: any text -> the lower-case ASCII form terms and outputs are compared in.

Both sides of every comparison go through ``fold``: the search terms (``terms``) and the text
searched (``matcher``), so a value written with accents, ligatures, another script's letters or
invisible characters matches the same value typed in plain ASCII. Per character: ASCII is
lower-cased; anything else is NFKD-decomposed, its combining marks dropped, and the rest
transliterated to ASCII with anyascii, then lower-cased (``Ł`` -> ``l``, ``ß`` -> ``ss``,
``ﬁ`` -> ``fi``, Cyrillic and Greek letters to their Latin readings, kana to romaji, a
zero-width space to nothing).

anyascii rather than Unidecode: it is ISC-licensed (Unidecode is GPL, dcmpack is MIT), covers
more scripts and is kept up to date with Unicode. What it cannot do: Han characters (kanji) have
one reading per character, and anyascii gives the Mandarin one (``鷹野`` -> ``yingye``), not the
Japanese (``Takano``): a kanji name is found when written in kanji, or in romaji when the
header's phonetic (kana) group holds the reading, but not from kanji alone.

Spellings that are a convention rather than a transliteration (German ``ü`` -> ``ue``, Danish
``å`` -> ``aa``) and letters dropped altogether are produced for the terms only
(``spellings``): both are how people type a name on an ASCII keyboard.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from anyascii import anyascii


@lru_cache(maxsize=1 << 14)
def fold_char(char: str) -> str:
    """The folded form of one character (may be empty or several characters)."""
    if char.isascii():
        return char.lower()
    decomposed = unicodedata.normalize("NFKD", char)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return anyascii(kept).lower() if kept else ""


class _Table(dict):
    """``str.translate`` table filled on first use of each character (C speed after that)."""

    def __missing__(self, code: int) -> str:
        folded = fold_char(chr(code))
        self[code] = folded
        return folded


_TABLE = _Table()


def fold(text: str) -> str:
    """``text`` lower-cased and transliterated to ASCII (module doc)."""
    return text.lower() if text.isascii() else text.translate(_TABLE)


def origin(text: str) -> list[int]:
    """For each character of ``fold(text)``, the index of the character of ``text`` it came from."""
    if text.isascii():
        return list(range(len(text)))
    return [index for index, char in enumerate(text) for _ in fold_char(char)]


_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def squeeze(folded: str) -> str:
    """A folded text with everything but letters and digits removed (``O'Shea-Brandt`` -> ``osheabrandt``)."""
    return _NOT_ALNUM.sub("", folded)


#: Transcriptions typed on ASCII keyboards that transliteration does not give (it gives ``u`` for ``ü``).
_CONVENTIONS = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ø": "oe", "Ø": "Oe", "å": "aa", "Å": "Aa"}
)


def spellings(text: str) -> tuple[str, ...]:
    """Folded spellings of a value: transliterated, with the keyboard conventions (``ü`` -> ``ue``),
    with every non-ASCII character dropped (what label cleaning leaves of ``Brönnimann``), and
    with accents stripped first and only then the rest dropped (``Muñøz`` -> ``munz``: a tool that
    strips accents, then drops what is left)."""
    out = [fold(text)]
    if not text.isascii():
        out += [
            fold(text.translate(_CONVENTIONS)),
            "".join(c for c in text if c.isascii()).lower(),
            "".join(c for c in unicodedata.normalize("NFKD", text) if c.isascii()).lower(),
        ]
    return tuple(dict.fromkeys(s for s in out if s))
