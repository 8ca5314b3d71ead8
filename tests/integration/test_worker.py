"""The embedding worker on real PostgreSQL: mode="worker" writes, NOTIFY wake-ups, two workers
and a writer at once, provider failures, lost connections, graceful stops, health."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, event, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

import vecorm
from tests.integration.test_events import (
    DIMS,
    Base,
    Document,
    Note,
    assert_current,
    openai_embedder,
    stored,
)
from vecorm.embedding.backfill import stale_count
from vecorm.embedding.embedders import HashingEmbedder
from vecorm.embedding.events import install, uninstall
from vecorm.embedding.health import read_heartbeat
from vecorm.embedding.notify import (
    CHANNEL,
    MARKED,
    create_notify_trigger,
    drop_notify_trigger,
)
from vecorm.embedding.source import text_digest
from vecorm.embedding.worker import Worker
from vecorm.engine import libpq_conninfo
from vecorm.testing import FakeEmbedder
from vecorm.testing.openai_server import OpenAIServer

#: A poll interval no test waits for: what a test sees sooner came from a NOTIFY.
NEVER = 300.0


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


@pytest.fixture
def worker_sessions(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions whose flushes leave embedding to workers (no embedder here at all)."""
    maker = sessionmaker(engine)
    install(maker, mode="worker")
    yield maker
    uninstall(maker)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    pause = threading.Event()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not true within {timeout} s")
        pause.wait(0.01)
    return time.monotonic() - started


@contextmanager
def running(*workers: Worker) -> Iterator[None]:
    """The workers in threads for the block; stopped and joined after it, whatever happened."""
    threads = [threading.Thread(target=worker.run, daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), "a worker did not stop"


def embedded_ids(engine: Engine) -> set[int]:
    return {row_id for row_id, row in stored(engine).items() if row[1] is not None}


def insert_plain(engine: Engine, ids: range) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Document), [{"id": i, "title": f"doc {i}", "content": "plain"} for i in ids]
        )


# --- the flush hook in worker mode ---------------------------------------------------------


def test_worker_mode_writes_without_the_provider_and_notifies_at_commit(
    engine: Engine, vecorm_engine: Engine
) -> None:
    embedder = FakeEmbedder(dimensions=DIMS)
    maker = sessionmaker(engine)
    install(maker, embedder=embedder, mode="worker")
    listener = psycopg.connect(libpq_conninfo(engine.url), autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANNEL}")
        with maker() as session:
            session.add_all(Document(id=i, title=f"doc {i}") for i in range(1, 4))
            session.flush()
            assert list(listener.notifies(timeout=0.2)) == []  # not before COMMIT
            session.commit()
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [(note.channel, note.payload) for note in notes] == [(CHANNEL, f"{MARKED}documents")]
        with maker() as session:
            session.add(Document(id=9, title="rolled back"))
            session.flush()
            session.rollback()
        assert list(listener.notifies(timeout=0.2)) == []
    finally:
        listener.close()
    assert embedder.calls == []
    assert {row_id: row[1:] for row_id, row in stored(engine).items()} == {
        i: (None, None, None) for i in range(1, 4)
    }
    with Session(engine) as session:
        assert stale_count(session, Document, embedder=embedder) == 3
    uninstall(maker)


async def test_async_sessions_leave_rows_to_workers_too(
    engine: Engine, vecorm_async_engine: AsyncEngine
) -> None:
    factory = async_sessionmaker(vecorm_async_engine)
    install(factory, mode="worker")
    listener = psycopg.connect(libpq_conninfo(engine.url), autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANNEL}")
        async with factory() as session:
            session.add_all(Document(id=i, title=f"async {i}") for i in range(1, 4))
            await session.commit()
        notes = list(listener.notifies(timeout=2, stop_after=1))
    finally:
        listener.close()
        uninstall(factory)
    assert [note.payload for note in notes] == [f"{MARKED}documents"]
    embedder = FakeEmbedder(dimensions=DIMS)
    assert Worker(engine, [Document], embedder=embedder).run_once().embedded == 3
    assert embedder.texts == ["async 1", "async 2", "async 3"]
    assert_current(engine)


