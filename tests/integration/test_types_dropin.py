"""vecorm.types as a drop-in for pgvector.sqlalchemy: same code, same outcome, on every driver.

Pinned to **pgvector-python 0.5.1** (the installed ``pgvector`` package; ``pip show pgvector``).
Every behaviour its own SQLAlchemy and SQLModel tests check (``tests/test_sqlalchemy.py``,
``tests/test_sqlmodel.py`` upstream; nothing is fetched or vendored, these are our own
equivalents) runs once with ``pgvector.sqlalchemy`` and once with ``vecorm.types`` (the only
change a user makes is that import), and the two outcomes must be identical: the rows, the
exception (SQLAlchemy's class, the builtin class underneath and its text), and the SQL
``literal_binds`` renders. The engines are pgvector's: psycopg 3, psycopg 2 (each with and
without pgvector's ``register_vector`` connect hook), psycopg 3 async and asyncpg (pg8000 when
installed).

``pgvector_style_block`` is a longer session written the way pgvector-python's README uses
the types; its twenty results are compared the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pgvector.sqlalchemy
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pgvector import HalfVector, SparseVector, Vector
from pgvector import HalfVector as PgHalfVector
from sqlalchemy import (
    ARRAY,
    URL,
    Column,
    Index,
    Integer,
    MetaData,
    Table,
    delete,
    event,
    func,
    insert,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import CompileError, DBAPIError, StatementError
from sqlalchemy.ext.automap import automap_base
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm.types
from tests.integration.driver_matrix import (
    DRIVERS,
    DriverDatabase,
    bits_as_text,
    driver_database,
)

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
    assert bits_as_text(ours[0][0]) == (
        1,
        [1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0],
        "000",
        SparseVector([1, 1, 1]),
    )
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
    """The server refuses the value with either import (vecorm sends it, as pgvector does)."""
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


# --- pgvector-python's SQLAlchemy tests, each run with both imports -------------------------

#: pgvector's engines: (driver, with pgvector's register_vector connect hook).
ENGINES = [(driver, False) for driver in DRIVERS] + [
    ("psycopg", True),
    ("psycopg2", True),
    ("psycopg_async", True),
]
TABLE = "sqlalchemy_orm_item"


def _register_pgvector(driver: str) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        if driver == "psycopg":
            from pgvector.psycopg import register_vector

            register_vector(dbapi_connection)
        elif driver == "psycopg_async":
            from pgvector.psycopg import register_vector_async

            dbapi_connection.run_async(register_vector_async)
        else:
            from pgvector.psycopg2 import register_vector as register_psycopg2

            register_psycopg2(dbapi_connection)

    return on_connect


@pytest.fixture(params=ENGINES, ids=lambda engine: engine[0] + ("+register_vector" * engine[1]))
def engine_db(request: pytest.FixtureRequest, vecorm_url: URL) -> Iterator[DriverDatabase]:
    driver, registered = request.param
    with driver_database(driver, vecorm_url) as database:
        if registered:
            event.listen(database.engine, "connect", _register_pgvector(driver))
        database.registered = registered  # type: ignore[attr-defined]
        yield database


def orm_model(types: ModuleType) -> Any:
    """pgvector's test model, with its three indexes, declared with ``types``."""
    VECTOR, HALFVEC, SPARSEVEC, BIT = types.VECTOR, types.HALFVEC, types.SPARSEVEC, types.BIT

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = TABLE
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        embedding: Mapped[list[float] | None] = mapped_column(VECTOR(3))
        half_embedding: Mapped[list[float] | None] = mapped_column(HALFVEC(3))
        binary_embedding: Mapped[Any | None] = mapped_column(BIT(3))
        sparse_embedding: Mapped[SparseVector | None] = mapped_column(SPARSEVEC(3))
        embeddings: Mapped[Any | None] = mapped_column(ARRAY(VECTOR(3), dimensions=1))
        half_embeddings: Mapped[Any | None] = mapped_column(ARRAY(HALFVEC(3), dimensions=1))

    Index(
        "sqlalchemy_orm_index",
        Item.embedding,
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "vector_l2_ops"},
    )
    Index(
        "sqlalchemy_orm_half_precision_index",
        func.cast(Item.embedding, HALFVEC(3)).label("embedding"),
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "halfvec_l2_ops"},
    )
    Index(
        "sqlalchemy_orm_binary_quantize_index",
        func.cast(func.binary_quantize(Item.embedding), BIT(3)).label("embedding"),
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "bit_hamming_ops"},
    )
    return Item


