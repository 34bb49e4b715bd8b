"""Search terms for the phi service: one PHI value -> folded terms in every supported spelling, with match modes.

``terms`` turns each value into search terms in the spellings people and tools produce (names
transliterated, with keyboard conventions and by their pieces, dates in every common order,
IDs without separators or leading zeros, the words of free text; ``fold`` makes both sides
comparable) and gives each a match mode; the modes are what keeps false hits out of real
builds: short terms only match as whole words, digit terms (dates, times, UIDs, numeric IDs)
never match inside a longer number (a file size, a checksum, a float), short numeric IDs and
name pieces inside labels only in member names. Values made only of generic vocabulary
(``is_generic``) or numbers are not searched: they appear legitimately in outputs.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from importlib import resources
from typing import NamedTuple

from packager.dicom.vocabulary import IMAGE_TYPE_VOCABULARY, VENDORS
from packager.phi.fold import fold, spellings, squeeze

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


#: Free-text attributes (besides every ``...Comments`` and ``...History``) whose words are
#: searched one by one: a nickname or a relative's name written there is still a name.
FREE_TEXT_TAGS = frozenset(
    {"MedicalAlerts", "Allergies", "SpecialNeeds", "PatientState", "ReasonForStudy", "Occupation", "ResponsiblePerson"}
)


#: Descriptions of an order or a procedure step (not of a series: labels are not built from
#: these): a person named in them ("MRI brain for X") is searched word by word too.
ORDER_DESCRIPTIONS = frozenset(
    {
        "RequestedProcedureDescription",
        "ScheduledProcedureStepDescription",
        "PerformedProcedureStepDescription",
        "RequestedSeriesDescription",
    }
)


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
    not inside a longer number; ``label`` like ``word`` but only in member names; ``inside``
    only in member names, anywhere inside a label (separators removed; all-digit terms of
    under 6 digits not touching another digit); ``freeword`` a word of free text: ``word`` and
    ``inside``; ``prefix`` the start (5+ letters) of a longer name part, found only at the end
    of a label in a member name (a name cut short).
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
sub ses dataset participants sessions scans readme changes manifest nii gz json tsv bval bvec trc stain
mod recording chunk inplanet1 inplanet2 pdt2 angio t1map t2map t2starmap pdmap unit1 mp2rage megre mese
cbv norf epi fieldmap
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
    """Search terms (folded text + match mode) for one PHI value (may be empty)."""
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
            out += date_terms(digits)
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
        leading = re.match(r"\d*", text)
        digits = leading.group(0) if leading else ""
        if len(digits) >= 8:
            out += terms(PhiValue("date", value.tag, digits[:8]))
        if len(digits) >= 14:
            out += terms(PhiValue("time", value.tag, digits[8:14]))
            out.append(Term(digits[:14], "digits"))
    elif value.kind == "name":
        out += name_terms(text)
    elif value.kind == "uid":
        if len(text) >= 8 and not text.startswith(STANDARD_UID_ROOT):
            out.append(Term(text, "digits"))
    elif value.kind == "id":
        out += id_terms(text)
    elif value.kind in ("description", "path"):
        if len(text) >= 8 and not is_generic(text):
            out += _text_term(text)
        if value.tag in ORDER_DESCRIPTIONS:
            out += word_terms(text, min_letters=4, skip=protocol_vocabulary(), mode="inside")
    elif value.kind == "private":
        out += _text_term(text)
    elif value.kind == "private-text":
        # vendors' private text (coil names "GE_HDx", "HEA;HEP") is full of 3-letter codes that
        # also name the scanner in public values: its words count from 4 letters
        out += _text_term(text) + word_terms(text, min_letters=4)
    elif value.kind == "private-word":
        out.append(Term(text, "label"))
    else:
        if not is_number(text) and not is_generic(text):
            out += _text_term(text)
        if value.tag in FREE_TEXT_TAGS or value.tag.endswith(("Comments", "History")):
            out += word_terms(text)
        elif " " in text.strip():
            # an institution, an address, a department, the text of a request: its distinctive
            # words identify as well as the whole (a street name alone, a name in "MRI for X")
            out += word_terms(text, min_letters=4, skip=protocol_vocabulary(), mode="inside")
    seen: dict[tuple[str, str], Term] = {}
    for term in out:
        if term.text:
            folded = fold(term.text)[:MAX_TERM]
            seen.setdefault((folded, term.mode), Term(folded, term.mode))
    return tuple(seen.values())


def _free(word: str) -> Term:
    """A term found as a whole word in text and inside member names (``word`` below 6 letters)."""
    return Term(word, "word" if len(word) < WORD_LENGTH else "sub")


#: Separators inside one part of a name: a double-barrelled or apostrophe name is also searched
#: by its pieces (``O'Shea-Brandt``: ``oshea``, ``shea``, ``brandt``, ``osheabrandt``).
_NAME_SEPARATORS = re.compile(r"[\s\-'`.,]+")


def name_terms(text: str) -> list[Term]:
    """A person name (PN, ``^``-separated, ``=``-separated groups) in every supported spelling.

    Each part of 3+ letters in each spelling (``fold.spellings``), whole and by its pieces:
    ``inside`` (a substring of a member name's labels, separators removed), as a word (or
    anywhere from 6 letters) in text, and reversed (4+ letters) inside member names. A part
    that is itself protocol vocabulary (``Rest``, ``Bold``, ``Echo``) cannot be told from the
    word dcmpack or the protocol writes and is searched only with the rest of the name. The
    whole name in the orders people write it, with and without separators.
    """
    out: list[Term] = []
    for group in text.split("="):
        parts = [p.strip() for p in group.split("^") if p.strip()]
        for part in parts:
            for spelling in spellings(part):
                pieces = [spelling, *_NAME_SEPARATORS.split(spelling), *spelling.split()]
                pieces += [re.sub(r"['`.]", "", p) for p in re.split(r"[\s\-,]+", spelling)]
                for piece in dict.fromkeys(pieces):
                    squeezed = squeeze(piece)
                    if len(squeezed) < 3 or squeezed.isdigit() or squeezed in GENERIC_WORDS:
                        continue
                    if piece != squeezed and len(piece) >= 3:
                        out.append(_free(piece))
                    out += [_free(squeezed), Term(squeezed, "inside")]
                    if len(squeezed) >= 4:
                        out.append(Term(squeezed[::-1], "inside"))
                    # truncated (a heuristic cutting a folder or description name short): from 5
                    # letters, at the end of a label only, never a vocabulary word
                    out += [
                        Term(squeezed[:size], "prefix")
                        for size in range(5, len(squeezed))
                        if squeezed[:size] not in GENERIC_WORDS and squeezed[:size].isalpha()
                    ]
        if len(parts) > 1:
            family, given = spellings(parts[0])[0], spellings(parts[1])[0]
            out += [
                Term(t, "sub")
                for t in (
                    f"{given} {family}",
                    f"{family} {given}",
                    f"{family}, {given}",
                    f"{family}^{given}",
                    f"{family}_{given}",
                    f"{given}_{family}",
                )
            ]
            for joined in (squeeze(given + family), squeeze(family + given)):
                out += [Term(joined, "sub"), Term(joined, "inside")]
    return out


def id_terms(text: str) -> list[Term]:
    """An identifier as written, without separators, and (numeric) without leading zeros.

    Numeric forms of 6+ digits are ``digits`` (never inside a longer number); shorter ones are
    searched in member names only (``inside``: not touching another digit). An identifier with
    letters and digits is also searched without its separators (``QX-40718`` -> ``qx40718``).
    """
    out: list[Term] = []
    folded = fold(text)
    squeezed = squeeze(folded)
    for piece in _id_pieces(folded):
        out += id_terms(piece)
    if squeezed.isdigit():
        for digits in dict.fromkeys((squeezed, squeezed.lstrip("0"))):
            if len(digits) >= MIN_DIGITS:
                out += [Term(digits, "digits"), Term(digits, "inside")]
            elif len(digits) >= 3:
                out.append(Term(digits, "inside"))
        if not text.isdigit():
            out += _text_term(text)
        return out
    if len(text) >= 3 and re.fullmatch(r"[A-Za-z0-9]+", text) and len(text) < MIN_TEXT:
        out.append(Term(text, "label"))
    else:
        out += _text_term(text)
    if len(squeezed) >= MIN_TEXT and squeezed != folded:
        out.append(_free(squeezed))
    if len(squeezed) >= MIN_TEXT and re.search(r"\d", squeezed):
        out.append(Term(squeezed, "inside"))
        unpadded = re.sub(r"(?<![0-9])0+(?=[0-9])", "", squeezed)  # QX-040718 typed as QX40718
        if unpadded != squeezed and len(unpadded) >= MIN_TEXT:
            out += [_free(unpadded), Term(unpadded, "inside")]
    return out


_ID_SEPARATOR = re.compile(r"[^a-z0-9]+")


def _id_pieces(folded: str) -> list[str]:
    """The parts of a separated identifier that are written alone: the body without a final
    check character group (``0004417-3`` -> ``0004417``, ``A-0048812-7`` -> ``a-0048812``) and
    each piece holding 5+ digits (``RX-4491872-K`` -> ``4491872``)."""
    core = folded.strip("-/. ")
    pieces = [p for p in _ID_SEPARATOR.split(core) if p]
    if len(pieces) < 2:
        return []
    out = [p for p in pieces if sum(c.isdigit() for c in p) >= 5]
    if len(pieces[-1]) <= 2:
        last = list(_ID_SEPARATOR.finditer(core))[-1]
        out.insert(0, core[: last.start()])
    return [p for p in dict.fromkeys(out) if p and p != folded]


_MONTHS = "january february march april may june july august september october november december".split()


def date_terms(digits: str) -> list[Term]:
    """A YYYYMMDD date in the orders and widths people write dates.

    Day-month-year, month-day-year and year-month-day, with 4- and 2-digit years, joined or
    separated by ``.``, ``/`` or ``-`` (with a separator also without leading zeros), as
    ``digits`` (never inside a longer number); the joined forms also ``inside`` member names;
    and with the English month name or its 3-letter abbreviation (``Nov242022``, ``24-Nov-2022``).
    """
    y, m, d = digits[:4], digits[4:6], digits[6:]
    out: list[Term] = []
    for year in (y, y[2:]):
        for order in ((year, m, d), (d, m, year), (m, d, year)):
            out += [Term("".join(order), "digits"), Term("".join(order), "inside")]
            out += [Term(sep.join(order), "digits") for sep in ".-/"]
    month, day = m.lstrip("0"), d.lstrip("0")
    for year in (y, y[2:]):
        for order in ((year, month, day), (day, month, year), (month, day, year)):
            out += [Term(sep.join(order), "digits") for sep in ".-/"]
    number = int(m) - 1
    if 0 <= number < 12:
        for name in (_MONTHS[number], _MONTHS[number][:3]):
            for day in dict.fromkeys((d, d.lstrip("0"))):
                for year in (y, y[2:]):
                    for joined in (f"{name}{day}{year}", f"{day}{name}{year}"):
                        out += [_free(joined), Term(joined, "inside")]
                    out += [
                        Term(t, "sub")
                        for t in (
                            f"{name} {day} {year}",
                            f"{name} {day}, {year}",
                            f"{day} {name} {year}",
                            f"{day}-{name}-{year}",
                            f"{name}-{day}-{year}",
                            f"{day}.{name}.{year}",
                        )
                    ]
    return out


#: Words of free text that say nothing about a person: searching them in labels would stop
#: ordinary releases (a comment "patient moved during the scan" against a label ``move``...).
#: A short list of English function words and clinical filler, kept by hand (a stop-word
#: library would add a dependency for a list this size).
STOP_WORDS = frozenset(
    """
