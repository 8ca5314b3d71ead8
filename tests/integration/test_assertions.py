"""The testing helpers users call in their own suites: index use and recall against exact."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.search.settings import search_options
from vecorm.testing.assertions import (
    assert_index_used,
    assert_recall,
    explain,
    indexes_used,
    recall_at_k,
)


class Base(DeclarativeBase):
    pass


class Point(vecorm.Searchable, Base):
    __tablename__ = "points"
    __vecorm__ = vecorm.SearchConfig(fields=("label",), dimensions=4, index=vecorm.HNSW(m=4))
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str]


QUERY = [0.3, -0.2, 0.9, 0.1]


@pytest.fixture
def session(vecorm_engine: Engine) -> Iterator[Session]:
    Base.metadata.create_all(vecorm_engine)
    vectors = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
    with Session(vecorm_engine) as setup, setup.begin():
        setup.execute(
            insert(Point),
            [{"id": i, "label": f"p{i}", "embedding": v} for i, v in enumerate(vectors)],
        )
    with Session(vecorm_engine) as session, session.begin():
        session.execute(text("SET LOCAL enable_seqscan = off"))  # 300 rows: show the index path
        yield session


def test_assert_index_used_passes_and_fails_with_the_plan(session: Session) -> None:
    assert assert_index_used(session, Point.nearest(QUERY, k=5)) == ["ix_points_embedding_hnsw"]
    assert_index_used(session, Point.nearest(QUERY, k=5), "ix_points_embedding_hnsw")
    with pytest.raises(
        AssertionError, match="expected the plan to use index 'ix_points_embedding_hnsw'"
    ):
        assert_index_used(
            session, Point.nearest(QUERY, k=5, exact=True), "ix_points_embedding_hnsw"
        )
    with pytest.raises(AssertionError, match="Node Type"):
        assert_index_used(session, select(Point.label).where(Point.label.like("%1")))
    plan = explain(session, Point.nearest(QUERY, k=5))
    assert plan["Plan"]["Node Type"] == "Limit"


def test_recall_at_k_against_the_exact_scan(session: Session) -> None:
    stmt = Point.nearest(QUERY, k=20)
    assert recall_at_k(session, stmt) == 1.0
    # ef_search 1 without iterative scan: HNSW returns a single row.
    starved = stmt.execution_options(**search_options(ef_search=1, iterative_scan="off"))
    assert len(session.execute(starved).all()) == 1
    assert recall_at_k(session, starved, 20) == pytest.approx(1 / 20)
    with pytest.raises(AssertionError, match="recall@20 is 0.050"):
        assert_recall(session, starved, at_least=0.9, k=20)
    assert (
        assert_recall(session, stmt, at_least=1.0, queries=[Point.nearest([1, 0, 0, 0], k=5)])
        == 1.0
    )
    # The exact run disabled index scans only inside a rolled-back savepoint.
    assert session.scalar(text("SHOW enable_indexscan")) == "on"
    assert indexes_used(session, stmt) == ["ix_points_embedding_hnsw"]


def test_helpers_take_core_connections(vecorm_engine: Engine) -> None:
    Base.metadata.create_all(vecorm_engine)
    with vecorm_engine.begin() as conn:
        conn.execute(
            insert(Point), [{"id": i, "label": "x", "embedding": [i, 1, 0, 0]} for i in range(5)]
        )
        stmt = Point.nearest(QUERY, k=3).with_only_columns(Point.id)
        assert recall_at_k(conn, stmt) == 1.0
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        assert_index_used(conn, stmt, "ix_points_embedding_hnsw")
