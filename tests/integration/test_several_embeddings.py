"""Several embeddings per model (``SearchConfig(embeddings=...)``) on real PostgreSQL: the
columns and indexes, the flush hook embedding each from its own text, searches through each
one's index, the backfill and the worker filling each."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Text, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.embedding.backfill import backfill, stale_count
from vecorm.embedding.embedders.hashing import HashingEmbedder
from vecorm.search.vector import python_distance
from vecorm.testing.embedders import RecordingEmbedder

DIMS = 16
SMALL = 8


class Named(RecordingEmbedder):
    """A hashing embedder recording its texts, under a model name of its own."""

    def __init__(self, dimensions: int, name: str, seed: int) -> None:
        super().__init__(HashingEmbedder(dimensions=dimensions, trigram_weight=0.1 * seed))
        self.name = name

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def seen(self) -> list[str]:
        return self.texts


BODY = Named(DIMS, "body-model", 1)
TITLE = Named(DIMS, "title-model", 2)
SMALL_MODEL = Named(SMALL, "small-model", 3)


class Base(DeclarativeBase):
    pass


class Article(vecorm.Searchable, Base):
    __tablename__ = "articles_multi"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=DIMS,
        embedder=BODY,
        embeddings={
            "title_embedding": vecorm.Embedding(fields=("title",), embedder=TITLE),
            "small_embedding": vecorm.Embedding(
                dimensions=SMALL,
                embedder=SMALL_MODEL,
                distance="l2",
                index=vecorm.HNSW(m=8, ef_construction=32),
                column="small_vec",
            ),
        },
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    shelf: Mapped[int] = mapped_column(default=0)


@pytest.fixture
def tables(vecorm_engine: Engine) -> Iterator[Engine]:
    Base.metadata.create_all(vecorm_engine)
    for embedder in (BODY, TITLE, SMALL_MODEL):
        embedder.reset()
    yield vecorm_engine
    Base.metadata.drop_all(vecorm_engine)


def _session(engine: Engine) -> Session:
    session = Session(engine)
    vecorm.install(session)
    return session


def test_columns_and_indexes_are_declared_and_created(tables: Engine) -> None:
    table = Article.__table__
    assert {"title_embedding", "title_embedding_digest", "title_embedding_model"} <= set(
        table.c.keys()
    )
    assert {"small_vec", "small_vec_digest", "small_vec_model"} <= set(table.c.keys())
    assert Article.small_embedding.property.columns[0].name == "small_vec"
    with tables.connect() as conn:
        indexes = dict(
            conn.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t"),
                {"t": "articles_multi"},
            ).all()
        )
    assert (
        "USING hnsw (title_embedding vector_cosine_ops) WITH (m='16', ef_construction='64')"
        in (indexes["ix_articles_multi_title_embedding_hnsw"])
    )
    assert (
        "USING hnsw (small_vec vector_l2_ops) WITH (m='8', ef_construction='32')"
        in (indexes["ix_articles_multi_small_vec_hnsw"])
    )
    assert "USING hnsw (embedding vector_cosine_ops)" in indexes["ix_articles_multi_embedding_hnsw"]
    with tables.connect() as conn:
        types = dict(
            conn.execute(
                text(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'articles_multi'::regclass AND attnum > 0"
                )
            ).all()
        )
    assert types["title_embedding"] == "vector(16)"
    assert types["small_vec"] == "vector(8)"


def test_a_flush_embeds_each_from_its_own_text(tables: Engine) -> None:
    with _session(tables) as session:
        session.add(Article(id=1, title="Vacuum", body="Tuning autovacuum"))
        session.commit()
        row = session.get(Article, 1)
        assert row is not None
        np.testing.assert_allclose(row.embedding, BODY.embed(["Vacuum\nTuning autovacuum"])[0])
        np.testing.assert_allclose(row.title_embedding, TITLE.embed(["Vacuum"])[0])
        np.testing.assert_allclose(
            row.small_embedding, SMALL_MODEL.embed(["Vacuum\nTuning autovacuum"])[0]
        )
        assert (row.embedding_model, row.title_embedding_model, row.small_embedding_model) == (
            "body-model",
            "title-model",
            "small-model",
        )
        assert row.title_embedding_digest is not None
        assert row.title_embedding_digest != row.embedding_digest


def test_only_the_embeddings_whose_text_changed_are_embedded_again(tables: Engine) -> None:
    with _session(tables) as session:
        session.add(Article(id=1, title="Vacuum", body="Tuning autovacuum"))
        session.commit()
    for embedder in (BODY, TITLE, SMALL_MODEL):
        embedder.reset()
    with _session(tables) as session:
        row = session.get(Article, 1)
        assert row is not None
        row.body = "Tuning autovacuum workers"
        session.commit()
        assert BODY.seen == ["Vacuum\nTuning autovacuum workers"]
        assert SMALL_MODEL.seen == ["Vacuum\nTuning autovacuum workers"]
        assert TITLE.seen == []  # the title did not change
        row.title = "VACUUM"
        row.shelf = 3
        session.commit()
        assert TITLE.seen == ["VACUUM"]
        stored = session.execute(
            select(Article.title_embedding).where(Article.id == 1)
        ).scalar_one()
        np.testing.assert_allclose(stored, TITLE.embed(["VACUUM"])[0])


def test_a_vector_assigned_to_one_embedding_is_kept(tables: Engine) -> None:
    mine = np.linspace(0.1, 1.6, DIMS, dtype=np.float32)
    with _session(tables) as session:
        session.add(Article(id=1, title="Vacuum", body="b", title_embedding=mine))
        session.commit()
        row = session.get(Article, 1)
        assert row is not None
        np.testing.assert_allclose(row.title_embedding, mine)
        assert row.title_embedding_model == "title-model"
        np.testing.assert_allclose(row.embedding, BODY.embed(["Vacuum\nb"])[0])


def test_a_wrong_width_names_the_embedding(tables: Engine) -> None:
    with pytest.raises(vecorm.DimensionMismatch, match=r"Article.small_embedding expects 8"):
        Article(id=1, title="t", small_embedding=[0.1] * DIMS)


def _load(engine: Engine, count: int = 40) -> list[tuple[int, str, str]]:
    rng = np.random.default_rng(5)
    words = ["vacuum", "index", "planner", "replica", "backup", "lock", "wal", "toast"]
    rows = [
        (i, " ".join(rng.choice(words, 2)), " ".join(rng.choice(words, 6))) for i in range(count)
    ]
    with _session(engine) as session:
        session.add_all(
            Article(id=i, title=title, body=body, shelf=i % 3) for i, title, body in rows
        )
        session.commit()
    return rows


def _order(query: np.ndarray, vectors: dict[int, np.ndarray], metric: vecorm.Distance) -> list:
    return sorted(vectors, key=lambda key: (python_distance(metric, vectors[key], query), key))


def test_nearest_searches_the_named_embedding_through_its_index(tables: Engine) -> None:
    rows = _load(tables)
    titles = {i: TITLE.embed([title])[0] for i, title, _ in rows}
    query = TITLE.embed(["vacuum planner"])[0]
    with _session(tables) as session:
        found = session.execute(
            Article.nearest("vacuum planner", k=5, embedding="title_embedding")
        ).all()
        expected = _order(query, titles, vecorm.Distance.COSINE)[:5]
        assert [row.Article.id for row in found] == expected
        for row in found:
            assert row.distance == pytest.approx(
                python_distance(vecorm.Distance.COSINE, titles[row.Article.id], query), abs=1e-5
            )
        # the attribute itself works as the name
        again = session.execute(
            Article.nearest(query, k=5, embedding=Article.title_embedding)
        ).all()
        assert [row.Article.id for row in again] == expected
        plan = _plan(session, Article.nearest(query, k=5, embedding="title_embedding"))
        assert "ix_articles_multi_title_embedding_hnsw" in plan


def _plan(session: Session, statement: Any) -> str:
    compiled = statement.compile(
        dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}
    )
    session.execute(text("SET LOCAL enable_seqscan = off"))
    return "\n".join(session.execute(text(f"EXPLAIN {compiled}")).scalars())


def test_similar_to_and_distance_to_use_the_named_embedding(tables: Engine) -> None:
    rows = _load(tables)
    smalls = {i: SMALL_MODEL.embed([f"{title}\n{body}"])[0] for i, title, body in rows}
    with _session(tables) as session:
        doc = session.get_one(Article, 3)
        found = session.execute(doc.similar_to(k=4, embedding="small_embedding")).all()
        others = {key: value for key, value in smalls.items() if key != 3}
        assert [row.Article.id for row in found] == _order(smalls[3], others, vecorm.Distance.L2)[
            :4
        ]
        assert all(row.distance >= 0 for row in found)
        query = SMALL_MODEL.embed(["wal backup"])[0]
        in_sql = session.execute(
            select(Article.id, Article.distance_to(query, embedding="small_embedding")).where(
                Article.id == 3
            )
        ).one()
        in_python = doc.distance_to(query, embedding="small_embedding")
        expected = python_distance(vecorm.Distance.L2, smalls[3], query)
        assert in_sql[1] == pytest.approx(expected, abs=1e-5)
        assert in_python == pytest.approx(expected, abs=1e-5)


def test_hybrid_search_fuses_the_named_embedding(tables: Engine) -> None:
    rows = _load(tables)
    titles = {i: TITLE.embed([title])[0] for i, title, _ in rows}
    query = TITLE.embed(["lock"])[0]
    with _session(tables) as session:
        statement = Article.hybrid_search(
            "lock", k=5, method="rrf", embedding="title_embedding", depth=10
        )
        assert "title_embedding <=>" in str(statement.compile())
        found = session.execute(statement).all()
        assert len(found) == 5
        for row in found:  # the fused distance is the title embedding's
            assert row.distance == pytest.approx(
                python_distance(vecorm.Distance.COSINE, titles[row.Article.id], query), abs=1e-5
            )


def test_an_unknown_embedding_lists_the_model_s(tables: Engine) -> None:
    with pytest.raises(
        vecorm.ConfigurationError, match="has no embedding 'titel'.*'title_embedding'"
    ):
        Article.nearest([0.1] * DIMS, embedding="titel")


def _insert_raw(engine: Engine, count: int = 12) -> None:
    """Rows written without the flush hook: every embedding NULL."""
    with engine.begin() as conn:
        conn.execute(
            insert(Article),
            [{"id": i, "title": f"title {i}", "body": f"body {i}"} for i in range(count)],
        )


def test_backfill_fills_every_embedding_each_with_its_embedder(tables: Engine) -> None:
    _insert_raw(tables)
    with Session(tables) as session:
        assert stale_count(session, Article) == 36
        assert stale_count(session, Article, embedding="title_embedding") == 12
        result = backfill(session, Article, batch_size=5)
        assert result.embedded == 36
        assert stale_count(session, Article) == 0
        row = session.get_one(Article, 4)
        np.testing.assert_allclose(row.title_embedding, TITLE.embed(["title 4"])[0])
        np.testing.assert_allclose(row.small_embedding, SMALL_MODEL.embed(["title 4\nbody 4"])[0])
        np.testing.assert_allclose(row.embedding, BODY.embed(["title 4\nbody 4"])[0])
        assert row.small_embedding_model == "small-model"


def test_backfill_of_one_embedding_leaves_the_others(tables: Engine) -> None:
    _insert_raw(tables)
    with Session(tables) as session:
        result = backfill(session, Article, embedding="title_embedding")
        assert result.embedded == 12
        assert stale_count(session, Article, embedding="title_embedding") == 0
        assert stale_count(session, Article, embedding="embedding") == 12
        other = HashingEmbedder(dimensions=DIMS)
        with pytest.raises(vecorm.ConfigurationError, match="pass embedding=... to say which"):
            backfill(session, Article, embedder=other)
        assert backfill(session, Article, embedder=other, embedding="embedding").embedded == 12
        row = session.get_one(Article, 2)
        assert row.embedding_model == other.model_name


def test_the_cli_backfills_one_embedding(
    tables: Engine, vecorm_url: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from vecorm.tools.cli import main

    _insert_raw(tables, 5)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parents[2]))
    url = vecorm_url.render_as_string(hide_password=False)
    model = "tests.integration.test_several_embeddings:Article"
    args = ["backfill", model, "--database-url", url, "--json"]
    result = CliRunner().invoke(main, [*args, "--embedding", "small_embedding"])
    assert result.exit_code == 0, result.output
    assert '"rows": 5' in result.output and '"left": 0' in result.output
    with Session(tables) as session:
        assert stale_count(session, Article, embedding="small_embedding") == 0
        assert stale_count(session, Article) == 10
    wrong = CliRunner().invoke(main, [*args, "--embedding", "nope"])
    assert wrong.exit_code != 0 and "has no embedding 'nope'" in wrong.output
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert '"rows": 10' in result.output


def test_a_worker_keeps_every_embedding(tables: Engine) -> None:
    with Session(tables) as session:
        vecorm.install(session, mode="worker")
        session.add_all(Article(id=i, title=f"t{i}", body=f"b{i}") for i in range(6))
        session.commit()
        assert stale_count(session, Article) == 18
    worker = vecorm.Worker(tables, [Article], poll_interval=60)
    assert sorted(worker.models) == [
        "Article",
        "Article.small_embedding",
        "Article.title_embedding",
    ]
    assert worker.run_once().embedded == 18
    assert worker.backlog() == {
        "Article": 0,
        "Article.title_embedding": 0,
        "Article.small_embedding": 0,
    }
    with Session(tables) as session:
        vecorm.install(session, mode="worker")
        session.get_one(Article, 1).body = "changed"
        session.commit()
    for embedder in (BODY, TITLE, SMALL_MODEL):
        embedder.reset()
    assert worker.run_once().embedded == 2  # the body is not in the title's text
    assert TITLE.texts == [] and BODY.texts == ["t1\nchanged"]


def test_a_model_change_of_an_added_embedding(tables: Engine) -> None:
    _load(tables, 10)
    wider = HashingEmbedder(dimensions=12)
    change = vecorm.ModelChange(Article, wider, embedding="small_embedding")
    change.start(tables)
    with Session(tables) as session:
        assert change.backfill(session).embedded == 10
    assert change.create_index(tables) == "ix_articles_multi_small_vec_next_hnsw"
    with Session(tables) as session:
        change.finish(session)
    with tables.connect() as conn:
        width = conn.execute(
            text("SELECT vector_dims(small_vec) FROM articles_multi WHERE id = 1")
        ).scalar_one()
        names = set(
            conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'articles_multi'")
            ).scalars()
        )
        title_width = conn.execute(
            text("SELECT vector_dims(title_embedding) FROM articles_multi WHERE id = 1")
        ).scalar_one()
    assert width == 12 and title_width == DIMS
    assert "ix_articles_multi_small_vec_hnsw" in names
    assert "ix_articles_multi_small_vec_next_hnsw" not in names


def test_bulk_insert_says_to_backfill_the_added_embeddings(tables: Engine) -> None:
    with Session(tables) as session:
        with pytest.raises(vecorm.ConfigurationError, match="embed=False and run vecorm.backfill"):
            vecorm.bulk_insert(session, Article, [{"id": 1, "title": "a", "body": "b"}])
        vecorm.bulk_insert(session, Article, [{"id": 1, "title": "a", "body": "b"}], embed=False)
        session.commit()
        assert backfill(session, Article).embedded == 3


class Refusing(Named):
    """The title embedder, down: every call fails as a provider outage would."""

    def embed(self, texts: Sequence[str]) -> Any:
        raise ConnectionError("title provider down")


class Fragile(vecorm.Searchable, Base):
    __tablename__ = "fragile_multi"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=DIMS,
        bm25=None,
        embedder=BODY,
        embeddings={
            "title_embedding": vecorm.Embedding(
                fields=("title",), embedder=Refusing(DIMS, "down", 4)
            )
        },
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)


def test_strict_a_failing_provider_of_one_embedding_writes_nothing(tables: Engine) -> None:
    with _session(tables) as session:
        session.add(Fragile(id=1, title="a", body="b"))
        with pytest.raises(vecorm.EmbeddingError, match="title provider down"):
            session.commit()
        assert len(session.new) == 1  # the pending work is kept
        session.rollback()
    with Session(tables) as session:
        assert session.execute(select(Fragile.id)).all() == []


def test_deferred_a_failing_provider_leaves_only_its_embedding_for_the_backfill(
    tables: Engine,
) -> None:
    with Session(tables) as session:
        vecorm.install(session, mode="deferred")
        session.add(Fragile(id=1, title="a", body="b"))
        session.commit()
        row = session.get_one(Fragile, 1)
        np.testing.assert_allclose(row.embedding, BODY.embed(["a\nb"])[0])
        assert row.title_embedding is None and row.title_embedding_digest is None
        assert stale_count(session, Fragile, embedding="title_embedding") == 1
        assert stale_count(session, Fragile, embedding="embedding") == 0


async def test_an_async_session_embeds_each(tables: Engine, vecorm_async_engine: Any) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(vecorm_async_engine, expire_on_commit=False) as session:
        vecorm.install(session)
        session.add(Article(id=7, title="Locks", body="Row and table locks"))
        await session.commit()
        found = (
            await session.execute(Article.nearest("locks", k=1, embedding="title_embedding"))
        ).one()
        assert found.Article.id == 7
        assert found.distance == pytest.approx(0.0, abs=1e-5)
    with Session(tables) as session:
        row = session.get_one(Article, 7)
        np.testing.assert_allclose(row.title_embedding, TITLE.embed(["Locks"])[0])


def test_build_model_index_builds_the_named_embedding_s_index(tables: Engine) -> None:
    _load(tables, 20)
    with tables.begin() as conn:
        conn.execute(text("DROP INDEX ix_articles_multi_small_vec_hnsw"))
    report = vecorm.build_model_index(tables, Article, embedding="small_embedding", progress=False)
    assert report.index == "ix_articles_multi_small_vec_hnsw"
    with tables.connect() as conn:
        definition = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": report.index}
        ).scalar_one()
    assert "USING hnsw (small_vec vector_l2_ops)" in definition


def test_the_cli_builds_the_named_embedding_s_index(
    tables: Engine, vecorm_url: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from vecorm.tools.cli import main

    with tables.begin() as conn:
        conn.execute(text("DROP INDEX ix_articles_multi_title_embedding_hnsw"))
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parents[2]))
    url = vecorm_url.render_as_string(hide_password=False)
    model = "tests.integration.test_several_embeddings:Article"
    args = ["build-index", model, "--database-url", url, "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--embedding", "title_embedding"])
    assert result.exit_code == 0, result.output
    assert "built ix_articles_multi_title_embedding_hnsw" in result.output
    with tables.connect() as conn:
        names = set(
            conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'articles_multi'")
            ).scalars()
        )
    assert "ix_articles_multi_title_embedding_hnsw" in names


def test_doctor_checks_every_embedding(tables: Engine) -> None:
    """``vecorm doctor`` checks each embedding's column, provider, index and stale rows
    under its own name, and says which backfill to run."""
    from vecorm.tools.doctor import diagnose

    with tables.begin() as conn:
        conn.execute(
            insert(Article), [{"id": i, "title": f"t {i}", "body": f"b {i}"} for i in (1, 2, 3)]
        )
    with Session(tables) as session:
        backfill(session, Article, embedding="embedding")  # the others stay stale
    with tables.begin() as conn:
        conn.execute(text("DROP INDEX ix_articles_multi_small_vec_hnsw"))
    with Session(tables) as session:
        found = {(f.status, f.subject, f.message, f.hint) for f in diagnose(session, [Article])}
    title = "Article.title_embedding"
    small = "Article.small_embedding"
    module = f"{Article.__module__}:Article"
    assert ("ok", "Article", "table articles_multi: 3 rows, embedding vector(16)", None) in found
    assert (
        "ok",
        "Article",
        "no stale rows: every row with text is embedded by body-model",
        None,
    ) in found
    assert ("ok", title, "column title_embedding vector(16)", None) in found
    assert ("ok", title, "embedder title-model (16-d)", None) in found
    assert (
        "warn",
        title,
        "3 of 3 rows are stale (no embedding, edited text, or another model)",
        f"vecorm backfill {module} --embedding title_embedding",
    ) in found
    assert ("ok", small, "column small_vec vector(8)", None) in found
    assert (
        "fail",
        small,
        "vector index ix_articles_multi_small_vec_hnsw is missing: nearest() scans every row",
        "generate a migration: `alembic revision --autogenerate`, then upgrade",
    ) in found
    assert any(
        status == "ok" and subject == title and message.startswith("EXPLAIN nearest(k=10)")
        for status, subject, message, _ in found
    )
