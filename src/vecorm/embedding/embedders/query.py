"""Embedding search text, with a small LRU cache so a repeated query costs no provider call.

    vector = embed_query(embedder, "how do I tune autovacuum?")   # one call
    vector = embed_query(embedder, "how do I tune autovacuum?")   # cached

The cache lives on a weak reference to the provider, so it goes away with the provider.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from vecorm.embedding.embedders.base import Embedder, check_embeddings
from vecorm.errors import EmbeddingError

QUERY_CACHE_SIZE = 512

_caches: weakref.WeakKeyDictionary[object, OrderedDict[str, npt.NDArray[np.float32]]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _cache_for(embedder: Embedder) -> OrderedDict[str, npt.NDArray[np.float32]] | None:
    try:
        with _lock:
            cache = _caches.get(embedder)
            if cache is None:
                cache = OrderedDict()
                _caches[embedder] = cache
            return cache
    except TypeError:  # an object that cannot be weakly referenced or hashed: no cache
        return None


def _cached(embedder: Embedder, text: str) -> npt.NDArray[np.float32] | None:
    """The cached vector of ``text`` (refreshing its LRU position), after checking the text."""
    if not text or not text.strip():
        raise EmbeddingError("cannot embed an empty search text")
    cache = _cache_for(embedder)
    if cache is None:
        return None
    with _lock:
        cached = cache.get(text)
        if cached is not None:
            cache.move_to_end(text)
        return cached


def _remember(embedder: Embedder, text: str, result: object) -> npt.NDArray[np.float32]:
    """Check the provider's answer for ``text``, freeze it and cache it."""
    vector: npt.NDArray[np.float32] = check_embeddings(embedder, [text], result)[0]
    vector.setflags(write=False)
    cache = _cache_for(embedder)
    if cache is not None:
        with _lock:
            cache[text] = vector
            while len(cache) > QUERY_CACHE_SIZE:
                cache.popitem(last=False)
    return vector


def embed_query(embedder: Embedder, text: str) -> npt.NDArray[np.float32]:
    """Embed one search text through ``embedder``, cached (LRU, 512 entries per provider)."""
    cached = _cached(embedder, text)
    if cached is not None:
        return cached
    return _remember(embedder, text, embedder.embed([text]))


async def aembed_query(embedder: Embedder, text: str) -> npt.NDArray[np.float32]:
    """Async form of :func:`embed_query`: uses ``aembed`` when the provider has one."""
    cached = _cached(embedder, text)
    if cached is not None:
        return cached
    aembed = getattr(embedder, "aembed", None)
    if aembed is not None:
        result = await aembed([text])
    else:
        result = await asyncio.to_thread(embedder.embed, [text])
    return _remember(embedder, text, result)
