"""``SearchConfig(search_vector="trigger")`` on a table that already has rows: the revision
autogenerate writes adds the column without a rewrite, fills it in batches of their own while
writers keep writing, counts the BM25 statistics exactly, builds the indexes concurrently, and
downgrades. A generated column on a big table gets a note naming the rewrite instead."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from tests.alembic.conftest import Project, body, undefined_names
from tests.integration.test_bm25 import assert_statistics_exact

ROWS = 3000

PLAIN_MODELS = """
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Document(Base):
        __tablename__ = "documents"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        body: Mapped[str | None]
"""

SEARCHABLE_MODELS = """
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import vecorm

    class Base(DeclarativeBase):
        pass

    class Document(vecorm.Searchable, Base):
        __tablename__ = "documents"
        __vecorm__ = vecorm.SearchConfig(
            fields=("title", "body"),
            dimensions=8,
            weights={{"title": "A"}},
            search_vector={mode!r},
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        body: Mapped[str | None]
"""

WORDS = ["vacuum", "index", "planner", "lock", "wal"]
WORDS += ["replica", "backup", "restore", "snapshot", "bloat"]


def text_of(n: int) -> str:
    return " ".join(WORDS[(n * k) % len(WORDS)] for k in range(1, 2 + n % 7))


def load(project: Project) -> None:
    project.set_models(PLAIN_MODELS)
    project.autogenerate("plain")
    project.upgrade()
    with project.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO documents (id, title, body) "
                "SELECT g, 'title ' || g, :a || ' ' || g FROM generate_series(1, :n) g"
            ),
            {"a": "vacuum wal", "n": ROWS},
        )
        conn.execute(text("ANALYZE documents"))


class Writers:
    """A thread inserting, updating and deleting rows while the migration runs; each
    statement's duration is recorded."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        n = 0
        try:
            with self.engine.connect() as conn:
                while not self.stop.is_set():
                    n += 1
                    statements: list[tuple[str, dict[str, Any]]] = [
                        (
                            "INSERT INTO documents (id, title, body) VALUES (:id, :t, :b)",
                            {"id": 100_000 + n, "t": text_of(n), "b": text_of(n + 3)},
                        ),
                        (
                            "UPDATE documents SET body = :b WHERE id = :id",
                            {"id": 1 + (n * 37) % ROWS, "b": text_of(n + 1)},
                        ),
                        ("DELETE FROM documents WHERE id = :id", {"id": 1 + (n * 53) % ROWS}),
                    ]
                    for statement, parameters in statements:
                        started = time.perf_counter()
                        conn.execute(text(statement), parameters)
                        conn.commit()
                        self.latencies.append(time.perf_counter() - started)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Writers:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_trigger_mode_renders_the_online_path(
    use_async: bool,
    project_factory: Callable[..., Project],
) -> None:
    project = project_factory(use_async=use_async)
    load(project)
    project.set_models(SEARCHABLE_MODELS.format(mode="trigger"))
    revision = project.autogenerate("adopt online")
    upgrade = body(revision, "upgrade")
    assert undefined_names(revision) == ""
    assert "Computed" not in upgrade
    lines = upgrade.splitlines()
    first = lines.index(
        "op.add_search_vector('documents', 'search_vector', ['title', 'body'], "
        "language='english', weights={'title': 'A'})"
    )
    bm25 = next(i for i, line in enumerate(lines) if line.startswith("op.create_bm25_statistics"))
    fill = lines.index(
        "op.fill_search_vector('documents', 'search_vector', ['title', 'body'], "
        "language='english', weights={'title': 'A'}, bm25=True, batch_size=1000, jobs=1)"
    )
    blocks = [i for i, line in enumerate(lines) if line.startswith("with op.get_context()")]
    assert first < bm25 < fill < min(blocks)
    assert any("rebuild=False" in line for line in lines[bm25:fill])
    assert any("postgresql_concurrently=True" in line for line in lines[blocks[0] :])
    assert len(blocks) == 3  # GIN, HNSW and the BM25 postings' ranking index
    # The ranking index is built once the fill has written the postings, not during it.
    ranking = next(
        i for i, line in enumerate(lines) if "'ix_documents_bm25_postings_impact'" in line
    )
    assert min(blocks) < ranking
    assert "'ux_documents_bm25_postings_key'" in "\n".join(lines[:first])
    # Many small batches, so that the writers' statements land between and inside them, on
    # two connections at once.
    revision.write_text(
        revision.read_text(encoding="utf-8").replace(
            "batch_size=1000, jobs=1", "batch_size=150, jobs=2"
        ),
        encoding="utf-8",
    )

    fillers: set[int] = set()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE") and "SET search_vector" in statement:
            fillers.add(id(conn.connection.dbapi_connection))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        with Writers(project.engine) as writers:
            project.upgrade()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    # jobs=2: two ranges of keys, each on a connection of its own (one with an async driver)
    assert len(fillers) == (1 if use_async else 2)
    assert not writers.errors
    assert len(writers.latencies) > 10
    with Session(project.engine) as session:
        assert (
            session.scalar(text("SELECT count(*) FROM documents WHERE search_vector IS NULL")) == 0
        )
        generated = session.scalar(
            text(
                "SELECT count(*) FROM documents WHERE search_vector IS DISTINCT FROM "
                "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
                "to_tsvector('english', coalesce(body, ''))"
            )
        )
        assert generated == 0
        model = __import__(project.modules[-1]).Document
        assert_statistics_exact(session, model)
        invalid = session.scalar(
            text(
                "SELECT count(*) FROM pg_index "
                "WHERE indrelid = 'documents'::regclass AND NOT indisvalid"
            )
        )
        assert invalid == 0

    second = project.autogenerate("nothing")
    assert body(second, "upgrade") == "pass"
    second.unlink()

    project.downgrade("-1")
    with project.engine.connect() as conn:
        columns = conn.scalars(
            text(
                "SELECT attname FROM pg_attribute "
                "WHERE attrelid = 'documents'::regclass AND attnum > 0 AND NOT attisdropped"
            )
        ).all()
        functions = conn.scalar(
            text("SELECT count(*) FROM pg_proc WHERE proname LIKE 'documents\\_%'")
        )
    assert sorted(columns) == ["body", "id", "title"]
    assert functions == 0
    project.upgrade()


def test_the_lock_waits_for_a_reader_without_stalling_writers(
    project_factory: Callable[..., Project],
) -> None:
    """A long reader holds the table; the migration's lock request gives up every 200 ms, so
    a writer arriving meanwhile waits at most that long, not for the reader."""
    project = project_factory()
    load(project)
    project.set_models(SEARCHABLE_MODELS.format(mode="trigger"))
    project.autogenerate("adopt online")
    reader = project.engine.connect()
    reader.execute(text("SELECT count(*) FROM documents"))  # holds ACCESS SHARE
    migration = threading.Thread(target=project.upgrade)
    migration.start()
    try:
        waits = []
        with project.engine.connect() as writer:
            for n in range(6):
                started = time.perf_counter()
                writer.execute(
                    text("UPDATE documents SET title = 'w' WHERE id = :id"), {"id": n + 1}
                )
                writer.commit()
                waits.append(time.perf_counter() - started)
                time.sleep(0.2)
        assert max(waits) < 0.9, waits
        assert migration.is_alive()  # still waiting for the reader
    finally:
        reader.rollback()
        reader.close()
        migration.join()
    with project.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM documents WHERE search_vector IS NULL")) == 0


def test_generated_mode_on_a_big_table_names_the_rewrite(
    project_factory: Callable[..., Project], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vecorm.alembic import comparators

    project = project_factory()
    load(project)
    monkeypatch.setattr(comparators, "REWRITE_WARNING_ROWS", ROWS // 2)
    project.set_models(SEARCHABLE_MODELS.format(mode="generated"))
    revision = project.autogenerate("adopt with a rewrite")
    source = revision.read_text(encoding="utf-8")
    assert "# vecorm: WARNING: 'documents' has ~3000 rows" in source
    assert 'SearchConfig(search_vector="trigger")' in source
    assert undefined_names(revision) == ""
    project.upgrade()


def test_a_parallel_fill_covers_every_key_once_and_stops_at_a_failure(
    vecorm_engine: Engine,
) -> None:
    """``fill_in_batches(jobs=3)``: three ranges cut from the key index fill every row (text
    keys, compared by the server's collation, never in Python); when one range fails, the
    others stop after their batch in flight, the error is raised, and a second run fills
    what is left."""
    from vecorm.alembic.operations import fill_in_batches

    with vecorm_engine.begin() as conn:
        conn.execute(text("CREATE TABLE fill_keys (k text PRIMARY KEY, n int, v int)"))
        conn.execute(
            text(
                "INSERT INTO fill_keys SELECT 'key ' || g || CASE WHEN g % 2 = 0 THEN ' Z' "
                "ELSE ' a' END, g, NULL FROM generate_series(1, 3000) g"
            )
        )
        conn.execute(text("ANALYZE fill_keys"))
    try:
        with vecorm_engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(DataError, match="division by zero"):
                fill_in_batches(
                    conn,
                    "fill_keys",
                    "v = n / (n - 1777)",  # one row of one range fails
                    "v IS NULL",
                    batch_size=100,
                    label="fill fill_keys.v",
                    jobs=3,
                )
            left = conn.scalar(text("SELECT count(*) FROM fill_keys WHERE v IS NULL"))
            assert 0 < left < 3000  # committed batches stay
            progress = fill_in_batches(
                conn,
                "fill_keys",
                "v = n * 2",
                "v IS NULL",
                batch_size=100,
                label="fill fill_keys.v",
                jobs=3,
            )
            assert progress.done == left
            wrong = conn.scalar(
                text(
                    "SELECT count(*) FROM fill_keys "
                    "WHERE v IS NULL OR v NOT IN (n * 2, n / (n - 1777))"
                )
            )
            assert wrong == 0
    finally:
        with vecorm_engine.begin() as conn:
            conn.execute(text("DROP TABLE fill_keys"))
