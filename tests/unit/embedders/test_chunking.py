"""The chunkers: sizes kept, offsets exact, breaks at paragraphs and sentences, overlap."""

from __future__ import annotations

from itertools import pairwise

import pytest

from vecorm.embedding.embedders.chunking import (
    Chunk,
    chunk_characters,
    chunk_tokens,
    chunks_of,
)
from vecorm.embedding.embedders.openai import estimate_tokens
from vecorm.errors import ConfigurationError

SENTENCE = "PostgreSQL keeps every row version until vacuum removes it. "
ARTICLE = "\n\n".join(SENTENCE * 6 + f"Paragraph {number} ends here." for number in range(12))


def assert_exact_offsets(text: str, chunks: list[Chunk]) -> None:
    for chunk in chunks:
        assert chunk.start is not None and chunk.end is not None
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip()


def test_character_passages_cover_the_text_within_size() -> None:
    chunks = chunk_characters(size=500, overlap=100)(ARTICLE)
    assert_exact_offsets(ARTICLE, chunks)
    assert all(len(chunk.text) <= 500 for chunk in chunks)
    # every word of the text is in some passage, in order, and the passages advance
    assert chunks[0].start == 0 and chunks[-1].end == len(ARTICLE)
    for before, after in pairwise(chunks):
        assert before.start is not None and after.start is not None
        assert before.end is not None and after.end is not None
        assert before.start < after.start and before.end < after.end
        assert after.start <= before.end + 2  # no gap beyond the separating whitespace


def test_passages_end_at_paragraphs_then_sentences() -> None:
    chunks = chunk_characters(size=500, overlap=0)(ARTICLE)
    # a paragraph is ~390 characters: each passage is one whole paragraph
    assert [chunk.text.endswith("ends here.") for chunk in chunks] == [True] * len(chunks)
    assert len(chunks) == 12
    one_paragraph = SENTENCE * 20
    sentences = chunk_characters(size=200, overlap=0)(one_paragraph)
    assert all(chunk.text.endswith("removes it.") for chunk in sentences)


def test_overlap_repeats_the_end_of_the_previous_passage_in_whole_words() -> None:
    text = " ".join(f"w{index:03d}" for index in range(400))  # 1,599 characters
    chunks = chunk_characters(size=200, overlap=50)(text)
    assert_exact_offsets(text, chunks)
    for before, after in pairwise(chunks):
        assert before.end is not None and after.start is not None
        repeated = text[after.start : before.end]
        assert 40 <= len(repeated) <= 50  # whole 4-character words and their spaces
        assert before.text.endswith(repeated)
    no_overlap = chunk_characters(size=200, overlap=0)(text)
    assert " ".join(chunk.text for chunk in no_overlap) == text


def test_a_word_longer_than_a_passage_is_cut() -> None:
    text = "short words " + "x" * 450 + " and more"
    chunks = chunk_characters(size=200, overlap=20)(text)
    assert_exact_offsets(text, chunks)
    assert all(len(chunk.text) <= 200 for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks if chunk.text.startswith("x")).count("x") >= 450


def test_token_passages_stay_within_the_count() -> None:
    chunks = chunk_tokens(size=100, overlap=10)(ARTICLE)
    assert_exact_offsets(ARTICLE, chunks)
    assert all(estimate_tokens(chunk.text) <= 100 for chunk in chunks)
    assert max(estimate_tokens(chunk.text) for chunk in chunks) > 80  # and use the room
    # a count of the user's: one token per word
    words = chunk_tokens(size=7, overlap=2, count_tokens=lambda text: len(text.split()))(
        " ".join(f"w{index}" for index in range(30))  # no sentence to end a passage early
    )
    assert [len(chunk.text.split()) for chunk in words] == [7, 7, 7, 7, 7, 5]
    assert words[0].text.split()[-2:] == words[1].text.split()[:2]


def test_short_text_is_one_passage_and_blank_text_none() -> None:
    assert chunk_characters()("  one line  ") == [Chunk("one line", 2, 10)]
    assert chunk_characters()("   \n ") == []
    assert chunk_tokens()("") == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: chunk_characters(size=0), "size must be a positive integer"),
        (lambda: chunk_characters(size=100, overlap=100), "overlap must be an integer from 0"),
        (lambda: chunk_tokens(overlap=-1), "overlap must be an integer from 0"),
    ],
)
def test_bad_sizes_are_refused(make: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()  # type: ignore[operator]


def test_a_users_chunker_may_return_strings() -> None:
    text = "First part.\n\nSecond part.\n\nFirst part."

    def paragraphs(source: str) -> list[str]:
        return [part for part in source.split("\n\n")]

    assert chunks_of(paragraphs, text, "Doc") == [
        Chunk("First part.", 0, 11),
        Chunk("Second part.", 13, 25),
        Chunk("First part.", 27, 38),  # the repeated one found after the one before
    ]
    assert chunks_of(lambda source: ["not verbatim"], text, "Doc") == [Chunk("not verbatim")]


def test_a_chunker_returning_nonsense_is_named() -> None:
    with pytest.raises(ConfigurationError, match="Doc: the chunker .* must return a sequence"):
        chunks_of(lambda source: 42, "text", "Doc")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match="whose text is not source"):
        chunks_of(lambda source: [Chunk("tex", 1, 4)], "text", "Doc")
    with pytest.raises(ConfigurationError, match="returned a int"):
        chunks_of(lambda source: [1], "text", "Doc")  # type: ignore[list-item]
