"""A filtered search that comes back short is run again exactly (vecorm.search.exact_fallback).

The data is the hard case for a graph walk: the rows the filter keeps all sit in one cluster,
and the queries come from the others. The index's walk is capped low (``max_scan_tuples``) and
forced (``enable_seqscan = off``), so it runs out before it reaches them, as it does on a big
table with vecorm's defaults.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import URL, Integer, String, event, insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import vecorm
from tests.integration.recording import RecordingCursor, recording_engine, statements
from vecorm.search import exact_fallback
from vecorm.search.explain import indexes_used

DIMS = 16
ROWS = 3000
K = 10


class Base(DeclarativeBase):
    pass


class Note(vecorm.Searchable, Base):
    __tablename__ = "fallback_notes"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",),
        dimensions=DIMS,
        index=vecorm.HNSW(max_scan_tuples=300),
        text_index=False,
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(10))
    tenant: Mapped[int] = mapped_column(Integer)


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectors in 20 clusters; tenant 1 is 60 rows of cluster 0; queries near clusters 1-19
    (``far``) and near cluster 0 (``near``)."""
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(20, DIMS)).astype(np.float32) * 4
    cluster = rng.integers(0, 20, ROWS)
    vectors = centres[cluster] + rng.normal(size=(ROWS, DIMS)).astype(np.float32)
    tenant = np.full(ROWS, 2)
    tenant[np.flatnonzero(cluster == 0)[:60]] = 1
    far = centres[1:9] + rng.normal(size=(8, DIMS)).astype(np.float32) * 0.3
    near = centres[:1] + rng.normal(size=(1, DIMS)).astype(np.float32) * 0.3
    return vectors, tenant, far, near


VECTORS, TENANT, FAR, NEAR = _data()


def _exact(query: np.ndarray) -> list[int]:
    """numpy's top K of tenant 1 by cosine distance."""
    ids = np.flatnonzero(TENANT == 1)
    unit = VECTORS[ids] / np.linalg.norm(VECTORS[ids], axis=1, keepdims=True)
    distances = 1 - unit @ (query / np.linalg.norm(query))
    return ids[np.argsort(distances)[:K]].tolist()


@pytest.fixture
def engine(vecorm_url: URL) -> Iterator[Engine]:
    engine = vecorm.create_engine(vecorm_url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(Note),
            [
                {"id": i, "title": "t", "tenant": int(t), "embedding": v}
                for i, (v, t) in enumerate(zip(VECTORS, TENANT, strict=True))
            ],
        )
        conn.execute(text("ANALYZE fallback_notes"))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def searches(engine: Engine) -> Iterator[list[str]]:
    """The SELECTs the engine sends that order by a distance (vecorm's own settings statements
    are left out)."""
    sent: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "FROM fallback_notes" in statement and "<=>" in statement:
            sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _forced(session: Session) -> None:
    """The graph walk, as a big table gets it."""
    session.execute(text("SET LOCAL enable_seqscan = off"))


def _ids(session: Session, query: np.ndarray, **options: object) -> list[int]:
    stmt = Note.nearest(query, k=K).where(Note.tenant == 1).execution_options(**options)
    return [note.id for note, _ in session.execute(stmt)]


def test_a_short_filtered_search_is_run_again_exactly(engine: Engine, searches: list[str]) -> None:
    with Session(engine) as session, session.begin():
        _forced(session)
        stmt = Note.nearest(FAR[0], k=K).where(Note.tenant == 1)
        assert "ix_fallback_notes_embedding_hnsw" in indexes_used(session, stmt)
        walked = [_ids(session, query, vecorm_exact_fallback=False) for query in FAR]
        # The walk alone: short, silently (what vecorm returned before the fallback).
        assert min(len(ids) for ids in walked) < K
        searches.clear()
        for query in FAR:
            assert _ids(session, query) == _exact(query)  # K rows, the exact order
        short = sum(len(ids) < K for ids in walked)
        assert len(searches) == len(FAR) + short  # a second run for each short one only
        # The second run's enable_indexscan = off ended with it.
        assert session.scalar(text("SHOW enable_indexscan")) == "on"


