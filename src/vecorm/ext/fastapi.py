"""vecorm for FastAPI apps: a lifespan that sets it up at startup and undoes it at shutdown.

``pip install 'vecorm[fastapi]'``. Pass the app's session factory (an ``async_sessionmaker``
or a ``sessionmaker``) and the embedder; rows embed on commit (awaiting the provider's
``aembed``) and text searches embed their query with the same embedder, so a route needs no
embedder of its own::

    engine = create_async_engine(url)
    Sessions = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI(lifespan=vecorm.ext.fastapi.lifespan(Sessions, embedder=HashingEmbedder(384)))

    @app.get("/search")
    async def search(q: str) -> list[int]:
        async with Sessions() as session:
            return [note.id for note, *_ in await session.execute(Note.hybrid_search(q, k=5))]

Your own lifespan composes either way: pass it as ``app_lifespan=`` (it runs inside vecorm's,
and what it yields becomes the app's state), or enter vecorm's inside yours::

    vecorm_lifespan = vecorm.ext.fastapi.lifespan(Sessions, embedder=embedder)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with vecorm_lifespan(app):
            yield
        await engine.dispose()

While the app runs, ``app.state.vecorm`` is its :class:`~vecorm.ext.app.AppInstallation`. A
second app on the same session factory replaces the first one's hooks (the newest startup wins)
and the first one's shutdown leaves them alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.events import InstallTarget
from vecorm.errors import ConfigurationError
from vecorm.ext.app import AppInstallation, Bind
from vecorm.schema.config import EmbeddingMode

try:
    from fastapi import FastAPI
except ImportError as exc:  # an extra, not a dependency
    raise ConfigurationError(
        "vecorm.ext.fastapi needs FastAPI: pip install 'vecorm[fastapi]'"
    ) from exc

__all__ = ["Lifespan", "lifespan"]

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Mapping[str, Any] | None]]
"""What ``FastAPI(lifespan=...)`` takes."""


def lifespan(
    sessions: InstallTarget,
    *,
    embedder: Embedder | None = None,
    mode: EmbeddingMode = "strict",
    engines: Iterable[Bind] = (),
    app_lifespan: Lifespan | None = None,
) -> Lifespan:
    """A lifespan that installs vecorm on ``sessions`` at startup and removes it at shutdown.

    ``sessions`` is the app's ``async_sessionmaker`` (or ``sessionmaker``, ``scoped_session``
    ...); its ``bind`` / ``binds`` and ``engines`` get vecorm's search settings.
    ``app_lifespan`` is yours, run inside::

        app = FastAPI(lifespan=lifespan(Sessions, embedder=embedder, app_lifespan=my_lifespan))
    """
    chosen_engines = tuple(engines)

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[Mapping[str, Any] | None]:
        installation = AppInstallation.start(
            sessions, embedder=embedder, mode=mode, engines=chosen_engines
        )
        app.state.vecorm = installation
        try:
            if app_lifespan is None:
                yield None
            else:
                async with app_lifespan(app) as state:
                    yield state
        finally:
            installation.stop()

    return run
