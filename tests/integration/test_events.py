"""The flush hook on real PostgreSQL: batching, change detection, failures, scoping, threads."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import String, create_engine, event, select, text, update
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    defer,
    mapped_column,
    scoped_session,
    sessionmaker,
)

import vecorm
from vecorm.embedding.backfill import stale_count
from vecorm.embedding.embedders import HashingEmbedder
from vecorm.embedding.embedders.openai import OpenAIEmbedder
from vecorm.embedding.events import install, installed_embedder, is_installed, uninstall
from vecorm.embedding.source import text_digest
from vecorm.testing import FakeEmbedder
from vecorm.testing.openai_server import OpenAIServer

DIMS = 8


class Base(DeclarativeBase):
    pass


class Document(vecorm.Searchable, Base):
    __tablename__ = "documents"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "content"), dimensions=DIMS)

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str | None]
    content: Mapped[str | None]
    category: Mapped[str] = mapped_column(String(40), default="general")


class Note(vecorm.Searchable, Base):
    """A second model with a composite key, to batch across models and load by tuples."""

    __tablename__ = "notes"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS, index=None)

    book: Mapped[str] = mapped_column(String(10), primary_key=True)
    page: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str | None]


def vector_of(value: str) -> np.ndarray[Any, Any]:
    return HashingEmbedder(DIMS).embed([value])[0]


def stored(engine: Engine) -> dict[int, tuple[str | None, Any, bytes | None, str | None]]:
    """id -> (text, embedding, digest, model), read on a connection of its own."""
    with Session(engine) as session:
        rows = session.execute(
            select(
                Document.id,
                Document.title,
                Document.content,
                Document.embedding,
                Document.embedding_digest,
                Document.embedding_model,
            )
        )
        return {
            row.id: (
                "\n".join(part for part in (row.title, row.content) if part and part.strip())
                or None,
                row.embedding,
                row.embedding_digest,
                row.embedding_model,
            )
            for row in rows
        }


def assert_current(engine: Engine, model: str = f"vecorm-hashing-{DIMS}") -> None:
    """Every row holds the embedding, digest and model of its present text."""
    for row_id, (row_text, vector, digest, model_name) in stored(engine).items():
        if row_text is None:
            assert (vector, digest, model_name) == (None, None, None), row_id
            continue
        assert vector is not None, row_id
        np.testing.assert_allclose(vector, vector_of(row_text), rtol=1e-6, err_msg=str(row_id))
        assert digest == text_digest(row_text), row_id
        assert model_name == model, row_id


class Statements:
    """The SQL an engine runs, for asserting what a flush wrote and read."""

    def __init__(self, engine: Engine) -> None:
        self.executed: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        self.executed.append((statement, params))

    def clear(self) -> None:
        self.executed.clear()

    def matching(self, prefix: str) -> list[tuple[str, Any]]:
        return [entry for entry in self.executed if entry[0].lstrip().upper().startswith(prefix)]


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(dimensions=DIMS, max_batch_size=4)


@pytest.fixture
def factory(engine: Engine, embedder: FakeEmbedder) -> Iterator[sessionmaker[Session]]:
    maker = sessionmaker(engine)
    install(maker, embedder=embedder)
    yield maker
    uninstall(maker)


def test_new_rows_are_embedded_in_batches_by_the_same_flush(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    statements = Statements(engine)
    with factory() as session:
        session.add_all(Document(title=f"title {i}", content=f"body {i}") for i in range(10))
        session.commit()
    assert [len(batch) for batch in embedder.calls] == [4, 4, 2]  # ceil(10 / 4) calls
    assert sorted(embedder.texts) == sorted(f"title {i}\nbody {i}" for i in range(10))
    # text and vector go out in the INSERT itself; no UPDATE follows
    assert statements.matching("UPDATE") == []
    assert len(statements.matching("INSERT")) >= 1
    assert_current(engine)


def test_category_edit_costs_no_call_and_writes_nothing_of_vecorm(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        session.add_all(Document(title=f"t{i}", content="c") for i in range(6))
        session.commit()
    embedder.reset()
    statements = Statements(engine)
    with factory() as session:
        for document in session.scalars(select(Document)):
            document.category = "archived"
        statements.clear()
        session.commit()
    assert embedder.calls == []
    updates = statements.matching("UPDATE")
    assert updates, "the category edit itself must be written"
    for statement, _params in updates:
        assert "category" in statement
        for vecorm_column in ("embedding", "embedding_digest", "embedding_model"):
            assert vecorm_column not in statement
    assert statements.matching("SELECT") == []  # no digest lookup either
    assert_current(engine)


def test_text_edit_reembeds_only_the_changed_rows(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        session.add_all(Document(id=i, title=f"t{i}", content="c") for i in range(1, 11))
        session.commit()
    embedder.reset()
    with factory() as session:
        for document in session.scalars(select(Document).where(Document.id <= 5)):
            document.title = f"new {document.id}"
        for document in session.scalars(select(Document).where(Document.id > 5)):
            document.category = "other"
        session.commit()
    assert [len(batch) for batch in embedder.calls] == [4, 1]
    assert sorted(embedder.texts) == sorted(f"new {i}\nc" for i in range(1, 6))
    assert_current(engine)


def test_dirty_rows_load_stored_digests_in_one_query(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        session.add_all(Document(id=i, title=f"t{i}", content=f"c{i}") for i in range(1, 21))
        session.commit()
        session.expunge_all()
        embedder.reset()
        # content is not loaded: the hook needs it, and must not lazy-load it row by row
        documents = session.scalars(select(Document).options(defer(Document.content))).all()
        statements = Statements(engine)
        for document in documents:
            document.title = f"edited {document.id}"
        session.flush()
    selects = statements.matching("SELECT")
    assert len(selects) == 1, [statement for statement, _ in selects]
    assert "embedding_digest" in selects[0][0]
    assert [len(batch) for batch in embedder.calls] == [4] * 5
    assert sorted(embedder.texts) == sorted(f"edited {i}\nc{i}" for i in range(1, 21))


def test_text_restored_to_what_is_embedded_costs_nothing(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        session.add(Document(id=1, title="PostgreSQL", content="vectors"))
        session.commit()
        # someone changes the text behind the ORM's back; the stored digest is still right
        # for the old text, so putting that text back needs no new vector
        session.execute(update(Document).where(Document.id == 1).values(title="other"))
        session.commit()
        embedder.reset()
        document = session.get_one(Document, 1)
        assert document.title == "other"
        document.title = "PostgreSQL"
        session.commit()
    assert embedder.calls == []
    assert_current(engine)


def test_rows_embedded_by_another_model_are_reembedded_when_edited(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        session.add(Document(id=1, title="a", content="b"))
        session.commit()
        # edited behind the ORM's back, and embedded by another model before that
        session.execute(update(Document).values(title="x", embedding_model="old-model"))
        session.commit()
        embedder.reset()
        document = session.get_one(Document, 1)
        document.title = "a"  # the stored digest matches this text, the model does not
        session.commit()
    assert embedder.calls == [["a\nb"]]
    assert_current(engine)


def test_empty_or_null_text_gets_null_embedding(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        session.add_all(
            [
                Document(id=1, title=None, content=None),
                Document(id=2, title="  ", content="\t\n"),
                Document(id=3, title="kept", content=" "),
            ]
        )
        session.commit()
        assert embedder.calls == [["kept"]]
        session.get_one(Document, 3).title = ""
        session.commit()
    assert embedder.calls == [["kept"]]
    rows = stored(engine)
    assert {row_id: row[1:] for row_id, row in rows.items()} == {
        1: (None, None, None),
        2: (None, None, None),
        3: (None, None, None),
    }


def test_assigned_vector_is_kept_and_recorded(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    mine = np.arange(1, DIMS + 1, dtype=np.float32)
    with factory() as session:
        session.add(Document(id=1, title="precomputed", content=None, embedding=mine))
        session.add(Document(id=2, title="other", embedding=mine, embedding_model="my-own-model"))
        session.commit()
    assert embedder.calls == []
    rows = stored(engine)
    np.testing.assert_array_equal(rows[1][1], mine)
    assert rows[1][2:] == (text_digest("precomputed"), f"vecorm-hashing-{DIMS}")
    assert rows[2][2:] == (text_digest("other"), "my-own-model")


def test_models_sharing_an_embedder_share_batches_and_composite_keys_load(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        session.add_all(Document(title=f"d{i}") for i in range(3))
        session.add_all(Note(book="b", page=i, body=f"n{i}") for i in range(3))
        session.commit()
        assert [len(batch) for batch in embedder.calls] == [4, 2]
        embedder.reset()
        for note in session.scalars(select(Note)):
            note.body = f"{note.body} edited"
        session.commit()
    assert sorted(embedder.texts) == ["n0 edited", "n1 edited", "n2 edited"]
    with Session(engine) as session:
        for note in session.scalars(select(Note)):
            np.testing.assert_allclose(note.embedding, vector_of(note.body), rtol=1e-6)


def test_model_embedder_wins_over_the_installed_one(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    own = FakeEmbedder(dimensions=DIMS, max_batch_size=2)

    class Base2(DeclarativeBase):
        pass

    class Memo(vecorm.Searchable, Base2):
        __tablename__ = "memos"
        __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS, embedder=own)
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]

    Base2.metadata.create_all(engine)
    with factory() as session:
        session.add_all([Memo(body="m1"), Memo(body="m2"), Memo(body="m3"), Document(title="d")])
        session.commit()
    assert own.calls == [["m1", "m2"], ["m3"]]
    assert embedder.calls == [["d"]]


def test_missing_embedder_and_wrong_dimensions_fail_before_any_sql(engine: Engine) -> None:
    statements = Statements(engine)
    with Session(engine) as session:
        install(session)
        session.add(Document(title="x"))
        with pytest.raises(vecorm.ConfigurationError, match="no embedder"):
            session.flush()
        uninstall(session)
        install(session, embedder=FakeEmbedder(dimensions=DIMS + 1))
        with pytest.raises(vecorm.DimensionMismatch, match=r"expects 8 values .* returns 9"):
            session.flush()
    assert statements.matching("INSERT") == []


# --- where the hook is installed -----------------------------------------------------------


def test_install_is_scoped_to_its_target_and_uninstall_removes_it(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    hooked = sessionmaker(engine)
    plain = sessionmaker(engine)
    install(hooked, embedder=embedder)
    assert is_installed(hooked) and not is_installed(plain)
    with hooked() as session:
        assert installed_embedder(session) is embedder
        session.add(Document(id=1, title="hooked"))
        session.commit()
    with plain() as session, Session(engine) as bare:
        assert installed_embedder(session) is None
        session.add(Document(id=2, title="plain factory"))
        bare.add(Document(id=3, title="plain Session"))
        session.commit()
        bare.commit()
    assert len(hooked().dispatch.before_flush) == 1
    assert len(plain().dispatch.before_flush) == len(Session().dispatch.before_flush) == 0
    assert uninstall(hooked) is True
    assert uninstall(hooked) is False
    assert len(hooked().dispatch.before_flush) == 0
    with hooked() as session:
        session.add(Document(id=4, title="after uninstall"))
        session.commit()
    assert embedder.texts == ["hooked"]
    assert {row_id: row[1] is not None for row_id, row in stored(engine).items()} == {
        1: True,
        2: False,
        3: False,
        4: False,
    }


def test_installing_again_replaces(engine: Engine, embedder: FakeEmbedder) -> None:
    """An app factory run twice (Flask's create_app in tests) installs twice: the last wins,
    one hook only."""
    maker = sessionmaker(engine)
    scoped = scoped_session(maker)
    first = FakeEmbedder(dimensions=DIMS)
    install(maker, embedder=first)
    install(maker, embedder=embedder)
    with maker() as session:
        session.add(Document(id=1, title="once"))
        session.commit()
    assert (first.texts, embedder.texts) == ([], ["once"])
    install(scoped, embedder=first)  # the same sessions through another factory: replaced
    assert (is_installed(maker), is_installed(scoped)) == (False, True)
    with scoped() as session:
        session.add(Document(id=2, title="twice"))
        session.commit()
    assert (first.texts, embedder.texts) == (["twice"], ["once"])
    with pytest.raises(vecorm.ConfigurationError, match="cannot install"):
        install(engine, embedder=embedder)  # type: ignore[arg-type]
    with pytest.raises(vecorm.ConfigurationError, match="mode"):
        install(Session(engine), embedder=embedder, mode="lenient")  # type: ignore[arg-type]
    uninstall(scoped)
    scoped.remove()


def test_scoped_session_and_session_instance(engine: Engine, embedder: FakeEmbedder) -> None:
    scoped = scoped_session(sessionmaker(engine))
    install(scoped, embedder=embedder)
    try:
        scoped.add(Document(id=1, title="scoped"))
        scoped.commit()
    finally:
        scoped.remove()
        uninstall(scoped)
    with Session(engine) as session:
        install(session, embedder=embedder)
        session.add(Document(id=2, title="instance"))
        session.commit()
        uninstall(session)
    assert embedder.calls == [["scoped"], ["instance"]]
    assert_current(engine)


def test_hook_on_factory_and_session_embeds_once(engine: Engine, embedder: FakeEmbedder) -> None:
    maker = sessionmaker(engine)
    install(maker, embedder=embedder)
    with maker() as session:
        install(session, embedder=embedder)
        session.add(Document(title="once"))
        session.commit()
        uninstall(session)
    uninstall(maker)
    assert embedder.calls == [["once"]]


# --- provider failures, through the real openai client and the loopback server --------------


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


def openai_embedder(server: OpenAIServer) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        base_url=server.base_url,
        api_key="sk-test",
        dimensions=DIMS,
        max_batch_size=4,
        max_retries=1,
        timeout=5,
    )


def count_rows(url: URL) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM documents")).scalar_one())
    finally:
        engine.dispose()


def test_strict_failure_on_second_batch_writes_nothing_and_commit_can_be_retried(
    engine: Engine, vecorm_url: URL, openai_server: OpenAIServer
) -> None:
    provider = openai_embedder(openai_server)
    with Session(engine) as session:
        install(session, embedder=provider)
        session.add_all(Document(id=i, title=f"doc {i}") for i in range(1, 13))
        # batch 2 fails, and so does its one retry
        openai_server.fail_on_request(2, status=503)
        openai_server.fail_on_request(3, status=503)
        with pytest.raises(vecorm.EmbeddingError, match="batch 2 of 3") as caught:
            session.commit()
        assert caught.value.__cause__ is not None
        assert count_rows(vecorm_url) == 0  # nothing written, seen from another connection
        # no instance was given a vector from batch 1 either
        assert all("embedding" not in vars(document) for document in session.new)
        assert len(session.new) == 12  # the changes are still there ...
        session.commit()  # ... and the retried commit succeeds
        uninstall(session)
    assert count_rows(vecorm_url) == 12
    assert openai_server.batch_sizes == [4, 4, 4, 4, 4, 4]  # 2 failed tries, then 3 batches
    assert_current(engine, model=provider.model_name)


def test_session_is_usable_after_rollback_of_a_failed_flush(
    engine: Engine, vecorm_url: URL, openai_server: OpenAIServer
) -> None:
    provider = openai_embedder(openai_server)
    with Session(engine) as session:
        install(session, embedder=provider)
        session.add(Document(id=1, title="first"))
        session.commit()
        session.add_all(Document(id=i, title=f"doc {i}") for i in range(2, 14))
        openai_server.fail_on_request(2, status=500)
        openai_server.fail_on_request(3, status=500)
        with pytest.raises(vecorm.EmbeddingError):
            session.flush()
        session.rollback()
        assert session.scalars(select(Document.title)).all() == ["first"]
        session.add(Document(id=20, title="after rollback"))
        session.commit()
        uninstall(session)
    assert count_rows(vecorm_url) == 2
    assert_current(engine, model=provider.model_name)


def test_deferred_mode_writes_failed_batches_without_vectors(
    engine: Engine, openai_server: OpenAIServer
) -> None:
    provider = openai_embedder(openai_server)
    with Session(engine) as session:
        install(session, embedder=provider, mode="deferred")
        session.add_all(Document(id=i, title=f"doc {i}") for i in range(1, 13))
        openai_server.fail_on_request(2, status=500)
        openai_server.fail_on_request(3, status=500)
        session.commit()
        uninstall(session)
    rows = stored(engine)
    missing = sorted(row_id for row_id, row in rows.items() if row[1] is None)
    assert missing == [5, 6, 7, 8]
    assert all(rows[row_id][2:] == (None, None) for row_id in missing)
    assert stale_count(Session(engine), Document, embedder=provider) == 4


def test_per_model_deferred_mode_overrides_the_session(engine: Engine) -> None:
    class Broken:
        dimensions = DIMS
        model_name = "broken"
        max_batch_size = 10

        def embed(self, texts: Any) -> Any:
            raise RuntimeError("provider down")

    class Base3(DeclarativeBase):
        pass

    class Draft(vecorm.Searchable, Base3):
        __tablename__ = "drafts"
        __vecorm__ = vecorm.SearchConfig(
            fields=("body",), dimensions=DIMS, embedding_mode="deferred"
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]

    Base3.metadata.create_all(engine)
    with Session(engine) as session:
        install(session, embedder=Broken())  # strict by default
        session.add(Draft(id=1, body="kept without vector"))
        session.commit()
        session.add(Document(id=1, title="strict"))
        with pytest.raises(vecorm.EmbeddingError, match="RuntimeError: provider down"):
            session.commit()
        session.rollback()
        uninstall(session)
    with Session(engine) as session:
        draft = session.get_one(Draft, 1)
        assert (draft.body, draft.embedding) == ("kept without vector", None)


# --- threads -------------------------------------------------------------------------------


def test_concurrent_sessions_end_with_the_embedding_of_the_final_text(engine: Engine) -> None:
    embedder = FakeEmbedder(dimensions=DIMS, max_batch_size=3)
    maker = sessionmaker(engine)
    install(maker, embedder=embedder)
    threads_count, own_rows, rounds = 4, 6, 4
    shared_ids = [1000, 1001]
    with maker() as session:
        session.add_all(Document(id=i, title=f"shared {i}", content="v0") for i in shared_ids)
        session.commit()
    expected_texts: Counter[str] = Counter(f"shared {i}\nv0" for i in shared_ids)
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(threads_count)

    def work(worker: int) -> None:
        produced: list[str] = []
        try:
            start.wait()
            with maker() as session:
                ids = [worker * 100 + n for n in range(own_rows)]
                session.add_all(Document(id=i, title=f"w{worker} r{i}", content="v0") for i in ids)
                session.commit()
                produced += [f"w{worker} r{i}\nv0" for i in ids]
                for version in range(1, rounds + 1):
                    for document in session.scalars(select(Document).where(Document.id.in_(ids))):
                        if (document.id + version) % 2:
                            document.content = f"v{version} by {worker}"
                            produced.append(f"{document.title}\nv{version} by {worker}")
                        else:
                            document.category = f"c{version}"  # not a text change
                    for shared_id in shared_ids:  # row lock: read the latest, then edit
                        shared = session.get_one(
                            Document, shared_id, with_for_update=True, populate_existing=True
                        )
                        shared.content = f"v{version} by {worker}"
                        produced.append(f"shared {shared_id}\nv{version} by {worker}")
                        session.commit()
            with lock:
                expected_texts.update(produced)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(1, threads_count + 1)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    uninstall(maker)
    assert errors == []
    # each (row, text) change was embedded exactly once, nothing else was
    assert Counter(embedder.texts) == expected_texts
    assert_current(engine)
