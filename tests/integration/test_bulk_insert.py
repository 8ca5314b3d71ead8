"""vecorm.bulk_insert on real PostgreSQL: rows, vectors and digests as the flush hook writes them,
BM25 statistics, the vector index rebuilt as declared, all or nothing, drivers, defaults."""

from __future__ import annotations

import enum
import io
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import redirect_stderr
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import produce_migrations
from alembic.migration import MigrationContext
from sqlalchemy import CHAR, REAL, Enum, Integer, Numeric, String, func, select, text
from sqlalchemy import Sequence as SqlSequence
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from tests.integration import test_mixin as inheritance
from tests.integration.driver_matrix import driver_database
from tests.integration.test_bm25 import assert_statistics_exact
from vecorm.embedding.embedders import HashingEmbedder
from vecorm.embedding.source import text_digest
from vecorm.schema.types import BIT
from vecorm.testing import FakeEmbedder

DIMS = 8
SCHEMA = "bulk_schema"
WORDS = ["vacuum", "index", "planner", "statistics", "lock", "wal", "replication", "bloat"]


class Base(DeclarativeBase):
    pass


class Article(vecorm.Searchable, Base):
    __tablename__ = "articles"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "content"), dimensions=DIMS)

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str | None] = mapped_column(String(40))
    content: Mapped[str | None]
    category: Mapped[str] = mapped_column(String(20), default="general")


class Kind(enum.Enum):
    draft = "draft"
    final = "final"


class Page(vecorm.Searchable, Base):
    """A composite primary key in a schema of its own, IVFFlat, defaults of every kind, types
    COPY writes through other dumpers (an enum, ``char(n)``, JSONB)."""

    __tablename__ = "pages"
    __table_args__ = {"schema": SCHEMA}
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=DIMS, index=vecorm.IVFFlat(lists=2)
    )

    book: Mapped[str] = mapped_column(String(10), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str | None]
    serial: Mapped[int] = mapped_column(Integer, SqlSequence("pages_serial", schema=SCHEMA))
    label: Mapped[str] = mapped_column(String(40), default=lambda: "made in python")
    upper: Mapped[str] = mapped_column(String(40), default=func.upper("made in sql"))
    origin: Mapped[str] = mapped_column(String(40), server_default="made by the server")
    kind: Mapped[Kind] = mapped_column(Enum(Kind, schema=SCHEMA), default=Kind.draft)
    code: Mapped[str] = mapped_column(CHAR(3), default="ab")
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    weight: Mapped[float | None] = mapped_column(REAL)
    price: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))


class Plain(vecorm.Searchable, Base):
    """No BM25 statistics: the batches stream into one COPY."""

    __tablename__ = "plain"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "content"), dimensions=DIMS, bm25=None)

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str | None] = mapped_column(String(40))
    content: Mapped[str | None]


class Flags(vecorm.Searchable, Base):
    """A ``bit`` column, which psycopg has no binary dumper for."""

    __tablename__ = "flags"
    __vecorm__ = vecorm.SearchConfig(fields=("name",), dimensions=DIMS, index=None, bm25=None)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    bits: Mapped[str | None] = mapped_column(BIT(4))


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    with vecorm_engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(dimensions=DIMS, max_batch_size=16)


def sentence(rng: np.random.Generator, length: int) -> str:
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    picks = rng.choice(len(WORDS), size=length, p=weights / weights.sum())
    return " ".join(WORDS[i] for i in picks)


def article_rows(count: int, start: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"id": start + i, "title": sentence(rng, 2), "content": sentence(rng, 12)}
        for i in range(count)
    ]


def stored(session: Session) -> dict[int, tuple[Any, ...]]:
    """id -> (title, content, category, embedding as a list, digest, model)."""
    rows = session.execute(
        select(
            Article.id,
            Article.title,
            Article.content,
            Article.category,
            Article.embedding,
            Article.embedding_digest,
            Article.embedding_model,
        ).order_by(Article.id)
    )
    return {
        row.id: (
            row.title,
            row.content,
            row.category,
            None if row.embedding is None else row.embedding.tolist(),
            row.embedding_digest,
            row.embedding_model,
        )
        for row in rows
    }


