"""BM25 statistics of a table whose schema, table and key names need quoting (mixed case, a
space, a double quote, a ``%`` that a pyformat driver reads as a placeholder, a ``:name`` that
textual SQL reads as one) and whose columns are named like SQL keywords: created, written,
searched, migrated and dropped end to end, every identifier quoted by the dialect."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import String, delete, func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
import vecorm.alembic  # registers op.create_bm25_statistics
from vecorm import bm25
from vecorm.alembic.bm25 import _current_definitions, _drops_for
from vecorm.search.bm25 import ddl

SCHEMA = 'Odd "Schema" 5% :Name'
TABLE = 'Mixed %Case "Notes"'


class Base(DeclarativeBase):
    pass


class OddNote(vecorm.Searchable, Base):
    __tablename__ = TABLE
    __table_args__ = {"schema": SCHEMA}
    __vecorm__ = vecorm.SearchConfig(fields=("select", "from_"), dimensions=4, index=None)

    user: Mapped[int] = mapped_column("user", primary_key=True)
    order: Mapped[int] = mapped_column("Order", primary_key=True)
    select: Mapped[str] = mapped_column("select", String(200))
    from_: Mapped[str] = mapped_column("from")


BODIES = {
    (1, 1): ("vacuum", "vacuum the table"),
    (1, 2): ("lock", "a lock wait"),
    (2, 1): ("index", "vacuum an index"),
    (2, 2): ("wal", "archive the wal"),
}


@pytest.fixture
def engine(vecorm_engine: Engine) -> Iterator[Engine]:
    preparer = vecorm_engine.dialect.identifier_preparer
    with vecorm_engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {preparer.quote_schema(SCHEMA)}")
    Base.metadata.create_all(vecorm_engine)
    yield vecorm_engine


def functions(conn: Connection) -> list[str]:
    return list(
        conn.scalars(
            text(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = :schema ORDER BY p.proname"
            ),
            {"schema": SCHEMA},
        )
    )


def relations(conn: Connection, kind: str) -> list[str]:
    return list(
        conn.scalars(
            text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND c.relkind = :kind ORDER BY c.relname"
            ),
            {"schema": SCHEMA, "kind": kind},
        )
    )


def scores(session: Session, words: str) -> dict[tuple[int, int], float]:
    rows = session.execute(bm25.scores(OddNote, words, depth=100)).all()
    return {(row.pk_0, row.pk_1): row.score for row in rows}


def counted_documents(session: Session) -> int:
    tables = bm25.side_tables(OddNote)
    counts = [
        session.scalar(select(func.sum(side.c.df)).where(side.c.term == ""))
        for side in (tables.terms, tables.deltas)
    ]
    return int(sum(count or 0 for count in counts))


def test_create_write_search_drop(engine: Engine) -> None:
    with engine.connect() as conn:
        assert functions(conn) == sorted(
            ddl.object_name(TABLE, event) for event in ddl.FUNCTION_EVENTS
        )
        assert set(relations(conn, "S")) == {
            ddl.object_name(TABLE, "statements"),
            ddl.object_name(TABLE, "avgdl"),
            ddl.object_name(TABLE, "deltas_id_seq"),  # the deltas' identity
        }
        configs = conn.scalars(
            text(
                "SELECT p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = :schema"
            ),
            {"schema": SCHEMA},
        ).all()
        assert configs and all(config == ["search_path=pg_catalog, pg_temp"] for config in configs)

    with Session(engine) as session:
        # ORM, Core and raw SQL writes all reach the triggers.
        session.add(OddNote(user=1, order=1, select="vacuum", from_="vacuum the table"))
        session.flush()
        session.execute(
            insert(OddNote),
            [
                {"user": user, "order": order, "select": title, "from_": body}
                for (user, order), (title, body) in BODIES.items()
                if (user, order) != (1, 1)
            ],
        )
        preparer = engine.dialect.identifier_preparer
        qualified = f"{preparer.quote_schema(SCHEMA)}.{preparer.quote(TABLE)}"
        session.connection().exec_driver_sql(  # the preparer escaped the % for the driver
            f'UPDATE {qualified} SET "from" = \'vacuum lock vacuum\' WHERE "user" = 2'
        )
        session.execute(update(OddNote).where(OddNote.user == 1).values(from_="lock"))
        session.execute(delete(OddNote).where(OddNote.user == 1, OddNote.order == 2))
        assert counted_documents(session) == 3
        found = scores(session, "vacuum lock")
        assert set(found) == {(1, 1), (2, 1), (2, 2)}
        # The statistics the triggers kept equal those rebuilt from the rows.
        bm25.compact(session, OddNote)
        assert scores(session, "vacuum lock") == pytest.approx(found)
        bm25.rebuild(session, OddNote)
        assert scores(session, "vacuum lock") == pytest.approx(found)
        ranked = session.execute(OddNote.text_search("vacuum", k=5)).all()
        assert (ranked[0][0].user, ranked[0][0].order) == (2, 1)
        session.commit()

    Base.metadata.drop_all(engine)
    with engine.connect() as conn:
        assert functions(conn) == []
        assert relations(conn, "S") == [] and relations(conn, "r") == []


def test_migration_operations_drop_restore_and_put_back(engine: Engine) -> None:
    tables = bm25.side_tables(OddNote)
    with Session(engine) as session, session.begin():
        session.execute(
            insert(OddNote),
            [
                {"user": user, "order": order, "select": title, "from_": body}
                for (user, order), (title, body) in BODIES.items()
            ],
        )
    with engine.begin() as conn:
        previous = _current_definitions(conn, TABLE, SCHEMA)
        assert len(previous) == 6 + 4 + 4 + 1  # functions, trigger drops + creates, comment
        op = Operations(MigrationContext.configure(conn))
        op.drop_bm25_statistics(TABLE, _drops_for(TABLE, SCHEMA), schema=SCHEMA)  # type: ignore[attr-defined]
        assert functions(conn) == []
        op.create_bm25_statistics(  # type: ignore[attr-defined]
            TABLE, bm25.create_statements(tables, SCHEMA), schema=SCHEMA
        )
        assert len(functions(conn)) == 6
        op.create_bm25_statistics(TABLE, previous, schema=SCHEMA, rebuild=False)  # type: ignore[attr-defined]
        assert _current_definitions(conn, TABLE, SCHEMA) == previous  # a downgrade's round trip
    with Session(engine) as session:
        assert counted_documents(session) == 4  # rebuilt by the create operation
        assert set(scores(session, "vacuum")) == {(1, 1), (2, 1)}


def test_a_failing_statement_names_its_object(engine: Engine) -> None:
    reset = ddl.ResetSequence(TABLE, SCHEMA, "avgdl")
    assert (
        reset.description == 'sequence "Odd ""Schema"" 5% :Name"."Mixed %Case ""Notes""_bm25_avgdl"'
    )
    with engine.begin() as conn:
        ddl.run(conn, [ddl.DropSequence(TABLE, SCHEMA, "avgdl")])
    with engine.connect() as conn, pytest.raises(ProgrammingError) as raised:
        ddl.run(conn, [reset])
    assert raised.value.__notes__ == [f"vecorm: while running the BM25 DDL of {reset.description}"]


def test_a_failing_migration_statement_names_its_object(engine: Engine) -> None:
    tables = bm25.side_tables(OddNote)
    with engine.begin() as conn:
        tables.postings.drop(conn)
    statements = bm25.create_statements(tables, SCHEMA)
    with engine.begin() as conn, pytest.raises(ProgrammingError) as raised:
        op = Operations(MigrationContext.configure(conn))
        op.create_bm25_statistics(TABLE, statements, schema=SCHEMA)  # type: ignore[attr-defined]
    replica_identity = ddl.SetReplicaIdentity(TABLE, SCHEMA).sql()
    assert raised.value.__notes__ == [
        f"vecorm: in op.create_bm25_statistics({TABLE!r}): {replica_identity}"
    ]


def test_doctor_finds_the_table_and_its_statistics(engine: Engine) -> None:
    """``vecorm doctor`` names the table and the side tables quoted, as ``to_regclass`` reads
    them (it reported the table missing before)."""
    from vecorm.tools.doctor import diagnose

    with Session(engine) as session:
        findings = [(f.status, f.message) for f in diagnose(session, [OddNote])]
    assert not [finding for finding in findings if finding[0] == "fail"], findings
    assert ("ok", "BM25 statistics tables, triggers and functions up to date") in findings