def test_an_edited_row_keeps_its_vector_until_a_worker_replaces_it(engine: Engine) -> None:
    embedder = FakeEmbedder(dimensions=DIMS)
    strict = sessionmaker(engine)
    install(strict, embedder=embedder)
    with strict() as session:
        session.add(Document(id=1, title="first words"))
        session.commit()
    uninstall(strict)
    old = stored(engine)[1]
    worker_mode = sessionmaker(engine)
    install(worker_mode, mode="worker")
    with worker_mode() as session:
        session.get_one(Document, 1).title = "second words"
        session.commit()
    uninstall(worker_mode)
    row = stored(engine)[1]
    assert row[0] == "second words"
    # Still searchable by the old vector; the digest is cleared, which marks it stale.
    assert (row[1] == old[1]).all() and (row[2], row[3]) == (None, old[3])
    with Session(engine) as session:
        assert stale_count(session, Document, embedder=embedder) == 1
    result = Worker(engine, [Document], embedder=embedder).run_once()
    assert (result.embedded, embedder.texts) == (1, ["first words", "second words"])
    assert_current(engine)


def test_worker_mode_is_a_model_setting_too() -> None:
    config = vecorm.SearchConfig(fields=("body",), embedding_mode="worker")
    assert config.embedding_mode == "worker"
    with pytest.raises(vecorm.ConfigurationError, match="'strict', 'deferred' or 'worker'"):
        install(Session(), mode="later")  # type: ignore[arg-type]


# --- the worker ----------------------------------------------------------------------------


def test_two_workers_and_a_writer_embed_every_row_exactly_once(
    engine: Engine, worker_sessions: sessionmaker[Session]
) -> None:
    embedder = FakeEmbedder(dimensions=DIMS, max_batch_size=4)
    workers = [
        Worker(engine, [Document], embedder=embedder, batch_size=4, poll_interval=NEVER)
        for _ in range(2)
    ]
    written: list[str] = []

    def write() -> None:
        for batch in range(20):
            with worker_sessions() as session:
                rows = [Document(id=batch * 5 + n, title=f"row {batch * 5 + n}") for n in range(5)]
                session.add_all(rows)
                if batch % 4 == 3:  # and edit a row an earlier transaction wrote
                    session.get_one(Document, batch * 5 - 7).content = f"edited in {batch}"
                session.commit()

    with running(*workers):
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(60)
        assert not writer.is_alive()
        finals = {row_id: row[0] for row_id, row in stored(engine).items()}
        written = list(finals.values())
        wait_for(lambda: embedded_ids(engine) == set(finals) and _backlog(engine, embedder) == 0)
    assert len(finals) == 100
    counts = Counter(embedder.texts)
    assert max(counts.values()) == 1, [text for text, n in counts.items() if n > 1]
    assert set(written) <= set(counts)  # every final text embedded, once
    assert sum(worker.health(backlog=False).rows_embedded for worker in workers) == len(counts)
    assert_current(engine)


def _backlog(engine: Engine, embedder: FakeEmbedder) -> int:
    with Session(engine) as session:
        return stale_count(session, Document, embedder=embedder)


def test_a_notification_wakes_the_worker_long_before_the_poll(
    engine: Engine, worker_sessions: sessionmaker[Session]
) -> None:
    embedder = FakeEmbedder(dimensions=DIMS)
    worker = Worker(engine, [Document], embedder=embedder, poll_interval=NEVER)
    with running(worker):
        wait_for(lambda: worker.health(backlog=False).caught_up_at is not None)
        assert worker.health(backlog=False).listening
        with worker_sessions() as session:
            session.add(Document(id=1, title="wake up"))
            session.commit()
        seconds = wait_for(lambda: embedded_ids(engine) == {1}, timeout=10)
    assert seconds < 5  # the poll would have taken 300 s
    assert embedder.texts == ["wake up"]
    assert_current(engine)