def index_definitions(session: Session, table: str) -> dict[str, tuple[int, str]]:
    """name -> (oid, pg_get_indexdef) of the table's indexes."""
    rows = session.execute(
        text(
            "SELECT c.relname, c.oid, pg_get_indexdef(c.oid) FROM pg_index x "
            "JOIN pg_class c ON c.oid = x.indexrelid WHERE x.indrelid = to_regclass(:t)"
        ),
        {"t": table},
    )
    return {name: (oid, definition) for name, oid, definition in rows}


def count(session: Session, model: type[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


# ----------------------------------------------------------------- what is written


MIXED_ROWS: list[dict[str, Any]] = [
    {"id": 1, "title": "Intro", "content": "PostgreSQL stores vectors."},
    {"id": 2, "title": None, "content": "   "},  # no text: no vector, digest or model
    {"id": 3, "title": "given", "content": "kept", "embedding": [0.5] * DIMS},
    {"id": 4, "title": "same", "content": "text"},
    {"id": 5, "title": "same", "content": "text", "category": "twin"},
    {"id": 6, "title": "mine", "embedding": np.ones(DIMS), "embedding_model": "mine"},
    {"id": 7, "title": "ünïcødé ✓", "content": "line\nbreaks"},
    {"id": 8, "content": "only content", "embedding": None},
]


def test_rows_vectors_and_digests_equal_what_the_flush_hook_writes(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    with Session(engine) as session:
        vecorm.install(session, embedder=embedder)
        session.add_all(Article(**row) for row in MIXED_ROWS)
        session.commit()
        through_orm = stored(session)
        # Row 6 says another model made its vector: stale for this one, by either path.
        assert vecorm.stale_count(session, Article) == 1
        session.execute(text("TRUNCATE articles"))
        session.commit()
    embedder.calls.clear()
    with Session(engine) as session:
        result = vecorm.bulk_insert(session, Article, MIXED_ROWS, embedder=embedder)
        session.commit()
        assert stored(session) == through_orm
        stale = session.scalars(
            select(Article.id).where(vecorm.stale_condition(Article, embedder.model_name))
        ).all()
        assert stale == [6]
    assert (result.rows, result.embedded, result.method) == (8, 5, "copy")
    assert result.rows_per_second > 0
    # One provider call for the distinct texts of the batch (4 and 5 share theirs).
    assert embedder.calls == [
        [
            "Intro\nPostgreSQL stores vectors.",
            "same\ntext",
            "ünïcødé ✓\nline\nbreaks",
            "only content",
        ]
    ]
    assert through_orm[3][4:] == (text_digest("given\nkept"), embedder.model_name)
    assert through_orm[6][5] == "mine"
    assert through_orm[2][3:] == (None, None, None)


def test_the_flush_hook_and_backfill_find_nothing_to_embed(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    with Session(engine) as session:
        vecorm.install(session, embedder=embedder)
        vecorm.bulk_insert(session, Article, article_rows(40))
        session.commit()
        embedder.calls.clear()
        assert vecorm.backfill(session, Article).embedded == 0
        article = session.get(Article, 1)
        assert article is not None
        article.category = "edited"
        session.commit()
    assert embedder.calls == []


def test_embedder_from_the_installation_and_embed_false(engine: Engine) -> None:
    provider = HashingEmbedder(DIMS)
    with Session(engine) as session:
        with pytest.raises(vecorm.ConfigurationError, match=r"rows\[0\] has text to embed"):
            vecorm.bulk_insert(session, Article, article_rows(3))
        result = vecorm.bulk_insert(session, Article, article_rows(3), embed=False)
        assert result.embedded == 0
        vecorm.install(session, embedder=provider)
        assert vecorm.stale_count(session, Article) == 3
        session.commit()
        assert vecorm.backfill(session, Article).embedded == 3
        result = vecorm.bulk_insert(session, Article, article_rows(2, start=10))
        assert result.embedded == 2
        assert vecorm.stale_count(session, Article) == 0


def test_a_generator_is_read_batch_by_batch(engine: Engine, embedder: FakeEmbedder) -> None:
    pulled = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal pulled
        for row in article_rows(95):
            pulled += 1
            yield row

    seen_at_calls: list[int] = []
    original = embedder.embed

    def embed(texts: Sequence[str]) -> Any:
        seen_at_calls.append(pulled)
        return original(texts)

    embedder.embed = embed  # type: ignore[method-assign]
    with Session(engine) as session:
        result = vecorm.bulk_insert(session, Article, rows(), embedder=embedder, batch_size=20)
        session.commit()
        assert count(session, Article) == result.rows == 95
    # The first batch was embedded when 20 rows (not 95) had been read.
    assert seen_at_calls[0] == 20
    assert seen_at_calls[-1] == 95


def test_defaults_composite_key_and_schema(engine: Engine, embedder: FakeEmbedder) -> None:
    rows = [
        {"book": "a", "number": 1, "body": "vacuum full", "price": 0.1 + 0.2, "weight": 2.5},
        {"book": "a", "number": 2, "body": "index bloat", "label": "given", "kind": Kind.final},
        {
            "book": "b",
            "number": 1,
            "body": None,
            "serial": 100,
            "origin": "given",
            "meta": {"a": 1},
        },
    ]
    with Session(engine) as session:
        result = vecorm.bulk_insert(session, Page, rows, embedder=embedder)
        session.commit()
        got = session.execute(
            select(
                Page.book, Page.number, Page.serial, Page.label, Page.upper, Page.origin
            ).order_by(Page.book, Page.number)
        ).all()
        extra = session.execute(
            select(Page.kind, Page.code, Page.meta).order_by(Page.book, Page.number)
        ).all()
        numbers = session.execute(select(Page.price, Page.weight).where(Page.number == 1)).all()
        assert vecorm.stale_count(session, Page, embedder=embedder) == 0
        indexes = index_definitions(session, f"{SCHEMA}.pages")
    assert [tuple(row) for row in got] == [
        ("a", 1, 1, "made in python", "MADE IN SQL", "made by the server"),
        ("a", 2, 2, "given", "MADE IN SQL", "made by the server"),
        ("b", 1, 100, "made in python", "MADE IN SQL", "given"),
    ]
    assert [tuple(row) for row in extra] == [
        (Kind.draft, "ab ", {}),
        (Kind.final, "ab ", {}),
        (Kind.draft, "ab ", {"a": 1}),
    ]
    assert numbers == [(Decimal("0.30"), 2.5), (None, None)]
    assert (result.embedded, result.method) == (2, "copy")
    assert result.rebuilt_indexes == ("ix_pages_embedding_ivfflat",)
    assert "USING ivfflat" in indexes["ix_pages_embedding_ivfflat"][1]


def test_inheritance(vecorm_engine: Engine) -> None:
    tables = [inheritance.Page.__table__, inheritance.WikiPage.__table__]
    inheritance.Base.metadata.create_all(vecorm_engine, tables=tables)
    with Session(vecorm_engine) as session:
        # Single-table inheritance: the subclass's discriminator is filled in.
        vecorm.bulk_insert(session, inheritance.BlogPage, [{"heading": "a"}], embed=False)
        vecorm.bulk_insert(session, inheritance.Page, [{"heading": "b"}], embed=False)
        page = inheritance.Page
        found = session.execute(select(page.heading, page.kind).order_by(page.heading)).all()
        assert [tuple(row) for row in found] == [("a", "blog"), ("b", "page")]
        with pytest.raises(vecorm.ConfigurationError, match="joined inheritance"):
            vecorm.bulk_insert(session, inheritance.WikiPage, [{"heading": "c"}])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": 5}, r"rows\[1\]: Page.kind cannot take 5: LookupError"),
        ({"kind": "nope"}, r"rows\[1\]: invalid input value for enum bulk_schema.kind"),
        ({"meta": {"a": {1, 2}}}, r"rows\[1\]: Page.meta cannot be written .*TypeError"),
        # psycopg's binary int4 and real dumpers would store 0 and infinity here
        ({"serial": 2**40}, r"rows\[1\]: Page.serial cannot take .* out of range for type integer"),
        ({"weight": 1e39}, r"rows\[1\]: Page.weight cannot take .* out of range for type real"),
    ],
    ids=["bind processing", "the server", "psycopg's dumper", "integer range", "real range"],
)
def test_a_value_its_column_refuses_names_row_and_column(
    engine: Engine, change: dict[str, Any], message: str
) -> None:
    rows = [{"book": "a", "number": n, "body": None} for n in range(3)]
    rows[1].update(change)
    with Session(engine) as session:
        with pytest.raises(vecorm.BulkInsertError, match=message) as raised:
            vecorm.bulk_insert(session, Page, rows, embed=False)
        assert raised.value.row == 1
        assert count(session, Page) == 0


def test_a_connection_and_a_column_copy_cannot_write(engine: Engine) -> None:
    with engine.begin() as conn:
        result = vecorm.bulk_insert(
            conn,
            Flags,
            [{"id": 1, "name": "a", "bits": "0101"}, {"id": 2, "name": "b"}],
            embedder=HashingEmbedder(DIMS),
        )
    # The bit column goes through INSERT, the rows that leave it out through COPY.
    assert result.method == "insert"
    with Session(engine) as session:
        assert session.execute(select(Flags.id, Flags.bits).order_by(Flags.id)).all() == [
            (1, "0101"),
            (2, None),
        ]


# ----------------------------------------------------------------- BM25 and indexes


def ranking(session: Session, query: str) -> list[tuple[int, float]]:
    found = session.execute(Article.text_search(query, k=20)).all()
    return [(article.id, round(float(score), 9)) for article, score in found]


@pytest.mark.parametrize("preloaded", [0, 30], ids=["empty table", "table with rows"])
def test_bm25_statistics_and_rankings_equal_orm_inserts(
    engine: Engine, embedder: FakeEmbedder, preloaded: int
) -> None:
    rows = article_rows(120, start=100, seed=3)
    with Session(engine) as session:
        vecorm.install(session, embedder=embedder)
        session.add_all(Article(**row) for row in article_rows(preloaded, seed=4))
        session.commit()
        session.add_all(Article(**row) for row in rows)
        session.commit()
        expected = {query: ranking(session, query) for query in ("vacuum", "lock wal", "bloat")}
        session.execute(text("DELETE FROM articles WHERE id >= 100"))
        session.commit()
        result = vecorm.bulk_insert(session, Article, rows, batch_size=50)
        assert_statistics_exact(session, Article)
        session.commit()
        assert_statistics_exact(session, Article)
        assert {query: ranking(session, query) for query in expected} == expected
    # An empty table's statistics are rebuilt once; otherwise each COPY fires the triggers.
    assert result.rebuilt_statistics is (preloaded == 0)


def test_repeatable_read_keeps_the_triggers(engine: Engine, embedder: FakeEmbedder) -> None:
    with Session(engine) as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        result = vecorm.bulk_insert(session, Article, article_rows(60), embedder=embedder)
        assert not result.rebuilt_statistics
        assert_statistics_exact(session, Article)
        session.commit()


def autogenerate_diffs(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "target_metadata": Base.metadata,
                "include_schemas": True,
                "include_name": lambda name, kind, _: kind != "schema" or name in (None, SCHEMA),
            },
        )
        upgrade_ops = produce_migrations(context, Base.metadata).upgrade_ops
        assert upgrade_ops is not None
        return list(upgrade_ops.as_diffs())


def test_an_empty_tables_index_is_built_after_the_load_as_declared(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    assert autogenerate_diffs(engine) == []
    with Session(engine) as session:
        session.execute(text("COMMENT ON INDEX ix_articles_embedding_hnsw IS 'keep me'"))
        session.commit()
        before = index_definitions(session, "articles")
        result = vecorm.bulk_insert(session, Article, article_rows(50), embedder=embedder)
        session.commit()
        after = index_definitions(session, "articles")
        comment = session.scalar(
            text("SELECT obj_description('ix_articles_embedding_hnsw'::regclass, 'pg_class')")
        )
        # The index serves searches.
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            session.execute(
                text("EXPLAIN SELECT id FROM articles ORDER BY embedding <=> :q LIMIT 5"),
                {"q": str([0.1] * DIMS)},
            ).scalars()
        )
    assert result.rebuilt_indexes == ("ix_articles_embedding_hnsw",)
    hnsw = "ix_articles_embedding_hnsw"
    assert after[hnsw][0] != before[hnsw][0]  # built again ...
    assert after[hnsw][1] == before[hnsw][1]  # ... as it was declared
    assert {name: entry[1] for name, entry in after.items()} == {
        name: entry[1] for name, entry in before.items()
    }
    assert comment == "keep me"
    assert hnsw in plan
    assert autogenerate_diffs(engine) == []


def test_a_tables_index_with_rows_is_kept(engine: Engine, embedder: FakeEmbedder) -> None:
    with Session(engine) as session:
        vecorm.bulk_insert(session, Article, article_rows(5), embedder=embedder)
        session.commit()
        before = index_definitions(session, "articles")
        result = vecorm.bulk_insert(session, Article, article_rows(5, start=10), embedder=embedder)
        forced = vecorm.bulk_insert(
            session, Article, article_rows(5, start=20), embedder=embedder, defer_index=True
        )
        session.commit()
        after = index_definitions(session, "articles")
    assert result.rebuilt_indexes == ()
    assert forced.rebuilt_indexes == ("ix_articles_embedding_hnsw",)
    assert after["articles_pkey"] == before["articles_pkey"]
    assert after["ix_articles_embedding_hnsw"][1] == before["ix_articles_embedding_hnsw"][1]


def test_a_role_that_does_not_own_the_table_keeps_the_index(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    role = f"vecorm_loader_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" NOSUPERUSER'))
    try:
        with Session(engine) as session:
            vecorm.grant_access(session, Article, role)
            session.commit()
            session.execute(text(f'SET LOCAL ROLE "{role}"'))
            result = vecorm.bulk_insert(session, Article, article_rows(30), embedder=embedder)
            assert_statistics_exact(session, Article)
            session.commit()
        assert (result.rows, result.rebuilt_indexes, result.rebuilt_statistics) == (30, (), True)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))


