"""The backfill's write path and its manners: one statement per batch, never committing the
caller's work, progress lines without a bar, every driver."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, String, Text, event, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from tests.integration.test_bm25 import assert_statistics_exact
from tests.integration.test_events import DIMS, Base, Document
from vecorm.embedding.backfill import backfill
from vecorm.errors import ConfigurationError
from vecorm.testing import FakeEmbedder


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    with vecorm_engine.begin() as conn:
        conn.execute(
            insert(Document),
            [{"id": i, "title": f"doc {i}", "content": f"body {i}"} for i in range(1, 51)],
        )
    return vecorm_engine


def test_one_update_statement_per_batch(engine: Engine) -> None:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session:
            result = backfill(session, Document, embedder=FakeEmbedder(DIMS), batch_size=16)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert (result.embedded, result.batches) == (50, 4)
    assert len(statements) == 4
    embedder = FakeEmbedder(DIMS)
    with Session(engine) as session:
        rows = session.execute(select(Document).order_by(Document.id)).scalars().all()
        expected = embedder.embed([f"doc {row.id}\nbody {row.id}" for row in rows])
        stored = np.stack([row.embedding for row in rows])
    np.testing.assert_array_equal(stored, expected)


def test_a_batch_binds_one_array_per_column_on_psycopg3(engine: Engine) -> None:
    """On psycopg 3 a batch binds its keys, vectors and digests as three arrays (the vectors
    one binary vector[]), whatever its size: a 1,000-row batch of one parameter per cell
    spent more in the drivers' handling of 4,000 parameters than in the server."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session:
            backfill(session, Document, embedder=FakeEmbedder(DIMS), batch_size=40)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert [len(parameters) for _, parameters in sent] == [4, 4]  # 40 rows, then 10
    statement = sent[0][0]
    assert "ROWS FROM (pg_catalog.unnest(" in statement and "VALUES" not in statement


class PageBase(DeclarativeBase):
    pass


class Page(vecorm.Searchable, PageBase):
    """A composite key, one part text, and vectors stored as halfvec."""

    __tablename__ = "backfill_pages"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=DIMS, storage="halfvec", index=None, bm25=None
    )
    book: Mapped[str] = mapped_column(String(10), primary_key=True)
    page: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(Text)


def test_composite_keys_and_halfvec_storage_are_written_exactly(vecorm_engine: Engine) -> None:
    PageBase.metadata.create_all(vecorm_engine)
    rows = [
        {"book": book, "page": page, "body": f"{book} page {page}"}
        for book in ("a", "b'; --", "c")
        for page in range(1, 8)
    ]
    with vecorm_engine.begin() as conn:
        conn.execute(insert(Page), rows)
    with Session(vecorm_engine) as session:
        result = backfill(session, Page, embedder=FakeEmbedder(DIMS), batch_size=5)
    assert result.embedded == len(rows)
    with Session(vecorm_engine) as session:
        stored = session.execute(select(Page).order_by(Page.book, Page.page)).scalars().all()
        assert [(page.book, page.page) for page in stored] == [
            (row["book"], row["page"]) for row in sorted(rows, key=lambda r: (r["book"], r["page"]))
        ]
        expected = FakeEmbedder(DIMS).embed([page.body for page in stored])
        got = np.stack([np.asarray(page.embedding, dtype=np.float32) for page in stored])
    np.testing.assert_array_equal(got, expected.astype(np.float16).astype(np.float32))


def test_bm25_statistics_stay_exact(engine: Engine) -> None:
    """The batch update skips the BM25 triggers (its text is unchanged): the statistics are
    still exact, and the session's later writes are counted again."""
    with Session(engine) as session:
        backfill(session, Document, embedder=FakeEmbedder(DIMS), batch_size=16)
        assert_statistics_exact(session, Document)
        session.execute(insert(Document), [{"id": 77, "title": "new", "content": "words"}])
        session.execute(text("UPDATE documents SET content = 'other words' WHERE id = 3"))
        assert_statistics_exact(session, Document)


def test_refuses_to_commit_the_callers_work(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Document(id=99, title="mine", content="not yours to commit"))
        with pytest.raises(ConfigurationError, match="uncommitted changes"):
            backfill(session, Document, embedder=FakeEmbedder(DIMS))
        session.flush()  # written in the transaction, no longer pending in the session
        with pytest.raises(ConfigurationError, match="commit or roll back first"):
            backfill(session, Document, embedder=FakeEmbedder(DIMS))
        session.rollback()
    with Session(engine) as session:
        assert session.get(Document, 99) is None
        session.execute(select(Document.id)).all()  # a read-only transaction is fine
        assert backfill(session, Document, embedder=FakeEmbedder(DIMS)).embedded == 50


def test_joined_to_an_outer_transaction_it_commits_nothing(engine: Engine) -> None:
    with engine.connect() as conn:
        outer = conn.begin()
        with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
            assert backfill(session, Document, embedder=FakeEmbedder(DIMS)).embedded == 50
        outer.rollback()
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM documents WHERE embedding IS NULL")) == 50


def test_logs_progress_lines(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vecorm.backfill"), Session(engine) as session:
        backfill(session, Document, embedder=FakeEmbedder(DIMS), batch_size=10, log_every=0.0)
    lines = [record.getMessage() for record in caplog.records if record.name == "vecorm.backfill"]
    assert len(lines) >= 5
    assert lines[-1].startswith("vecorm: done: backfill Document: 50 of 50 rows")
    assert all("rows/s" in line for line in lines)


def test_psycopg2_binds_vectors_as_text(engine: Engine) -> None:
    driver = "psycopg2"
    if importlib.util.find_spec(driver) is None:
        pytest.skip(f"{driver} is not installed")
    url = make_url(str(engine.url.render_as_string(hide_password=False))).set(
        drivername=f"postgresql+{driver}"
    )
    other = vecorm.create_engine(url)
    try:
        with Session(other) as session:
            assert backfill(session, Document, embedder=FakeEmbedder(DIMS)).embedded == 50
    finally:
        other.dispose()
    with Session(engine) as session:
        row = session.get(Document, 7)
        assert row is not None and row.embedding is not None
        np.testing.assert_array_equal(row.embedding, FakeEmbedder(DIMS).embed(["doc 7\nbody 7"])[0])


def test_a_batch_is_found_without_locks_then_claimed_by_its_keys(engine: Engine) -> None:
    """The scan for stale rows (which may read far through a big table to find a few) takes
    no lock; the rows it found are then claimed FOR UPDATE by primary key, so no row stays
    locked while a scan goes on (a writer waited 1.1 s behind a catch-up pass before)."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM documents" in statement and statement.lstrip().upper().startswith("SELECT"):
            sent.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session:
            result = backfill(session, Document, embedder=FakeEmbedder(DIMS), batch_size=20)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert result.embedded == 50
    claims = [sql for sql in sent if "FOR UPDATE" in sql]
    probes = [sql for sql in sent if "FOR UPDATE" not in sql and "LIMIT" in sql]
    assert len(claims) == 3 and len(probes) >= 3
    for claim in claims:
        assert "documents.id OPERATOR(pg_catalog.=) ANY (" in claim, claim
        assert "OPERATOR(pg_catalog.>)" not in claim  # no range to scan under the locks
