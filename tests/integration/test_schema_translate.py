"""Schema-per-tenant through SQLAlchemy's ``schema_translate_map``: one model, its tables
created in each tenant's schema by ``create_all`` on a translated connection, and every
search, write and bulk load reads and writes the tenant's own tables, never the same names
in another schema (here a decoy copy in the default schema, holding other rows)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import URL, Text, delete, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm import bm25

from .driver_matrix import DRIVERS, driver_database

TENANTS = ("tenant_a", "tenant_b")


class Base(DeclarativeBase):
    pass


class Memo(vecorm.Searchable, Base):
    __tablename__ = "translated_memos"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(Text)


class Note(vecorm.Searchable, Base):
    """Its tsvector kept by a row trigger (``search_vector="trigger"``), created per schema."""

    __tablename__ = "translated_notes"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=3, search_vector="trigger", bm25=None, index=None
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(Text)


#: Each schema's rows (``None``: the default schema, the decoy). Every body holds "banana".
ROWS: dict[str | None, list[tuple[int, str, list[float]]]] = {
    None: [(1, "banana decoy decoy", [1, 0, 0]), (2, "decoy banana split", [0.9, 0.1, 0])],
    "tenant_a": [(1, "apple banana", [1, 0, 0]), (3, "apple pie", [0, 1, 0])],
    "tenant_b": [(1, "cherry banana banana", [1, 0, 0]), (4, "cherry jam", [0, 0, 1])],
}


def translated(engine: Engine, schema: str | None) -> Engine:
    return engine.execution_options(schema_translate_map={None: schema}) if schema else engine


@pytest.fixture
def engine(vecorm_engine: Engine) -> Iterator[Engine]:
    with vecorm_engine.begin() as conn:
        for tenant in TENANTS:
            conn.exec_driver_sql(f"CREATE SCHEMA {tenant}")
    for schema, rows in ROWS.items():
        tenant = translated(vecorm_engine, schema)
        with tenant.begin() as conn:
            Base.metadata.create_all(conn)
        with Session(tenant) as session:
            session.add_all(Memo(id=i, body=body, embedding=vector) for i, body, vector in rows)
            session.add_all(Note(id=i, body=body) for i, body, _ in rows)
            session.commit()
    yield vecorm_engine


def bodies(rows: object) -> list[str]:
    return [row[0].body for row in rows]  # type: ignore[attr-defined]


@pytest.mark.parametrize("schema", [None, *TENANTS])
def test_searches_read_the_tenants_own_tables(engine: Engine, schema: str | None) -> None:
    own = {body for _, body, _ in ROWS[schema]}
    with Session(translated(engine, schema)) as session:
        searches = {
            "nearest": Memo.nearest([1, 0, 0], k=5),
            "text_search": Memo.text_search("banana", k=5),
            "hybrid_search": Memo.hybrid_search("banana", k=5, vector=[1, 0, 0]),
            "text_search, tsvector by trigger": Note.text_search("banana", k=5),
        }
        for name, statement in searches.items():
            found = bodies(session.execute(statement))
            assert found, name
            assert set(found) <= own, (name, found)
        # BM25 reads the tenant's postings and statistics, pruned (MaxScore) or not.
        expected = {i for i, body, _ in ROWS[schema] if "banana" in body}
        for prune_above in (None, 1):
            scores = session.execute(
                bm25.scores(Memo, "banana apple cherry", depth=5, prune_above=prune_above)
            ).all()
            assert {row.pk_0 for row in scores if row.score > 0} >= expected
            assert {row.pk_0 for row in scores} <= {i for i, _, _ in ROWS[schema]}


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_driver_searches_the_tenant(engine: Engine, driver: str, vecorm_url: URL) -> None:
    """The BM25 SQL compiled again for a map renders each driver's way (psycopg 2's and
    psycopg's ``%`` doubling, asyncpg's own): the same rows as psycopg, all the tenant's."""

    def ranked(session: Session) -> list[Any]:
        session.connection(execution_options={"schema_translate_map": {None: "tenant_b"}})
        found = [
            [tuple(row) for row in session.execute(bm25.scores(Memo, "banana cherry", **kw))]
            for kw in ({"prune_above": 1}, {"prune_above": None})
        ]
        hybrid = Memo.hybrid_search("cherry banana", k=5, vector=[1, 0, 0])
        return [*found, [(row[0].id, row[0].body) for row in session.execute(hybrid)]]

    with Session(engine) as session:
        expected = ranked(session)
    assert {key for key, _ in expected[2]} == {1, 4}
    assert [row[0] for row in expected[0]] == [1, 4]
    with driver_database(driver, vecorm_url) as db:
        assert db.session(ranked) == expected


def test_each_tenant_has_its_own_triggers_and_functions(engine: Engine) -> None:
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT n.nspname, count(*) FROM pg_catalog.pg_proc p "
                "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
                "WHERE p.proname LIKE 'translated_memos%' GROUP BY 1 ORDER BY 1"
            )
        ).all()
    counts = dict(found)
    assert set(counts) == {"public", *TENANTS}
    assert len(set(counts.values())) == 1


def test_writes_maintain_the_tenants_statistics(engine: Engine) -> None:
    tenant = translated(engine, "tenant_a")
    with Session(tenant) as session:
        session.get(Memo, 3).body = "banana bread"  # type: ignore[union-attr]
        session.commit()
        found = {row.pk_0 for row in session.execute(bm25.scores(Memo, "bread", depth=5))}
    assert found == {3}
    with Session(engine) as session:  # the decoy's statistics never saw it
        assert session.execute(bm25.scores(Memo, "bread", depth=5)).all() == []


