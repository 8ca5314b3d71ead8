"""The embedding providers, where users look for them::

    from vecorm.embedders import HashingEmbedder, LocalEmbedder, OpenAIEmbedder

``OpenAIEmbedder`` and ``LocalEmbedder`` import their client library (``vecorm[openai]``,
``vecorm[local]``) when first named. Implemented in :mod:`vecorm.embedding.embedders`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vecorm.embedding.embedders import AsyncEmbedder, Embedder, HashingEmbedder, check_embeddings
from vecorm.embedding.embedders.registry import EMBEDDER_CHOICES, choose_embedder

if TYPE_CHECKING:
    from vecorm.embedding.embedders.local import LocalEmbedder
    from vecorm.embedding.embedders.openai import OpenAIEmbedder

__all__ = [
    "EMBEDDER_CHOICES",
    "AsyncEmbedder",
    "Embedder",
    "HashingEmbedder",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "check_embeddings",
    "choose_embedder",
]

_LAZY = {
    "LocalEmbedder": "vecorm.embedding.embedders.local",
    "OpenAIEmbedder": "vecorm.embedding.embedders.openai",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vecorm.embedders' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
