"""Web frameworks: one call sets vecorm up for an app, and one undoes it.

:mod:`vecorm.ext.flask` (``pip install 'vecorm[flask]'``) gives Flask-SQLAlchemy apps an
extension, :mod:`vecorm.ext.fastapi` (``pip install 'vecorm[fastapi]'``) gives FastAPI apps a
lifespan. Both do what :class:`vecorm.ext.app.AppInstallation` does: the flush and query hooks
of :func:`vecorm.install` on the app's session factory, vecorm's query-time search settings on
the app's engines, and both undone when the app shuts down. Import the one you need; nothing
here imports a framework until you do.
"""