def vector_indexes(engine: Engine) -> dict[str, int]:
    """``{schema: relfilenode}`` of each schema's HNSW index on the table (an index built
    again, dropped and created or reindexed, has a new one)."""
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT n.nspname, c.relfilenode::int FROM pg_catalog.pg_index i "
                "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_catalog.pg_am a ON a.oid = c.relam "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE i.indrelid::regclass::text LIKE '%translated_memos' AND a.amname = 'hnsw'"
            )
        ).all()
    return dict(found)  # type: ignore[arg-type]


def test_bulk_insert_loads_the_tenants_table(engine: Engine) -> None:
    """Into an emptied tenant table: its vector index is dropped and built again after the
    load and its statistics rebuilt, the decoy's left alone."""
    before = vector_indexes(engine)
    assert set(before) == {"public", *TENANTS}
    tenant = translated(engine, "tenant_b")
    rows = [{"id": 10 + i, "body": f"durian {i}", "embedding": np.ones(3)} for i in range(3)]
    with Session(tenant) as session:
        session.execute(delete(Memo))
        session.commit()
        load = vecorm.bulk_insert(session, Memo, rows)
        assert load.rebuilt_indexes
        session.commit()
        assert session.scalar(select(Memo.body).where(Memo.id == 10)) == "durian 0"
        assert {row.pk_0 for row in session.execute(bm25.scores(Memo, "durian", depth=5))} == {
            10,
            11,
            12,
        }
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM public.translated_memos")) == 2
        assert conn.scalar(text("SELECT count(*) FROM tenant_a.translated_memos")) == 2
        assert conn.scalar(text("SELECT count(*) FROM tenant_b.translated_memos")) == 3
    after = vector_indexes(engine)
    assert set(after) == set(before)
    assert after["tenant_b"] != before["tenant_b"]
    assert {after["public"], after["tenant_a"]} == {before["public"], before["tenant_a"]}


def columns_of(engine: Engine, schema: str) -> set[str]:
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = :schema AND table_name = 'translated_memos'"
            ),
            {"schema": schema},
        ).scalars()
        return set(found)


def test_backfill_model_change_and_index_build_stay_in_the_tenant(engine: Engine) -> None:
    """The maintenance tools write raw SQL: each names the tenant's table."""
    tenant = translated(engine, "tenant_a")
    embedder = vecorm.HashingEmbedder(3)
    with Session(tenant) as session:  # rows without a vector, left for the backfill
        session.add(Memo(id=20, body="fig"))
        session.commit()
        # Every row of the tenant (none records this embedder yet), none of the decoy's.
        assert vecorm.backfill(session, Memo, embedder=embedder).embedded == 3
        assert session.get(Memo, 20).embedding is not None  # type: ignore[union-attr]
    with engine.connect() as conn:
        recorded = "SELECT count(embedding_model) FROM {}.translated_memos"
        assert conn.scalar(text(recorded.format("tenant_a"))) == 3
        assert conn.scalar(text(recorded.format("public"))) == 0

    before = vector_indexes(engine)
    vecorm.build_model_index(tenant, Memo, rebuild=True, concurrently=False)
    after = vector_indexes(engine)
    assert after["public"] == before["public"]
    assert after["tenant_a"] != before["tenant_a"]

    public = columns_of(engine, "public")
    change = vecorm.ModelChange(Memo, vecorm.HashingEmbedder(5))
    change.start(tenant)
    assert columns_of(engine, "tenant_a") - public == {
        "embedding_next",
        "embedding_digest_next",
        "embedding_model_next",
    }
    with Session(tenant) as session:
        change.backfill(session)
        assert change.status(session).remaining == 0
    change.create_index(tenant)
    with Session(tenant) as session:
        change.finish(session)
    with engine.connect() as conn:
        widths = conn.execute(
            text(
                "SELECT table_schema, atttypmod FROM pg_catalog.pg_attribute a "
                "JOIN information_schema.columns c ON c.column_name = a.attname "
                "AND a.attrelid = (quote_ident(c.table_schema) || '.' || "
                "quote_ident(c.table_name))::regclass "
                "WHERE c.table_name = 'translated_memos' AND c.column_name = 'embedding'"
            )
        ).all()
    assert dict(widths) == {"public": 3, "tenant_a": 5, "tenant_b": 3}
    assert columns_of(engine, "public") == public


def test_drop_all_drops_only_the_tenants_objects(engine: Engine) -> None:
    with translated(engine, "tenant_b").begin() as conn:
        Base.metadata.drop_all(conn)
    with engine.connect() as conn:
        left = conn.execute(
            text(
                "SELECT n.nspname, c.relname, count(*) FROM pg_catalog.pg_trigger t "
                "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname LIKE 'translated_%' AND NOT t.tgisinternal GROUP BY 1, 2"
            )
        ).all()
        counts = {(schema, table): count for schema, table, count in left}
        assert set(counts) == {
            (schema, table)
            for schema in ("public", "tenant_a")
            for table in ("translated_memos", "translated_notes")
        }
        assert counts[("public", "translated_notes")] == 1
    for schema in (None, "tenant_a"):  # the others still search and keep their statistics
        with Session(translated(engine, schema)) as session:
            session.add(Memo(id=30, body="grape", embedding=[0, 1, 1]))
            session.commit()
            assert [row.pk_0 for row in session.execute(bm25.scores(Memo, "grape"))] == [30]
