"""Search terms for the phi service: one PHI value -> lower-case terms, each with a match mode.

``terms`` turns each value into search terms with a match mode; the modes are what keeps false
hits out of real builds: short terms only match as whole words, digit terms (dates, times,
UIDs, numeric IDs) never match inside a longer number (a file size, a checksum, a float), short
numeric IDs only in member names (where a subject label would carry them). Values made only of
generic vocabulary (``is_generic``) or numbers are not searched: they appear legitimately in
outputs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from packager.dicom.vocabulary import IMAGE_TYPE_VOCABULARY, VENDORS

#: The public root of UIDs defined by the DICOM standard itself (SOP classes, transfer syntaxes).
STANDARD_UID_ROOT = "1.2.840.10008."
#: Values shorter than this are not searched (too generic); shorter than WORD_LENGTH only as words.
MIN_TEXT = 4
WORD_LENGTH = 6
#: Numeric identifiers shorter than this are searched in member names only (see module doc).
MIN_DIGITS = 6
#: Longer values are searched by their first MAX_TERM characters (a leak of the whole holds them).
MAX_TERM = 200
#: Times whose bare HHMMSS form is searched; per-file times (thousands per session) are searched
#: as HH:MM:SS and with their fraction only, or they would collide with six-digit numbers.
ANCHOR_TIMES = frozenset({"StudyTime", "SeriesTime", "PatientBirthTime"})


class PhiValue(NamedTuple):
    """One value to look for: a class (name, id, date, time, uid, text, ...), the tag, the text.

    A named tuple (not a dataclass) because hundreds of thousands are hashed into sets per
    session: a tuple hashes in C.
    """

    kind: str
    tag: str
    value: str


class Term(NamedTuple):
    """One lower-case search string and how it may match.

    ``mode``: ``sub`` anywhere; ``word`` not inside a longer run of letters/digits; ``digits``
    not inside a longer number; ``label`` like ``word`` but only in member names.
    """

    text: str
    mode: str


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


#: Words that say nothing about a person: BIDS vocabulary, our own exclusion reasons, common
#: protocol words, ImageType tokens and vendor names. A description made only of these (and
#: numbers) is not searched, because it appears legitimately in outputs (e.g. a series described
#: "localizer" is excluded as such).
GENERIC_WORDS = (
    frozenset(
        """
