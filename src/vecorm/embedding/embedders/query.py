"""Embedding search text, with a small LRU cache so a repeated query costs no provider call.

    vector = embed_query(embedder, "how do I tune autovacuum?")   # one call
    vector = embed_query(embedder, "how do I tune autovacuum?")   # cached

The cache lives on a weak reference to the provider, so it goes away with the provider.

:func:`executing_embedder` is the embedder of the session executing a statement right now (the
hook of :func:`vecorm.install` sets it around each execution): a search built from text for a
model without an embedder of its own embeds its query with it, at execution.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy.util
from sqlalchemy.util.concurrency import in_greenlet

from vecorm.embedding.embedders.base import Embedder, check_embeddings
from vecorm.errors import EmbeddingError

QUERY_CACHE_SIZE = 512

# SQLAlchemy 2.1 renamed await_only to await_; accept both.
_await: Callable[[Any], Any] = (
    getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only
)

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


# --------------------------------------------------------------------------- at execution

#: The embedder of the session that is executing a statement right now, set by the session
#: hook of :func:`vecorm.install` around that one execution (and reset after it).
_executing_embedder: ContextVar[Embedder | None] = ContextVar(
    "vecorm_executing_embedder", default=None
)


@contextmanager
def executing_with(embedder: Embedder) -> Iterator[None]:
    """Make ``embedder`` the one :func:`executing_embedder` returns, inside the block only.

    The session hook wraps one statement's execution in it, so a search statement built from
    text (with no embedder of its own) embeds its query with the session's embedder.
    """
    token = _executing_embedder.set(embedder)
    try:
        yield
    finally:
        _executing_embedder.reset(token)


def executing_embedder() -> Embedder | None:
    """The embedder of the session executing the current statement, if it has one."""
    return _executing_embedder.get()


def embed_query_now(embedder: Embedder, text: str) -> npt.NDArray[np.float32]:
    """:func:`embed_query`; inside an ``AsyncSession``'s greenlet, :func:`aembed_query` awaited
    on the event loop instead, so a query embedded while a statement executes never blocks it."""
    if in_greenlet():
        vector: npt.NDArray[np.float32] = _await(aembed_query(embedder, text))
        return vector
    return embed_query(embedder, text)
