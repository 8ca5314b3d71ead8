"""What an application installs, as one object that undoes it: the hooks of
:func:`vecorm.install` on its session factory, and vecorm's search settings on its engines.

The framework modules (:mod:`vecorm.ext.flask`, :mod:`vecorm.ext.fastapi`) are thin wrappers
around it; use it directly for any other framework or a worker process::

    installation = AppInstallation.start(SessionLocal, embedder=HashingEmbedder(384))
    ...                              # flushes embed rows, text queries embed with it
    installation.stop()

**Engines.** vecorm's query-time settings (``hnsw.ef_search`` ...) apply on every engine unless
one was opted out with :func:`vecorm.uninstall_search_settings`; :meth:`AppInstallation.start`
opts the app's engines back in (the ``bind`` and ``binds`` of a ``sessionmaker``, plus any you
pass, e.g. Flask-SQLAlchemy's ``db.engines``) and sends their executemany inserts as multi-row
``INSERT`` statements (:func:`vecorm.batch_inserts`: one firing of a table's statement triggers per
batch, not per row); :meth:`AppInstallation.stop` puts back what it found, so nothing
outlives the app.

**Several apps on one session factory** (an app factory called twice, Flask-SQLAlchemy's one
``db.session`` for every app): the newest ``start`` replaces the earlier installation, as
:func:`vecorm.install` does, and ``stop`` of an installation that was replaced leaves the
newer one alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.events import InstallTarget, install, installation_of, uninstall
from vecorm.engine import batch_inserts
from vecorm.schema.config import EmbeddingMode
from vecorm.search.settings import (
    install_search_settings,
    search_settings_installed,
    uninstall_search_settings,
)

__all__ = ["AppInstallation", "engines_of"]

Bind = Engine | AsyncEngine | Connection | AsyncConnection


@dataclass(eq=False)
class AppInstallation:
    """The hooks on ``sessions`` and the search settings on ``engines``, undone by :meth:`stop`.

    ``AppInstallation.start(async_sessionmaker(engine), embedder=embedder)``
    """

    sessions: InstallTarget
    embedder: Embedder | None
    mode: EmbeddingMode
    engines: tuple[Engine, ...]
    #: The engines that were opted out of vecorm's search settings before :meth:`start`.
    reopened: tuple[Engine, ...]
    token: object | None
    #: The engines whose inserts :meth:`start` batched (they sent one per row before).
    batched: tuple[Engine, ...] = ()
    stopped: bool = False

    @classmethod
    def start(
        cls,
        sessions: InstallTarget,
        *,
        embedder: Embedder | None = None,
        mode: EmbeddingMode = "strict",
        engines: Iterable[Bind] = (),
    ) -> AppInstallation:
        """Install the hooks on ``sessions`` (replacing an earlier installation there) and make
        vecorm's search settings apply on its engines and ``engines``."""
        install(sessions, embedder=embedder, mode=mode)
        covered = _unique([*engines_of(sessions), *(_engine(bind) for bind in engines)])
        reopened = tuple(engine for engine in covered if not search_settings_installed(engine))
        for engine in reopened:
            install_search_settings(engine)
        batched = tuple(engine for engine in covered if not batch_inserts(engine))
        token = installation_of(sessions)
        return cls(sessions, embedder, mode, covered, reopened, token, batched)

    @property
    def current(self) -> bool:
        """Whether the hooks on ``sessions`` are still this installation's (not replaced)."""
        return not self.stopped and installation_of(self.sessions) is self.token

    def stop(self) -> None:
        """Remove the hooks (unless a later installation replaced them), opt the engines
        that were opted out before back out and put their inserts back as they were. Calling
        it again does nothing."""
        if self.stopped:
            return
        if self.current:
            uninstall(self.sessions)
        for engine in self.reopened:
            uninstall_search_settings(engine)
        for engine in self.batched:
            batch_inserts(engine, False)
        self.stopped = True


def engines_of(sessions: InstallTarget) -> tuple[Engine, ...]:
    """The engines a session factory (or session) is bound to: ``bind`` and ``binds``."""
    target: Any = sessions
    if isinstance(target, scoped_session | async_scoped_session):
        target = target.session_factory
    binds: list[Any] = []
    if isinstance(target, sessionmaker | async_sessionmaker):
        binds.append(target.kw.get("bind"))
        binds.extend((target.kw.get("binds") or {}).values())
    elif isinstance(target, Session | AsyncSession):
        binds.append(target.bind)
    return _unique(_engine(bind) for bind in binds if bind is not None)


def _engine(bind: Bind) -> Engine:
    if isinstance(bind, AsyncEngine):
        return bind.sync_engine
    if isinstance(bind, AsyncConnection | Connection):
        return bind.engine if isinstance(bind, Connection) else bind.sync_engine
    return bind


def _unique(engines: Iterable[Engine]) -> tuple[Engine, ...]:
    return tuple({id(engine): engine for engine in engines}.values())