def seed(Item: Any, session: Session) -> None:
    session.add(
        Item(
            id=1,
            embedding=[1, 1, 1],
            half_embedding=[1, 1, 1],
            binary_embedding="000",
            sparse_embedding=SparseVector([1, 1, 1]),
        )
    )
    session.add(
        Item(
            id=2,
            embedding=[2, 2, 2],
            half_embedding=[2, 2, 2],
            binary_embedding="101",
            sparse_embedding=SparseVector([2, 2, 2]),
        )
    )
    session.add(
        Item(
            id=3,
            embedding=[1, 1, 2],
            half_embedding=[1, 1, 2],
            binary_embedding="111",
            sparse_embedding=SparseVector([1, 1, 2]),
        )
    )
    session.flush()


Case = Callable[[ModuleType, Any, Session], Any]
NOT_CHECKED = object()

#: pgvector's expected order for each comparator with [1, 1, 1] (and '101' for bit).
ORDERS = {
    "l2_distance": [1, 3, 2],
    "max_inner_product": [2, 3, 1],
    "cosine_distance": [1, 2, 3],
    "l1_distance": [1, 3, 2],
    "hamming_distance": [2, 3, 1],
    "jaccard_distance": [2, 3, 1],
}


def _order_case(column: str, comparator: str, legacy: bool) -> Case:
    def case(types: ModuleType, Item: Any, session: Session) -> Any:
        seed(Item, session)
        operand = "101" if column == "binary_embedding" else [1, 1, 1]
        distance = getattr(getattr(Item, column), comparator)(operand)
        if legacy:
            return [item.id for item in session.query(Item).order_by(distance).all()]
        return [item.id for item in session.scalars(select(Item).order_by(distance))]

    return case


def _round_trip(column: str, value: Any) -> Case:
    def case(types: ModuleType, Item: Any, session: Session) -> Any:
        session.add(Item(id=1, **{column: value}))
        session.flush()
        session.expire_all()
        return getattr(session.get_one(Item, 1), column)

    return case


def _refused(**values: Any) -> Case:
    def case(types: ModuleType, Item: Any, session: Session) -> Any:
        session.add(Item(**values))
        session.flush()

    return case


def case_orm(types: ModuleType, Item: Any, session: Session) -> Any:
    session.add_all([Item(embedding=[1.5, 2, 3]), Item(embedding=[4, 5, 6]), Item()])
    session.flush()
    session.expire_all()
    return [item.embedding for item in session.scalars(select(Item).order_by(Item.id))]


def case_subquery(types: ModuleType, Item: Any, session: Session) -> Any:
    seed(Item, session)
    subquery = select(Item.embedding).filter_by(id=1).scalar_subquery()
    legacy = session.query(Item).order_by(Item.embedding.l2_distance(subquery)).all()
    orm = session.scalars(select(Item).order_by(Item.embedding.l2_distance(subquery)))
    return [item.id for item in legacy], [item.id for item in orm]


def case_filter(types: ModuleType, Item: Any, session: Session) -> Any:
    seed(Item, session)
    legacy = session.query(Item).filter(Item.embedding.l2_distance([1, 1, 1]) < 1).all()
    orm = session.scalars(select(Item).filter(Item.embedding.l2_distance([1, 1, 1]) < 1))
    return [item.id for item in legacy], [item.id for item in orm]


def case_select(types: ModuleType, Item: Any, session: Session) -> Any:
    session.add(Item(embedding=[2, 3, 3]))
    first = session.query(Item.embedding.l2_distance([1, 1, 1])).first()
    return tuple(first or ()), session.scalars(select(Item.embedding.l2_distance([1, 1, 1]))).all()