the and for with was were are has had have not but from this that these those then than there their they
them his her hers him she he its our you your who whom whose which what when where why how all any each
few more most other some such only own same too very can will just should now also into onto over under
after before during between again further once here about above below off out per via yes pre post
patient patients prefers preferred called call calls please note notes noted see seen told said says
left right both side moved moves move motion scan scans scanned study studies series image images exam
claustrophobic anxious sedated sedation contrast allergy allergic history known previous prior follow
followup check checked normal abnormal pain headache
""".split()
)


def word_terms(
    text: str, min_letters: int = 3, skip: frozenset[str] = frozenset(), mode: str = "freeword"
) -> list[Term]:
    """The words of a free-text value (PatientComments, history, a private text): each of 3+ letters
    that is not a stop word or protocol vocabulary, as ``freeword`` (a whole word in text, inside
    member names). Stop words and vocabulary are skipped because they appear in ordinary labels
    and text (``task-rest``, "scanned"), so searching them would only stop releases; a name that
    is such a word is the documented limit. ``skip``: more words to leave out (the label
    vocabulary, for texts whose protocol words labels may be built from); ``mode``: ``inside``
    for texts whose words are ordinary English as often as not (an institution's "General
    Hospital", an order's "research"): searched in member names only, where a label made of one
    is never protocol text (under 6 letters as a whole label or word only). Numbers of 6+ digits
    in it are ``digits``."""
    out: list[Term] = []
    folded = re.sub(r"['`]", "", fold(text))
    for word in re.findall(r"[a-z0-9]+", folded):
        if word.isdigit():
            if len(word) >= MIN_DIGITS:
                out.append(Term(word, "digits"))
        elif (
            len(word) >= min_letters
            and word.isalpha()
            and word not in STOP_WORDS
            and word not in GENERIC_WORDS
            and word not in skip
        ):
            # inside a label only from 6 letters ("park" is in "parking"): shorter, the whole label
            out.append(Term(word, "label" if mode == "inside" and len(word) < WORD_LENGTH else mode))
    return out


@cache
def protocol_vocabulary() -> frozenset[str]:
    """The protocol vocabulary shipped in ``packager/data/label_vocabulary.txt`` (lower case): the
    words labels and released free text may be made of (``naming.labels``)."""
    text = resources.files("packager").joinpath("data/label_vocabulary.txt").read_text(encoding="utf-8")
    return frozenset(w for line in text.splitlines() if (w := line.split("#", 1)[0].strip().lower()))


def search_terms(value: PhiValue) -> list[str]:
    """Folded strings to search for in output text for one PHI value (may be empty): the terms
    that count outside member names."""
    return list(dict.fromkeys(t.text for t in terms(value) if t.mode in ("sub", "word", "digits", "freeword")))
