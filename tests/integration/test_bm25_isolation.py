"""BM25 statistics under every isolation level and every way a table loses its rows:
SERIALIZABLE writers of unrelated rows never fail because of vecorm, REPEATABLE READ
workloads compact, TRUNCATE and DROP ... CASCADE leave no stale statistics, and maintenance
reports its real errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import String, func, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm import bm25
from vecorm.errors import ConfigurationError, VecormError

from .test_bm25 import Note, assert_statistics_exact, rows


class PlainBase(DeclarativeBase):
    pass


class PlainNote(vecorm.Searchable, PlainBase):
    """The same table without BM25 statistics: the baseline for failure rates."""

    __tablename__ = "plain_notes"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "body"), dimensions=4, index=None, bm25=None)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str]


@pytest.fixture
def engine(vecorm_engine: Engine) -> Iterator[Engine]:
    Note.metadata.create_all(vecorm_engine)
    PlainBase.metadata.create_all(vecorm_engine)
    yield vecorm_engine


def serializable_failure_rate(engine: Engine, model: type, seconds: float) -> tuple[int, int]:
    """8 SERIALIZABLE writers, each inserting single unrelated rows for ``seconds``:
    (transactions, serialization failures)."""
    attempts = [0] * 8
    failures = [0] * 8
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(worker: int) -> None:
        try:
            start.wait()
            deadline = time.monotonic() + seconds
            step = 0
            while time.monotonic() < deadline:
                step += 1
                row = rows(1, seed=worker * 100_000 + step, start=worker * 1_000_000 + step)[0]
                row.pop("category")
                attempts[worker] += 1
                try:
                    with Session(engine) as session:
                        session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
                        session.execute(insert(model), [row])
                        session.commit()
                except OperationalError as exc:
                    if getattr(exc.orig, "sqlstate", None) != "40001":
                        raise
                    failures[worker] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    assert errors == []
    return sum(attempts), sum(failures)


def test_serializable_writers_fail_no_more_than_without_bm25(engine: Engine) -> None:
    baseline = serializable_failure_rate(engine, PlainNote, 3.0)
    with_bm25 = serializable_failure_rate(engine, Note, 3.0)
    assert baseline[0] > 100 and with_bm25[0] > 2 * bm25.COMPACT_EVERY  # compactions included
    print(f"SERIALIZABLE (transactions, failures): {baseline} without BM25, {with_bm25} with")
    assert (baseline[1], with_bm25[1]) == (0, 0), (baseline, with_bm25)
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM notes_bm25_terms")) > 0  # compacted
        assert_statistics_exact(session)


def test_repeatable_read_workload_compacts_and_stays_exact(engine: Engine) -> None:
    with Session(engine) as session:
        for batch in range(3 * bm25.COMPACT_EVERY):
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            session.execute(insert(Note), rows(1, seed=batch, start=100 + batch))
            session.commit()
        assert session.scalar(text("SELECT count(*) FROM notes_bm25_terms")) > 0
        # Only the statements since the last compaction are pending.
        pending = session.scalar(text("SELECT count(*) FROM notes_bm25_deltas WHERE term = ''"))
        assert pending is not None and pending < bm25.COMPACT_EVERY
        assert_statistics_exact(session)


def test_compact_from_repeatable_read(engine: Engine) -> None:
    with Session(engine) as setup, setup.begin():
        setup.execute(insert(Note), rows(30))
    with Session(engine) as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        bm25.compact(session, Note)
        assert session.scalar(text("SELECT count(*) FROM notes_bm25_deltas")) == 0
        session.commit()
    # A compaction that commits after a REPEATABLE READ transaction's snapshot: reported,
    # nothing lost, the transaction still usable.
    with Session(engine) as late, Session(engine) as other:
        late.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        assert late.scalar(select(func.count()).select_from(Note)) == 30  # snapshot taken
        other.execute(insert(Note), rows(3, seed=2, start=500))
        bm25.compact(other, Note)
        other.commit()
        late.execute(insert(Note), rows(1, seed=3, start=600))
        with pytest.raises(VecormError, match="new transaction"):
            bm25.compact(late, Note)
        late.commit()
    with Session(engine) as session:
        bm25.compact(session, Note)
        assert session.scalar(text("SELECT count(*) FROM notes_bm25_deltas")) == 0
        assert_statistics_exact(session)


def test_truncate_in_a_repeatable_read_transaction_that_already_read(engine: Engine) -> None:
    with Session(engine) as setup, setup.begin():
        setup.execute(insert(Note), rows(20))
    with Session(engine) as reader, Session(engine) as writer:
        reader.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        assert reader.scalar(select(func.count()).select_from(Note)) == 20
        writer.execute(insert(Note), rows(5, seed=1, start=100))  # after reader's snapshot
        writer.commit()
        reader.execute(text("TRUNCATE notes"))
        reader.commit()
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM notes_bm25_postings")) == 0
        assert_statistics_exact(session)
        session.execute(insert(Note), rows(5, seed=1, start=100))  # the same ids again
        session.commit()
        assert_statistics_exact(session)


def test_drop_table_cascade_then_create_all(engine: Engine) -> None:
    with Session(engine) as setup, setup.begin():
        setup.execute(insert(Note), rows(20))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE notes CASCADE"))  # by hand: the side tables stay
    Note.metadata.create_all(engine)
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM notes_bm25_postings")) == 0
        session.execute(insert(Note), rows(20))  # the old ids again
        session.commit()
        assert_statistics_exact(session)
        assert session.execute(Note.text_search("vacuum", k=3)).all()


def test_rebuild_and_bulk_load_at_repeatable_read(engine: Engine) -> None:
    with Session(engine) as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        with pytest.raises(ConfigurationError, match="READ COMMITTED"):
            bm25.rebuild(session, Note)
        with bm25.bulk_load(session, Note):  # triggers stay on: exact
            session.execute(insert(Note), rows(50))
        assert_statistics_exact(session)
        session.commit()


def test_bulk_load_reports_the_real_error(engine: Engine) -> None:
    with Session(engine) as setup, setup.begin():
        setup.execute(insert(Note), rows(5))
    with Session(engine) as session:
        with pytest.raises(IntegrityError, match="duplicate key"), bm25.bulk_load(session, Note):
            session.execute(insert(Note), rows(5))
        session.rollback()
    with Session(engine) as session:
        # A Python error inside the block: the rows loaded so far are counted, the triggers on.
        with pytest.raises(RuntimeError, match="stop"), bm25.bulk_load(session, Note):
            session.execute(insert(Note), rows(5, seed=1, start=100))
            raise RuntimeError("stop")
        session.execute(insert(Note), rows(5, seed=2, start=200))
        assert_statistics_exact(session)
        session.commit()