def case_aggregates(types: ModuleType, Item: Any, session: Session) -> Any:
    found = []
    for column in (Item.embedding, Item.half_embedding):
        for aggregate in (types.avg, types.sum):
            found.append(session.scalars(select(aggregate(column))).first())
    session.add(Item(embedding=[1, 2, 3], half_embedding=[1, 2, 3]))
    session.add(Item(embedding=[4, 5, 6], half_embedding=[4, 5, 6]))
    session.flush()
    for column in (Item.embedding, Item.half_embedding):
        for aggregate in (types.avg, types.sum):
            found.append(session.query(aggregate(column)).one()[0])
    return found


def case_inspect(types: ModuleType, Item: Any, session: Session) -> Any:
    columns = inspect(session.connection()).get_columns(TABLE)
    reflected = columns[1]["type"]
    return isinstance(reflected, pgvector.sqlalchemy.VECTOR), reflected.dim, str(reflected)


def case_literal_binds(types: ModuleType, Item: Any, session: Session) -> Any:
    seed(Item, session)
    conn = session.connection()
    rendered = []
    for distance in (
        Item.embedding.l2_distance([1, 2, 3]),
        Item.embedding.cosine_distance(np.array([0.1, 0.2, 0.3])),
        Item.half_embedding.max_inner_product([1.5, 2, 3]),
        Item.sparse_embedding.l1_distance(SparseVector({0: 1.0, 2: 3.0}, 3)),
        Item.sparse_embedding.l2_distance([1, 0, 2]),
    ):
        stmt = select(Item.id).order_by(distance, Item.id)
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        rendered.append((sql, session.scalars(text(sql)).all()))
    return rendered


def case_literal_of_a_string(types: ModuleType, Item: Any, session: Session) -> Any:
    stmt = select(Item.id).order_by(Item.embedding.l2_distance("[1,1,1]"))
    return str(stmt.compile(session.connection(), compile_kwargs={"literal_binds": True}))


def case_insert(types: ModuleType, Item: Any, session: Session) -> Any:
    session.execute(insert(Item).values(embedding=[1, 2, 3]))
    session.execute(insert(Item), [{"embedding": [4, 5, 6]}])
    return session.scalars(select(Item.embedding).order_by(Item.id)).all()


def case_automap(types: ModuleType, Item: Any, session: Session) -> Any:
    metadata = MetaData()
    metadata.reflect(session.connection(), only=[TABLE])
    AutoBase = automap_base(metadata=metadata)
    AutoBase.prepare()
    AutoItem = AutoBase.classes[TABLE]
    session.execute(insert(AutoItem), [{"embedding": [1, 2, 3]}])
    item = session.query(AutoItem).first()
    return item.embedding


def case_half_precision(types: ModuleType, Item: Any, session: Session) -> Any:
    seed(Item, session)
    distance = func.cast(Item.embedding, types.HALFVEC(3)).l2_distance([1, 1, 1])
    return [item.id for item in session.query(Item).order_by(distance).all()]


def case_binary_quantize(types: ModuleType, Item: Any, session: Session) -> Any:
    session.add(Item(id=1, embedding=[-1, -2, -3]))
    session.add(Item(id=2, embedding=[1, -2, 3]))
    session.add(Item(id=3, embedding=[1, 2, 3]))
    session.flush()
    distance = func.cast(func.binary_quantize(Item.embedding), types.BIT(3)).hamming_distance(
        func.binary_quantize(func.cast([3, -1, 2], types.VECTOR(3)))
    )
    ordered = [item.id for item in session.query(Item).order_by(distance).all()]
    subquery = session.query(Item).order_by(distance).limit(20).subquery()
    reranked = (
        session.query(subquery)
        .order_by(subquery.c.embedding.cosine_distance([3, -1, 2]))
        .limit(5)
        .all()
    )
    return ordered, [row.id for row in reranked]


