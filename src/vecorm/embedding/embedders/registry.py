"""Embedders by name, as the commands take them (``--embedder hashing``): ``auto``, ``local``,
``hashing``, ``openai``, the same names on every command::

    choose_embedder("hashing", dimensions=64).model_name    # 'vecorm-hashing-64'
"""

from __future__ import annotations

from typing import Literal

from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.embedders.hashing import HashingEmbedder
from vecorm.errors import ConfigurationError

#: Width of the local model's vectors (all-MiniLM-L6-v2).
LOCAL_DIMENSIONS = 384

EmbedderChoice = Literal["auto", "local", "hashing", "openai"]
EMBEDDER_CHOICES: tuple[str, ...] = ("auto", "local", "hashing", "openai")


def local_model_available() -> bool:
    """Whether the local model can run here: ``vecorm[local]`` (onnxruntime) or
    ``vecorm[local-torch]`` (sentence-transformers) is installed."""
    from vecorm.embedding.embedders.local import installed_backends

    return bool(installed_backends())


def choose_embedder(name: str = "auto", *, dimensions: int = LOCAL_DIMENSIONS) -> Embedder:
    """The embedder called ``name``: ``auto``, ``local``, ``hashing`` or ``openai``.

    ``auto`` is the local model when installed (and ``dimensions`` is its 384), else the
    hashing embedder: never a remote API. ``hashing`` and ``openai`` (text-embedding-3-small,
    needs ``OPENAI_API_KEY``) return ``dimensions`` values; ``local`` always 384.

    >>> choose_embedder("hashing").model_name
    'vecorm-hashing-384'
    """
    if name == "auto":
        name = "local" if local_model_available() and dimensions == LOCAL_DIMENSIONS else "hashing"
    if name == "hashing":
        return HashingEmbedder(dimensions=dimensions)
    if name == "local":
        from vecorm.embedding.embedders.local import LocalEmbedder

        return LocalEmbedder()  # always 384 values: a column of another width is reported later
    if name == "openai":
        from vecorm.embedding.embedders.openai import OpenAIEmbedder

        return OpenAIEmbedder(dimensions=dimensions)
    raise ConfigurationError(
        f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDER_CHOICES)}"
    )
