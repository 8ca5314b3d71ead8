"""The test server (embedded, or the user's URL) and the per-test database janitor.

Follows pytest-postgresql's split: :class:`TestServer` is the process (started once per
session), a template database holds ``CREATE EXTENSION vector``, and pytest-postgresql's
``DatabaseJanitor`` creates and drops one database per test from that template.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import URL

from vecorm.engine import database_url
from vecorm.tools.embedded import EmbeddedServer, start_embedded


@dataclass(frozen=True)
class TestServer:
    """Where test databases are made: connection parts plus the maintenance database."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    base_url: URL

    @property
    def host(self) -> str:
        host = self.base_url.query.get("host") or self.base_url.host or "localhost"
        return str(host)

    @property
    def port(self) -> int:
        port = self.base_url.query.get("port") or self.base_url.port or 5432
        return int(str(port))

    @property
    def user(self) -> str:
        return self.base_url.username or "postgres"

    @property
    def password(self) -> str | None:
        return self.base_url.password

    @property
    def maintenance_db(self) -> str:
        return self.base_url.database or "postgres"

    def url_for(self, database: str) -> URL:
        """URL of ``database`` on this server."""
        return self.base_url.set(database=database)

    def janitor(
        self, dbname: str, *, template: str | None = None, as_template: bool = False
    ) -> DatabaseJanitor:
        """pytest-postgresql's janitor for ``dbname`` on this server."""
        return DatabaseJanitor(
            user=self.user,
            host=self.host,
            port=self.port,
            password=self.password,
            dbname=dbname,
            template_dbname=template,
            maintenance_dbname=self.maintenance_db,
            as_template=as_template,
        )


@contextmanager
def test_server(data_dir: Path | None = None) -> Iterator[TestServer]:
    """``$VECORM_DATABASE_URL``'s server, or a temporary embedded one stopped afterwards."""
    given = database_url()
    if given is not None:
        yield TestServer(given)
        return
    server: EmbeddedServer = start_embedded(data_dir)
    try:
        yield TestServer(server.url)
    finally:
        server.stop()


test_server.__test__ = False  # type: ignore[attr-defined]


@contextmanager
def template_database(server: TestServer) -> Iterator[str]:
    """A template database with the ``vector`` extension, dropped afterwards."""
    name = f"vecorm_template_{uuid.uuid4().hex[:10]}"
    janitor = server.janitor(name, as_template=True)
    janitor.init()
    try:
        conninfo = psycopg.conninfo.make_conninfo(
            host=server.host,
            port=server.port,
            user=server.user,
            dbname=name,
            **({"password": server.password} if server.password else {}),
        )
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        yield name
    finally:
        janitor.drop()


@contextmanager
def fresh_database(server: TestServer, template: str) -> Iterator[URL]:
    """A new database copied from ``template``; dropped (connections ended) afterwards."""
    name = f"vecorm_test_{uuid.uuid4().hex[:12]}"
    janitor = server.janitor(name, template=template)
    janitor.init()
    try:
        yield server.url_for(name)
    finally:
        janitor.drop()