def case_core_indexes(types: ModuleType, Item: Any, session: Session) -> Any:
    metadata = MetaData()
    table = Table(
        "sqlalchemy_core_item",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("embedding", types.VECTOR(3)),
        Column("half_embedding", types.HALFVEC(3)),
        Column("binary_embedding", types.BIT(3)),
        Column("sparse_embedding", types.SPARSEVEC(3)),
        Column("embeddings", ARRAY(types.VECTOR(3))),
    )
    conn = session.connection()
    metadata.create_all(conn)
    Index(
        "sqlalchemy_core_ivfflat_index",
        table.c.embedding,
        postgresql_using="ivfflat",
        postgresql_with={"lists": 1},
        postgresql_ops={"embedding": "vector_l2_ops"},
    ).create(conn)
    Index(
        "sqlalchemy_core_hnsw_index",
        table.c.embedding,
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "vector_l2_ops"},
    ).create(conn)
    definitions = conn.execute(
        text("SELECT indexdef FROM pg_indexes WHERE tablename LIKE 'sqlalchemy_%' ORDER BY 1")
    )
    return definitions.scalars().all()


def case_bit_as_asyncpg_bit_string(types: ModuleType, Item: Any, session: Session) -> Any:
    import asyncpg

    session.add(Item(id=1, binary_embedding=asyncpg.BitString("101")))
    session.add(Item(id=2, binary_embedding="101"))
    session.flush()
    session.expire_all()
    items = session.scalars(select(Item).order_by(Item.id))
    return [str(bits_as_text(item.binary_embedding)) for item in items]


def case_arrays(types: ModuleType, Item: Any, session: Session) -> Any:
    session.add(Item(id=1, embeddings=[[1, 2, 3], [4, 5, 6]]))
    session.add(Item(id=2, half_embeddings=[[1, 2, 3], [4, 5, 6]]))
    session.add(Item(id=3, embeddings=[np.array([1, 2, 3]), np.array([4, 5, 6])]))
    session.flush()
    session.expire_all()
    rows = session.scalars(select(Item).order_by(Item.id))
    return [(item.embeddings, item.half_embeddings) for item in rows]


