"""vecorm.schema.drivers: each driver reaches the server and adapts vectors with no setup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pgvector import SparseVector
from psycopg.adapt import PyFormat
from sqlalchemy import URL, Column, Integer, MetaData, Table, event, insert, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from tests.integration.driver_matrix import (
    DRIVERS,
    DriverDatabase,
    bits_as_text,
    driver_database,
)
from vecorm.engine import libpq_conninfo
from vecorm.schema.drivers import BinaryVectorParam, register_array_types
from vecorm.types import BIT, HALFVEC, SPARSEVEC, Vector

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("embedding", Vector(3)),
    Column("half", HALFVEC(3)),
    Column("sparse", SPARSEVEC(4)),
    Column("bits", BIT(3)),
    Column("many", ARRAY(Vector(2), dimensions=1)),
)


@pytest.fixture(params=DRIVERS)
def db(request: pytest.FixtureRequest, vecorm_url: URL) -> Iterator[DriverDatabase]:
    with driver_database(request.param, vecorm_url) as database:
        yield database


def test_each_driver_accepts_the_unix_socket_url(db: DriverDatabase, vecorm_url: URL) -> None:
    assert str(db.url.query["host"]).startswith("/")  # the embedded server's socket directory
    row = db.run(
        lambda conn: conn.execute(
            text("SELECT current_database(), inet_server_addr() IS NULL AS via_socket")
        ).one()
    )
    assert tuple(row) == (vecorm_url.database, True)


def test_scalar_types_need_no_per_connection_setup(db: DriverDatabase) -> None:
    assert not event.contains(db.engine, "connect", register_array_types)
    sent: list[Any] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        sent.append(parameters)

    def work(conn: Connection) -> tuple[Any, ...]:
        metadata.create_all(conn)
        sent.clear()
        conn.execute(
            insert(items),
            {"id": 1, "embedding": [1, 2, 3], "half": [1, 2, 3], "sparse": {3: 1}, "bits": "101"},
        )
        return tuple(conn.execute(select(items).where(items.c.id == 1)).one())

    assert bits_as_text(db.run(work)) == (
        1,
        [1.0, 2.0, 3.0],
        [1.0, 2.0, 3.0],
        SparseVector({3: 1.0}, 4),
        "101",
        None,
    )
    bound = sent[0]
    embedding = bound["embedding"] if isinstance(bound, dict) else bound[1]
    if db.driver.startswith("psycopg") and db.driver != "psycopg2":
        assert isinstance(embedding, BinaryVectorParam)  # binary, sync and async
    else:
        assert embedding == "[1.0,2.0,3.0]"  # text, cast in SQL


def test_array_results_need_the_hook_on_psycopg_and_psycopg2(db: DriverDatabase) -> None:
    def raw_array(conn: Connection) -> Any:
        return conn.exec_driver_sql("SELECT ARRAY['[1,2]'::vector, '[3,4]'::vector]").scalar()

    before = db.run(raw_array)
    register_array_types(db.engine)
    register_array_types(db.engine)  # idempotent
    db.dispose()  # new connections get the hook
    after = db.run(raw_array)
    if db.driver == "asyncpg":
        assert before == after == ["[1,2]", "[3,4]"]  # asyncpg introspects array types itself
    else:
        assert before == '{"[1,2]","[3,4]"}'
        assert after == ["[1,2]", "[3,4]"]

    def work(conn: Connection) -> Any:
        metadata.create_all(conn)
        conn.execute(insert(items), {"id": 1, "many": [[1, 2], [3, 4]]})
        return conn.execute(select(items.c.many)).scalar()

    assert db.run(work) == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_pgvector_register_vector_hooks_keep_working(driver: str, vecorm_url: URL) -> None:
    """Users coming from pgvector-python may keep its ``register_vector`` connect hook."""
    if driver == "psycopg":
        from pgvector.psycopg import register_vector
    else:
        from pgvector.psycopg2 import register_vector
    with driver_database(driver, vecorm_url) as db:
        event.listen(db.engine, "connect", lambda dbapi_conn, record: register_vector(dbapi_conn))

        def work(conn: Connection) -> tuple[Any, ...]:
            metadata.create_all(conn)
            conn.execute(insert(items), {"id": 1, "embedding": [1, 2, 3], "many": [[1, 2], [3, 4]]})
            return tuple(conn.execute(select(items.c.embedding, items.c.many)).one())

        assert db.run(work) == ([1.0, 2.0, 3.0], [[1.0, 2.0], [3.0, 4.0]])


def test_psycopg_global_adapters_change_only_for_vecorm_classes(vecorm_url: URL) -> None:
    for python_type in (list, bytes, str, float):
        dumper = psycopg.adapters.get_dumper(python_type, PyFormat.AUTO)
        assert dumper.__module__.startswith("psycopg"), python_type
    with psycopg.connect(libpq_conninfo(vecorm_url)) as conn:
        row = conn.execute(
            "SELECT %s::int[], %s::bytea, %s::text", [[1, 2], b"\x00\x01", "[1,2,3]"]
        ).fetchone()
        assert row == ([1, 2], b"\x00\x01", "[1,2,3]")
        # vecorm's parameter objects work on a raw psycopg connection too.
        param = Vector(3).bind_processor(_psycopg_dialect())([1, 2, 3])
        assert conn.execute("SELECT %s::vector(3)::text", [param]).fetchone() == ("[1,2,3]",)


def _psycopg_dialect() -> Any:
    from sqlalchemy.dialects.postgresql.psycopg import dialect

    return dialect()
