"""More like this: ``doc.similar_to(k)`` is the nearest rows to the row's own embedding, the row
left out, on real PostgreSQL (single and composite keys, a binary-quantized index)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.search.vector import python_distance, similar_to

DIMS = 16


class Base(DeclarativeBase):
    pass


class Note(vecorm.Searchable, Base):
    __tablename__ = "notes"
    __vecorm__ = vecorm.SearchConfig(fields=("title",), dimensions=DIMS, bm25=None)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    shelf: Mapped[int]


class TenantNote(vecorm.Searchable, Base):
    """A composite key: the same id in another tenant is another row."""

    __tablename__ = "tenant_notes"
    __vecorm__ = vecorm.SearchConfig(fields=("title",), dimensions=DIMS, bm25=None)
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]


class BitNote(vecorm.Searchable, Base):
    __tablename__ = "bit_notes"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",), dimensions=DIMS, bm25=None, index=vecorm.HNSW(precision="bit")
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]


@pytest.fixture
def vectors(vecorm_engine: Engine) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(17)
    centres = rng.normal(size=(5, DIMS))
    values = (centres[np.arange(60) % 5] + 0.4 * rng.normal(size=(60, DIMS))).astype(np.float32)
    Base.metadata.create_all(vecorm_engine)
    with vecorm_engine.begin() as conn:
        rows = [{"id": i, "title": f"n{i}", "embedding": v} for i, v in enumerate(values)]
        conn.execute(insert(Note), [{**row, "shelf": row["id"] % 2} for row in rows])
        conn.execute(insert(BitNote), rows)
        conn.execute(
            insert(TenantNote),
            [{**row, "tenant_id": tenant} for tenant in (1, 2) for row in rows[:10]],
        )
    yield values


def _exact(values: np.ndarray, of: int, candidates: list[int], k: int) -> list[int]:
    distances = [python_distance(vecorm.Distance.COSINE, values[i], values[of]) for i in candidates]
    return [candidates[j] for j in np.argsort(distances)[:k]]


@pytest.mark.parametrize("model", [Note, BitNote], ids=["vector", "bit"])
def test_the_nearest_other_rows_in_order(
    vecorm_engine: Engine, vectors: np.ndarray, model: Any
) -> None:
    with Session(vecorm_engine) as session:
        doc = session.get(model, 7)
        rows = session.execute(doc.similar_to(k=5)).all()
        others = [i for i in range(len(vectors)) if i != 7]
        assert [row[0].id for row in rows] == _exact(vectors, 7, others, 5)
        distances = [row.distance for row in rows]
        assert distances == sorted(distances) and distances[0] > 0


def test_it_composes_like_nearest(vecorm_engine: Engine, vectors: np.ndarray) -> None:
    with Session(vecorm_engine) as session:
        doc = session.get(Note, 4)
        assert doc is not None
        statement = doc.similar_to(k=3, with_score=True).where(Note.shelf == doc.shelf)
        rows = session.execute(statement).all()
        same_shelf = [i for i in range(len(vectors)) if i % 2 == 0 and i != 4]
        assert [row[0].id for row in rows] == _exact(vectors, 4, same_shelf, 3)
        assert all(0.0 <= row.score <= 1.0 for row in rows)
        # The module-level function is the same statement.
        assert [r[0].id for r in session.execute(similar_to(Note, doc, k=3))] == [
            r[0].id for r in session.execute(doc.similar_to(k=3))
        ]


def test_a_composite_key_leaves_out_only_the_row_itself(
    vecorm_engine: Engine, vectors: np.ndarray
) -> None:
    with Session(vecorm_engine) as session:
        doc = session.get(TenantNote, (1, 3))
        assert doc is not None
        keys = [(row[0].tenant_id, row[0].id) for row in session.execute(doc.similar_to(k=3))]
        # Tenant 2's copy of row 3 has the same vector: it is the nearest, at distance 0.
        assert keys[0] == (2, 3) and (1, 3) not in keys


def test_rows_without_an_embedding_and_wrong_input_are_refused(
    vecorm_engine: Engine, vectors: np.ndarray
) -> None:
    with Session(vecorm_engine) as session:
        blank = Note(id=1000, title="not embedded yet", shelf=0)
        session.add(blank)
        session.flush()
        with pytest.raises(vecorm.ConfigurationError, match=r"row 1000 has no embedding yet"):
            blank.similar_to()
        with pytest.raises(vecorm.ConfigurationError, match="takes a TenantNote instance"):
            similar_to(TenantNote, session.get(Note, 1))
        # A row not flushed yet is in no table: nothing to leave out.
        pending = Note(id=2000, title="draft", shelf=0, embedding=vectors[9])
        nearest_ids = [row[0].id for row in session.execute(pending.similar_to(k=1))]
        assert nearest_ids == [9]
        assert session.scalar(select(Note.id).where(Note.id == 2000)) is None
