"""vecorm's test kit: a pytest plugin (installed with vecorm) and helpers for your own tests.

The plugin gives every test a fresh database on real PostgreSQL + pgvector: the embedded
server, or ``$VECORM_DATABASE_URL`` when set. Fixtures:

``vecorm_url``
    URL of a new database made from a template that already has ``CREATE EXTENSION vector``;
    dropped after the test.
``vecorm_engine`` / ``vecorm_session``
    An engine and an ORM session on that database.
``vecorm_async_engine`` / ``vecorm_async_session``
    The same with ``create_async_engine`` (needs pytest-asyncio).
``vecorm_fake_embedder``
    A :class:`FakeEmbedder` (deterministic, offline, records its calls), 1536 dimensions.
``vecorm_server`` / ``vecorm_template``
    The server and the template database, once per session.

Every fixture is named ``vecorm_*``. The database fixtures need ``pip install
'vecorm[testing]'`` (pytest-postgresql); without it the plugin still loads, and a test that
asks for one fails saying so. Example::

    def test_search(vecorm_engine, vecorm_fake_embedder):
        Base.metadata.create_all(vecorm_engine)
        ...
"""

from vecorm.testing.embedders import FakeEmbedder, RecordingEmbedder

__all__ = ["FakeEmbedder", "RecordingEmbedder"]
