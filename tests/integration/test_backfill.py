"""Backfill on real PostgreSQL: stale detection, batches, crash and resume, concurrent writers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import vecorm
from tests.integration.test_events import DIMS, Base, Document, assert_current, stored
from vecorm.embedding.backfill import (
    PYTHON_WHITESPACE,
    BackfillResult,
    backfill,
    columns_of,
    stale_condition,
    stale_count,
)
from vecorm.embedding.embedders import HashingEmbedder
from vecorm.embedding.events import install, uninstall
from vecorm.embedding.source import source_text, text_digest
from vecorm.testing import FakeEmbedder


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(dimensions=DIMS, max_batch_size=8)


def insert_plain(engine: Engine, count: int, start: int = 1) -> None:
    """Rows written without the hook (as COPY or raw SQL would): no vector, no digest."""
    with engine.begin() as conn:
        conn.execute(
            insert(Document),
            [
                {"id": i, "title": f"doc {i}", "content": f"body {i}"}
                for i in range(start, start + count)
            ],
        )


def test_python_whitespace_is_what_str_strip_removes() -> None:
    everything = "".join(chr(code) for code in range(0x110000) if chr(code).isspace())
    assert everything == PYTHON_WHITESPACE


def test_sql_text_and_digest_match_python(engine: Engine) -> None:
    values = [
        ("Intro", "PostgreSQL stores vectors."),
        (None, "only content"),
        ("  ", "blank title"),
        ("title", "\u3000\u2003\x85"),  # blanks to Python, so to the SQL too
        ("ünïcødé ✓", "line\nbreaks\tand tabs "),
        (" padded ", None),
        (None, None),
        ("\t", "\r\n"),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(Document),
            [{"id": n, "title": t, "content": c} for n, (t, c) in enumerate(values)],
        )
    columns = columns_of(Document)
    with Session(engine) as session:
        rows = session.execute(
            select(Document.id, Document.title, Document.content, columns.text).order_by(
                Document.id
            )
        ).all()
    for row in rows:
        expected = source_text(row, ("title", "content"))
        assert row[3] == (expected or ""), row
    with Session(engine) as session:
        # every row with text is stale (no vector yet); blank rows never are
        stale_ids = session.scalars(
            select(Document.id).where(stale_condition(Document, "m")).order_by(Document.id)
        ).all()
    assert stale_ids == [0, 1, 2, 3, 4, 5]


def test_backfill_embeds_stale_rows_in_batches_and_then_has_nothing_to_do(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    insert_plain(engine, 20)
    with engine.begin() as conn:
        conn.execute(insert(Document), [{"id": 100, "title": None, "content": " "}])
    with Session(engine) as session:
        assert stale_count(session, Document, embedder=embedder) == 20
        result = backfill(session, Document, embedder=embedder, batch_size=6, progress=False)
    assert (result.embedded, result.batches, result.calls) == (20, 4, 4)
    assert [len(batch) for batch in embedder.calls] == [6, 6, 6, 2]
    assert result.rows_per_second > 0
    assert_current(engine)
    embedder.reset()
    with Session(engine) as session:
        assert stale_count(session, Document, embedder=embedder) == 0
        again = backfill(session, Document, embedder=embedder, progress=False)
    assert (again.embedded, again.calls) == (0, 0)
    assert embedder.calls == []


def test_digest_model_and_null_mismatches_are_stale_and_nothing_else(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    maker = sessionmaker(engine)
    install(maker, embedder=embedder)
    with maker() as session:
        session.add_all(Document(id=i, title=f"doc {i}", content="c") for i in range(1, 7))
        session.commit()
    uninstall(maker)
    embedder.reset()
    with engine.begin() as conn:
        conn.execute(update(Document).where(Document.id == 1).values(title="edited in SQL"))
        conn.execute(update(Document).where(Document.id == 2).values(embedding_model="old"))
        conn.execute(update(Document).where(Document.id == 3).values(embedding=None))
        conn.execute(update(Document).where(Document.id == 4).values(embedding_digest=None))
    with Session(engine) as session:
        result = backfill(session, Document, embedder=embedder, progress=False)
    assert result.embedded == 4
    assert sorted(embedder.texts) == ["doc 2\nc", "doc 3\nc", "doc 4\nc", "edited in SQL\nc"]
    assert_current(engine)


def test_a_new_model_makes_every_row_stale(engine: Engine, embedder: FakeEmbedder) -> None:
    insert_plain(engine, 5)
    with Session(engine) as session:
        backfill(session, Document, embedder=embedder, progress=False)

    class Renamed(FakeEmbedder):
        @property
        def model_name(self) -> str:
            return "hashing-v2"

    newer = Renamed(dimensions=DIMS)
    with Session(engine) as session:
        assert stale_count(session, Document, embedder=newer) == 5
        assert backfill(session, Document, embedder=newer, progress=False).embedded == 5
    assert_current(engine, model="hashing-v2")


def test_crash_midway_then_resume_embeds_each_row_once(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    insert_plain(engine, 30)

    class Flaky:
        dimensions = DIMS
        model_name = f"vecorm-hashing-{DIMS}"
        max_batch_size = 10

        def __init__(self) -> None:
            self.calls = 0

        def embed(self, texts: Sequence[str]) -> Any:
            self.calls += 1
            if self.calls == 3:
                raise ConnectionError("provider went away")
            return embedder.embed(texts)

    with Session(engine) as session, pytest.raises(vecorm.EmbeddingError, match="run the backfill"):
        backfill(session, Document, embedder=Flaky(), batch_size=10, progress=False)
    with Session(engine) as session:
        assert stale_count(session, Document, embedder=embedder) == 10  # 2 batches committed
        result = backfill(session, Document, embedder=embedder, batch_size=10, progress=False)
    assert result.embedded == 10
    assert Counter(embedder.texts) == Counter(f"doc {i}\nbody {i}" for i in range(1, 31))
    assert_current(engine)


def test_deferred_rows_are_backfilled_with_the_installed_embedder(engine: Engine) -> None:
    class Down:
        dimensions = DIMS
        model_name = f"vecorm-hashing-{DIMS}"
        max_batch_size = 4

        def embed(self, texts: Sequence[str]) -> Any:
            raise TimeoutError("no answer")

    with Session(engine) as session:
        install(session, embedder=Down(), mode="deferred")
        session.add_all(Document(title=f"doc {i}") for i in range(6))
        session.commit()
        uninstall(session)
    working = FakeEmbedder(dimensions=DIMS)
    maker = sessionmaker(engine)
    install(maker, embedder=working)
    with maker() as session:
        assert stale_count(session, Document) == 6
        assert backfill(session, Document, progress=False).embedded == 6
    uninstall(maker)
    assert_current(engine)


def test_progress_bar(engine: Engine, embedder: FakeEmbedder, capsys: Any) -> None:
    insert_plain(engine, 12)
    with Session(engine) as session:
        # stderr is not a terminal here: progress=True draws nothing, "always" draws the bar.
        backfill(session, Document, embedder=embedder, batch_size=5, progress=True)
        assert capsys.readouterr().err == ""
        session.execute(update(Document).values(embedding=None))
        session.commit()
        backfill(session, Document, embedder=embedder, batch_size=5, progress="always")
    err = capsys.readouterr().err
    assert "backfill Document" in err
    assert "12/12" in err


def test_two_backfills_at_once_split_the_rows(engine: Engine) -> None:
    insert_plain(engine, 120)
    shared = FakeEmbedder(dimensions=DIMS)
    results: list[BackfillResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            start.wait()
            with Session(engine) as session:
                results.append(
                    backfill(session, Document, embedder=shared, batch_size=5, progress=False)
                )
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert sum(result.embedded for result in results) == 120
    assert Counter(shared.texts) == Counter(f"doc {i}\nbody {i}" for i in range(1, 121))
    assert_current(engine)


def test_row_locked_by_the_app_is_waited_for_not_skipped(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    insert_plain(engine, 10)
    app = engine.connect()
    app_tx = app.begin()
    # the application is in the middle of editing row 5 (without the hook)
    app.execute(update(Document).where(Document.id == 5).values(title="edited by app"))
    outcome: list[Any] = []

    def run() -> None:
        with Session(engine) as session:
            outcome.append(
                backfill(session, Document, embedder=embedder, batch_size=4, progress=False)
            )

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 20
    with engine.connect() as monitor:
        while time.monotonic() < deadline:
            waiting = monitor.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
            if waiting:
                break
            monitor.rollback()
            time.sleep(0.02)
    assert waiting, "the backfill should wait for the row the app holds"
    assert len(embedder.texts) == 9  # everything else is done already
    app_tx.commit()
    app.close()
    worker.join(timeout=20)
    assert outcome and outcome[0].embedded == 10
    assert "edited by app\nbody 5" in embedder.texts
    assert "doc 5\nbody 5" not in embedder.texts  # the old text was never embedded
    assert_current(engine)


def test_backfill_next_to_an_app_that_keeps_editing(engine: Engine) -> None:
    insert_plain(engine, 60)

    class Slow(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> Any:
            time.sleep(0.005)  # long enough for both sides to interleave
            return super().embed(texts)

    shared = Slow(dimensions=DIMS, max_batch_size=4)
    maker = sessionmaker(engine)
    install(maker, embedder=shared)
    errors: list[BaseException] = []
    running = threading.Event()
    running.set()

    def edit(worker: int) -> None:
        try:
            version = 0
            with maker() as session:
                while running.is_set() and version < 40:
                    version += 1
                    row_id = 1 + (worker * 7 + version * 13) % 60
                    row = session.get_one(
                        Document, row_id, with_for_update=True, populate_existing=True
                    )
                    row.content = f"edit {worker}.{version}"
                    session.commit()
        except BaseException as exc:
            errors.append(exc)

    editors = [threading.Thread(target=edit, args=(n,)) for n in range(3)]
    for editor in editors:
        editor.start()
    with Session(engine) as session:
        backfill(session, Document, embedder=shared, batch_size=4, progress=False)
    running.clear()
    for editor in editors:
        editor.join()
    uninstall(maker)
    assert errors == []
    # no (row, text) was embedded twice, by either side, and no row is left behind
    assert max(Counter(shared.texts).values()) == 1
    with Session(engine) as session:
        assert stale_count(session, Document, embedder=shared) == 0
    assert_current(engine)
    assert all(row[2] == text_digest(row[0]) for row in stored(engine).values() if row[0])
    assert HashingEmbedder(DIMS).model_name == shared.model_name
