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
from functools import lru_cache, partial

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
    with every non-ASCII character dropped (what label cleaning leaves of ``Brönnimann``), with
    accents stripped first and only then the rest dropped (``Muñøz`` -> ``munz``: a tool that
    strips accents, then drops what is left), and in the other romanisations of its script
    (``romanisations``). The text is composed first (NFC): a name stored decomposed (``u`` +
    combining diaeresis, as macOS writes file names) has the same spellings as ``ü``."""
    text = unicodedata.normalize("NFC", text)
    out = [fold(text)]
    if not text.isascii():
        out += [
            fold(text.translate(_CONVENTIONS)),
            "".join(c for c in text if c.isascii()).lower(),
            "".join(c for c in unicodedata.normalize("NFKD", text) if c.isascii()).lower(),
            *romanisations(text),
        ]
    return tuple(dict.fromkeys(s for s in out if s))


def _system(table: str) -> tuple[re.Pattern, dict[str, str]]:
    """A romanisation system from ``"src=dst src=dst ..."`` (``dst`` may be empty: ``ь=``)."""
    pairs = dict(pair.split("=", 1) for pair in table.split())
    return re.compile("|".join(sorted(map(re.escape, pairs), key=len, reverse=True))), pairs


#: Romanisation systems people's names are written in besides the one anyascii gives, per script
#: (lower case, accents removed first): a passport, a newspaper and a German or French form
#: differ (Журавлёва: Zhuravleva, Zhuravlyova, Schurawljowa, Jouravleva; Ευανθία: Evanthia,
#: Eyanthia). Hand-written tables: the libraries that have them cover one language each.
_ROMANISATIONS = {
    "cyrillic": tuple(
        _system(t)
        for t in (
            # ICAO 9303 (passports since 2013)
            "ё=e й=i х=kh ц=ts ч=ch ш=sh щ=shch ъ=ie ы=y ь= э=e ю=iu я=ia ж=zh є=ie ї=i і=i ґ=g",
            # BGN/PCGN and English-language press
            "ё=yo й=y х=kh ц=ts ч=ch ш=sh щ=shch ъ= ы=y ь= э=e ю=yu я=ya ж=zh є=ye ї=yi і=i ґ=g",
            # German
            "ё=jo й=j х=ch ц=z ч=tsch ш=sch щ=schtsch ъ= ы=y ь= э=e ю=ju я=ja ж=sch в=w з=s є=je ї=ji",
            # French
            "ё=io й=i х=kh ц=ts ч=tch ш=ch щ=chtch ъ= ы=y ь= э=e ю=iou я=ia ж=j у=ou є=ie",
        )
    ),
    "greek": tuple(
        _system(t)
        for t in (
            # ELOT 743 (Greek passports)
            "αυ=av ευ=ev ου=ou μπ=mp ντ=nt γγ=ng γκ=gk β=v η=i υ=y χ=ch φ=f θ=th ψ=ps ξ=x ω=o",
            # as names are said (the spelling of many emigrants' papers)
            "αυ=af ευ=ef ου=ou μπ=b ντ=d γγ=ng γκ=g αι=e ει=i οι=i β=v η=i υ=i χ=h φ=f θ=th ψ=ps ξ=x ω=o",
        )
    ),
}
_SCRIPT_OF = {"cyrillic": re.compile("[\u0400-\u04ff]"), "greek": re.compile("[\u0370-\u03ff]")}


def romanisations(text: str) -> list[str]:
    """Folded spellings of ``text`` in the ``_ROMANISATIONS`` of the scripts it uses (none for
    Latin text): each system's pairs first, then ``fold`` for the letters it leaves."""
    out = []
    for script, systems in _ROMANISATIONS.items():
        if not _SCRIPT_OF[script].search(text):
            continue
        bare = text.lower()
        if script == "greek":  # accents (tonos, dialytika) are not written in Latin; ё and й keep theirs
            bare = "".join(c for c in unicodedata.normalize("NFD", bare) if not unicodedata.combining(c))
        for pattern, pairs in systems:
            out.append(fold(pattern.sub(partial(_pair, pairs), bare)))
    return out


def _pair(pairs: dict[str, str], match: re.Match) -> str:
    return pairs[match.group(0)]
