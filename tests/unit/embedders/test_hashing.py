"""HashingEmbedder: the offline embedder used by tests and demos."""

from __future__ import annotations

import numpy as np

from vecorm.embedding.embedders.base import AsyncEmbedder, check_embeddings
from vecorm.embedding.embedders.hashing import HashingEmbedder


def test_same_text_same_vector_across_instances() -> None:
    texts = ["postgres vector search", "Hybrid ranking!"]
    first = HashingEmbedder(dimensions=256).embed(texts)
    second = HashingEmbedder(dimensions=256).embed(list(reversed(texts)))

    np.testing.assert_array_equal(first, second[::-1])


def test_shared_words_are_closer_than_unrelated_text() -> None:
    query, related, unrelated = HashingEmbedder(dimensions=384).embed(
        ["postgres vector search", "vector search in postgres", "baking sourdough bread"]
    )

    assert float(query @ related) > 0.8
    assert float(query @ related) > float(query @ unrelated) + 0.5


def test_rows_are_unit_length_float32() -> None:
    vectors = HashingEmbedder(dimensions=64).embed(
        ["a", "many words in a longer sentence", "日本語"]
    )

    assert vectors.shape == (3, 64)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_empty_text_gets_a_valid_unit_vector() -> None:
    embedder = HashingEmbedder(dimensions=32)
    [vector] = embedder.embed([""])

    assert float(np.linalg.norm(vector)) == 1.0
    check_embeddings(embedder, [""], vector[np.newaxis, :])
    np.testing.assert_array_equal(embedder.embed(["  ...  "]), embedder.embed([""]))


def test_describes_itself() -> None:
    embedder = HashingEmbedder(dimensions=128)

    assert embedder.model_name == "vecorm-hashing-128"
    assert embedder.embed([]).shape == (0, 128)
    assert isinstance(embedder, AsyncEmbedder)


async def test_aembed_matches_embed() -> None:
    embedder = HashingEmbedder(dimensions=16)

    np.testing.assert_array_equal(await embedder.aembed(["x y"]), embedder.embed(["x y"]))
