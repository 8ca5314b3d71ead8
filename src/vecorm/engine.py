"""Engines for vecorm: URLs normalised to psycopg 3, ``$VECORM_DATABASE_URL``, and the
``vector`` extension::

    engine = vecorm.create_engine("postgresql://app@localhost/app")   # psycopg 3, batched inserts
    url = vecorm.database_url()        # $VECORM_DATABASE_URL, or None
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from sqlalchemy import URL, make_url
from sqlalchemy import create_engine as _sa_create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

DATABASE_URL_ENV = "VECORM_DATABASE_URL"
_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg3": "postgresql+psycopg",
}
# Durability costs time and a throw-away server has nothing to keep.


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick psycopg 3 when no driver is named.

    >>> normalize_url("postgres://u@localhost/app").drivername
    'postgresql+psycopg'
    """
    parsed = make_url(url)
    drivername = _DRIVERS.get(parsed.drivername, parsed.drivername)
    return parsed.set(drivername=drivername)


def libpq_conninfo(url: URL) -> str:
    """A libpq connection string for ``url`` (for psycopg, psql and pg tools)."""
    params: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    params.update({key: value for key, value in url.query.items() if isinstance(value, str)})
    return psycopg.conninfo.make_conninfo(
        **{key: value for key, value in params.items() if value is not None}
    )


#: Rows per multi-row INSERT. SQLAlchemy's default (1000) makes PostgreSQL sort ~6 MB of
#: 1536-d rows per batch, past the default 4 MB work_mem; 200 measured ~20% faster.
INSERT_PAGE_SIZE = 200


def sync_engine_of(bind: Engine | AsyncEngine) -> Engine:
    """``bind`` itself, or the sync ``Engine`` an ``AsyncEngine`` wraps (where events,
    execution options and the dialect live)."""
    return bind.sync_engine if isinstance(bind, AsyncEngine) else bind


def batch_inserts(bind: Engine | AsyncEngine, enabled: bool = True) -> bool:
    """Send an executemany ``INSERT`` without ``RETURNING`` as multi-row ``INSERT`` statements on
    ``bind``; returns the engine's previous setting (pass it back to undo).

    SQLAlchemy batches an executemany ``INSERT`` into multi-row statements (its
    "insertmanyvalues") only when it has a ``RETURNING``, except on psycopg2; elsewhere a
    unit-of-work flush of rows with their keys set, and an ORM bulk
    ``session.execute(insert(Model), rows)``, run one ``INSERT`` per row. Each then fires
    the table's statement triggers once per row: a searchable model's BM25 statistics cost
    as much per statement as per batch, and 100-row batches of 1536-d rows kept 0.71x of
    the rows/s without statistics instead of 0.87x (``benchmarks/bm25_scale.py``).
    :func:`create_engine` and the app setups (:mod:`vecorm.ext`) turn it on; call it on an
    engine made any other way::

        batch_inserts(engine)           # once, before the engine's first INSERT
    """
    engine = sync_engine_of(bind)
    dialect = engine.dialect
    previous = bool(dialect.use_insertmanyvalues_wo_returning)
    if previous != enabled:
        dialect.use_insertmanyvalues_wo_returning = enabled
        # The choice is made when an INSERT is compiled: drop the ones compiled before.
        engine.clear_compiled_cache()
    return previous


def create_engine(url: str | URL, **kwargs: Any) -> Engine:
    """``sqlalchemy.create_engine`` tuned for vectors, with the URL normalised to psycopg 3.

    On top of SQLAlchemy's engine it sets ``insertmanyvalues_page_size=200`` (see
    :data:`INSERT_PAGE_SIZE`) and sends executemany inserts as multi-row ``INSERT`` statements
    (:func:`batch_inserts`). vecorm's types need no per-connection setup and its query-time
    settings apply on every engine (see :mod:`vecorm.search.settings`), so an engine made any
    other way works too (call :func:`batch_inserts` on it for the batched inserts).

    >>> engine = create_engine("postgresql://app@localhost/app")   # doctest: +SKIP
    """
    kwargs.setdefault("insertmanyvalues_page_size", INSERT_PAGE_SIZE)
    engine = _sa_create_engine(normalize_url(url), **kwargs)
    batch_inserts(engine)
    return engine


def create_async_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """The asyncio twin of :func:`create_engine` (psycopg 3 async unless a driver is named),
    with the same batched inserts.

    >>> engine = create_async_engine("postgresql://app@localhost/app")   # doctest: +SKIP
    """
    from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine

    parsed = normalize_url(url)
    if parsed.drivername == "postgresql+psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg_async")
    kwargs.setdefault("insertmanyvalues_page_size", INSERT_PAGE_SIZE)
    engine = _sa_create_async_engine(parsed, **kwargs)
    batch_inserts(engine)
    return engine


def ensure_extension(url: str | URL) -> None:
    """``CREATE EXTENSION IF NOT EXISTS vector`` in the database of ``url``."""
    with psycopg.connect(libpq_conninfo(normalize_url(url)), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def database_url() -> URL | None:
    """``$VECORM_DATABASE_URL`` normalised to psycopg 3, or ``None`` when it is unset."""
    value = os.environ.get(DATABASE_URL_ENV)
    return normalize_url(value) if value else None
