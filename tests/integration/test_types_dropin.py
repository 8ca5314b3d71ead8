"""vecorm.types as a drop-in for pgvector.sqlalchemy: same code, same rows, on every driver.

``pgvector_style_block`` is written the way pgvector-python's README and tests use its
SQLAlchemy types. It runs once with ``pgvector.sqlalchemy`` and once with ``vecorm.types``
(the only change a user makes is that import), and the two result lists must be equal row by row.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pgvector.sqlalchemy
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pgvector import HalfVector as PgHalfVector
from pgvector import SparseVector
from sqlalchemy import URL, Column, Integer, MetaData, Table, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm.types
from tests.integration.driver_matrix import DRIVERS, DriverDatabase, driver_database

PGVECTOR_NAMES = ("Vector", "VECTOR", "HALFVEC", "BIT", "SPARSEVEC", "avg", "sum")


@pytest.fixture(params=DRIVERS)
def db(request: pytest.FixtureRequest, vecorm_url: URL) -> Iterator[DriverDatabase]:
    with driver_database(request.param, vecorm_url) as database:
        yield database


def build_model(types: ModuleType, table: str) -> Any:
    """The model a pgvector-python user has, with ``from <types> import ...``."""
    VECTOR, HALFVEC, SPARSEVEC, BIT = types.VECTOR, types.HALFVEC, types.SPARSEVEC, types.BIT

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        embedding = mapped_column(VECTOR(3))
        half_embedding = mapped_column(HALFVEC(3))
        binary_embedding = mapped_column(BIT(3))
        sparse_embedding = mapped_column(SPARSEVEC(3))

    return Item


def pgvector_style_block(types: ModuleType, Item: Any, conn: Connection) -> list[Any]:
    """Insert, query by each comparator, filter on distance, aggregate; collect every result."""
    avg, sum = types.avg, types.sum
    Item.metadata.create_all(conn)
    session = Session(bind=conn)
    session.add_all(
        [
            Item(
                id=1,
                embedding=[1, 1, 1],
                half_embedding=[1, 1, 1],
                binary_embedding="000",
                sparse_embedding=SparseVector([1, 1, 1]),
            ),
            Item(
                id=2,
                embedding=np.array([2, 2, 3]),
                half_embedding=PgHalfVector([2, 2, 3]),
                binary_embedding="101",
                sparse_embedding=SparseVector({0: 2, 1: 2, 2: 3}, 3),
            ),
            Item(
                id=3,
                embedding=[1, 1, 2],
                half_embedding=np.array([1, 1, 2]),
                binary_embedding="111",
                sparse_embedding=SparseVector(np.array([1, 0, 2])),
            ),
            Item(id=4),
        ]
    )
    session.flush()
    results: list[Any] = []
    rows = session.scalars(select(Item).order_by(Item.id)).all()
    results.append(
        [
            (r.id, r.embedding, r.half_embedding, r.binary_embedding, r.sparse_embedding)
            for r in rows
        ]
    )
    for column in (Item.embedding, Item.half_embedding, Item.sparse_embedding):
        for comparator in ("l2_distance", "max_inner_product", "cosine_distance", "l1_distance"):
            distance = getattr(column, comparator)([1, 1, 1])
            ordered = session.scalars(select(Item.id).order_by(distance, Item.id).limit(5)).all()
            scores = session.scalars(select(distance).order_by(Item.id)).all()
            results.append((comparator, ordered, [round(s, 5) if s else s for s in scores]))
        near = session.scalars(
            select(Item.id).filter(column.l2_distance([1, 1, 1]) < 1.5).order_by(Item.id)
        ).all()
        results.append(("where", near))
    for comparator in ("hamming_distance", "jaccard_distance"):
        distance = getattr(Item.binary_embedding, comparator)("101")
        ordered = session.scalars(select(Item.id).order_by(distance, Item.id)).all()
        scores = session.scalars(select(distance).order_by(Item.id)).all()
        results.append((comparator, ordered, scores))
    results.append(
        tuple(
            session.execute(
                select(
                    avg(Item.embedding),
                    sum(Item.embedding),
                    avg(Item.half_embedding),
                    sum(Item.half_embedding),
                )
            ).one()
        )
    )
    nearest = session.scalars(select(Item).order_by(Item.embedding.l2_distance([3, 1, 2])))
    results.append([item.id for item in nearest])
    session.close()
    return results


def test_same_code_same_rows_as_pgvector_sqlalchemy(db: DriverDatabase) -> None:
    stock_model = build_model(pgvector.sqlalchemy, "items_pgvector")
    ours_model = build_model(vecorm.types, "items_vecorm")
    stock = db.run(lambda conn: pgvector_style_block(pgvector.sqlalchemy, stock_model, conn))
    ours = db.run(lambda conn: pgvector_style_block(vecorm.types, ours_model, conn))
    assert len(ours) == len(stock) == 20
    for index, (expected, got) in enumerate(zip(stock, ours, strict=True)):
        assert got == expected, f"result {index} differs"
    # Spot-check the shared answer itself so two identical wrong answers cannot pass.
    assert ours[0][0] == (1, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], "000", SparseVector([1, 1, 1]))
    assert ours[0][3][1:] == (None, None, None, None)
    mean, total, half_mean, half_total = ours[-2]
    assert mean == [1.3333334, 1.3333334, 2.0] and total == [4.0, 4.0, 6.0]  # NULL row skipped
    assert half_mean == pytest.approx(mean, rel=1e-3) and half_total == total
    assert ours[-1] == [2, 3, 1, 4]  # squared distances 3, 4, 5, then NULL last


def test_every_pgvector_sqlalchemy_name_is_exported_and_compatible() -> None:
    for name in PGVECTOR_NAMES:
        assert hasattr(vecorm.types, name), name
    assert vecorm.types.avg is pgvector.sqlalchemy.avg
    for ours, stock in [
        (vecorm.types.VECTOR, pgvector.sqlalchemy.VECTOR),
        (vecorm.types.HALFVEC, pgvector.sqlalchemy.HALFVEC),
        (vecorm.types.SPARSEVEC, pgvector.sqlalchemy.SPARSEVEC),
        (vecorm.types.BIT, pgvector.sqlalchemy.BIT),
    ]:
        assert issubclass(ours, stock)  # isinstance checks in user code keep working
    assert vecorm.types.Vector is vecorm.types.VECTOR
    assert vecorm.types.HalfVector is vecorm.types.HALFVEC is vecorm.types.HalfVec
    assert vecorm.types.SparseVector is vecorm.types.SPARSEVEC
    with pytest.raises(TypeError, match="number of dimensions, not list"):
        vecorm.types.Vector([1, 2, 3])  # type: ignore[arg-type]


def test_dimension_errors_read_like_pgvector(db: DriverDatabase) -> None:
    """pgvector's server error and vecorm's client-side one share the message and the
    StatementError base class; vecorm's is raised before the statement is sent."""
    messages = {}
    for types in (pgvector.sqlalchemy, vecorm.types):
        Item = build_model(types, f"errors_{types.__name__.split('.')[0]}")

        def work(conn: Connection, Item: Any = Item) -> str:
            Item.metadata.create_all(conn)
            with pytest.raises(StatementError) as info:
                conn.execute(insert(Item), {"id": 1, "embedding": [1, 2]})
            return str(info.value.orig)

        messages[types.__name__] = db.run(work)
    assert "expected 3 dimensions, not 2" in messages["pgvector.sqlalchemy"]
    assert "expected 3 dimensions, not 2" in messages["vecorm.types"]


