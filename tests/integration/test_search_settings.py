"""vecorm's query-time settings on engines vecorm did not make, after failures, and opted out.

Every engine here comes from SQLAlchemy itself (``sqlalchemy.create_engine``,
``create_async_engine``, Flask-SQLAlchemy's ``db.engine``): no vecorm call made it ready.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
import sqlalchemy
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import URL, Integer, String, bindparam, func, insert, literal, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from tests.integration.recording import RecordingCursor, recording_engine, statements
from vecorm.search.explain import indexes_used
from vecorm.search.settings import (
    SEARCH_SETTINGS_OPTION,
    install_search_settings,
    search_options,
    search_settings_installed,
    uninstall_search_settings,
)

DIMS = 16
ROWS = 3000


class Base(DeclarativeBase):
    pass


class Item(vecorm.Searchable, Base):
    """HNSW on 16 dimensions; ``category`` has no index (PostgreSQL cannot see it is 1%)."""

    __tablename__ = "items"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",), dimensions=DIMS, index=vecorm.HNSW(), text_index=False
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(10))
    category: Mapped[str] = mapped_column(String(10))


#: What each statement below asks for, and PostgreSQL's / pgvector's values around it.
ASKED = search_options(
    ef_search=123, iterative_scan="strict_order", plan_cache_mode="force_custom_plan"
)
SETTINGS = select(
    func.current_setting("hnsw.ef_search"),
    func.current_setting("hnsw.iterative_scan"),
    func.current_setting("plan_cache_mode"),
)
SEEN_WITH_ASKED = ("123", "strict_order", "force_custom_plan")
DEFAULTS = ("40", "off", "auto")
#: Any vector expression loads pgvector's library, which defines the hnsw.* settings.
LOAD_PGVECTOR = "SELECT '[1]'::vector"


@pytest.fixture
def plain_engine(vecorm_url: URL) -> Iterator[Engine]:
    """``sqlalchemy.create_engine`` with a pool of two: no vecorm call touches it."""
    engine = sqlalchemy.create_engine(vecorm_url, pool_size=2, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


def _load(conn: Connection) -> None:
    conn.execute(text(LOAD_PGVECTOR))


def _settings(conn: Connection | Session, stmt: Any = SETTINGS) -> tuple[str, ...]:
    row = conn.execute(stmt).one()
    return tuple(row)


# --------------------------------------------------------------------------- plain engines


def test_a_plain_engine_runs_a_search_with_its_settings(plain_engine: Engine) -> None:
    with plain_engine.begin() as conn:
        _load(conn)
        asked = SETTINGS.execution_options(**ASKED)
        assert _settings(conn, asked) == SEEN_WITH_ASKED
        assert _settings(conn) == DEFAULTS  # the next statement: the old values again
    # Engines derived with execution_options() are engines too.
    derived = plain_engine.execution_options(logging_token="derived")
    with derived.begin() as conn:
        _load(conn)
        assert _settings(conn, SETTINGS.execution_options(**ASKED)) == SEEN_WITH_ASKED
    assert search_settings_installed(plain_engine)


def _clustered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20 Gaussian clusters; 1% of rows, chosen at random, are "rare"; queries near centres."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(20, DIMS)).astype(np.float32) * 3
    vectors = centres[rng.integers(0, 20, ROWS)] + rng.normal(size=(ROWS, DIMS)).astype(np.float32)
    rare = np.zeros(ROWS, dtype=bool)
    rare[rng.choice(ROWS, ROWS // 100, replace=False)] = True
    queries = centres[rng.integers(0, 20, 10)] + rng.normal(size=(10, DIMS)).astype(np.float32)
    return vectors, rare, queries


def test_filtered_search_on_a_plain_engine_returns_k_rows(plain_engine: Engine) -> None:
    Base.metadata.create_all(plain_engine)
    vectors, rare, queries = _clustered()
    with plain_engine.begin() as conn:
        conn.execute(
            insert(Item),
            [
                {"id": i, "title": "t", "category": "rare" if r else "common", "embedding": v}
                for i, (v, r) in enumerate(zip(vectors, rare, strict=True))
            ],
        )
        conn.execute(text("ANALYZE items"))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rare_ids = np.flatnonzero(rare)

    def exact_top10(query: np.ndarray) -> set[int]:
        distances = 1 - unit[rare_ids] @ (query / np.linalg.norm(query))
        return set(rare_ids[np.argsort(distances)[:10]].tolist())

    def search(session: Session, **options: object) -> tuple[list[int], float]:
        counts, recalls = [], []
        for query in queries:
            stmt = Item.nearest(query, k=10).where(Item.category == "rare")
            ids = [item.id for item, _ in session.execute(stmt.execution_options(**options))]
            counts.append(len(ids))
            recalls.append(len(exact_top10(query) & set(ids)) / 10)
        return counts, float(np.mean(recalls))

    with Session(plain_engine) as session, session.begin():
        # 3000 rows would be read exactly; make PostgreSQL walk the graph, as on a big table.
        session.execute(text("SET LOCAL enable_seqscan = off"))
        counts, recall = search(session)
        assert counts == [10] * len(queries)
        assert recall >= 0.95, recall
        # The same statements with pgvector's defaults (what this engine ran before), and
        # without the exact run of a short result, which an opted-out engine still gets.
        counts, recall = search(
            session, **{SEARCH_SETTINGS_OPTION: False, "vecorm_exact_fallback": False}
        )
        assert max(counts) < 10 and recall < 0.5, (counts, recall)
        counts, recall = search(session, **{SEARCH_SETTINGS_OPTION: False})
        assert counts == [10] * len(queries) and recall == 1.0


async def test_an_async_engine_from_sqlalchemy(vecorm_url: URL) -> None:
    engine = create_async_engine(vecorm_url.set(drivername="postgresql+psycopg_async"))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(LOAD_PGVECTOR))
            asked = await conn.execute(SETTINGS.execution_options(**ASKED))
            assert tuple(asked.one()) == SEEN_WITH_ASKED
            assert tuple((await conn.execute(SETTINGS)).one()) == DEFAULTS
        assert search_settings_installed(engine)
    finally:
        await engine.dispose()


def test_an_engine_made_before_vecorm_was_imported(vecorm_url: URL) -> None:
    script = """