def test_rows_of_raw_sql_come_with_the_poll_or_the_trigger(engine: Engine) -> None:
    embedder = FakeEmbedder(dimensions=DIMS)
    polling = Worker(engine, [Document], embedder=embedder, poll_interval=0.2)
    with running(polling):
        wait_for(lambda: polling.health(backlog=False).caught_up_at is not None)
        insert_plain(engine, range(1, 6))  # no NOTIFY: the next pass finds them
        wait_for(lambda: embedded_ids(engine) == set(range(1, 6)), timeout=10)
    with engine.begin() as conn:
        create_notify_trigger(conn, Document)
        config = conn.execute(
            text("SELECT proconfig FROM pg_proc WHERE proname = 'documents_embed_notify'")
        ).scalar_one()
    assert config == ["search_path=pg_catalog, pg_temp"]
    waiting = Worker(engine, [Document], embedder=embedder, poll_interval=NEVER)
    with running(waiting):
        wait_for(lambda: waiting.health(backlog=False).caught_up_at is not None)
        raw = psycopg.connect(libpq_conninfo(engine.url))
        try:
            with raw.cursor().copy("COPY documents (id, title, category) FROM STDIN") as copy:
                for i in range(6, 9):
                    copy.write_row((i, f"copied {i}", "general"))
            raw.commit()
        finally:
            raw.close()
        wait_for(lambda: embedded_ids(engine) == set(range(1, 9)), timeout=10)
    with engine.begin() as conn:
        drop_notify_trigger(conn, Document)
        left = "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname = 'documents_embed_notify')"
        left += " + (SELECT count(*) FROM pg_proc WHERE proname = 'documents_embed_notify')"
        assert conn.scalar(text(left)) == 0
    assert Counter(embedder.texts) == Counter(
        [f"doc {i}\nplain" for i in range(1, 6)] + [f"copied {i}" for i in range(6, 9)]
    )
    assert_current(engine)


class Statements:
    """The SELECTs an engine sends while recording, by whether they hash a row's text."""

    def __init__(self, engine: Engine) -> None:
        self.recording = False
        self.hashing: list[str] = []
        self.plain: list[str] = []
        event.listen(engine, "before_cursor_execute", self.record)

    def record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.recording and statement.lstrip().upper().startswith("SELECT"):
            (self.hashing if "sha256" in statement else self.plain).append(statement)


def test_a_hook_wake_up_looks_only_for_the_rows_it_marked(
    engine: Engine, worker_sessions: sessionmaker[Session]
) -> None:
    """A flush hook's rows are found by their NULL digest: no statement of the wake-up's
    pass composes and hashes every row's text. A bare table name (the trigger's) still asks
    for that comparison, which finds a row raw SQL changed."""
    embedder = FakeEmbedder(dimensions=DIMS)
    insert_plain(engine, range(1, 41))
    seen = Statements(engine)
    worker = Worker(engine, [Document], embedder=embedder, poll_interval=NEVER)
    with running(worker):
        wait_for(lambda: embedded_ids(engine) == set(range(1, 41)))
        wait_for(lambda: worker.health(backlog=False).caught_up_at is not None)
        seen.recording = True
        with worker_sessions() as session:
            session.add(Document(id=41, title="new words"))
            session.get_one(Document, 7).title = "edited words"
            session.commit()
        wait_for(lambda: len(embedder.texts) == 42, timeout=10)
        assert embedder.texts[-2:] == ["edited words\nplain", "new words"]
        assert seen.plain and not seen.hashing
        with engine.begin() as conn:
            create_notify_trigger(conn, Document)
            conn.execute(text("UPDATE documents SET title = 'raw words' WHERE id = 3"))
        wait_for(lambda: len(embedder.texts) == 43, timeout=10)
        assert embedder.texts[-1] == "raw words\nplain"
        assert seen.hashing
    with engine.begin() as conn:
        drop_notify_trigger(conn, Document)
    assert_current(engine)


def test_the_hook_marks_only_rows_whose_text_changed(
    engine: Engine, worker_sessions: sessionmaker[Session]
) -> None:
    embedder = FakeEmbedder(dimensions=DIMS)
    insert_plain(engine, range(1, 3))
    Worker(engine, [Document], embedder=embedder).run_once()
    before = stored(engine)
    with worker_sessions() as session:
        session.get_one(Document, 1).title = "doc 1"  # the same text: nothing to do
        session.get_one(Document, 2).category = "other"  # not embedded text
        session.commit()
    assert stored(engine)[1][2] == before[1][2] and stored(engine)[2][2] == before[2][2]
    with worker_sessions() as session:
        session.get_one(Document, 1).title = "changed"
        session.commit()
        session.get_one(Document, 1).title = "doc 1"  # back, before any worker ran
        session.commit()
    assert stored(engine)[1][2] is None  # still marked: the worker embeds it once more
    assert Worker(engine, [Document], embedder=embedder).run_once().embedded == 1
    assert_current(engine)


class Flaky:
    """Fails its first ``failures`` calls, then embeds; records the texts it embedded."""

    dimensions = DIMS
    model_name = f"vecorm-hashing-{DIMS}"
    max_batch_size = 256

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.inner = FakeEmbedder(dimensions=DIMS)

    def embed(self, texts: Sequence[str]) -> Any:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("provider unreachable")
        return self.inner.embed(texts)


