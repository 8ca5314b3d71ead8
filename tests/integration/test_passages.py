"""Passages on real PostgreSQL: written on flush, replaced on edit, searched for their parents."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import String, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import vecorm
from vecorm.embedding.embedders.openai import OpenAIEmbedder
from vecorm.embedding.events import install, uninstall
from vecorm.embedding.source import text_digest
from vecorm.errors import ConfigurationError, EmbeddingError
from vecorm.testing import FakeEmbedder
from vecorm.testing.openai_server import OpenAIServer

DIMS = 32


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "docs"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str | None]
    body: Mapped[str | None]
    category: Mapped[str] = mapped_column(String(20), default="general")


class DocPassage(vecorm.Passage, Base):
    __tablename__ = "doc_passages"
    __vecorm__ = vecorm.PassageConfig(
        parent=Doc,
        source=("body",),
        chunker=vecorm.chunk_characters(size=120, overlap=0),
        dimensions=DIMS,
    )


class Failing:
    """A provider that is down."""

    dimensions = DIMS
    model_name = FakeEmbedder(DIMS).model_name
    max_batch_size = 100

    def embed(self, texts: Any) -> Any:
        raise ConnectionError("provider down")


def paragraph(words: str) -> str:
    """``words`` repeated to about 100 characters: one passage of the 120-character chunker."""
    return " ".join([words] * max(1, 100 // (len(words) + 1)))


def paragraphs(*words: str) -> str:
    return "\n\n".join(paragraph(word) for word in words)


class Statements:
    def __init__(self, engine: Engine) -> None:
        self.executed: list[str] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.executed.append(statement)

    def touching(self, table: str) -> list[str]:
        return [statement for statement in self.executed if table in statement]


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(dimensions=DIMS)


@pytest.fixture
def factory(engine: Engine, embedder: FakeEmbedder) -> Iterator[sessionmaker[Session]]:
    maker = sessionmaker(engine)
    install(maker, embedder=embedder)
    yield maker
    uninstall(maker)


def stored(engine: Engine, doc_id: int) -> list[tuple[Any, ...]]:
    """(ordinal, text, char_start, char_end, embedding, digest, model, xmin) of a doc's passages."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                DocPassage.ordinal,
                DocPassage.text,
                DocPassage.char_start,
                DocPassage.char_end,
                DocPassage.embedding,
                DocPassage.embedding_digest,
                DocPassage.embedding_model,
                text("doc_passages.xmin::text"),
            )
            .where(DocPassage.parent_id == doc_id)
            .order_by(DocPassage.ordinal)
        )
        return [
            (*row[:4], None if row[4] is None else tuple(row[4].tolist()), *row[5:]) for row in rows
        ]


def assert_current(engine: Engine, doc_id: int, body: str) -> None:
    """The stored passages are the chunker's passages of ``body``, each embedded."""
    expected = vecorm.chunk_characters(size=120, overlap=0)(body)
    rows = stored(engine, doc_id)
    assert [(row[1], row[2], row[3]) for row in rows] == [
        (chunk.text, chunk.start, chunk.end) for chunk in expected
    ]
    vectors = FakeEmbedder(DIMS).embed([chunk.text for chunk in expected])
    for row, vector in zip(rows, vectors, strict=True):
        np.testing.assert_allclose(row[4], vector, rtol=1e-6)
        assert row[5] == text_digest(row[1])
        assert row[6] == f"vecorm-hashing-{DIMS}"


# --- written on flush --------------------------------------------------------------------