anat func dwi fmap perf beh task acq ce rec dir run echo part mag phase real imag flip inv mt mod
t1w t2w flair pdw t2starw bold sbref epi asl m0scan magnitude magnitude1 magnitude2 phasediff
phase1 phase2 fieldmap dwi localizer localiser scout survey screenshot report secondary capture
structured not image derived config excluded unsupported sop phoenix rgb duplicate conversion
failed inconsistent heuristic skip unnamed spectroscopy burned in annotation t1 t2 pd mprage
tfl gre se ep2d epi2d cmrr mb rest ap pa lr rl si is axial sagittal coronal tra sag cor
medical systems healthcare healthineers mr ct pet head brain neck spine body coil
true false yes no none unknown null other
""".split()
    )
    | frozenset(t.lower() for t in IMAGE_TYPE_VOCABULARY)
    | frozenset(v.lower() for v in VENDORS)
)


_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def is_generic(text: str) -> bool:
    """True when every word of ``text`` is generic vocabulary, a number or one/two characters."""
    words = [w for w in _NOT_ALNUM.split(text.lower()) if w]
    return bool(words) and all(w in GENERIC_WORDS or w.isdigit() or len(w) <= 2 for w in words)


def _text_term(text: str) -> list[Term]:
    """A free-text value: whole (word-bounded when short), plus its space-free spellings."""
    if len(text) < MIN_TEXT:
        return []
    if re.fullmatch(r"[0-9.\-/: ]+", text):
        digits = re.sub(r"\D", "", text)
        return [Term(text, "digits")] if len(digits) >= MIN_DIGITS else []
    mode = "word" if len(text) < WORD_LENGTH else "sub"
    terms = [Term(text, mode)]
    if " " in text and len(text) >= WORD_LENGTH:
        # file-name spellings (dcm2niix-style names use "_"); not the squeezed form, which turns
        # generic phrases ("Echo Time") into our own keys ("EchoTime")
        squeezed = re.sub(r"\s+", " ", text)
        terms += [Term(squeezed.replace(" ", "_"), "sub"), Term(squeezed.replace(" ", "-"), "sub")]
    return terms


def terms(value: PhiValue) -> list[Term]:
    """Search terms (lower-case text + match mode) for one PHI value (may be empty)."""
    return list(_terms(value))


@lru_cache(maxsize=1 << 16)
def _terms(value: PhiValue) -> tuple[Term, ...]:
    """``terms``, cached: the same values recur in every series and every audit of a session."""
    text = value.value.strip()
    out: list[Term] = []
    if value.kind in ("date", "time", "datetime") and re.search(r"[A-Za-z]", text):
        out += _text_term(text)  # a malformed date/time value: searched as the text it is
    elif value.kind == "date":
        digits = re.sub(r"\D", "", text)
        if len(digits) == 8 and digits != "00000000":
            y, m, d = digits[:4], digits[4:6], digits[6:]
            out += [
                Term(t, "digits")
                for t in (
                    digits,
                    f"{y}-{m}-{d}",
                    f"{d}.{m}.{y}",
                    f"{y}/{m}/{d}",
                    f"{m}/{d}/{y}",
                    f"{d}/{m}/{y}",
                    f"{y}.{m}.{d}",
                )
            ]
    elif value.kind == "time":
        match = re.fullmatch(r"(\d{2}):?(\d{2}):?(\d{2})(\.\d+)?", text)
        if match and match.group(1, 2, 3) != ("00", "00", "00"):
            hh, mm, ss = match.group(1, 2, 3)
            out.append(Term(f"{hh}:{mm}:{ss}", "digits"))
            if value.tag in ANCHOR_TIMES:
                out.append(Term(f"{hh}{mm}{ss}", "digits"))
            if match.group(4) and len(match.group(4)) > 1:
                out.append(Term(f"{hh}{mm}{ss}{match.group(4)}", "digits"))
    elif value.kind == "datetime":
        digits = (re.match(r"\d*", text) or re.match("", "")).group(0)
        if len(digits) >= 8:
            out += terms(PhiValue("date", value.tag, digits[:8]))
        if len(digits) >= 14:
            out += terms(PhiValue("time", value.tag, digits[8:14]))
            out.append(Term(digits[:14], "digits"))
    elif value.kind == "name":
        for group in text.split("="):
            parts = [p.strip() for p in group.split("^") if p.strip()]
            for part in parts:
                out += [
                    Term(w, "word" if len(w) < WORD_LENGTH else "sub")
                    for w in dict.fromkeys([part] + part.split())
                    if len(w) >= 3 and not w.isdigit()
                ]
            if len(parts) > 1:
                family, given = parts[0], parts[1]
                out += [
                    Term(t, "sub")
                    for t in (
                        f"{given} {family}",
                        f"{family} {given}",
                        f"{family}, {given}",
                        f"{family}^{given}",
                        f"{family}_{given}",
                        f"{given}_{family}",
                        f"{given}{family}",
                        f"{family}{given}",
                    )
                ]
    elif value.kind == "uid":
        if len(text) >= 8 and not text.startswith(STANDARD_UID_ROOT):
            out.append(Term(text, "digits"))
    elif value.kind == "id":
        if text.isdigit():
            if len(text) >= 3:
                out.append(Term(text, "digits" if len(text) >= MIN_DIGITS else "label"))
        elif len(text) >= 3 and re.fullmatch(r"[A-Za-z0-9]+", text) and len(text) < MIN_TEXT:
            out.append(Term(text, "label"))
        else:
            out += _text_term(text)
    elif value.kind in ("description", "path"):
        if len(text) >= 8 and not is_generic(text):
            out += _text_term(text)
    elif value.kind == "private":
        out += _text_term(text)
    elif value.kind == "private-word":
        out.append(Term(text, "label"))
    else:
        if not is_number(text) and not is_generic(text):
            out += _text_term(text)
    seen: dict[str, Term] = {}
    for term in out:
        if term.text:
            lowered = term.text.casefold()[:MAX_TERM]
            seen.setdefault(lowered, Term(lowered, term.mode))
    return tuple(seen.values())


def search_terms(value: PhiValue) -> list[str]:
    """Lower-case strings to search for in output text for one PHI value (may be empty)."""
    return [t.text for t in terms(value) if t.mode != "label"]
