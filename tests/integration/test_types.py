"""Vector / HalfVec / SparseVec / Bit on real PostgreSQL, on each of the four drivers."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import numpy as np
import pytest
from pgvector import Bit as PgBit
from pgvector import SparseVector as PgSparseVector
from pgvector.sqlalchemy import VECTOR as PgVECTOR
from sqlalchemy import (
    URL,
    Column,
    Integer,
    MetaData,
    Table,
    event,
    insert,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, DBAPIError, StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from tests.integration.driver_matrix import (
    DRIVERS,
    DriverDatabase,
    bits_as_text,
    driver_database,
    scalars,
)
from vecorm.schema.drivers import register_array_types
from vecorm.types import BIT, SPARSEVEC, HalfVec, SparseVec, Vector, avg, sum


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    small = mapped_column(Vector(3))
    large = mapped_column(Vector(1536, as_numpy=True))
    half = mapped_column(HalfVec(4, as_numpy=True))
    half_list = mapped_column(HalfVec(3))
    anydim = mapped_column(Vector())
    sparse = mapped_column(SPARSEVEC(5))
    bits = mapped_column(BIT(4))
    many = mapped_column(ARRAY(Vector(3), dimensions=1))


class Doc(vecorm.Searchable, Base):
    __tablename__ = "docs"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


@pytest.fixture(params=DRIVERS)
def db(request: pytest.FixtureRequest, vecorm_url: URL) -> Iterator[DriverDatabase]:
    with driver_database(request.param, vecorm_url) as database:
        register_array_types(database.engine)
        database.run(Base.metadata.create_all)
        yield database


def test_list_and_numpy_round_trip(db: DriverDatabase) -> None:
    large = np.random.default_rng(3).standard_normal(1536).astype(np.float32)

    def work(session: Session) -> None:
        session.add(
            Item(
                small=[1.5, -2, 3e-7],
                large=large,
                half=np.array([1, 0.5, -2, 4.0]),
                half_list=(1, 2, 3),
                anydim=[1, 2],
            )
        )
        session.commit()
        row = session.scalars(select(Item)).one()
        assert row.small == [1.5, -2.0, pytest.approx(3e-7)]
        assert isinstance(row.large, np.ndarray) and row.large.dtype == np.float32
        np.testing.assert_array_equal(row.large, large)  # float32 survives exactly
        np.testing.assert_array_equal(row.half, np.array([1, 0.5, -2, 4], dtype=np.float32))
        assert row.half_list == [1.0, 2.0, 3.0] and type(row.half_list[0]) is float
        assert row.anydim == [1.0, 2.0]

    db.session(work)


def test_sparsevec_and_bit_round_trip(db: DriverDatabase) -> None:
    def work(conn: Connection) -> list[tuple[object, ...]]:
        conn.execute(
            insert(Item),
            [
                {"id": 1, "sparse": PgSparseVector({0: 1.5, 4: -2}, 5), "bits": "0101"},
                {"id": 2, "sparse": {2: 3.0}, "bits": PgBit("1100")},
                {"id": 3, "sparse": [0, 0, 0, 7, 0], "bits": [True, True, True, False]},
                {"id": 4, "sparse": None, "bits": np.array([0, 0, 0, 1], dtype=bool)},
            ],
        )
        return [
            tuple(row) for row in conn.execute(select(Item.sparse, Item.bits).order_by(Item.id))
        ]

    rows = bits_as_text(db.run(work))
    assert rows == [
        (PgSparseVector({0: 1.5, 4: -2.0}, 5), "0101"),
        (PgSparseVector({2: 3.0}, 5), "1100"),
        (PgSparseVector({3: 7.0}, 5), "1110"),
        (None, "0001"),
    ]
    assert all(isinstance(bits, str) for _, bits in rows)


def test_distance_operators_in_select_where_and_order_by(db: DriverDatabase) -> None:
    def work(conn: Connection) -> None:
        conn.execute(
            insert(Item),
            [
                {"id": 1, "small": [1, 0, 0], "half_list": [1, 0, 0], "bits": "1000"},
                {"id": 2, "small": [0, 1, 0], "half_list": [0, 1, 0], "bits": "0111"},
                {"id": 3, "small": [0.5, 0.5, 0], "half_list": [0.5, 0.5, 0], "bits": "1100"},
            ],
        )
        query = [1, 0.1, 0]
        for column in (Item.small, Item.half_list):
            for name in ("cosine_distance", "l2_distance", "max_inner_product", "l1_distance"):
                expression = getattr(column, name)(query)
                ordered = scalars(conn, select(Item.id).order_by(expression, Item.id))
                assert ordered[0] == 1, name
                distances = scalars(conn, select(expression).order_by(Item.id))
                assert all(isinstance(d, float) for d in distances), name
        close = scalars(conn, select(Item.id).where(Item.small.l2_distance([1, 0, 0]) < 0.8))
        assert sorted(close) == [1, 3]
        by_hamming = conn.execute(
            select(Item.id, Item.bits.hamming_distance("1000")).order_by(Item.id)
        ).all()
        assert [tuple(row) for row in by_hamming] == [(1, 0.0), (2, 4.0), (3, 1.0)]
        jaccard = scalars(
            conn, select(Item.id).where(Item.bits.jaccard_distance("1100") < 0.6).order_by(Item.id)
        )
        assert jaccard == [1, 3]

    db.run(work)


def test_avg_and_sum_keep_the_vector_type(db: DriverDatabase) -> None:
    def work(conn: Connection) -> tuple[object, ...]:
        conn.execute(
            insert(Item),
            [
                {"id": 1, "small": [1, 2, 3], "half": [1, 1, 1, 1]},
                {"id": 2, "small": [3, 4, 5], "half": [3, 3, 3, 3]},
            ],
        )
        return tuple(conn.execute(select(avg(Item.small), sum(Item.small), avg(Item.half))).one())

    mean, total, half_mean = db.run(work)
    assert mean == [2.0, 3.0, 4.0]
    assert total == [4.0, 6.0, 8.0]
    assert isinstance(half_mean, np.ndarray)  # avg(HalfVec(as_numpy=True)) reads numpy
    np.testing.assert_array_equal(half_mean, [2, 2, 2, 2])
    assert isinstance(avg(Item.small).type, Vector)
    assert isinstance(sum(Item.sparse).type, SparseVec)


def test_arrays_of_vectors(db: DriverDatabase) -> None:
    def work(conn: Connection) -> list[object]:
        conn.execute(
            insert(Item),
            [
                {"id": 1, "many": [[1, 2, 3], np.array([4, 5, 6])]},
                {"id": 2, "many": []},
            ],
        )
        return scalars(conn, select(Item.many).order_by(Item.id))

    assert db.run(work) == [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], []]


def test_literal_binds_render_runnable_sql(db: DriverDatabase) -> None:
    def work(conn: Connection) -> None:
        conn.execute(
            insert(Item),
            [
                {"id": 1, "small": [1, 0, 0], "half_list": [1, 0, 0], "sparse": {0: 1}},
                {"id": 2, "small": [0, 1, 0], "half_list": [0, 1, 0], "sparse": {1: 1}},
            ],
        )
        stmt = (
            select(Item.id)
            .where(Item.sparse.cosine_distance({0: 1.0}) < 2)
            .order_by(Item.small.l2_distance([1, 0, 0]), Item.half_list.l1_distance([1, 0, 0]))
        )
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        # As pgvector.sqlalchemy renders them: no cast around a literal.
        assert "items.small <-> '[1.0,0.0,0.0]'" in sql
        assert "items.half_list <+> '[1.0,0.0,0.0]'" in sql
        assert "items.sparse <=> '{1:1.0}/5'" in sql
        assert "CAST" not in sql
        assert conn.execute(text(sql)).scalars().all() == [1, 2]
        bit_sql = str(
            select(literal("0101", BIT(4)).op("<~>")("0100")).compile(
                conn, compile_kwargs={"literal_binds": True}
            )
        )
        assert "B'0101'" in bit_sql
        assert conn.execute(text(bit_sql)).scalar() == 1

    db.run(work)


def test_bare_vector_literal_in_select_list(db: DriverDatabase) -> None:
    value = db.run(lambda conn: conn.execute(select(literal([1, 2, 3], Vector(3)))).scalar_one())
    assert value == [1.0, 2.0, 3.0]


def test_core_executemany_through_values_list(db: DriverDatabase) -> None:
    def work(conn: Connection) -> tuple[list[int], list[object]]:
        result = conn.execute(
            insert(Item).returning(Item.id, sort_by_parameter_order=True),
            [{"small": [i, i, i], "sparse": {i % 5: i + 1}} for i in range(50)],
        )
        ids = list(result.scalars().all())
        stored = conn.execute(select(Item.small, Item.sparse).order_by(Item.id)).all()
        return ids, [tuple(row) for row in stored]

    ids, stored = db.run(work)
    assert len(ids) == 50
    assert stored[49] == ([49.0, 49.0, 49.0], PgSparseVector({4: 50.0}, 5))


@pytest.mark.parametrize(
    ("column", "value", "error", "message"),
    [
        ("small", [[1, 2, 3]], vecorm.VectorElementTypeError, "not 'list'"),
        ("small", np.array([[1, 2, 3]]), vecorm.InvalidVector, "^expected ndim to be 1$"),
        ("small", "[1,2,3]", vecorm.InvalidVector, "^expected list or ndarray$"),
        ("small", ["a", "b", "c"], vecorm.InvalidVector, "could not convert string to float: 'a'"),
        ("half_list", [1, None, 3], vecorm.VectorElementTypeError, "not 'NoneType'"),
        ("sparse", {0: 1.0, "x": 2.0}, vecorm.VectorElementTypeError, "'<' not supported"),
        ("bits", [1, 2], vecorm.InvalidVector, r"^expected list\[bool\]$"),
    ],
)
def test_values_pgvector_refuses_fail_before_sql_with_its_message(
    db: DriverDatabase, column: str, value: object, error: type[Exception], message: str
) -> None:
    def work(session: Session) -> None:
        session.add(Item(**{column: value}))
        with pytest.raises(StatementError) as info:
            session.flush()
        assert isinstance(info.value.orig, error)
        assert isinstance(info.value.orig, ValueError | TypeError)
        assert re.search(message, str(info.value.orig)), info.value.orig
        session.rollback()

    db.session(work)
    assert db.run(lambda conn: conn.execute(text("SELECT count(*) FROM items")).scalar()) == 0


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("small", [1, 2], "expected 3 dimensions, not 2"),
        ("half_list", [1, 2], "expected 3 dimensions, not 2"),
        ("sparse", [1, 2], "expected 5 dimensions, not 2"),
        ("small", [1, float("nan"), 3], "NaN not allowed in vector"),
        ("small", [1, float("inf"), 3], "infinite value not allowed in vector"),
        ("small", [], "vector must have at least 1 dimension"),
    ],
)
def test_values_the_server_refuses_raise_its_data_error(
    db: DriverDatabase, column: str, value: object, message: str
) -> None:
    """As with pgvector.sqlalchemy, the server checks dimensions and finiteness (a DataError;
    SQLAlchemy's asyncpg adapter reports its base class, DBAPIError)."""

    def work(session: Session) -> None:
        session.add(Item(**{column: value}))
        with pytest.raises(DataError if db.driver != "asyncpg" else DBAPIError, match=message):
            session.flush()
        session.rollback()

    db.session(work)


def test_mixin_embedding_is_validated_on_assignment_naming_the_model() -> None:
    with pytest.raises(vecorm.DimensionMismatch, match="Doc.embedding expects 3 values, got 2"):
        Doc(body="x", embedding=[1.0, 2.0])
    with pytest.raises(vecorm.InvalidVector, match="Doc.embedding contains NaN"):
        Doc(body="x", embedding=np.array([1, np.nan, 2]))
    doc = Doc(body="x", embedding=[1, 2, 3])
    assert isinstance(doc.embedding, np.ndarray) and doc.embedding.dtype == np.float32


@pytest.mark.parametrize(
    "value",
    [
        np.array([1.0, np.nan, 2.0], dtype=np.float32),  # the fast path: float32 as it is
        np.array([np.inf, 1.0, 2.0], dtype=np.float32),
        np.array([1.0, 2.0, -np.inf], dtype=np.float32),
        np.array([1.0, np.nan, 2.0], dtype=">f4"),  # float32, not in native byte order
        np.array([1.0, 2.0, 1e300]),  # float64 that float32 cannot hold
        np.array([[1.0, np.nan, 2.0, 0.0]], dtype=np.float32)[0, ::1][:3],  # a view
    ],
)
def test_every_non_finite_vector_is_refused_whatever_its_array(value: Any) -> None:
    with pytest.raises(vecorm.InvalidVector, match="Doc.embedding contains NaN or infinity"):
        Doc(body="x", embedding=value)


def test_huge_finite_float32_values_are_kept() -> None:
    """Values whose squares overflow float32 are still finite: pgvector stores them."""
    huge = np.array([3e38, -3e38, 1e20], dtype=np.float32)
    doc = Doc(body="x", embedding=huge)
    assert doc.embedding.tolist() == huge.tolist()
    strided = np.arange(6, dtype=np.float32)[::2]  # not contiguous
    assert Doc(body="x", embedding=strided).embedding.tolist() == [0.0, 2.0, 4.0]


def test_reflection_sees_vector_types_with_dimensions(db: DriverDatabase) -> None:
    def work(conn: Connection) -> Table:
        return Table("items", MetaData(), autoload_with=conn)

    reflected = db.run(work)
    assert isinstance(reflected.c.small.type, Vector) and reflected.c.small.type.dim == 3
    assert isinstance(reflected.c.half.type, HalfVec) and reflected.c.half.type.dim == 4
    assert isinstance(reflected.c.anydim.type, Vector) and reflected.c.anydim.type.dim is None
    assert isinstance(reflected.c.sparse.type, SparseVec) and reflected.c.sparse.type.dim == 5
    assert isinstance(reflected.c.bits.type, BIT) and reflected.c.bits.type.length == 4
    assert isinstance(reflected.c.many.type, ARRAY)
    assert isinstance(reflected.c.many.type.item_type, Vector)
    # Reflected types bind and compare like declared ones.
    db.run(lambda conn: conn.execute(insert(reflected), {"id": 9, "small": [1, 2, 3]}))
    nearest = db.run(
        lambda conn: conn.execute(
            select(reflected.c.id).order_by(reflected.c.small.cosine_distance([1, 2, 3]))
        ).scalar()
    )
    assert nearest == 9


def test_metadata_reflect_and_inspector_emit_no_unknown_type_warning(db: DriverDatabase) -> None:
    # filterwarnings=error turns SQLAlchemy's "Did not recognize type" into a failure.
    def work(conn: Connection) -> dict[str, str]:
        metadata = MetaData()
        metadata.reflect(conn, only=["items"])
        return {c["name"]: repr(c["type"]) for c in inspect(conn).get_columns("items")}

    columns = db.run(work)
    assert columns["small"] == "Vector(dim=3)"
    assert columns["sparse"] == "SparseVec(dim=5)"
    assert columns["bits"] == "Bit(length=4)"


def test_values_are_sent_in_binary_on_psycopg3(vecorm_url: URL) -> None:
    with driver_database("psycopg", vecorm_url) as db:
        db.run(Base.metadata.create_all)
        sent: list[object] = []

        @event.listens_for(db.engine, "before_cursor_execute")
        def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            sent.append(parameters)

        db.session(lambda session: (session.add(Item(small=[1, 2, 3])), session.commit()))
    params = sent[0]
    assert isinstance(params, dict)
    binary = params["small"]
    assert type(binary).__name__ == "BinaryVectorParam"
    assert binary.payload == bytes.fromhex("00030000 3f800000 40000000 40400000")


def _python_lines(work: Callable[[], object]) -> int:
    """How many Python lines run (loop iterations count, backward jumps are line events)."""
    lines = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return trace

    sys.settrace(trace)
    try:
        work()
    finally:
        sys.settrace(None)
    return lines


def test_binding_1536_floats_is_constant_python_work_on_psycopg3() -> None:
    from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

    vector = np.random.default_rng(0).standard_normal(1536).astype(np.float32)
    process = Vector(1536).bind_processor(psycopg_dialect())
    stock = PgVECTOR(1536).bind_processor(postgresql.dialect())
    vecorm_lines = _python_lines(lambda: process(vector))
    stock_lines = _python_lines(lambda: stock(vector.tolist()))
    assert vecorm_lines < 40  # a handful of numpy calls, none per element
    assert stock_lines > 1536  # the text path formats every float in Python


def test_other_tables_unaffected_by_binary_adapter(db: DriverDatabase) -> None:
    plain = Table("plain", MetaData(), Column("id", Integer, primary_key=True))

    def work(conn: Connection) -> list[object]:
        plain.create(conn)
        conn.execute(insert(plain), [{"id": 1}, {"id": 2}])
        return scalars(conn, select(plain.c.id).order_by(plain.c.id))

    assert db.run(work) == [1, 2]