# ----------------------------------------------------------------- all or nothing


class BrokenEmbedder(FakeEmbedder):
    """Fails on its third call."""

    def embed(self, texts: Sequence[str]) -> Any:
        if len(self.calls) == 2:
            raise RuntimeError("provider down")
        return super().embed(texts)


def broken(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as they are; the embedder breaks on the third batch."""
    return rows


def bad(rows: list[dict[str, Any]], at: int, **change: Any) -> list[dict[str, Any]]:
    rows[at] = {**rows[at], **change}
    return rows


FAILURES: dict[str, tuple[Any, type[Exception], str]] = {
    "duplicate key": (
        lambda rows: bad(rows, 25, id=1),
        vecorm.BulkInsertError,
        r"rows\[25\]: duplicate key value violates unique constraint .*\(id\)=\(1\)",
    ),
    "value too long": (
        lambda rows: bad(rows, 25, title="x" * 41),
        vecorm.BulkInsertError,
        r"rows\[25\]: value too long for type character varying\(40\)",
    ),
    "wrong type": (
        lambda rows: bad(rows, 25, id="twenty-six"),
        vecorm.BulkInsertError,
        r"rows\[25\]: Article.id cannot be written",
    ),
    "NaN": (
        lambda rows: bad(rows, 25, embedding=[float("nan")] * DIMS),
        vecorm.InvalidVector,
        r"rows\[25\]: Article.embedding contains NaN",
    ),
    "dimensions": (
        lambda rows: bad(rows, 25, embedding=[0.1, 0.2]),
        vecorm.DimensionMismatch,
        r"rows\[25\]: Article.embedding expected 8 dimensions, not 2",
    ),
    "unknown key": (
        lambda rows: bad(rows, 25, colour="red"),
        vecorm.BulkInsertError,
        r"rows\[25\]: 'colour' is not a column of Article",
    ),
    "generated column": (
        lambda rows: bad(rows, 25, search_vector="x"),
        vecorm.BulkInsertError,
        r"rows\[25\]: Article.search_vector is generated by the database",
    ),
    "not a mapping": (
        lambda rows: [*rows[:25], ("a", "tuple"), *rows[26:]],
        vecorm.BulkInsertError,
        r"rows\[25\] is a tuple",
    ),
    "embedder": (
        broken,
        vecorm.EmbeddingError,
        r"failed on rows\[20\] to rows\[29\] \(10 texts\): RuntimeError: provider down",
    ),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failure_in_the_third_batch_writes_nothing(engine: Engine, failure: str) -> None:
    spoil, error, message = FAILURES[failure]
    embedder = (BrokenEmbedder if spoil is broken else FakeEmbedder)(DIMS, max_batch_size=100)
    with Session(engine) as session:
        before = index_definitions(session, "articles")
        with pytest.raises(error, match=message) as raised:
            # An empty table: the index is dropped for the load, the statistics deferred.
            vecorm.bulk_insert(
                session, Article, spoil(article_rows(40)), embedder=embedder, batch_size=10
            )
        if isinstance(raised.value, vecorm.BulkInsertError):
            assert raised.value.row == 25
        # Nothing is written and the index is the one there was (the same object).
        assert count(session, Article) == 0
        assert index_definitions(session, "articles") == before
        session.rollback()
        result = vecorm.bulk_insert(session, Article, article_rows(40), embedder=FakeEmbedder(DIMS))
        session.commit()
        assert result.rows == count(session, Article) == 40
        assert_statistics_exact(session, Article)


@pytest.mark.parametrize("shapes", [1, 2], ids=["one column set", "two column sets"])
def test_a_streamed_copy_names_the_row_of_a_late_error(engine: Engine, shapes: int) -> None:
    rows = article_rows(40)
    for row in rows[::3] if shapes == 2 else ():
        del row["content"]  # these go into COPYs of their own columns
    rows[35]["id"] = 3
    with Session(engine) as session:
        with pytest.raises(vecorm.BulkInsertError, match=r"rows\[35\]: duplicate key") as raised:
            vecorm.bulk_insert(session, Plain, rows, embedder=FakeEmbedder(DIMS), batch_size=10)
        assert raised.value.row == 35
        assert count(session, Plain) == 0
        assert "ix_plain_embedding_hnsw" in index_definitions(session, "plain")
        rows[35]["id"] = 1000
        result = vecorm.bulk_insert(
            session, Plain, rows, embedder=FakeEmbedder(DIMS), batch_size=10
        )
        session.commit()
        assert result.rows == count(session, Plain) == 40
        assert vecorm.stale_count(session, Plain, embedder=FakeEmbedder(DIMS)) == 0


def test_a_failure_keeps_the_sessions_earlier_work(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Article(id=1000, title="earlier work", embedding=[0.0] * DIMS))
        session.flush()
        with pytest.raises(vecorm.BulkInsertError, match=r"rows\[3\]: duplicate key"):
            vecorm.bulk_insert(
                session, Article, bad(article_rows(5), 3, id=1000), embedder=FakeEmbedder(DIMS)
            )
        # The savepoint is rolled back, the session's transaction goes on.
        assert session.scalars(select(Article.id)).all() == [1000]
        assert session.scalar(text("SELECT count(*) FROM articles_bm25_postings")) == 2
        session.commit()
        assert count(session, Article) == 1
        assert_statistics_exact(session, Article)


def test_bad_arguments(engine: Engine) -> None:
    with Session(engine) as session:
        with pytest.raises(vecorm.ConfigurationError, match="batch_size must be at least 1"):
            vecorm.bulk_insert(session, Article, [], batch_size=0)
        with pytest.raises(vecorm.ConfigurationError, match="memory setting"):
            vecorm.bulk_insert(session, Article, [], maintenance_work_mem="lots")
        with pytest.raises(vecorm.ConfigurationError, match="inherits vecorm.Searchable"):
            vecorm.bulk_insert(session, Base, [])
    with (
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(vecorm.ConfigurationError, match="AUTOCOMMIT"),
    ):
        vecorm.bulk_insert(conn, Article, [])


def test_nothing_to_insert(engine: Engine) -> None:
    with Session(engine) as session:
        result = vecorm.bulk_insert(session, Article, iter([]))
        assert (result.rows, result.embedded) == (0, 0)
        assert "ix_articles_embedding_hnsw" in index_definitions(session, "articles")


# ----------------------------------------------------------------- drivers, progress


@pytest.mark.parametrize(
    ("driver", "method"),
    [("psycopg_async", "copy"), ("psycopg2", "insert"), ("asyncpg", "insert")],
)
def test_every_driver_writes_the_same_rows(
    engine: Engine, vecorm_url: URL, driver: str, method: str
) -> None:
    provider = HashingEmbedder(DIMS)
    rows = [*MIXED_ROWS, *article_rows(30, start=100)]
    with Session(engine) as session:
        vecorm.bulk_insert(session, Article, rows, embedder=provider)
        session.commit()
        expected = stored(session)
        session.execute(text("TRUNCATE articles"))
        session.commit()

    def load(session: Session) -> vecorm.BulkInsertResult:
        result = vecorm.bulk_insert(session, Article, rows, embedder=provider, batch_size=16)
        session.commit()
        return result

    with driver_database(driver, vecorm_url) as database:
        result = database.session(load)
    assert (result.rows, result.method) == (len(rows), method)
    with Session(engine) as session:
        assert stored(session) == expected
        assert_statistics_exact(session, Article)
        assert "ix_articles_embedding_hnsw" in index_definitions(session, "articles")


def test_a_driver_error_names_the_rows_of_its_statement(engine: Engine, vecorm_url: URL) -> None:
    rows = bad(article_rows(10), 7, id=1)

    def load(session: Session) -> None:
        with pytest.raises(vecorm.BulkInsertError, match=r"rows\[0\] to rows\[9\] could not"):
            vecorm.bulk_insert(session, Article, rows, embedder=HashingEmbedder(DIMS))
        assert count(session, Article) == 0

    with driver_database("psycopg2", vecorm_url) as database:
        database.session(load)


def test_progress_bar_only_when_asked_or_on_a_terminal(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    drawn = io.StringIO()
    with Session(engine) as session, redirect_stderr(drawn):
        vecorm.bulk_insert(session, Article, article_rows(30), embedder=embedder)  # not a tty
        assert drawn.getvalue() == ""
        vecorm.bulk_insert(
            session, Article, article_rows(30, start=50), embedder=embedder, progress="always"
        )
    assert "bulk_insert Article" in drawn.getvalue()
    assert "30/30" in drawn.getvalue()


def test_rows_of_other_mapping_types(engine: Engine, embedder: FakeEmbedder) -> None:
    class Row(Mapping[str, Any]):
        def __init__(self, **values: Any) -> None:
            self.items_ = values

        def __getitem__(self, key: str) -> Any:
            return self.items_[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self.items_)

        def __len__(self) -> int:
            return len(self.items_)

    with Session(engine) as session:
        # Column names work as well as attribute names.
        result = vecorm.bulk_insert(
            session,
            Article,
            [Row(id=1, title="a", embedding_model="x", embedding=[1.0] * DIMS)],
            embedder=embedder,
        )
        assert result.rows == 1
        assert session.scalar(select(Article.embedding_model)) == "x"
