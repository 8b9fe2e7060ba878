"""SPEC §5: long text is cut at sentence boundaries, then clauses, then words; never inside one."""

# CJK and typographic punctuation is what these tests are about.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tts._core._segments import next_segment, split_spans, split_text


def test_text_that_fits_is_one_segment_without_surrounding_whitespace() -> None:
    """A text within the limit comes back whole, stripped."""
    assert split_text("  Hello there.  \n", 100) == ["Hello there."]


def test_only_whitespace_is_no_segment() -> None:
    """Nothing but whitespace left: no segment at all."""
    assert split_text(" \n\t ", 10) == []
    assert next_segment("Done.   ", 5, 10) is None


def test_cuts_at_the_last_sentence_end_that_fits() -> None:
    """Sentences are packed greedily: the cut is the last sentence end within the limit."""
    text = "One two. Three four. Five six seven."
    assert split_text(text, 21) == ["One two. Three four.", "Five six seven."]
    assert split_text(text, 10) == ["One two.", "Three", "four.", "Five six", "seven."]


@pytest.mark.parametrize(
    "text",
    [
        "Dr. Smith met Mrs. Jones at St. Mary's at 10 a.m. yesterday afternoon.",
        "Bring fruit, e.g. apples, i.e. the red ones, and so on to the party.",
        "It cost 3.14 dollars, or 2.50 euros, at the time of the first visit.",
        "J. R. R. Tolkien wrote it; see Fig. 3 and No. 5 in the list of works.",
        "Well... maybe we wait... and then see what happens at the end of it.",
    ],
)
def test_abbreviations_decimals_and_trailing_ellipses_do_not_end_a_sentence(text: str) -> None:
    """ "Dr.", "e.g.", "3.14", initials and an ellipsis before a lowercase word are not ends."""
    # The limit forces a cut; with no sentence end in reach, it falls at a clause or a space.
    pieces = split_text(text + " Next sentence here.", len(text) + 5)
    assert pieces == [text, "Next sentence here."]


def test_ellipsis_before_a_capitalised_word_ends_a_sentence() -> None:
    """ "..." or "…" followed by a new sentence is a sentence end."""
    assert split_text("I waited... Nobody came to the door.", 20) == [
        "I waited...",
        "Nobody came to the",
        "door.",
    ]
    assert split_text("I waited… Nobody came.", 12) == ["I waited…", "Nobody came."]


def test_closing_quotes_stay_with_their_sentence() -> None:
    """A quote or bracket that closes a sentence goes with it, not with the next one."""
    text = 'He said "Stop." Then he left (quietly.) After that, silence.'
    assert split_text(text, 30) == [
        'He said "Stop."',
        "Then he left (quietly.)",
        "After that, silence.",
    ]


def test_question_inside_a_quote_before_lowercase_is_not_an_end() -> None:
    """ "Really?" she asked. is one sentence."""
    text = '"Really?" she asked. Yes.'
    assert split_text(text, 22) == ['"Really?" she asked.', "Yes."]


def test_cjk_punctuation_ends_sentences_without_spaces() -> None:
    """。！？ end a sentence with no space after them; a closing 」 stays with it."""
    text = "今日は晴れです。明日は雨でしょう！「本当？」彼は聞いた。"
    assert split_text(text, 11) == [
        "今日は晴れです。",
        "明日は雨でしょう！",
        "「本当？」彼は聞いた。",
    ]
    assert split_text(text, 10)[2:] == ["「本当？」", "彼は聞いた。"]


def test_over_long_sentence_is_cut_at_its_last_clause_boundary() -> None:
    """No sentence end in reach: cut after the last , ; : or dash that fits."""
    text = "First part, second part; third part: fourth part—fifth part and more."
    assert split_text(text, 40) == [
        "First part, second part; third part:",
        "fourth part—fifth part and more.",
    ]
    assert next_segment(text, 0, 52) == (0, 49)  # after the em dash, no space needed


def test_numbers_with_separators_are_not_clause_boundaries() -> None:
    """ "1,000" and "10:30" hold together; the cut falls at a space instead."""
    text = "We counted 1,000,000 birds at 10:30 today"
    assert split_text(text, 25) == ["We counted 1,000,000", "birds at 10:30 today"]


def test_cjk_clause_marks_cut_without_spaces() -> None:
    """、 and ， are clause boundaries in CJK text."""
    assert split_text("一二三四、五六七八，九十", 6) == ["一二三四、", "五六七八，", "九十"]


def test_word_longer_than_the_limit_is_cut_at_the_limit() -> None:
    """A run without spaces (a URL) longer than the limit is cut where it must be."""
    assert split_text("see https://example.com/a/very/long/path now", 12) == [
        "see",
        "https://exam",
        "ple.com/a/ve",
        "ry/long/path",
        "now",
    ]


def test_hard_cut_keeps_combining_marks_with_their_letter() -> None:
    """A forced cut never separates a letter from its combining accent."""
    text = "e\u0301" * 10  # é as e + COMBINING ACUTE ACCENT
    pieces = split_text(text, 5)
    assert all(not piece[0].isspace() and piece[0] == "e" for piece in pieces)
    assert "".join(pieces) == text


def test_rejects_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        next_segment("text", 0, 0)


_words = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Cc")),
    min_size=1,
    max_size=12,
)
_separators = st.sampled_from(
    [" ", "  ", "\n", ". ", "? ", "! ", ", ", "; ", "... ", "。", " — ", '." ', "\t"]
)
_texts = st.lists(st.tuples(_words, _separators), max_size=60).map(
    lambda pairs: "".join(w + s for w, s in pairs)
)


@settings(max_examples=300, deadline=None)
@given(text=_texts, max_chars=st.integers(min_value=1, max_value=80))
def test_segments_fit_and_lose_nothing(text: str, max_chars: int) -> None:
    """Every segment fits, none is empty or padded, and together they are the text."""
    spans = list(split_spans(text, max_chars))
    pieces = [text[start:end] for start, end in spans]
    assert all(0 < len(piece) <= max_chars for piece in pieces)
    assert all(piece == piece.strip() for piece in pieces)
    # In order, without overlap, and only whitespace between them.
    ends = [0] + [end for _, end in spans]
    for (start, _), previous_end in zip(spans, ends, strict=False):
        assert start >= previous_end
        assert text[previous_end:start].strip() == ""
    assert text[ends[-1] :].strip() == ""


@settings(max_examples=300, deadline=None)
@given(text=_texts, max_chars=st.integers(min_value=8, max_value=80))
def test_cuts_fall_inside_a_word_only_when_the_word_is_longer_than_the_limit(
    text: str, max_chars: int
) -> None:
    """A cut between two non-space characters means the window held no space at all."""
    for start, end in split_spans(text, max_chars):
        inside_word = end < len(text) and not text[end].isspace() and not text[end - 1].isspace()
        if (
            inside_word
            and text[end - 1] not in ",;:—–、，；：。！？"
            and text[end - 1] not in "\"'”’»)]}」』）"
        ):
            assert not any(c.isspace() for c in text[start:end]), (text[start:end], text[end:])