def test_a_full_search_runs_once(engine: Engine, searches: list[str]) -> None:
    with Session(engine) as session, session.begin():
        _forced(session)
        assert _ids(session, NEAR[0]) == _exact(NEAR[0])
        assert len(searches) == 1


def test_searches_the_fallback_leaves_alone(engine: Engine, searches: list[str]) -> None:
    with Session(engine) as session, session.begin():
        _forced(session)
        # No condition of yours: fewer than k rows means there are fewer (max_distance is
        # vecorm's own condition).
        rows = session.execute(Note.nearest(FAR[0], k=K, max_distance=1e-9)).all()
        assert rows == [] and len(searches) == 1
        # exact=True is the exact scan already.
        searches.clear()
        stmt = Note.nearest(FAR[0], k=K, exact=True).where(Note.tenant == 1)
        assert [n.id for n, _ in session.execute(stmt)] == _exact(FAR[0])
        assert len(searches) == 1
        # Streamed rows are handed on as they come.
        searches.clear()
        stmt = Note.nearest(FAR[0], k=K).where(Note.tenant == 1).execution_options(yield_per=5)
        assert len(session.execute(stmt).all()) < K and len(searches) == 1
        # Core's connection.execute is not the ORM's.
        searches.clear()
        stmt = Note.nearest(FAR[0], k=K).where(Note.tenant == 1)
        assert len(session.connection().execute(stmt).all()) < K and len(searches) == 1


def test_the_exact_rows_come_back_as_orm_results(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        _forced(session)
        stmt = Note.nearest(FAR[0], k=K).where(Note.tenant == 1)
        notes = session.scalars(stmt).all()
        assert [note.id for note in notes] == _exact(FAR[0])
        assert all(note in session for note in notes)
        page = stmt.limit(4).offset(2)  # a page: its own LIMIT
        assert [note.id for note in session.scalars(page)] == _exact(FAR[0])[2:6]


async def test_an_async_session_gets_the_exact_rows(vecorm_url: URL, engine: Engine) -> None:
    async_engine = create_async_engine(vecorm_url.set(drivername="postgresql+psycopg_async"))
    try:
        async with AsyncSession(async_engine) as session, session.begin():
            await session.execute(text("SET LOCAL enable_seqscan = off"))
            stmt = Note.nearest(FAR[0], k=K).where(Note.tenant == 1)
            assert [note.id for note, _ in await session.execute(stmt)] == _exact(FAR[0])
    finally:
        await async_engine.dispose()


def test_the_second_run_is_exact_without_vecorm_settings(
    engine: Engine, searches: list[str]
) -> None:
    """An engine opted out of vecorm's settings (pgvector's: ef_search 40, no iterative scan,
    and a plan cache that could keep an index plan): the second run's SQL cannot use the
    index."""
    opted_out = engine.execution_options(vecorm_search_settings=False)
    with Session(opted_out) as session, session.begin():
        _forced(session)
        for query in FAR[:3]:
            assert _ids(session, query) == _exact(query)
        assert len(searches) == 6
        assert all("+" in statement for statement in searches[1::2])  # distance + 0


class Sized(vecorm.Searchable, Base):
    """pgvector's walk limit left to vecorm (no ``max_scan_tuples``)."""

    __tablename__ = "fallback_sized"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",), dimensions=DIMS, index=vecorm.HNSW(), text_index=False
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(10))
    tenant: Mapped[int] = mapped_column(Integer)


