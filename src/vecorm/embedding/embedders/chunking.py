"""Chunkers: split a long text into passages small enough to embed, with their offsets.

A chunker is any callable ``text -> sequence of Chunk`` (or of plain strings, which vecorm
then finds in the text for their offsets). Two come with vecorm, both preferring to break at
a paragraph, then a sentence or line, then a space, and repeating the end of one passage at
the start of the next (``overlap``) so a sentence cut in two is whole in one of them::

    chunk = chunk_characters(size=1200, overlap=200)      # at most 1200 characters each
    chunk = chunk_tokens(size=512, overlap=64)            # at most 512 tokens each
    [(c.start, c.end) for c in chunk(long_text)]          # long_text[c.start:c.end] == c.text

``chunk_tokens`` counts with :func:`~vecorm.embedding.embedders.openai.estimate_tokens` (the
deliberately high estimate :class:`~vecorm.embedders.OpenAIEmbedder` checks its 8191-token
limit with, so a passage it accepts is never refused there), or with ``count_tokens=`` (a
provider's own count, ``OpenAIEmbedder(...).count_tokens``, or a tiktoken encoding's
``lambda text: len(encoding.encode(text))``). A chunker of your own::

    def paragraphs(text: str) -> list[str]:
        return [part for part in text.split("\\n\\n") if part.strip()]

The chunkers live with the providers because the token count is a provider's: the schema's
:class:`~vecorm.PassageConfig` names one, the flush hook calls it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from vecorm.embedding.embedders.openai import estimate_tokens
from vecorm.errors import ConfigurationError

__all__ = [
    "CharacterChunker",
    "Chunk",
    "Chunker",
    "TokenChunker",
    "chunk_characters",
    "chunk_tokens",
    "chunks_of",
]


@dataclass(frozen=True)
class Chunk:
    """One passage: its text and where it lies in the source, ``source[start:end] == text``."""

    text: str
    start: int | None = None
    end: int | None = None


@runtime_checkable
class Chunker(Protocol):
    """What :class:`~vecorm.PassageConfig` accepts as ``chunker``: ``text -> passages``."""

    def __call__(self, text: str) -> Sequence[Chunk | str]: ...


# A word with the whitespace after it: the units passages are made of.
_WORD = re.compile(r"\S+\s*")
_SENTENCE_END = re.compile(r"""[.!?;:]["')\]]*$""")
#: How good a place to break after a unit is.
_PARAGRAPH, _SENTENCE, _WORD_BREAK, _NO_BREAK = 3, 2, 1, 0


@dataclass(frozen=True)
class _Unit:
    start: int
    word_end: int  # the word's end, before its trailing whitespace
    end: int  # after its trailing whitespace
    weight: int
    strength: int


def _strength(word: str, space: str) -> int:
    if space.count("\n") >= 2:
        return _PARAGRAPH
    if "\n" in space or _SENTENCE_END.search(word):
        return _SENTENCE
    return _WORD_BREAK


def _longest_prefix(piece: str, weigh: Callable[[str], int], size: int) -> int:
    """Length of the longest prefix of ``piece`` that weighs at most ``size`` (at least 1)."""
    low, high = 1, len(piece)
    while low < high:
        middle = (low + high + 1) // 2
        if weigh(piece[:middle]) <= size:
            low = middle
        else:
            high = middle - 1
    return low


def _units(text: str, weigh: Callable[[str], int], size: int) -> list[_Unit]:
    """The words of ``text`` with their weights; a word heavier than ``size`` is cut in pieces
    (a long URL, base64, a language written without spaces)."""
    units: list[_Unit] = []
    for match in _WORD.finditer(text):
        start, end = match.span()
        word_end = start + len(match.group().rstrip())
        weight = weigh(text[start:end])
        if weight <= size:
            strength = _strength(text[start:word_end], text[word_end:end])
            units.append(_Unit(start, word_end, end, weight, strength))
            continue
        position = start
        while position < word_end:
            length = _longest_prefix(text[position:word_end], weigh, size)
            piece_end = position + length
            last = piece_end >= word_end
            units.append(
                _Unit(
                    position,
                    piece_end,
                    end if last else piece_end,
                    weigh(text[position : end if last else piece_end]),
                    _strength(text[start:word_end], text[word_end:end]) if last else _NO_BREAK,
                )
            )
            position = piece_end
    return units


def _pack(text: str, weigh: Callable[[str], int], size: int, overlap: int) -> list[Chunk]:
    """Greedy passages of at most ``size``: each ends at the best break in its second half,
    the next one starts up to ``overlap`` back."""
    units = _units(text, weigh, size)
    chunks: list[Chunk] = []
    first, previous = 0, -1
    while first < len(units):
        last = _last_fitting(text, units, first, weigh, size)
        if last <= previous:  # the overlap left no room to go further: start afresh
            first = previous + 1
            last = _last_fitting(text, units, first, weigh, size)
        if last < len(units) - 1:
            last = _best_break(units, first, last, size)
        start, end = units[first].start, units[last].word_end
        chunks.append(Chunk(text[start:end], start, end))
        if last == len(units) - 1:
            break
        first, previous = _overlap_start(units, first, last, overlap), last
    return chunks


