"""Where to cut a long text so that each piece fits one deployment's `max_input_chars`.

Pure functions, no I/O. A text is cut at the last sentence end that fits; a sentence too long
to fit is cut at its last clause boundary (, ; : — and CJK 、，；：), then at its last space; a
run of text with no space at all (a URL, unpunctuated CJK) is cut at the limit, never inside
a character sequence that renders as one (a letter and its combining accents).

    next_segment("Dr. Smith paid $3.14. Then he left.", 0, 25)   # (0, 21): "Dr. Smith paid $3.14."
    split_text("One. Two. Three.", 10)                             # ["One. Two.", "Three."]

What is not a sentence end: the dot of an abbreviation ("Dr.", "e.g.", "J. R. R."), of a
decimal ("3.14"), an ellipsis or a full stop followed by a lowercase word ("wait... then"),
and any terminal punctuation not followed by a space (except CJK 。！？, which need none).
Closing quotes and brackets stay with the sentence they end.
"""

# The punctuation this module knows is full-width and typographic on purpose.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

__all__ = ["next_segment", "split_spans", "split_text"]

_TERMINALS = frozenset(".!?…‼⁇⁈⁉")
# CJK full-width terminals end a sentence without a following space.
_CJK_TERMINALS = frozenset("。！？｡")
_CLOSERS = frozenset("\"'”’»)]}」』）】〉》›")
_OPENERS = frozenset("\"'“‘«([{「『（【〈《‹¿¡")
_CLAUSE = frozenset(",;:")
_CJK_CLAUSE = frozenset("、，；：")
_DASHES = frozenset("—–")
# Words whose dot never ends a sentence, whatever follows: titles and references that are
# always followed by a name or a number. Compared lowercased, without the dot.
_ABBREVIATIONS = frozenset(
    {
        *("mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "rev", "fr", "hon"),
        *("gen", "col", "capt", "lt", "sgt", "cpt", "maj", "cmdr", "adm", "gov", "pres", "sen"),
        *("rep", "mt", "ft", "no", "nos", "fig", "figs", "vol", "vols", "pp", "ch", "sec"),
        *("art", "eq", "eqs", "ref", "refs", "ed", "eds", "approx", "ca", "cf", "vs", "viz"),
        *("al", "inc", "ltd", "co", "corp", "dept", "univ", "jan", "feb", "mar", "apr", "jun"),
        *("jul", "aug", "sep", "sept", "oct", "nov", "dec"),
    }
)


def split_text(text: str, max_chars: int) -> list[str]:
    """`text` cut into pieces of at most `max_chars` characters, stripped, none empty."""
    return [text[start:end] for start, end in split_spans(text, max_chars)]


def split_spans(text: str, max_chars: int) -> Iterator[tuple[int, int]]:
    """The `(start, end)` of each piece of `split_text`, in order."""
    position = 0
    while (span := next_segment(text, position, max_chars)) is not None:
        yield span
        position = span[1]


def next_segment(text: str, start: int, max_chars: int) -> tuple[int, int] | None:
    """The next piece of `text` from `start`: `(begin, end)` with ``end - begin <= max_chars``,
    leading and trailing whitespace left out; None when only whitespace is left.

    Each deployment calls this with its own `max_chars` for the text it is about to speak,
    so a segment is as long as the deployment that speaks it allows.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    length = len(text)
    begin = start
    while begin < length and text[begin].isspace():
        begin += 1
    if begin >= length:
        return None
    limit = begin + max_chars
    if limit >= length:
        return begin, _rstrip(text, begin, length)
    # A cut at `limit` itself is a boundary too if whitespace follows it.
    cut = (
        _last_sentence_end(text, begin, limit)
        or _last_clause_end(text, begin, limit)
        or _last_space(text, begin, limit)
        or _hard_cut(text, begin, limit)
    )
    return begin, _rstrip(text, begin, cut)


def _rstrip(text: str, begin: int, end: int) -> int:
    while end > begin and text[end - 1].isspace():
        end -= 1
    return end


def _last_sentence_end(text: str, begin: int, limit: int) -> int | None:
    """The largest cut in (begin, limit] that ends a sentence, or None."""
    for cut in range(limit, begin, -1):
        if _ends_sentence(text, cut):
            return cut
    return None


def _ends_sentence(text: str, cut: int) -> bool:
    """True when a sentence ends just before index `cut`."""
    # Walk back over closing quotes and brackets to the punctuation itself.
    end = cut
    while end > 0 and text[end - 1] in _CLOSERS:
        end -= 1
    if end == 0:
        return False
    mark = text[end - 1]
    if mark in _CJK_TERMINALS:
        # 。」 is one ending: do not cut between the terminal and its closer.
        return cut >= len(text) or text[cut] not in _CLOSERS
    if mark not in _TERMINALS or cut >= len(text) or not text[cut].isspace():
        return False
    following = _next_word_start(text, cut)
    if following is not None and following.islower():
        return False  # "wait... then", "e.g. this", "etc. and so on"
    if mark != ".":
        return True
    dots = end - 1
    while dots > 0 and text[dots - 1] == ".":
        dots -= 1
    if end - dots >= 2:
        return True  # an ellipsis before a capitalised word ends the sentence
    return not _is_abbreviation(_word_before(text, dots))


def _next_word_start(text: str, position: int) -> str | None:
    """The first character after the whitespace and opening quotes at `position`."""
    length = len(text)
    while position < length and (text[position].isspace() or text[position] in _OPENERS):
        position += 1
    return text[position] if position < length else None


def _word_before(text: str, dot: int) -> str:
    """The run of non-space characters ending at index `dot` (exclusive), without openers."""
    start = dot
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:dot].lstrip("".join(_OPENERS))


def _is_abbreviation(word: str) -> bool:
    if not word:
        return False
    if word.lower() in _ABBREVIATIONS:
        return True
    # "J." (an initial), "e.g", "i.e", "U.S", "a.m": single letters joined by dots.
    parts = word.split(".")
    return all(len(part) == 1 and part.isalpha() for part in parts)


def _last_clause_end(text: str, begin: int, limit: int) -> int | None:
    """The largest cut in (begin, limit] after a comma, semicolon, colon or dash."""
    for cut in range(limit, begin, -1):
        mark = text[cut - 1]
        if mark in _CJK_CLAUSE or mark in _DASHES:
            return cut  # these need no space after them to end a clause
        if mark in _CLAUSE and cut < len(text) and text[cut].isspace():
            return cut  # "1,000" and "10:30" have no space after their mark
    return None


def _last_space(text: str, begin: int, limit: int) -> int | None:
    """The largest cut in (begin, limit] just before whitespace, or None."""
    for cut in range(limit, begin, -1):
        if text[cut].isspace() and not text[cut - 1].isspace():
            return cut
    return None


def _hard_cut(text: str, begin: int, limit: int) -> int:
    """No space in the window: cut at the limit, but not before a combining mark."""
    cut = limit
    while cut > begin + 1 and unicodedata.combining(text[cut]):
        cut -= 1
    return cut