#: name -> (the case, what pgvector-python's tests expect of it, or NOT_CHECKED).
CASES: dict[str, tuple[Case, Any]] = {
    "orm": (case_orm, [[1.5, 2, 3], [4, 5, 6], None]),
    "vector": (_round_trip("embedding", [1, 2, 3]), [1, 2, 3]),
    "halfvec": (_round_trip("half_embedding", [1, 2, 3]), [1, 2, 3]),
    "bit": (_round_trip("binary_embedding", "101"), "101"),
    "sparsevec": (_round_trip("sparse_embedding", [1, 2, 3]), SparseVector([1, 2, 3])),
    "numpy vector": (_round_trip("embedding", np.array([1.5, 2, 3])), [1.5, 2, 3]),
    "Vector value": (_round_trip("embedding", Vector([1, 2, 3])), [1, 2, 3]),
    "HalfVector value": (_round_trip("half_embedding", HalfVector([1, 2, 3])), [1, 2, 3]),
    "numeric strings": (_round_trip("embedding", ["1", "2.5", "3"]), [1, 2.5, 3]),
    **{
        f"{column} {comparator}{' legacy' * legacy}": (
            _order_case(column, comparator, legacy),
            ORDERS[comparator],
        )
        for column, comparators in (
            ("embedding", ("l2_distance", "max_inner_product", "cosine_distance", "l1_distance")),
            ("half_embedding", ("l2_distance", "max_inner_product", "cosine_distance")),
            ("half_embedding", ("l1_distance",)),
            ("sparse_embedding", ("l2_distance", "max_inner_product", "cosine_distance")),
            ("sparse_embedding", ("l1_distance",)),
            ("binary_embedding", ("hamming_distance", "jaccard_distance")),
        )
        for comparator in comparators
        for legacy in (False, True)
    },
    "subquery": (case_subquery, ([1, 3, 2], [1, 3, 2])),
    "filter": (case_filter, ([1], [1])),
    "select": (case_select, ((3,), [3])),
    "avg and sum": (
        case_aggregates,
        [None] * 4 + [[2.5, 3.5, 4.5], [5, 7, 9], [2.5, 3.5, 4.5], [5, 7, 9]],
    ),
    "inspect": (case_inspect, (True, 3, "VECTOR(3)")),
    "literal binds": (case_literal_binds, NOT_CHECKED),
    "literal binds of a string": (case_literal_of_a_string, NOT_CHECKED),
    "insert": (case_insert, [[1, 2, 3], [4, 5, 6]]),
    "automap": (case_automap, [1, 2, 3]),
    "half precision": (case_half_precision, [1, 3, 2]),
    "binary quantize": (case_binary_quantize, ([2, 3, 1], [2, 3, 1])),
    "core indexes": (case_core_indexes, NOT_CHECKED),
    # Refused values: the same exception (class, builtin class underneath, text) either way.
    "bad dimensions": (_refused(embedding=[1, 2]), NOT_CHECKED),
    "bad ndim": (_refused(embedding=np.array([[1, 2, 3]])), NOT_CHECKED),
    "bad dtype": (_refused(embedding=np.array(["one", "two", "three"])), NOT_CHECKED),
    "string element": (_refused(embedding=[1, "two", 3]), NOT_CHECKED),
    "None element": (_refused(embedding=[1, None, 3]), NOT_CHECKED),
    "nested list": (_refused(embedding=[[1, 2], [3, 4]]), NOT_CHECKED),
    "not a list": (_refused(embedding=5), NOT_CHECKED),
    "a string": (_refused(embedding="[1,2,3]"), NOT_CHECKED),
    "HalfVector into vector": (_refused(embedding=HalfVector([1, 2, 3])), NOT_CHECKED),
    "Vector into halfvec": (_refused(half_embedding=Vector([1, 2, 3])), NOT_CHECKED),
    "empty vector": (_refused(embedding=[]), NOT_CHECKED),
    "NaN": (_refused(embedding=[1, float("nan"), 3]), NOT_CHECKED),
    "infinity": (_refused(half_embedding=np.array([1, np.inf, 3])), NOT_CHECKED),
    "halfvec bad ndim": (_refused(half_embedding=np.array([[1, 2, 3]])), NOT_CHECKED),
    "halfvec bad dimensions": (_refused(half_embedding=[1, 2, 3, 4]), NOT_CHECKED),
    "sparsevec bad dimensions": (_refused(sparse_embedding=[1, 2]), NOT_CHECKED),
    "sparsevec string": (_refused(sparse_embedding="abc"), NOT_CHECKED),
    "sparsevec 2-d": (_refused(sparse_embedding=np.array([[1, 2, 3], [1, 2, 3]])), NOT_CHECKED),
    "sparsevec None element": (_refused(sparse_embedding=[1, None, 3]), NOT_CHECKED),
    "bit bad digit": (_refused(binary_embedding="1x1"), NOT_CHECKED),
    "bit too long": (_refused(binary_embedding="1010"), NOT_CHECKED),
}


def _outcome(db: DriverDatabase, work: Callable[[Connection], Any]) -> Any:
    """What ``work`` returned, or the exception it raised, in comparable form."""
    try:
        return ("returned", db.run(work))
    except Exception as exc:
        orig = getattr(exc, "orig", None)
        if isinstance(exc, DBAPIError):  # the server's primary message (its context differs)
            return ("raised", type(exc), type(orig), str(orig).splitlines()[0])
        return ("raised", type(exc), type(orig), str(orig) if orig is not None else str(exc))


def _same(stock: Any, ours: Any) -> bool:
    """Equal, or the same exception: our original error is pgvector's class (or a subclass)."""
    if stock[0] == "raised" and ours[0] == "raised":
        _, stock_class, stock_orig, stock_text = stock
        _, our_class, our_orig, our_text = ours
        return (
            our_class is stock_class
            and isinstance(our_orig, type)
            and issubclass(our_orig, stock_orig)
            and our_text == stock_text
        )
    return bool(stock == ours)