import sys
import sqlalchemy

engine = sqlalchemy.create_engine(sys.argv[1])
with engine.connect() as conn:  # a pooled connection from before the import, too
    conn.execute(sqlalchemy.text("SELECT '[1]'::vector"))
assert "vecorm" not in sys.modules
from vecorm.search.settings import search_options

query = sqlalchemy.select(sqlalchemy.func.current_setting("hnsw.ef_search"))
with engine.connect() as conn:
    print(conn.scalar(query.execution_options(**search_options(ef_search=123))))
    print(conn.scalar(query))
"""
    url = vecorm_url.render_as_string(hide_password=False)
    done = subprocess.run(
        [sys.executable, "-c", script, url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["123", "40"]


def test_flask_sqlalchemy_db_session(vecorm_url: URL) -> None:
    db = SQLAlchemy()

    class Note(vecorm.Searchable, db.Model):
        __tablename__ = "flask_notes"
        __vecorm__ = vecorm.SearchConfig(
            fields=("body",), dimensions=4, index=vecorm.HNSW(m=4), text_index=False
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = vecorm_url.render_as_string(hide_password=False)
    db.init_app(app)
    vectors = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
    with app.app_context():
        try:
            db.create_all()
            db.session.execute(
                insert(Note),
                [{"id": i, "body": "b", "embedding": v} for i, v in enumerate(vectors)],
            )
            db.session.commit()
            db.session.execute(text("SET LOCAL enable_seqscan = off"))  # walk the graph
            query = vectors[0] + 0.1
            # The model's defaults (relaxed iterative scan): all 50. Without the settings
            # pgvector stops at ef_search (40) rows.
            assert len(db.session.execute(Note.nearest(query, k=50)).all()) == 50
            capped = Note.nearest(query, k=50).execution_options(
                **search_options(ef_search=5, iterative_scan="off")
            )
            assert len(db.session.execute(capped).all()) == 5
            assert db.session.scalar(text("SHOW hnsw.ef_search")) == "40"
            db.session.rollback()
        finally:
            db.session.remove()
            db.engine.dispose()


# --------------------------------------------------------------------------- failures


def test_a_client_side_failure_puts_the_previous_values_back(vecorm_engine: Engine) -> None:
    Base.metadata.create_all(vecorm_engine)
    with vecorm_engine.connect() as conn, conn.begin():
        _load(conn)
        conn.execute(text("SET LOCAL hnsw.ef_search = 77"))
        stmt = (
            Item.nearest([1.0] * DIMS, k=3)
            .where(Item.category == bindparam("wanted"))
            .execution_options(**ASKED)
        )
        with pytest.raises(ProgrammingError) as raised:
            conn.execute(stmt, {"wanted": object()})  # psycopg cannot adapt it: never sent
        # The caller's own error, not one from restoring the settings.
        assert isinstance(raised.value.orig, psycopg.ProgrammingError)
        assert "cannot adapt type 'object'" in str(raised.value.orig)
        # The transaction is still usable, and has its values back.
        assert _settings(conn) == ("77", "off", "auto")
        assert conn.scalar(text("SELECT 1")) == 1


def test_a_server_side_failure_keeps_the_callers_error(plain_engine: Engine) -> None:
    with plain_engine.connect() as conn:
        _load(conn)
        conn.commit()
        # Divides by zero only when the statement runs with ef_search = 123.
        divisor = func.current_setting("hnsw.ef_search").cast(Integer) - 123
        failing = select(literal(1) / divisor).execution_options(**ASKED)
        with pytest.raises(DataError, match="division by zero"):
            conn.execute(failing)
        conn.rollback()  # resets SET LOCAL with the aborted transaction
        assert _settings(conn) == DEFAULTS


# --------------------------------------------------------------------------- opting out


def test_uninstall_opts_one_engine_out(plain_engine: Engine, vecorm_url: URL) -> None:
    other = sqlalchemy.create_engine(vecorm_url)
    try:
        uninstall_search_settings(plain_engine)
        assert not search_settings_installed(plain_engine)
        assert search_settings_installed(other)
        asked = SETTINGS.execution_options(**ASKED)
        with plain_engine.begin() as conn:
            _load(conn)
            assert _settings(conn, asked) == DEFAULTS  # ignored on this engine
        with other.begin() as conn:
            _load(conn)
            assert _settings(conn, asked) == SEEN_WITH_ASKED  # and only on this one
            # One connection, or one statement, can opt out the same way.
            opted_out = {SEARCH_SETTINGS_OPTION: False}
            assert _settings(conn, asked.execution_options(**opted_out)) == DEFAULTS
        with other.connect() as conn:
            _load(conn)
            quiet = conn.execution_options(**opted_out)
            assert _settings(quiet, asked) == DEFAULTS
        install_search_settings(plain_engine)  # undoes the opt-out
        assert search_settings_installed(plain_engine)
        with plain_engine.begin() as conn:
            _load(conn)
            assert _settings(conn, asked) == SEEN_WITH_ASKED
    finally:
        other.dispose()


# --------------------------------------------------------------------------- no leaks


def test_settings_never_leak_to_the_next_statement_or_connection(plain_engine: Engine) -> None:
    asked = SETTINGS.execution_options(**ASKED)
    with plain_engine.connect() as first, plain_engine.connect() as second:  # the whole pool
        _load(first)
        _load(second)
        assert _settings(first, asked) == SEEN_WITH_ASKED
        assert _settings(first) == DEFAULTS
        assert _settings(second) == DEFAULTS
        # A server-side cursor keeps them while it is read, until its transaction ends.
        streamed = first.execute(asked.execution_options(stream_results=True))
        assert tuple(streamed.one()) == SEEN_WITH_ASKED
        assert _settings(second) == DEFAULTS
        first.commit()
        second.commit()
    for _ in range(2):  # each pooled connection, checked out again
        with plain_engine.connect() as conn:
            assert _settings(conn) == DEFAULTS


def test_a_first_statement_that_does_not_load_pgvector_breaks_no_later_search(
    plain_engine: Engine,
) -> None:
    """On a fresh connection the hnsw.* names are placeholders until the library loads; setting
    one back to '' made the next search fail ("invalid value for parameter") when it loaded."""
    probe = select(func.current_setting("hnsw.ef_search")).execution_options(**ASKED)
    with plain_engine.connect() as conn:
        assert conn.execute(probe).scalar() == "123"  # no vector in it: library not loaded
        search = text(LOAD_PGVECTOR).execution_options(**ASKED)
        assert len(conn.execute(search).all()) == 1
        # Kept (not set back to an invalid '') until the transaction ends, then gone.
        conn.commit()
        assert _settings(conn) == DEFAULTS


# --------------------------------------------------------------------------- round trips


@pytest.fixture
def counted_engine(vecorm_url: URL) -> Iterator[Engine]:
    with recording_engine(vecorm_url, pool_size=1, max_overflow=0) as engine:
        yield engine


def _hook_statements() -> list[str]:
    return [sql for sql in statements() if "set_config" in sql]


def test_searches_of_one_transaction_share_one_settings_statement(counted_engine: Engine) -> None:
    asked = SETTINGS.execution_options(**ASKED)
    with counted_engine.connect() as conn:
        _load(conn)
        conn.commit()
        RecordingCursor.sent.clear()
        for _ in range(3):
            assert _settings(conn, asked) == SEEN_WITH_ASKED
        conn.commit()  # ends SET LOCAL: nothing to put back
        assert len(_hook_statements()) == 1
        # Three searches and their one statement (and, once per connection, whether the
        # database has Citus).
        assert len([sql for sql in statements() if "pg_extension" not in sql]) == 4
        RecordingCursor.sent.clear()
        assert _settings(conn) == DEFAULTS  # the next transaction starts clean
        assert _hook_statements() == []
        # A statement that is not a search gets the old values back first: one more.
        assert _settings(conn, asked) == SEEN_WITH_ASKED
        assert _settings(conn) == DEFAULTS
        assert len(_hook_statements()) == 2
        conn.rollback()


def test_a_search_with_other_settings_switches_in_one_statement(counted_engine: Engine) -> None:
    other = SETTINGS.execution_options(**search_options(ef_search=55))
    with counted_engine.connect() as conn, conn.begin():
        _load(conn)
        assert _settings(conn, SETTINGS.execution_options(**ASKED)) == SEEN_WITH_ASKED
        RecordingCursor.sent.clear()
        # Only ef_search asked: the other two are back at their old values for this one.
        assert _settings(conn, other) == ("55", "off", "auto")
        assert len(_hook_statements()) == 1
        assert _settings(conn) == DEFAULTS


def test_savepoints_never_see_a_searchs_settings(plain_engine: Engine) -> None:
    asked = SETTINGS.execution_options(**ASKED)
    with plain_engine.connect() as conn, conn.begin():
        _load(conn)
        conn.execute(text("SET LOCAL hnsw.ef_search = 77"))
        assert _settings(conn, asked) == SEEN_WITH_ASKED
        with conn.begin_nested() as savepoint:  # SAVEPOINT: the old values first
            assert _settings(conn) == ("77", "off", "auto")
            assert _settings(conn, asked) == SEEN_WITH_ASKED
            savepoint.rollback()  # ROLLBACK TO SAVEPOINT
        assert _settings(conn) == ("77", "off", "auto")
        with conn.begin_nested():
            assert _settings(conn, asked) == SEEN_WITH_ASKED
        assert _settings(conn) == ("77", "off", "auto")  # after RELEASE


class Seen(Base):
    """Each row keeps the ef_search in effect when it was inserted."""

    __tablename__ = "seen_settings"
    id: Mapped[int] = mapped_column(primary_key=True)
    ef_search: Mapped[str] = mapped_column(
        String(10), server_default=text("current_setting('hnsw.ef_search', true)")
    )


def test_orm_writes_after_a_search_run_with_the_old_values(plain_engine: Engine) -> None:
    Base.metadata.create_all(plain_engine)
    with Session(plain_engine) as session, session.begin():
        session.execute(text(LOAD_PGVECTOR))
        found = session.execute(Item.nearest([1.0] * DIMS, k=3).execution_options(**ASKED))
        assert found.all() == []
        session.add(Seen(id=1))
        session.flush()  # an INSERT in the same transaction, right after the search
        assert session.scalar(select(Seen.ef_search)) == "40"
    with Session(plain_engine) as session:
        assert session.scalar(select(Seen.ef_search)) == "40"


# --------------------------------------------------------------------------- plans

WIDE = 1536


class WideDoc(vecorm.Searchable, Base):
    __tablename__ = "wide_docs"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",), dimensions=WIDE, index=vecorm.HNSW(), bm25=None
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))
    category: Mapped[str] = mapped_column(String(10))


@pytest.fixture
def wide_docs(vecorm_engine: Engine) -> np.ndarray:
    Base.metadata.create_all(vecorm_engine, tables=[WideDoc.__table__])
    vectors = np.random.default_rng(5).normal(size=(2000, WIDE)).astype(np.float32)
    with vecorm_engine.begin() as conn:
        conn.execute(
            insert(WideDoc),
            [
                {
                    "id": i,
                    "title": f"doc {i}",
                    "category": "even" if i % 2 else "odd",
                    "embedding": v,
                }
                for i, v in enumerate(vectors)
            ],
        )
        conn.execute(text("ANALYZE wide_docs"))
    return vectors


def test_an_unfiltered_search_uses_the_index_on_wide_vectors(
    vecorm_engine: Engine, wide_docs: np.ndarray
) -> None:
    query = wide_docs[7] + 0.01
    index = "ix_wide_docs_embedding_hnsw"
    with Session(vecorm_engine) as session, session.begin():
        stmt = WideDoc.nearest(query, k=10)
        assert indexes_used(session, stmt) == [index]
        rows = session.execute(stmt).all()
        assert rows[0][0].id == 7 and len(rows) == 10
        # What PostgreSQL picks by its own costs: reading all 2,000 vectors exactly.
        planners_own = stmt.execution_options(vecorm_enable_sort="on")
        assert index not in indexes_used(session, planners_own)
        # The same for the semantic arm of an unfiltered hybrid search, and "more like this".
        hybrid = WideDoc.hybrid_search("doc", k=5, vector=query)
        assert index in indexes_used(session, hybrid)
        assert session.execute(hybrid).all()
        assert indexes_used(session, WideDoc.similar_to(rows[0][0], k=3)) == [index]
        # A filter of yours leaves the plan to PostgreSQL, which weighs its selectivity;
        # either way the rows are the nearest ones under it, in order.
        filtered = WideDoc.nearest(query, k=10).where(WideDoc.category == "even")
        found = session.execute(filtered).all()
        assert [row.id % 2 for row, _ in found] == [1] * 10
        assert [d for _, d in found] == sorted(d for _, d in found)


def test_an_invalidated_connection_still_closes(plain_engine: Engine) -> None:
    """Nothing of the settings hook touches the DBAPI connection an invalidated Connection no
    longer has (a ROLLBACK listener once raised PendingRollbackError from close())."""
    conn = plain_engine.connect()
    conn.execute(SETTINGS.execution_options(**ASKED).add_columns(text("'[1]'::vector")))
    conn.invalidate()
    conn.close()  # rolls back the transaction it was in
    assert conn.closed
    with plain_engine.connect() as fresh:
        _load(fresh)
        assert _settings(fresh) == DEFAULTS
