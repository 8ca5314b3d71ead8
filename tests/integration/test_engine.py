"""vecorm.batch_inserts: executemany INSERTs sent as multi-row INSERTs, so that a table's
statement triggers (the BM25 statistics) fire once per batch, not once per row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import URL, Engine, event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import vecorm
from tests.integration.test_bm25 import assert_statistics_exact
from vecorm.ext.app import AppInstallation


class Base(DeclarativeBase):
    pass


class Memo(vecorm.Searchable, Base):
    __tablename__ = "memos"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3, index=None)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


def rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": n, "body": f"memo {n} about vacuum and word{n % 7}", "embedding": [1.0, n, 0.5]}
        for n in range(start, start + count)
    ]


class Inserts:
    """The INSERT statements an engine sends: (rows in the statement, parameter sets)."""

    def __init__(self, engine: Engine) -> None:
        self.seen: list[tuple[int, int]] = []
        event.listen(engine, "before_cursor_execute", self.record)

    def record(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO MEMOS"):
            # An executemany's parameters are a list of rows (a row per statement); a
            # multi-row INSERT's are one dict, with id__0, id__1 ... for its rows.
            if isinstance(parameters, list):
                self.seen.append((1, len(parameters)))
            else:
                self.seen.append((sum(1 for key in parameters if key.startswith("id__")), 1))


def trigger_calls(session: Session) -> int:
    """How many times the BM25 statement triggers ran (each advances the sequence once)."""
    called = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM memos_bm25_statements"
    return int(session.scalar(text(called)) or 0)


@pytest.fixture
def engine(vecorm_engine: Engine) -> Iterator[Engine]:
    """vecorm's engine, with the memos table."""
    Base.metadata.create_all(vecorm_engine)
    yield vecorm_engine
    Base.metadata.drop_all(vecorm_engine)


@pytest.fixture
def app_engine(vecorm_url: URL) -> Iterator[Engine]:
    """An engine the app made itself, with SQLAlchemy's defaults."""
    engine = sqlalchemy.create_engine(vecorm_url.set(drivername="postgresql+psycopg"))
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def test_vecorm_engines_batch_bulk_and_unit_of_work_inserts(engine: Engine) -> None:
    inserts = Inserts(engine)
    with Session(engine) as session:
        before = trigger_calls(session)
        session.execute(insert(Memo), rows(450))  # ORM bulk insert
        session.add_all([Memo(**row) for row in rows(250, start=1000)])  # unit of work
        session.commit()
        # 200 rows per statement (vecorm.engine.INSERT_PAGE_SIZE), one trigger call each.
        assert inserts.seen == [(200, 1), (200, 1), (50, 1), (200, 1), (50, 1)]
        assert trigger_calls(session) - before == 5
        assert session.scalar(select(sqlalchemy.func.count()).select_from(Memo)) == 700
        assert_statistics_exact(session, Memo)


def test_an_app_engine_sends_a_row_per_statement_until_batched(app_engine: Engine) -> None:
    inserts = Inserts(app_engine)
    with Session(app_engine) as session:
        before = trigger_calls(session)
        session.execute(insert(Memo), rows(30))
        session.commit()
        assert inserts.seen == [(1, 30)]  # one executemany: an INSERT (and trigger) per row
        assert trigger_calls(session) - before == 30
    # Compiled before the switch, the INSERT is compiled again after it.
    assert vecorm.batch_inserts(app_engine) is False
    with Session(app_engine) as session:
        before = trigger_calls(session)
        session.execute(insert(Memo), rows(30, start=100))
        session.commit()
        assert inserts.seen[1:] == [(30, 1)]
        assert trigger_calls(session) - before == 1
        assert_statistics_exact(session, Memo)
    assert vecorm.batch_inserts(app_engine) is True  # already on: nothing changes
    assert vecorm.batch_inserts(app_engine, False) is True  # undone
    with Session(app_engine) as session:
        session.execute(insert(Memo), rows(3, start=200))
        session.commit()
    assert inserts.seen[2:] == [(1, 3)]


def test_a_batch_with_a_bad_row_writes_nothing(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(insert(Memo), rows(5))
        session.commit()
        with pytest.raises(sqlalchemy.exc.IntegrityError, match="memos_pkey"):
            session.execute(insert(Memo), rows(10))  # ids 0-4 exist already
        session.rollback()
        assert session.scalar(select(sqlalchemy.func.count()).select_from(Memo)) == 5
        assert_statistics_exact(session, Memo)


def test_the_app_setup_batches_its_engines_and_puts_them_back(app_engine: Engine) -> None:
    maker = sessionmaker(app_engine)
    installation = AppInstallation.start(maker)
    assert installation.batched == (app_engine,)
    assert app_engine.dialect.use_insertmanyvalues_wo_returning
    installation.stop()
    assert not app_engine.dialect.use_insertmanyvalues_wo_returning
    vecorm.batch_inserts(app_engine)
    installation = AppInstallation.start(maker)
    assert installation.batched == ()  # batched already: stop leaves it so
    installation.stop()
    assert app_engine.dialect.use_insertmanyvalues_wo_returning


async def test_async_engines_batch_too(vecorm_url: URL) -> None:
    engine = vecorm.create_async_engine(vecorm_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        inserts = Inserts(engine.sync_engine)
        async with AsyncSession(engine) as session:
            await session.execute(insert(Memo), rows(250))
            await session.commit()
            assert inserts.seen == [(200, 1), (50, 1)]
            await session.run_sync(assert_statistics_exact, Memo)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    finally:
        await engine.dispose()
