"""vecorm for Flask-SQLAlchemy apps, set up the way Flask extensions are.

``pip install 'vecorm[flask]'``. Give the extension your app and its ``SQLAlchemy`` object
(after ``db.init_app(app)``); rows embed on commit and text searches embed their query with the
same embedder, on the app's own engines::

    from flask_sqlalchemy import SQLAlchemy
    from vecorm.ext.flask import Vecorm

    db = SQLAlchemy(model_class=Base)
    search = Vecorm()

    def create_app() -> Flask:
        app = Flask(__name__)
        db.init_app(app)
        search.init_app(app, db, embedder=HashingEmbedder(384))
        return app

    # in a view: no embedder= anywhere
    db.session.execute(Article.hybrid_search(request.args["q"], k=5)).all()

``Vecorm(app, db, embedder=...)`` does both steps at once. The app's state lives in
``app.extensions["vecorm"]`` (a :class:`~vecorm.ext.app.AppInstallation`);
:meth:`Vecorm.teardown_app` undoes what ``init_app`` did (Flask has no shutdown signal: call it
where your app or test fixture ends).

Flask-SQLAlchemy has one ``db.session`` for all the apps of a process, so its hooks serve them
all: the newest ``init_app``'s embedder and mode are the ones in force, and tearing that app down
gives the hooks back to the newest app still set up (an app factory called twice in one test run
keeps working).
"""

from __future__ import annotations

import weakref
from typing import Any

from vecorm.embedding.embedders.base import Embedder
from vecorm.errors import ConfigurationError
from vecorm.ext.app import AppInstallation
from vecorm.schema.config import EmbeddingMode

try:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
except ImportError as exc:  # an extra, not a dependency
    raise ConfigurationError(
        "vecorm.ext.flask needs Flask and Flask-SQLAlchemy: pip install 'vecorm[flask]'"
    ) from exc

__all__ = ["EXTENSION_KEY", "Vecorm", "installation"]

#: Where the app's :class:`~vecorm.ext.app.AppInstallation` is kept: ``app.extensions[...]``.
EXTENSION_KEY = "vecorm"


class Vecorm:
    """The Flask extension: ``Vecorm(app, db, embedder=...)`` or ``Vecorm().init_app(app, db)``.

    ``embedder`` and ``mode`` given here are the defaults of every :meth:`init_app`.
    """

    def __init__(
        self,
        app: Flask | None = None,
        db: SQLAlchemy | None = None,
        *,
        embedder: Embedder | None = None,
        mode: EmbeddingMode = "strict",
    ) -> None:
        self.embedder = embedder
        self.mode: EmbeddingMode = mode
        # The apps set up through this extension, oldest first (Flask-SQLAlchemy keeps its
        # engines per app the same way): the one to hand the shared hooks back to.
        self._apps: weakref.WeakKeyDictionary[Flask, AppInstallation] = weakref.WeakKeyDictionary()
        if app is not None:
            if db is None:
                raise ConfigurationError("Vecorm(app, db): pass the app's SQLAlchemy object too")
            self.init_app(app, db)

    def init_app(
        self,
        app: Flask,
        db: SQLAlchemy,
        *,
        embedder: Embedder | None = None,
        mode: EmbeddingMode | None = None,
    ) -> AppInstallation:
        """Install the flush and query hooks on ``db.session`` and cover the app's engines
        (``db.engines``: every bind) with vecorm's search settings. Calling it again for the
        same app replaces its installation."""
        if app.extensions.get("sqlalchemy") is not db:
            raise ConfigurationError(
                f"{app.name}: call db.init_app(app) before vecorm's init_app(app, db); the "
                "app's engines are made there"
            )
        if EXTENSION_KEY in app.extensions:
            self.teardown_app(app)
        with app.app_context():
            engines = list(db.engines.values())
        installation = AppInstallation.start(
            db.session,
            embedder=embedder if embedder is not None else self.embedder,
            mode=mode if mode is not None else self.mode,
            engines=engines,
        )
        app.extensions[EXTENSION_KEY] = installation
        self._apps[app] = installation
        return installation

    def teardown_app(self, app: Flask) -> bool:
        """Undo :meth:`init_app` for ``app``; ``False`` if it was not set up.

        If ``app``'s hooks were the ones in force on the shared ``db.session``, the newest app
        still set up through this extension gets its own back.
        """
        installation: AppInstallation | None = app.extensions.pop(EXTENSION_KEY, None)
        if installation is None:
            return False
        self._apps.pop(app, None)
        was_current = installation.current
        installation.stop()
        if was_current:
            self._restore_newest(installation)
        return True

    def _restore_newest(self, stopped: AppInstallation) -> None:
        remaining = [
            (app, other)
            for app, other in self._apps.items()
            if other.sessions is stopped.sessions and not other.stopped
        ]
        if not remaining:
            return
        app, newest = remaining[-1]
        newest.stop()  # its engine opt-ins and token are stale: start it afresh
        again = AppInstallation.start(
            newest.sessions, embedder=newest.embedder, mode=newest.mode, engines=newest.engines
        )
        app.extensions[EXTENSION_KEY] = again
        self._apps[app] = again


def installation(app: Flask) -> AppInstallation:
    """``app``'s :class:`~vecorm.ext.app.AppInstallation` (raises if the app has none)."""
    found: Any = app.extensions.get(EXTENSION_KEY)
    if not isinstance(found, AppInstallation):
        raise ConfigurationError(f"{app.name}: vecorm is not set up; call Vecorm().init_app(app)")
    return found