def test_a_filtered_walk_is_capped_by_the_table_size(
    vecorm_url: URL, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Sized),
            [
                {"id": i, "title": "t", "tenant": i % 7, "embedding": v}
                for i, v in enumerate(VECTORS)
            ],
        )
        conn.execute(text("ANALYZE fallback_sized"))
    monkeypatch.setattr(exact_fallback, "MIN_WALK", 1)
    with (
        recording_engine(vecorm_url, vecorm.create_engine) as recording,
        Session(recording) as session,
        session.begin(),
    ):
        RecordingCursor.sent.clear()
        for query in FAR[:3]:
            stmt = Sized.nearest(query, k=K).where(Sized.tenant == 3)
            assert len(session.execute(stmt).all()) == K
        estimates = [sql for sql in statements() if "reltuples" in sql]
        assert len(estimates) == 1  # asked once for the connection
        settings = [sent.params for sent in RecordingCursor.sent if "set_config" in sent.sql]
        assert len(settings) == 1 and "hnsw.max_scan_tuples" in settings[0].values()
        assert str(ROWS // 20) in settings[0].values()  # 3,000 rows: a walk of 150
        RecordingCursor.sent.clear()
        session.execute(Sized.nearest(FAR[0], k=K)).all()  # no filter: pgvector's limit
        settings = [sent.params for sent in RecordingCursor.sent if "set_config" in sent.sql]
        assert "hnsw.max_scan_tuples" in settings[0].values()  # put back: the old value
        assert str(ROWS // 20) not in settings[0].values()
        RecordingCursor.sent.clear()
        hybrid = Sized.hybrid_search("t", k=K, vector=FAR[0], where=Sized.tenant == 3)
        assert len(session.execute(hybrid).all()) == K  # its walk is capped the same way
        settings = [sent.params for sent in RecordingCursor.sent if "set_config" in sent.sql]
        assert len(settings) == 1 and str(ROWS // 20) in settings[0].values()


def test_a_session_class_of_the_app_gets_the_exact_rows(engine: Engine) -> None:
    """Flask-SQLAlchemy and others subclass Session, and make it with a sessionmaker."""

    class AppSession(Session):
        pass

    make = sessionmaker(engine, class_=AppSession)
    with make() as session, session.begin():
        _forced(session)
        stmt = Note.nearest(FAR[0], k=K).where(Note.tenant == 1)
        assert [note.id for note, _ in session.execute(stmt)] == _exact(FAR[0])


# --- hybrid search: the semantic arm falls back inside the statement -------------------------


def _semantic_ids(session: Session, query: np.ndarray, *, depth: int = K) -> set[int]:
    stmt = Note.hybrid_search("t", k=depth, vector=query, depth=depth, where=Note.tenant == 1)
    return {row.Note.id for row in session.execute(stmt) if row.semantic_rank is not None}


def test_a_short_semantic_arm_of_a_filtered_hybrid_search_is_exact(
    engine: Engine, searches: list[str]
) -> None:
    with Session(engine) as session, session.begin():
        _forced(session)
        for query in FAR:
            assert _semantic_ids(session, query) == set(_exact(query))
    assert len(searches) == len(FAR)  # one statement each: the fallback is inside it


def test_a_full_semantic_arm_skips_the_exact_scan(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        _forced(session)
        stmt = Note.hybrid_search("t", k=K, vector=NEAR[0], depth=K, where=Note.tenant == 1)
        assert {row.Note.id for row in session.execute(stmt) if row.semantic_rank} == set(
            _exact(NEAR[0])
        )
        plan = "\n".join(
            str(line)
            for line in session.execute(
                text("EXPLAIN (ANALYZE, COSTS OFF) " + _literal(session, stmt))
            ).scalars()
        )
    # the exact branch is planned behind a one-time filter, and never runs when the walk
    # filled the arm
    assert "One-Time Filter: ((InitPlan" in plan, plan
    exact_branch = r"Seq Scan on fallback_notes fallback_notes_\d+ \(never executed\)"
    assert re.search(exact_branch, plan), plan


def _literal(session: Session, stmt: Any) -> str:
    return str(
        stmt.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True})
    )