def test_vector_without_dimensions_accepts_any_length(db: DriverDatabase) -> None:
    class Base(DeclarativeBase):
        pass

    class Free(Base):
        __tablename__ = "free"
        id: Mapped[int] = mapped_column(primary_key=True)
        embedding = mapped_column(vecorm.types.Vector())
        half_embedding = mapped_column(vecorm.types.HALFVEC())
        sparse_embedding = mapped_column(vecorm.types.SPARSEVEC())

    def work(conn: Connection) -> list[Any]:
        Base.metadata.create_all(conn)
        ddl = conn.execute(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'free'::regclass AND attnum > 1 ORDER BY attnum"
            )
        ).scalars()
        assert list(ddl) == ["vector", "halfvec", "sparsevec"]
        conn.execute(
            insert(Free),
            [
                {"id": 1, "embedding": [1], "half_embedding": [1], "sparse_embedding": [0, 1]},
                {
                    "id": 2,
                    "embedding": [1, 2, 3, 4],
                    "half_embedding": [1, 2, 3, 4],
                    "sparse_embedding": None,
                },
            ],
        )
        return [tuple(row) for row in conn.execute(select(Free).order_by(Free.id))]

    assert db.run(work) == [
        (1, [1.0], [1.0], SparseVector({1: 1.0}, 2)),
        (2, [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], None),
    ]


def _type_diffs(conn: Connection, metadata: MetaData) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    kinds = ("modify_type", "modify_vector_dimensions")
    found = []
    for diff in compare_metadata(context, metadata):
        first = diff[0] if isinstance(diff, list) else diff
        if first[0] in kinds:
            found.append(first)
    return found


def test_alembic_sees_no_type_change_when_switching_imports(vecorm_url: URL) -> None:
    stock = build_model(pgvector.sqlalchemy, "items")
    ours = build_model(vecorm.types, "items")
    wider = MetaData()
    Table(
        "items",
        wider,
        Column("id", Integer, primary_key=True),
        Column("embedding", vecorm.types.VECTOR(4)),
        Column("half_embedding", vecorm.types.HALFVEC(3)),
        Column("binary_embedding", vecorm.types.BIT(3)),
        Column("sparse_embedding", vecorm.types.SPARSEVEC(8)),
    )
    with driver_database("psycopg", vecorm_url) as db:
        db.run(stock.metadata.create_all)
        assert db.run(lambda conn: _type_diffs(conn, ours.metadata)) == []
        changed = db.run(lambda conn: _type_diffs(conn, wider))
    assert sorted((diff[3], str(diff[-2]).upper(), str(diff[-1]).upper()) for diff in changed) == [
        ("embedding", "VECTOR(3)", "VECTOR(4)"),
        ("sparse_embedding", "SPARSEVEC(3)", "SPARSEVEC(8)"),
    ]