def test_a_new_parent_gets_its_passages_embedded_in_the_same_flush(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    body = paragraphs("vacuum", "index", "replica", "backup")
    with factory() as session:
        session.add(Doc(id=1, title="Ops", body=body))
        session.commit()
    assert_current(engine, 1, body)
    assert len(stored(engine, 1)) == 4
    assert embedder.calls == [[row[1] for row in stored(engine, 1)]]  # one batch
    with factory() as session:  # the relationship back to the parent
        passage = session.scalars(select(DocPassage).where(DocPassage.ordinal == 2)).one()
        assert passage.parent.id == 1
        assert passage.parent.body[passage.char_start : passage.char_end] == passage.text


def test_editing_another_column_writes_no_passage(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        session.add(Doc(id=1, body=paragraphs("vacuum", "index")))
        session.commit()
    embedder.reset()
    statements = Statements(engine)
    with factory() as session:
        doc = session.get(Doc, 1)
        assert doc is not None
        doc.category = "archive"
        doc.title = "renamed"
        session.commit()
    assert embedder.calls == []
    assert statements.touching("doc_passages") == []


def test_an_edit_rewrites_and_embeds_only_the_passages_that_changed(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        session.add(Doc(id=1, body=paragraphs("vacuum", "index", "replica")))
        session.commit()
    before = stored(engine, 1)
    embedder.reset()

    appended = paragraphs("vacuum", "index", "replica", "backup", "restore")
    with factory() as session:
        doc = session.get(Doc, 1)
        assert doc is not None
        doc.body = appended
        session.commit()
    after = stored(engine, 1)
    assert_current(engine, 1, appended)
    assert after[:3] == before  # untouched rows: same xmin, no write
    assert embedder.texts == [row[1] for row in after[3:]]

    # A paragraph above shifts every passage: rewritten (new offsets), but the texts already
    # embedded keep their vectors; only the new paragraph costs a provider call.
    embedder.reset()
    shifted = paragraphs("checkpoint", "vacuum", "index", "replica", "backup", "restore")
    with factory() as session:
        doc = session.get(Doc, 1)
        assert doc is not None
        doc.body = shifted
        session.commit()
    assert_current(engine, 1, shifted)
    assert embedder.texts == [paragraph("checkpoint")]

    # Shorter text: the passages past the end go.
    with factory() as session:
        doc = session.get(Doc, 1)
        assert doc is not None
        doc.body = paragraphs("vacuum")
        session.commit()
    assert_current(engine, 1, paragraphs("vacuum"))
    with factory() as session:
        doc = session.get(Doc, 1)
        assert doc is not None
        doc.body = None
        session.commit()
    assert stored(engine, 1) == []


def test_loaded_passages_are_replaced_in_the_session_too(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with factory() as session:
        session.add(Doc(id=1, body=paragraphs("vacuum", "index")))
        session.commit()
        old = session.scalars(select(DocPassage).order_by(DocPassage.ordinal)).all()
        doc = session.get(Doc, 1)
        assert doc is not None
        doc.body = paragraphs("backup", "index")  # as long as "vacuum": same offsets after
        session.commit()
        current = session.scalars(select(DocPassage).order_by(DocPassage.ordinal)).all()
        assert [passage.text.split()[0] for passage in current] == ["backup", "index"]
        assert current[0] is not old[0] and current[1] is old[1]  # ordinal 1 was kept


def test_deleting_a_parent_deletes_its_passages(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with factory() as session:
        session.add_all([Doc(id=1, body=paragraphs("a1", "b1")), Doc(id=2, body="other")])
        session.commit()
        doc = session.get(Doc, 1)
        session.delete(doc)
        session.commit()
    with engine.connect() as conn:
        assert conn.execute(select(DocPassage.parent_id).distinct()).scalars().all() == [2]


def test_a_failing_provider_writes_nothing_and_keeps_the_pending_work(
    engine: Engine, embedder: FakeEmbedder
) -> None:
    maker = sessionmaker(engine)
    install(maker, embedder=embedder)
    with maker() as session:
        session.add(Doc(id=1, body=paragraphs("vacuum", "index")))
        session.commit()
    before = stored(engine, 1)
    install(maker, embedder=Failing())  # type: ignore[arg-type]
    try:
        with maker() as session:
            doc = session.get(Doc, 1)
            assert doc is not None
            doc.body = paragraphs("replica", "backup", "restore")
            session.add(Doc(id=2, body=paragraphs("new")))
            with pytest.raises(EmbeddingError, match="provider down"):
                session.commit()
            assert [type(instance) for instance in session.new] == [Doc]  # no passage left over
            assert doc in session.dirty
            assert stored(engine, 1) == before  # nothing deleted, nothing written
            install(maker, embedder=embedder)
            session.commit()  # the retry writes it all
        assert_current(engine, 1, paragraphs("replica", "backup", "restore"))
        assert_current(engine, 2, paragraphs("new"))
    finally:
        uninstall(maker)


def test_two_transactions_editing_one_document_take_turns(
    engine: Engine, factory: sessionmaker[Session]
) -> None:
    with factory() as session:
        session.add(Doc(id=1, body=paragraphs("vacuum", "index")))
        session.commit()
    first, second = factory(), factory()
    try:
        doc = first.get(Doc, 1)
        assert doc is not None
        doc.body = paragraphs("replica", "backup", "restore")
        first.flush()  # holds the document's lock until it commits
        other = second.get(Doc, 1)
        assert other is not None
        other.body = paragraphs("checkpoint", "wal")
        failures: list[BaseException] = []

        def commit_second() -> None:
            try:
                second.commit()
            except BaseException as exc:  # reported by the assertion below
                failures.append(exc)

        waiting = threading.Thread(target=commit_second)
        waiting.start()
        deadline = time.monotonic() + 20
        with engine.connect() as conn:  # until the second transaction waits for the first
            while not conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).scalar_one():
                assert time.monotonic() < deadline, "the second commit never waited"
                waiting.join(0.01)
                conn.rollback()
        first.commit()
        waiting.join(30)
        assert not waiting.is_alive()
        assert failures == []
    finally:
        first.close()
        second.close()
    assert_current(engine, 1, paragraphs("checkpoint", "wal"))


def test_worker_mode_writes_passages_without_vectors(engine: Engine) -> None:
    maker = sessionmaker(engine)
    install(maker, mode="worker")
    try:
        with maker() as session:
            session.add(Doc(id=1, body=paragraphs("vacuum", "index")))
            session.commit()
    finally:
        uninstall(maker)
    rows = stored(engine, 1)
    assert [row[1].split()[0] for row in rows] == ["vacuum", "index"]
    assert [row[4] for row in rows] == [None, None]
    with Session(engine) as session:
        assert vecorm.stale_count(session, DocPassage, embedder=FakeEmbedder(DIMS)) == 2
        result = vecorm.backfill(session, DocPassage, embedder=FakeEmbedder(DIMS))
        assert result.embedded == 2
    assert_current(engine, 1, paragraphs("vacuum", "index"))


def test_rechunk_cuts_rows_that_were_written_without_the_hook(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with Session(engine) as session:  # no hook: no passages
        session.add_all(Doc(id=i, body=paragraphs(f"w{i}", "shared")) for i in range(1, 6))
        session.commit()
    with factory() as session:
        assert vecorm.rechunk(session, DocPassage, batch_size=2) == 10
        session.commit()
    for i in range(1, 6):
        assert_current(engine, i, paragraphs(f"w{i}", "shared"))
    embedder.reset()
    with factory() as session:  # nothing changed: nothing written
        assert vecorm.rechunk(session, DocPassage) == 0
        session.commit()
    assert embedder.calls == []


def test_a_29k_character_document_commits_in_strict_mode_through_openai(
    engine: Engine,
) -> None:
    body = "\n\n".join(
        f"Section {number}. " + "Autovacuum reclaims dead tuples and updates statistics. " * 8
        for number in range(64)
    )
    assert len(body) > 29_000
    with OpenAIServer() as server:
        provider = OpenAIEmbedder(
            api_key="sk-test", base_url=server.base_url, dimensions=DIMS, max_retries=0
        )
        with pytest.raises(EmbeddingError, match="8191-token input limit"):
            provider.embed([body])  # the document whole: refused
        maker = sessionmaker(engine)
        install(maker, embedder=provider)
        try:
            with maker() as session:
                session.add(Doc(id=1, body=body))
                session.commit()
        finally:
            uninstall(maker)
        sent = [text for request in server.requests for text in request.inputs]
    rows = stored(engine, 1)
    assert len(rows) > 200
    assert sorted(sent) == sorted({row[1] for row in rows})  # each distinct passage sent once
    assert all(provider.count_tokens(text) <= provider.max_input_tokens for text in sent)
    assert all(row[4] is not None for row in rows)


async def test_an_async_session_writes_and_replaces_passages(
    engine: Engine, vecorm_async_engine: AsyncEngine, embedder: FakeEmbedder
) -> None:
    maker = async_sessionmaker(vecorm_async_engine, expire_on_commit=False)
    install(maker, embedder=embedder)
    try:
        async with maker() as session:
            session.add(Doc(id=1, body=paragraphs("vacuum", "index")))
            await session.commit()
            doc = await session.get(Doc, 1)
            assert doc is not None
            doc.body = paragraphs("vacuum", "replica", "backup")
            await session.commit()
    finally:
        uninstall(maker)
    assert_current(engine, 1, paragraphs("vacuum", "replica", "backup"))
    # the first commit embeds both passages; the edit only the two new ones
    assert embedder.texts == [paragraph(word) for word in ("vacuum", "index", "replica", "backup")]


class Article(vecorm.Searchable, Base):
    """A parent that is searchable itself: its own vector and its passages', one flush."""

    __tablename__ = "articles"
    __vecorm__ = vecorm.SearchConfig(fields=("title",), dimensions=DIMS)

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]


class ArticlePassage(vecorm.Passage, Base):
    __tablename__ = "article_passages"
    __vecorm__ = vecorm.PassageConfig(
        parent=Article,
        source=("title", "body"),
        chunker=vecorm.chunk_tokens(size=40, overlap=5),
        dimensions=DIMS,
        bm25=None,
    )


def test_a_searchable_parent_and_its_passages_embed_in_one_flush(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    body = paragraphs("vacuum", "index", "replica")
    with factory() as session:
        session.add(Article(id=1, title="Maintenance", body=body))
        session.commit()
        article = session.get(Article, 1)
        assert article is not None
        assert article.embedding is not None
        passages = session.scalars(select(ArticlePassage).order_by(ArticlePassage.ordinal)).all()
        assert all(p.embedding is not None for p in passages)
    joined = "Maintenance\n" + body  # the source fields joined as an embedded row's are
    assert [(p.char_start, p.char_end) for p in passages] == [
        (chunk.start, chunk.end) for chunk in vecorm.chunk_tokens(size=40, overlap=5)(joined)
    ]
    assert all(joined[p.char_start : p.char_end] == p.text for p in passages)
    assert len(embedder.calls) == 1  # the article's text and its passages: one batch
    assert "Maintenance" in embedder.texts


# --- searching passages for their parents -------------------------------------------------


@pytest.fixture
def corpus(engine: Engine, factory: sessionmaker[Session]) -> dict[int, str]:
    """Doc 1: forty passages on vacuum (the nearest passages all belong to it); docs 2-7 one
    or two passages each, less and less about vacuum; doc 8 about something else."""
    bodies = {
        1: paragraphs(*["vacuum"] * 40),
        2: paragraphs("vacuum vacuum index", "unrelated"),
        3: paragraphs("vacuum index"),
        4: paragraphs("vacuum index index"),
        5: paragraphs("vacuum index index index"),
        6: paragraphs("index replica vacuum backup"),
        7: paragraphs("replica backup restore vacuum", "vacuum index replica backup restore"),
        8: paragraphs("tomato soup"),
    }
    categories = {1: "ops", 2: "ops", 3: "dev", 4: "dev", 5: "ops", 6: "dev", 7: "dev", 8: "ops"}
    with factory() as session:
        session.add_all(
            Doc(id=key, body=body, category=categories[key]) for key, body in bodies.items()
        )
        session.commit()
    return bodies


def brute_force(
    bodies: dict[int, str], query: str, *, category: dict[int, str] | None = None
) -> list[tuple[int, float]]:
    """(doc id, its best passage's cosine distance), nearest first, computed in numpy."""
    chunker = vecorm.chunk_characters(size=120, overlap=0)
    embed = FakeEmbedder(DIMS).embed
    query_vector = embed([query])[0]
    best = []
    for key, body in bodies.items():
        if category is not None and key not in category:
            continue
        vectors = embed([chunk.text for chunk in chunker(body)])
        distances = 1.0 - vectors @ query_vector
        best.append((key, float(distances.min())))
    return sorted(best, key=lambda item: (round(item[1], 5), item[0]))


def test_passage_search_returns_each_parent_once_with_its_best_passage(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    expected = brute_force(corpus, "vacuum")
    with factory() as session:
        rows = session.execute(vecorm.passage_search(DocPassage, "vacuum", k=5)).all()
    assert [doc.id for doc, _, _ in rows] == [key for key, _ in expected[:5]]
    for (doc, passage, distance), (_, best) in zip(rows, expected, strict=False):
        assert isinstance(doc, Doc) and isinstance(passage, DocPassage)
        assert passage.parent_id == doc.id
        assert distance == pytest.approx(best, abs=1e-5)
    assert rows[0][1].ordinal == 0  # 40 equal passages: the first one


def test_k_parents_although_the_nearest_passages_share_one_parent(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    # depth 15: the 15 nearest passages are all doc 1's forty "vacuum" paragraphs
    stmt = vecorm.passage_search(DocPassage, "vacuum", k=3, depth=15)
    with factory() as session:
        nearest = session.execute(DocPassage.nearest("vacuum", k=15)).all()
        assert {passage.parent_id for passage, _ in nearest} == {1}
        rows = session.execute(stmt).all()
        assert [doc.id for doc, _, _ in rows] == [key for key, _ in brute_force(corpus, "vacuum")][
            :3
        ]
        # more parents asked than exist: every one of them, once
        everyone = session.execute(vecorm.passage_search(DocPassage, "vacuum", k=50)).all()
        assert sorted(doc.id for doc, _, _ in everyone) == list(range(1, 9))


def exact_ranking_ran(session: Session, stmt: Any) -> bool:
    """Whether the statement's exact ranking of the parents ran (EXPLAIN ANALYZE): the branch
    under the one-time filter ``found < k``."""
    from vecorm.search.explain import explain, plan_nodes

    gates = [
        node
        for node in plan_nodes(explain(session, stmt, analyze=True))
        if " < " in node.get("One-Time Filter", "")
    ]
    assert len(gates) == 1, gates
    return bool(any(child["Actual Loops"] for child in gates[0].get("Plans", ())))


def test_the_exact_ranking_runs_only_when_the_index_found_too_few_parents(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    with factory() as session:
        assert not exact_ranking_ran(session, vecorm.passage_search(DocPassage, "vacuum", k=3))
        assert exact_ranking_ran(
            session, vecorm.passage_search(DocPassage, "vacuum", k=3, depth=15)
        )


def test_parent_filters_apply_inside_the_search(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    dev = {3: "dev", 4: "dev", 6: "dev", 7: "dev"}
    expected = [key for key, _ in brute_force(corpus, "vacuum", category=dev)]
    stmt = vecorm.passage_search(DocPassage, "vacuum", k=3, depth=15)
    with factory() as session:
        rows = session.execute(stmt.where(Doc.category == "dev")).all()
        assert [doc.id for doc, _, _ in rows] == expected[:3]
        sql = str(stmt.where(Doc.category == "dev").compile())
        assert sql.count("docs.category = ") >= 3  # the scan, the exact ranking, the outer query
        # and a filter on the passages themselves
        rows = session.execute(stmt.where(DocPassage.ordinal >= 1)).all()
        assert [doc.id for doc, _, _ in rows] == [1, 7, 2]
        assert all(passage.ordinal >= 1 for _, passage, _ in rows)


def test_several_passages_per_parent(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    stmt = vecorm.passage_search(DocPassage, "vacuum index", k=3, passages_per_parent=2)
    with factory() as session:
        rows = session.execute(stmt).all()
    parents = [doc.id for doc, _, _ in rows]
    expected = [key for key, _ in brute_force(corpus, "vacuum index")][:3]
    assert list(dict.fromkeys(parents)) == expected  # grouped, parents in order
    for parent in expected:
        distances = [distance for doc, _, distance in rows if doc.id == parent]
        passages = len(vecorm.chunk_characters(size=120, overlap=0)(corpus[parent]))
        assert len(distances) == min(2, passages)
        assert distances == sorted(distances)


def test_text_search_over_passages_returns_parents(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    with factory() as session:
        rows = session.execute(vecorm.passage_text_search(DocPassage, "restore", k=5)).all()
        assert sorted(doc.id for doc, _, _ in rows) == [7]  # one parent, although 2 passages
        assert "restore" in rows[0][1].text
        rows = session.execute(
            vecorm.passage_text_search(DocPassage, "replica", k=2, passages_per_parent=2).where(
                Doc.category == "dev"
            )
        ).all()
        assert [doc.id for doc, _, _ in rows][:2] in ([7, 7], [6, 7], [7, 6])
        assert {doc.category for doc, _, _ in rows} == {"dev"}
        scores = [score for _, _, score in rows]
        assert all(score > 0 for score in scores)


def test_a_search_uses_the_vector_index(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    from vecorm.testing.assertions import assert_index_used

    with factory() as session:
        assert_index_used(session, vecorm.passage_search(DocPassage, [1.0] * DIMS, k=3))


# --- declaration mistakes -------------------------------------------------------------------


def test_mistakes_are_reported_when_the_class_is_created() -> None:
    class Other(DeclarativeBase):
        pass

    class Note(Other):
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        size: Mapped[int]

    with pytest.raises(ConfigurationError, match="NoteParts.__vecorm__: parent must be"):

        class NoteParts(vecorm.Passage, Other):
            __tablename__ = "note_parts"
            __vecorm__ = vecorm.PassageConfig(parent="Note", source=("body",))

    with pytest.raises(ConfigurationError, match="source 'size' is not a text"):

        class NoteSizes(vecorm.Passage, Other):
            __tablename__ = "note_sizes"
            __vecorm__ = vecorm.PassageConfig(parent=Note, source=("size",), dimensions=3)

    with pytest.raises(ConfigurationError, match="NoteChunks.__vecorm__ is a PassageConfig"):

        class NoteChunks(vecorm.Searchable, Other):
            __tablename__ = "note_chunks"
            __vecorm__ = vecorm.PassageConfig(parent=Note, source=("body",), dimensions=3)
            id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigurationError, match="Note is not a passage model"):
        vecorm.passage_search(Note, [1.0, 0.0, 0.0])


def test_a_cached_statement_takes_each_querys_own_values(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    with factory() as session:
        for query, first in (("vacuum", 1), ("tomato soup", 8), ("vacuum", 1)):
            for filtered in (False, True):
                stmt = vecorm.passage_search(DocPassage, query, k=2, depth=15)
                stmt = stmt.where(Doc.category == "ops") if filtered else stmt
                assert session.execute(stmt).first()[0].id == first  # type: ignore[index]
        for word, parent in (("restore", 7), ("tomato", 8)):
            found = session.execute(vecorm.passage_text_search(DocPassage, word, k=1)).one()
            assert found[0].id == parent


# --- hybrid search over passages, fused per parent ----------------------------------------


def passage_values(
    session: Session, bodies: dict[int, str], query: str, *, parents: set[int] | None = None
) -> dict[tuple[int, int], tuple[float, float | None]]:
    """``(doc, ordinal) -> (cosine distance, BM25 score or None)`` of every passage (of
    ``parents``): distances in numpy, scores from the passage model's own BM25 (every match)."""
    from vecorm.search.bm25 import BM25Arm

    scores = {
        (row.pk_0, row.pk_1): row.score
        for row in session.execute(
            BM25Arm().candidates(DocPassage, query, where=[], depth=1_000_000)
        )
    }
    chunker = vecorm.chunk_characters(size=120, overlap=0)
    embed = FakeEmbedder(DIMS).embed
    query_vector = embed([query])[0]
    values = {}
    for key, body in bodies.items():
        if parents is not None and key not in parents:
            continue
        chunks = chunker(body)
        distances = 1.0 - embed([chunk.text for chunk in chunks]) @ query_vector
        for ordinal, value in enumerate(distances):
            values[(key, ordinal)] = (float(value), scores.get((key, ordinal)))
    return values


def parent_arms(
    passages: dict[tuple[int, int], tuple[float, float | None]], *, k: int, depth: int
) -> tuple[dict[int, float], dict[int, float], list[int], list[int]]:
    """Each parent's distance (its nearest passage's) and text score (its best passage's, 0
    without a match), and the parents each arm nominates, best first: those of its ``depth``
    best passages, at least k."""
    distance: dict[int, float] = {}
    text_score: dict[int, float] = {}
    for (parent, _), (passage_distance, score) in passages.items():
        distance[parent] = min(distance.get(parent, 2.0), passage_distance)
        text_score[parent] = max(text_score.get(parent, 0.0), score or 0.0)
    nearest = sorted(passages, key=lambda key: (round(passages[key][0], 6), key))[:depth]
    by_distance = sorted(distance, key=lambda parent: (round(distance[parent], 6), parent))
    semantic = by_distance[: max(len({parent for parent, _ in nearest}), k)]
    matched = {key: value[1] for key, value in passages.items() if value[1] is not None}
    best = sorted(matched, key=lambda key: (-matched[key], key))[:depth]  # type: ignore[operator]
    scoring = {parent for parent, _ in matched}
    by_score = sorted(scoring, key=lambda parent: (-text_score[parent], parent))
    lexical = by_score[: max(len({parent for parent, _ in best}), k)]
    return distance, text_score, semantic, lexical


def hybrid_reference(
    passages: dict[tuple[int, int], tuple[float, float | None]],
    *,
    k: int,
    depth: int,
    method: str = "blend",
    weight: float = 0.5,
) -> list[tuple[int, float, float, float]]:
    """``(doc, score, distance, text_score)`` of the top k parents, by the documented
    definitions: both scores of every parent an arm nominates (:func:`parent_arms`), fused
    by min-max blend or RRF over those parents."""
    distance, text_score, semantic, lexical = parent_arms(passages, k=k, depth=depth)
    candidates = set(semantic) | set(lexical)
    distances = {parent: distance[parent] for parent in candidates}
    scores = {parent: text_score[parent] for parent in candidates}
    if method == "blend":
        low, high = min(distances.values()), max(distances.values())
        worst, top = min(scores.values()), max(scores.values())
        fused = {
            parent: weight * ((high - distances[parent]) / (high - low) if high > low else 1.0)
            + (1 - weight) * ((scores[parent] - worst) / (top - worst) if top > worst else 1.0)
            for parent in candidates
        }
    else:
        fused = {
            parent: (2 * weight / (60 + semantic.index(parent) + 1) if parent in semantic else 0)
            + (2 * (1 - weight) / (60 + lexical.index(parent) + 1) if parent in lexical else 0)
            for parent in candidates
        }
    order = sorted(candidates, key=lambda parent: (-round(fused[parent], 9), parent))[:k]
    return [(parent, fused[parent], distances[parent], scores[parent]) for parent in order]


DEV = {3, 4, 6, 7}


@pytest.mark.parametrize("method", ["blend", "rrf"])
@pytest.mark.parametrize("weight", [0.3, 0.7])
def test_passage_hybrid_search_equals_a_python_reference(
    factory: sessionmaker[Session], corpus: dict[int, str], method: str, weight: float
) -> None:
    query = "vacuum index replica"
    with factory() as session:
        for parents, filtered in ((None, False), (DEV, True)):
            passages = passage_values(session, corpus, query, parents=parents)
            expected = hybrid_reference(passages, k=4, depth=6, method=method, weight=weight)
            stmt = vecorm.passage_hybrid_search(
                DocPassage,
                query,
                k=4,
                depth=6,
                method=method,  # type: ignore[arg-type]
                semantic_weight=weight,
            )
            if filtered:
                stmt = stmt.where(Doc.category == "dev")
            rows = session.execute(stmt).all()
            assert [doc.id for doc, *_ in rows] == [parent for parent, *_ in expected]
            for row, (parent, score, distance, text_score) in zip(rows, expected, strict=True):
                assert row._fields == ("Doc", "DocPassage", "score", "distance", "text_score")
                assert row.DocPassage.parent_id == parent
                assert row.score == pytest.approx(score, rel=1e-6, abs=1e-9)
                assert row.distance == pytest.approx(distance, abs=1e-5)
                assert row.text_score == pytest.approx(text_score, rel=1e-9)
        # unfiltered, the arms nominate different parents: some are fused with a completed
        # score (the last passages are the dev ones)
        passages = passage_values(session, corpus, query)
        _, _, semantic, lexical = parent_arms(passages, k=4, depth=6)
        assert set(semantic) != set(lexical), (semantic, lexical)


def test_k_parents_although_both_arms_best_passages_share_one_parent(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    from vecorm.search.bm25 import BM25Arm

    with factory() as session:
        # depth 15: the 15 nearest and the 15 best-scoring passages are all doc 1's
        nearest = session.execute(DocPassage.nearest("vacuum", k=15)).all()
        assert {passage.parent_id for passage, _ in nearest} == {1}
        best = session.execute(BM25Arm().candidates(DocPassage, "vacuum", where=[], depth=15))
        assert {row.pk_0 for row in best} == {1}
        expected = hybrid_reference(passage_values(session, corpus, "vacuum"), k=3, depth=15)
        for method in ("blend", "rrf"):
            stmt = vecorm.passage_hybrid_search(DocPassage, "vacuum", k=3, depth=15, method=method)  # type: ignore[arg-type]
            rows = session.execute(stmt).all()
            assert len({doc.id for doc, *_ in rows}) == 3
            if method == "blend":
                assert [doc.id for doc, *_ in rows] == [parent for parent, *_ in expected]
        # the exact ranking of the parents ran for this one only
        assert exact_ranking_ran(session, stmt)
        default_depth = vecorm.passage_hybrid_search(DocPassage, "vacuum", k=3)
        assert not exact_ranking_ran(session, default_depth)
        # more parents asked than exist: every one of them once, doc 8 matching no word
        everyone = session.execute(vecorm.passage_hybrid_search(DocPassage, "vacuum", k=50)).all()
        assert sorted(doc.id for doc, *_ in everyone) == list(range(1, 9))
        assert [row.text_score for row in everyone if row.Doc.id == 8] == [0.0]


def test_passage_hybrid_filters_apply_inside_both_arms(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    stmt = vecorm.passage_hybrid_search(DocPassage, "vacuum", k=3, depth=15)
    filtered = stmt.where(Doc.category == "dev")
    sql = str(filtered.compile())
    for cte in ("hybrid_nearest", "hybrid_matched", "hybrid_passages"):
        body = sql.split(f"{cte} AS", 1)[1] if f"{cte} AS" in sql else sql.split(cte, 1)[0]
        assert "docs.category = " in body.split("\n)", 1)[0] or cte == "hybrid_passages", cte
    assert sql.count("docs.category = ") >= 5  # both arms, the exact ranking, completion, rows
    with factory() as session:
        passages = passage_values(session, corpus, "vacuum", parents=DEV)
        expected = [parent for parent, *_ in hybrid_reference(passages, k=3, depth=15)]
        rows = session.execute(filtered).all()
        assert [doc.id for doc, *_ in rows] == expected  # three dev parents, not fewer
        assert {doc.category for doc, *_ in rows} == {"dev"}
        keyword = vecorm.passage_hybrid_search(
            DocPassage, "vacuum", k=3, depth=15, where=Doc.category == "dev"
        )
        assert [doc.id for doc, *_ in session.execute(keyword)] == expected
        # as a subquery, the filters are still read from the search's own statement
        every_dev = vecorm.passage_hybrid_search(DocPassage, "vacuum", k=4, depth=15)
        counted = select(func.count()).select_from(
            every_dev.where(Doc.category == "dev").subquery()
        )
        assert session.scalar(counted) == len(DEV)
        # a filter on the passages themselves: doc 1's passages after the first still win
        rows = session.execute(stmt.where(DocPassage.ordinal >= 1)).all()
        assert len(rows) == 3 and all(passage.ordinal >= 1 for _, passage, *_ in rows)
        # a cached statement takes each query's own values
        for query, first in (("tomato soup", 8), ("vacuum", 1), ("tomato soup", 8)):
            found = vecorm.passage_hybrid_search(DocPassage, query, k=2, depth=15)
            assert session.execute(found).first()[0].id == first  # type: ignore[index]


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_a_parents_passages_are_ranked_by_the_same_fusion(
    factory: sessionmaker[Session], corpus: dict[int, str], weight: float
) -> None:
    query = "replica restore"
    stmt = vecorm.passage_hybrid_search(
        DocPassage, query, k=4, passages_per_parent=2, semantic_weight=weight
    )
    with factory() as session:
        passages = passage_values(session, corpus, query)
        rows = session.execute(stmt).all()
    parents = list(dict.fromkeys(doc.id for doc, *_ in rows))
    assert parents == [
        parent for parent, *_ in hybrid_reference(passages, k=4, depth=100, weight=weight)
    ]
    for parent in parents:
        own = sorted(
            (key for key in passages if key[0] == parent),
            # semantic weight 1: nearest first; 0: best BM25 first (no match counts 0)
            key=lambda key: (
                round(passages[key][0], 6) if weight == 1.0 else -(passages[key][1] or 0.0),
                key,
            ),
        )
        assert [(doc.id, p.ordinal) for doc, p, *_ in rows if doc.id == parent] == own[:2]
        assert len({row.score for row in rows if row.Doc.id == parent}) == 1  # the parent's


def test_passage_hybrid_takes_a_vector_of_its_own_and_ts_rank(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    soup = FakeEmbedder(DIMS).embed(["tomato soup"])[0]
    with factory() as session:
        for weight, first in ((1.0, 8), (0.0, 1)):  # the vector leads, then the words
            stmt = vecorm.passage_hybrid_search(
                DocPassage, "vacuum", k=3, vector=soup, semantic_weight=weight
            )
            rows = session.execute(stmt).all()
            assert rows[0].Doc.id == first
        assert rows[0].distance > 0.5 and rows[0].text_score > 0  # doc 1: words, not meaning
        stmt = vecorm.passage_hybrid_search(DocPassage, "restore", k=3, ranking="ts_rank")
        rows = session.execute(stmt).all()
        assert len(rows) == 3 and rows[0].Doc.id == 7  # the only parent with the word
        assert 0 < rows[0].text_score < 1 and {row.text_score for row in rows[1:]} == {0.0}
        with pytest.raises(ConfigurationError, match="ranking must be one of"):
            vecorm.passage_hybrid_search(DocPassage, "restore", ranking="tf")  # type: ignore[arg-type]


def test_passage_hybrid_search_uses_the_vector_index(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    from vecorm.testing.assertions import assert_index_used

    with factory() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))  # 8 parents: any plan is cheap
        stmt = vecorm.passage_hybrid_search(DocPassage, "vacuum", k=3)
        assert_index_used(session, stmt, "ix_doc_passages_embedding_hnsw")
        assert_index_used(session, stmt.where(Doc.category == "dev"))


def test_passage_hybrid_thresholds_keep_what_an_arm_accepts(
    factory: sessionmaker[Session], corpus: dict[int, str]
) -> None:
    with factory() as session:
        nothing = vecorm.passage_hybrid_search(
            DocPassage, "zyzzyva quixotic", k=5, max_distance=0.01, min_text_score=0.1
        )
        assert session.execute(nothing).all() == []
        passages = passage_values(session, corpus, "vacuum index")
        distance = {parent: 2.0 for parent, _ in passages}
        text_score = dict.fromkeys(distance, 0.0)
        for (parent, _), (value, score) in passages.items():
            distance[parent] = min(distance[parent], value)
            text_score[parent] = max(text_score[parent], score or 0.0)
        limit, minimum = sorted(distance.values())[2] + 1e-4, sorted(text_score.values())[-2]
        kept = {p for p in distance if distance[p] <= limit or text_score[p] >= minimum}
        assert 3 <= len(kept) < 8
        stmt = vecorm.passage_hybrid_search(
            DocPassage, "vacuum index", k=8, max_distance=limit, min_text_score=minimum
        )
        rows = session.execute(stmt).all()
    assert {doc.id for doc, *_ in rows} == kept
    for row in rows:  # the scores are completed all the same
        assert row.distance == pytest.approx(distance[row.Doc.id], abs=1e-5)
        assert row.text_score == pytest.approx(text_score[row.Doc.id])


def test_passage_hybrid_mistakes_are_reported(engine: Engine) -> None:
    search = vecorm.passage_hybrid_search
    for arguments, message in (
        ({"k": 0}, "k must be a positive integer"),
        ({"depth": -1}, "depth must be a positive integer"),
        ({"passages_per_parent": 0}, "passages_per_parent must be"),
        ({"method": "sum"}, "method must be 'blend' or 'rrf'"),
        ({"semantic_weight": 1.5}, "semantic_weight must be between 0 and 1"),
        ({"max_distance": float("nan")}, "max_distance must be a finite number"),
        ({"min_text_score": "high"}, "min_text_score must be a finite number"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            search(DocPassage, "vacuum", vector=[1.0] * DIMS, **arguments)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Doc is not a passage model"):
        search(Doc, "vacuum", vector=[1.0] * DIMS)
