"""The protocol every embedding provider follows, and the checks applied to what it returns.

A provider is any object with ``dimensions``, ``model_name``, ``max_batch_size`` and
``embed(texts) -> numpy array of shape (len(texts), dimensions)``. Providers that can embed
without blocking an event loop also offer ``aembed``::

    class Constant:
        dimensions = 3
        model_name = "constant"
        max_batch_size = 100

        def embed(self, texts):
            return numpy.ones((len(texts), 3), dtype=numpy.float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from vecorm.errors import DimensionMismatch, EmbeddingError

EmbeddingMatrix = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """What vecorm needs from an embedding provider."""

    @property
    def dimensions(self) -> int:
        """Length of every vector the provider returns."""
        ...

    @property
    def model_name(self) -> str:
        """Stable identifier of the model; stored with each row to detect model changes."""
        ...

    @property
    def max_batch_size(self) -> int:
        """Most texts one ``embed`` call accepts."""
        ...

    def embed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Return one row per text, in the order given."""
        ...


@runtime_checkable
class AsyncEmbedder(Embedder, Protocol):
    """A provider that can also embed without blocking the event loop."""

    async def aembed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Awaitable form of :meth:`Embedder.embed`."""
        ...


def check_embeddings(
    embedder: Embedder, texts: Sequence[str], result: object, expected_dimensions: int | None = None
) -> EmbeddingMatrix:
    """Validate a provider's answer: one finite row per text, of the expected width.

    ``check_embeddings(HashingEmbedder(4), ["a"], [[0.0, 1.0, 0.0, 0.0]]).shape == (1, 4)``
    """
    name = getattr(embedder, "model_name", type(embedder).__name__)
    try:
        matrix = np.asarray(result, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"embedder {name!r} returned something that is not numeric") from exc
    if matrix.ndim != 2 or matrix.shape[0] != len(texts):
        raise EmbeddingError(
            f"embedder {name!r} returned {matrix.shape[0] if matrix.ndim else 0} vectors "
            f"for {len(texts)} texts"
        )
    width = expected_dimensions if expected_dimensions is not None else embedder.dimensions
    if matrix.shape[1] != width:
        raise DimensionMismatch(
            f"embedder {name!r} returned vectors of {matrix.shape[1]} values, expected {width}"
        )
    if not np.isfinite(matrix).all():
        raise EmbeddingError(f"embedder {name!r} returned NaN or infinite values")
    return matrix