def run_cases(db: DriverDatabase, types: ModuleType, names: list[str]) -> dict[str, Any]:
    Item = orm_model(types)
    db.run(Item.metadata.create_all)
    found = {}
    for name in names:
        case = CASES[name][0] if name in CASES else EXTRA_CASES[name]

        def work(conn: Connection, case: Case = case) -> Any:
            conn.execute(delete(Item))  # as pgvector's setup_method
            with Session(bind=conn) as session:
                return case(types, Item, session)

        found[name] = _outcome(db, work)
    db.run(lambda conn: conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_core_item")))
    db.run(Item.metadata.drop_all)
    return found


EXTRA_CASES: dict[str, Case] = {
    "bit as asyncpg.BitString": case_bit_as_asyncpg_bit_string,
    "arrays": case_arrays,
}


def test_pgvector_sqlalchemy_suite_same_outcome(engine_db: DriverDatabase) -> None:
    names = list(CASES)
    if engine_db.driver == "asyncpg":
        names.append("bit as asyncpg.BitString")
    if engine_db.driver == "asyncpg" or engine_db.registered:  # type: ignore[attr-defined]
        names.append("arrays")  # pgvector's array engines
    stock = run_cases(engine_db, pgvector.sqlalchemy, names)
    ours = run_cases(engine_db, vecorm.types, names)
    differing = [name for name in names if not _same(stock[name], ours[name])]
    assert not differing, {name: (stock[name], ours[name]) for name in differing}
    # pgvector-python's own expectations hold (so two identical wrong answers cannot pass).
    for name, (_, expected) in CASES.items():
        if expected is not NOT_CHECKED:
            assert bits_as_text(stock[name]) == ("returned", expected), name
    for name in names:
        if name.startswith(("bad ", "string ", "None ", "nested", "not a", "a string", "NaN")):
            assert stock[name][0] == "raised", name
    # SQLAlchemy 2.0's asyncpg adaptor prefixes the driver's exception class.
    assert "expected 3 dimensions, not 2" in stock["bad dimensions"][3]
    assert stock["bad ndim"][2:] == (ValueError, "expected ndim to be 1")
    assert "could not convert string to float" in stock["bad dtype"][3]
    assert stock["literal binds"][1][0][0].endswith(
        "ORDER BY sqlalchemy_orm_item.embedding <-> '[1.0,2.0,3.0]', sqlalchemy_orm_item.id"
    )
    if "arrays" in names:
        assert stock["arrays"][1][0] == ([[1, 2, 3], [4, 5, 6]], None)
    if "bit as asyncpg.BitString" in names:
        assert bits_as_text(stock["bit as asyncpg.BitString"]) == ("returned", ["101", "101"])


def test_where_vecorm_types_take_more_than_pgvector() -> None:
    """The documented extras: a BIT literal renders (pgvector's raises CompileError), tuples
    and 0-based dicts bind (pgvector's refuse them), each with no other change."""
    # A text-binding driver (SQLAlchemy 2.1's default PostgreSQL driver, psycopg 3, binds binary).
    dialect = postgresql.psycopg2.dialect()
    for types, bit_sql in ((pgvector.sqlalchemy, None), (vecorm.types, "B'101'")):
        expression = literal("101", types.BIT(3)).op("<~>")("111")
        try:
            rendered: str | None = str(
                select(expression).compile(dialect=dialect, compile_kwargs={"literal_binds": True})
            )
        except CompileError:
            rendered = None
        assert (rendered is None) is (bit_sql is None)
        assert bit_sql is None or bit_sql in str(rendered)
    assert vecorm.types.VECTOR(3).bind_processor(dialect)((1, 2, 3)) == "[1.0,2.0,3.0]"
    assert vecorm.types.SPARSEVEC(5).bind_processor(dialect)({0: 1.0}) == "{1:1.0}/5"
    with pytest.raises(ValueError, match="^expected list or ndarray$"):
        pgvector.sqlalchemy.VECTOR(3).bind_processor(dialect)((1, 2, 3))