def test_a_failing_provider_is_retried_with_backoff_and_nothing_is_lost(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    insert_plain(engine, range(1, 11))
    provider = Flaky(failures=3)
    worker = Worker(
        engine,
        [Document],
        embedder=provider,
        batch_size=5,
        poll_interval=NEVER,
        retry_delay=0.05,
        max_retry_delay=0.2,
    )
    with caplog.at_level("WARNING", logger="vecorm.worker"), running(worker):
        wait_for(lambda: embedded_ids(engine) == set(range(1, 11)))
        health = worker.health()
    assert provider.attempts == 3 + 2
    assert Counter(provider.inner.texts) == Counter(f"doc {i}\nplain" for i in range(1, 11))
    assert health.last_error == "embedding Document failed: ConnectionError: provider unreachable"
    assert health.backlog == {"Document": 0} and health.rows_embedded == 10
    retries = [record.getMessage() for record in caplog.records if record.name == "vecorm.worker"]
    assert [message.rsplit("retrying in ", 1)[1] for message in retries] == [
        "0.05 s",
        "0.1 s",
        "0.2 s",
    ]
    assert_current(engine)


def test_a_failing_model_does_not_keep_the_pass_from_the_others(engine: Engine) -> None:
    insert_plain(engine, range(1, 4))
    with engine.begin() as conn:
        conn.execute(insert(Note), [{"book": "b", "page": 1, "body": "refused text"}])

    class RefusesNotes(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> Any:
            if "refused text" in texts:
                raise ValueError("input too long")
            return super().embed(texts)

    worker = Worker(engine, [Note, Document], embedder=RefusesNotes(dimensions=DIMS))
    with pytest.raises(vecorm.EmbeddingError, match="input too long"):
        worker.run_once()
    assert embedded_ids(engine) == {1, 2, 3}
    with running(worker):
        wait_for(lambda: worker.health(backlog=False).last_error is not None)
    health = worker.health()
    assert health.backlog == {"Note": 1, "Document": 0} and health.caught_up_at is None
    assert health.last_error == "embedding Note failed: ValueError: input too long"


def test_stop_lets_the_batch_in_flight_commit(engine: Engine) -> None:
    insert_plain(engine, range(1, 21))
    entered, release = threading.Event(), threading.Event()

    class Slow(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> Any:
            entered.set()
            release.wait(30)
            return super().embed(texts)

    embedder = Slow(dimensions=DIMS)
    worker = Worker(engine, [Document], embedder=embedder, batch_size=5, poll_interval=NEVER)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert entered.wait(30)
        worker.stop()
        release.set()
        thread.join(30)
    finally:
        release.set()
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert embedded_ids(engine) == set(range(1, 6))  # the batch in flight, and no other
    health = worker.health()
    assert (health.alive, health.rows_embedded, health.backlog) == (False, 5, {"Document": 15})


def test_a_stop_event_given_to_run_ends_it(engine: Engine) -> None:
    worker = Worker(engine, [Document], embedder=FakeEmbedder(DIMS), poll_interval=NEVER)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    wait_for(lambda: worker.health(backlog=False).caught_up_at is not None)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def test_a_lost_listen_connection_is_reopened(
    engine: Engine, worker_sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    embedder = FakeEmbedder(dimensions=DIMS)
    worker = Worker(engine, [Document], embedder=embedder, poll_interval=NEVER)
    admin = create_engine(engine.url)
    listening = text(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN %' "
        "AND datname = current_database()"
    )
    try:
        with caplog.at_level("INFO", logger="vecorm.worker"), running(worker):
            wait_for(lambda: worker.health(backlog=False).caught_up_at is not None)
            with admin.connect() as conn:
                first = conn.execute(listening).scalar_one()
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
            wait_for(lambda: "listening on 'vecorm_embed' again" in caplog.text, timeout=10)
            with worker_sessions() as session:
                session.add(Document(id=1, title="after the reconnection"))
                session.commit()
            wait_for(lambda: embedded_ids(engine) == {1}, timeout=10)
            with admin.connect() as conn:
                second = conn.execute(listening).scalar_one()
    finally:
        admin.dispose()
    assert second != first
    assert "lost the LISTEN connection; reconnecting" in caplog.text


def test_heartbeat_file_and_health(engine: Engine, tmp_path: Path) -> None:
    insert_plain(engine, range(1, 4))
    beat = tmp_path / "worker.json"
    worker = Worker(
        engine, [Document], embedder=FakeEmbedder(DIMS), poll_interval=NEVER, heartbeat=beat
    )
    before = worker.health()
    assert (before.alive, before.rows_embedded, before.backlog) == (False, 0, {"Document": 3})
    with running(worker):
        wait_for(lambda: beat.exists() and read_heartbeat(beat).caught_up_at is not None)
        live = read_heartbeat(beat)
        assert (live.alive, live.listening, live.rows_embedded) == (True, True, 3)
        assert live.problems(max_lag=60) == []
    stopped = read_heartbeat(beat)
    assert not stopped.alive
    assert stopped.problems(max_lag=60)[0].startswith("the worker (pid ")


def test_refusals_say_what_to_do(engine: Engine) -> None:
    with pytest.raises(vecorm.ConfigurationError, match="no embedder for Document"):
        Worker(engine, [Document])
    with pytest.raises(vecorm.ConfigurationError, match="at least one searchable model"):
        Worker(engine, [], embedder=HashingEmbedder(DIMS))
    with pytest.raises(vecorm.DimensionMismatch, match="returns 16"):
        Worker(engine, [Document], embedder=HashingEmbedder(16))
    psycopg2 = create_engine(engine.url.set(drivername="postgresql+psycopg2"))
    with pytest.raises(vecorm.ConfigurationError, match="psycopg 3, not 'psycopg2'"):
        Worker(psycopg2, [Document], embedder=HashingEmbedder(DIMS))
    psycopg2.dispose()
    with pytest.raises(vecorm.ConfigurationError, match="poll_interval"):
        Worker(engine, [Document], embedder=HashingEmbedder(DIMS), poll_interval=0)


def test_run_once_embeds_what_is_stale_and_skips_locked_rows(engine: Engine) -> None:
    insert_plain(engine, range(1, 8))
    embedder = FakeEmbedder(dimensions=DIMS)
    worker = Worker(engine, [Document], embedder=embedder, batch_size=3)
    with Session(engine) as app:
        app.execute(select(Document).where(Document.id == 4).with_for_update())
        result = worker.run_once()  # row 4 is the app's: skipped, not waited for
    # batches are found before they are claimed: [1, 2, 3], [4, 5, 6] less 4, then [7]
    assert (result.embedded, result.batches, result.calls) == (6, 3, 3)
    assert embedded_ids(engine) == {1, 2, 3, 5, 6, 7}
    assert worker.run_once().embedded == 1
    assert_current(engine)


def test_a_refused_text_does_not_hold_back_its_table(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider refuses two texts (HTTP 400): the worker splits their batches until they
    are alone, embeds every other row, and leaves those two until their text changes."""
    with engine.begin() as conn:
        conn.execute(
            insert(Document),
            [
                {"id": i, "title": f"doc {i}", "content": "POISON" if i in (5, 13) else "fine"}
                for i in range(1, 21)
            ],
        )
    with OpenAIServer() as server:
        server.refuse_texts_containing("POISON")
        provider = openai_embedder(server)  # 4 texts per request
        worker = Worker(engine, [Document], embedder=provider, batch_size=8, poll_interval=NEVER)
        with caplog.at_level("WARNING", logger="vecorm.backfill"):
            result = worker.run_once()
        assert result.embedded == 18
        assert embedded_ids(engine) == set(range(1, 21)) - {5, 13}
        refused = [r.getMessage() for r in caplog.records if "refused its text" in r.getMessage()]
        assert len(refused) == 2 and "HTTP 400" in refused[0] and "row 5" in refused[0]
        health = worker.health()
        assert health.rows_rejected == 2 and health.backlog == {"Document": 2}
        # Each bad text was found by halving its request: 4 -> 2 -> 1 (and the good halves).
        poisoned = [r.body["input"] for r in server.requests if "POISON" in str(r.body["input"])]
        assert sorted(map(len, poisoned)) == [1, 1, 2, 2, 4, 4]
        # The next pass leaves them alone: no request, no error.
        server.reset()
        assert worker.run_once().embedded == 0 and server.requests == []
        # Until the text changes.
        with engine.begin() as conn:
            conn.execute(text("UPDATE documents SET content = 'mended' WHERE id = 5"))
        assert worker.run_once().embedded == 1
        assert embedded_ids(engine) == set(range(1, 21)) - {13}
    row_text, vector, digest, _ = stored(engine)[5]
    assert row_text == "doc 5\nmended" and vector is not None
    assert digest == text_digest(row_text)