def _overlap_start(units: list[_Unit], first: int, last: int, overlap: int) -> int:
    """Where the passage after ``units[first..last]`` starts: as far back as ``overlap``
    allows, at the start of a sentence when one begins in that stretch."""
    following, carried = last + 1, 0
    sentence_start = None
    while following - 1 > first and carried + units[following - 1].weight <= overlap:
        following -= 1
        carried += units[following].weight
        if units[following - 1].strength >= _SENTENCE:
            sentence_start = following
    return sentence_start if sentence_start is not None else following


def _last_fitting(
    text: str, units: list[_Unit], first: int, weigh: Callable[[str], int], size: int
) -> int:
    """The last unit from ``first`` on that keeps the passage, counted whole, within ``size``
    (a binary search: a count is monotonic in the text's length; the first unit always fits,
    none weighs more)."""
    start = units[first].start
    low, high = first, len(units) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if weigh(text[start : units[middle].word_end]) <= size:
            low = middle
        else:
            high = middle - 1
    return low


def _best_break(units: list[_Unit], first: int, last: int, size: int) -> int:
    """Where to end a passage of ``units[first..last]``: the strongest break at or after half
    of ``size``, the later one among equals."""
    best, best_strength = last, -1
    total = 0
    for index in range(first, last + 1):
        total += units[index].weight
        if total * 2 < size and index != last:
            continue
        if units[index].strength >= best_strength:
            best, best_strength = index, units[index].strength
    return best


def _check_sizes(kind: str, size: object, overlap: object) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigurationError(f"{kind} size must be a positive integer, not {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < size:
        raise ConfigurationError(
            f"{kind} overlap must be an integer from 0 to size - 1 ({size - 1}), not {overlap!r}"
        )


@dataclass(frozen=True)
class CharacterChunker:
    """Passages of at most ``size`` characters, ``overlap`` of them repeated; see the module."""

    size: int = 2000
    overlap: int = 200

    def __post_init__(self) -> None:
        _check_sizes("chunk_characters", self.size, self.overlap)

    def __call__(self, text: str) -> list[Chunk]:
        return _pack(text, len, self.size, self.overlap)


@dataclass(frozen=True)
class TokenChunker:
    """Passages of at most ``size`` tokens by ``count_tokens``, ``overlap`` tokens repeated."""

    size: int = 512
    overlap: int = 64
    count_tokens: Callable[[str], int] = field(default=estimate_tokens, compare=False)

    def __post_init__(self) -> None:
        _check_sizes("chunk_tokens", self.size, self.overlap)
        if not callable(self.count_tokens):
            raise ConfigurationError(
                f"chunk_tokens count_tokens must be a function text -> int, not "
                f"{self.count_tokens!r}"
            )

    def __call__(self, text: str) -> list[Chunk]:
        return _pack(text, self.count_tokens, self.size, self.overlap)


def chunk_characters(size: int = 2000, overlap: int = 200) -> CharacterChunker:
    """A chunker of passages of at most ``size`` characters that repeat the last ``overlap``
    characters (rounded to whole words) of the one before.

    ``PassageConfig(parent=Doc, source=("body",), chunker=chunk_characters(1200, 200))``
    """
    return CharacterChunker(size, overlap)


def chunk_tokens(
    size: int = 512, overlap: int = 64, count_tokens: Callable[[str], int] | None = None
) -> TokenChunker:
    """A chunker of passages of at most ``size`` tokens, the last ``overlap`` tokens of one
    repeated in the next; tokens counted by ``count_tokens`` (default: vecorm's high
    estimate, 3 characters per token, one per non-ASCII character).

    ``chunk_tokens(8000, 200, count_tokens=OpenAIEmbedder().count_tokens)``
    """
    return TokenChunker(size, overlap, count_tokens or estimate_tokens)


def chunks_of(
    chunker: Callable[[str], Iterable[Chunk | str]], text: str, owner: str
) -> list[Chunk]:
    """``chunker(text)`` checked: :class:`Chunk` values kept (their offsets must match the
    text), strings found in ``text`` for their offsets (``None`` when not found verbatim),
    blank passages dropped."""
    try:
        produced = chunker(text)
    except Exception as exc:
        raise ConfigurationError(f"{owner}: the chunker {chunker!r} failed: {exc}") from exc
    if isinstance(produced, str) or not isinstance(produced, Iterable):
        raise ConfigurationError(
            f"{owner}: the chunker {chunker!r} must return a sequence of Chunk or str, not "
            f"{type(produced).__name__}"
        )
    chunks: list[Chunk] = []
    search_from = 0
    for item in produced:
        if isinstance(item, str):
            found = text.find(item, search_from) if item else -1
            if found < 0:
                found = text.find(item) if item else -1
            item = Chunk(item, found, found + len(item)) if found >= 0 else Chunk(item)
        elif not isinstance(item, Chunk):
            raise ConfigurationError(
                f"{owner}: the chunker {chunker!r} returned a {type(item).__name__}; return "
                "vecorm.Chunk(text, start, end) or str values"
            )
        if item.start is not None and (
            item.end is None or text[item.start : item.end] != item.text
        ):
            raise ConfigurationError(
                f"{owner}: the chunker {chunker!r} returned Chunk(start={item.start}, "
                f"end={item.end}) whose text is not source[start:end]"
            )
        if not item.text.strip():
            continue
        if item.start is not None:
            search_from = item.start + 1
        chunks.append(item)
    return chunks
