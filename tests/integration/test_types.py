"""Binary binds and round trips of Vector / HalfVec on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, event, insert, literal, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.types import HalfVec, Vector


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    small = mapped_column(Vector(3))
    large = mapped_column(Vector(1536, as_numpy=True))
    half = mapped_column(HalfVec(4, as_numpy=True))
    anydim = mapped_column(Vector())


class Doc(vecorm.Searchable, Base):
    __tablename__ = "docs"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


@pytest.fixture
def engine(vecorm_engine: Engine) -> Iterator[Engine]:
    Base.metadata.create_all(vecorm_engine)
    yield vecorm_engine


def test_list_and_numpy_round_trip(engine: Engine) -> None:
    large = np.random.default_rng(3).standard_normal(1536).astype(np.float32)
    with Session(engine) as session:
        session.add(
            Item(
                small=[1.5, -2, 3e-7], large=large, half=np.array([1, 0.5, -2, 4.0]), anydim=[1, 2]
            )
        )
        session.commit()
        row = session.scalars(select(Item)).one()
        assert row.small == [1.5, -2.0, pytest.approx(3e-7)]
        assert isinstance(row.large, np.ndarray) and row.large.dtype == np.float32
        np.testing.assert_array_equal(row.large, large)  # float32 survives exactly
        np.testing.assert_array_equal(row.half, np.array([1, 0.5, -2, 4], dtype=np.float32))
        assert row.anydim == [1.0, 2.0]


def test_values_are_sent_in_binary(engine: Engine) -> None:
    sent: list[object] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        sent.append(parameters)

    with Session(engine) as session:
        session.add(Item(small=[1, 2, 3]))
        session.commit()
    params = sent[0]
    assert isinstance(params, dict)
    binary = params["small"]
    assert type(binary).__name__ == "BinaryVectorParam"
    assert binary.payload == bytes.fromhex("00030000 3f800000 40000000 40400000")


def test_distance_operators_and_literal_binds(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all([Item(small=[1, 0, 0]), Item(small=[0, 1, 0]), Item(small=[0.5, 0.5, 0])])
        session.commit()
        query = [1, 0.1, 0]
        for comparator in ("cosine_distance", "l2_distance", "max_inner_product", "l1_distance"):
            expression = getattr(Item.small, comparator)(query)
            ordered = session.scalars(select(Item.id).order_by(expression, Item.id)).all()
            assert ordered[0] == 1, comparator
        stmt = select(Item.id).order_by(Item.small.l2_distance([1, 0, 0]))
        sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
        assert "CAST('[1.0,0.0,0.0]' AS VECTOR(3))" in sql
        assert session.execute(text(sql)).scalars().first() == 1


def test_bare_vector_literal_in_select_list(engine: Engine) -> None:
    with engine.connect() as conn:
        value = conn.execute(select(literal([1, 2, 3], Vector(3)))).scalar_one()
    assert value == [1.0, 2.0, 3.0]


def test_core_executemany_through_values_list(engine: Engine) -> None:
    with engine.begin() as conn:
        result = conn.execute(
            insert(Item).returning(Item.id, sort_by_parameter_order=True),
            [{"small": [i, i, i]} for i in range(50)],
        )
        ids = result.scalars().all()
        stored = conn.execute(select(Item.small).order_by(Item.id)).scalars().all()
    assert len(ids) == 50
    assert stored[49] == [49.0, 49.0, 49.0]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ([1, 2], vecorm.DimensionMismatch, "expected 3 dimensions, not 2"),
        ([1, float("nan"), 3], vecorm.InvalidVector, "NaN or infinity"),
        ([1, float("inf"), 3], vecorm.InvalidVector, "NaN or infinity"),
        ([[1, 2, 3]], vecorm.InvalidVector, "one-dimensional"),
        ("[1,2,3]", vecorm.InvalidVector, "sequence of numbers"),
        (["a", "b", "c"], vecorm.InvalidVector, "sequence of numbers"),
    ],
)
def test_bad_vectors_fail_before_sql_as_statement_errors(
    engine: Engine, value: object, error: type[Exception], message: str
) -> None:
    with Session(engine) as session:
        session.add(Item(small=value))
        with pytest.raises(StatementError, match=message) as info:
            session.flush()
        assert isinstance(info.value.orig, error)
        session.rollback()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 0


def test_mixin_embedding_is_validated_on_assignment_naming_the_model(engine: Engine) -> None:
    with pytest.raises(vecorm.DimensionMismatch, match="Doc.embedding expects 3 values, got 2"):
        Doc(body="x", embedding=[1.0, 2.0])
    with pytest.raises(vecorm.InvalidVector, match="Doc.embedding contains NaN"):
        Doc(body="x", embedding=np.array([1, np.nan, 2]))
    doc = Doc(body="x", embedding=[1, 2, 3])
    assert isinstance(doc.embedding, np.ndarray) and doc.embedding.dtype == np.float32


def test_reflection_sees_vector_types_with_dimensions(engine: Engine) -> None:
    reflected = Table("items", MetaData(), autoload_with=engine)
    assert isinstance(reflected.c.small.type, Vector) and reflected.c.small.type.dim == 3
    assert isinstance(reflected.c.half.type, HalfVec) and reflected.c.half.type.dim == 4
    assert reflected.c.anydim.type.dim is None


def test_other_tables_unaffected_by_binary_adapter(engine: Engine) -> None:
    plain = Table("plain", MetaData(), Column("id", Integer, primary_key=True))
    plain.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(plain), [{"id": 1}, {"id": 2}])
        assert conn.execute(select(plain.c.id).order_by(plain.c.id)).scalars().all() == [1, 2]
