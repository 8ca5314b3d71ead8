"""Model and dimension changes through shadow columns, on real PostgreSQL."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import vecorm
from tests.integration.catalog import column_types, indexes
from vecorm.embedding.backfill import stale_count
from vecorm.embedding.embedders import HashingEmbedder
from vecorm.embedding.events import install, uninstall
from vecorm.embedding.reembed import ChangeStatus, ModelChange
from vecorm.embedding.source import text_digest
from vecorm.errors import IndexBuildBlocked
from vecorm.testing import FakeEmbedder

OLD, NEW = 8, 12


class OldBase(DeclarativeBase):
    pass


class Article(vecorm.Searchable, OldBase):
    """The application as deployed before the change: 8-d vectors."""

    __tablename__ = "articles"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "body"), dimensions=OLD)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str | None]


class NewBase(DeclarativeBase):
    pass


class ArticleV2(vecorm.Searchable, NewBase):
    """The application as deployed after the change: 12-d vectors, same table."""

    __tablename__ = "articles"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "body"), dimensions=NEW)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str | None]


TOPICS = ["postgres vacuum tuning", "vector index recall", "python packaging wheels"]


def nearest_title(session: Session, model: type[Any], embedder: HashingEmbedder, query: str) -> str:
    vector = embedder.embed([query])[0]
    return str(
        session.scalars(
            select(model.title)
            .where(model.embedding.is_not(None))
            .order_by(model.embedding.cosine_distance(vector))
            .limit(1)
        ).one()
    )


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    OldBase.metadata.create_all(vecorm_engine)
    return vecorm_engine


@pytest.fixture
def app(engine: Engine) -> Any:
    """The running application: a factory with the old embedder installed, and 30 rows."""
    old = FakeEmbedder(dimensions=OLD)
    maker = sessionmaker(engine)
    install(maker, embedder=old)
    with maker() as session:
        session.add_all(
            Article(id=i, title=f"{TOPICS[i % 3]} {i}", body=f"part {i}") for i in range(1, 31)
        )
        session.commit()
    yield maker
    uninstall(maker)


def test_dimension_change_keeps_search_working_then_switches(engine: Engine, app: Any) -> None:
    new = FakeEmbedder(dimensions=NEW, max_batch_size=7)
    change = ModelChange(Article, new)
    change.start(engine)
    change.start(engine)  # idempotent
    with engine.connect() as conn:
        types = column_types(conn, "articles")
    assert types["embedding"] == "vector(8)"
    assert types["embedding_next"] == "vector(12)"
    assert (types["embedding_digest_next"], types["embedding_model_next"]) == (
        "bytea",
        "character varying(200)",
    )

    class Dies(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> Any:
            if len(self.calls) == 2:
                raise ConnectionError("provider went away")
            return super().embed(texts)

    crashing = ModelChange(Article, Dies(dimensions=NEW, max_batch_size=7))
    with Session(engine) as session, pytest.raises(vecorm.EmbeddingError):
        crashing.backfill(session, batch_size=7, progress=False)
    with Session(engine) as session:
        assert change.status(session) == ChangeStatus(rows=30, remaining=16)
        # half-way through: the application still searches the old vectors, unaffected
        assert nearest_title(
            session, Article, HashingEmbedder(OLD), "vector index recall 7\npart 7"
        ) == ("vector index recall 7")
    # the application keeps writing with the old model meanwhile
    with app() as session:
        session.add(Article(id=31, title="written during the change", body=None))
        session.get_one(Article, 2).title = "edited during the change"
        session.commit()
    with Session(engine) as session:
        result = change.backfill(session, batch_size=7, progress=False)
        # the 16 never done, the row inserted meanwhile, and row 2, whose shadow vector
        # (from the first, crashed run) no longer matches its edited text
        assert result.embedded == 16 + 1 + 1
        assert change.status(session).remaining == 0
    assert change.create_index(engine) == "ix_articles_embedding_next_hnsw"
    with app() as session:
        session.get_one(Article, 3).body = "edited after the backfill"
        session.commit()
    new.reset()
    with Session(engine) as session:
        caught_up = change.finish(session)
    assert caught_up.embedded == 1  # row 3, edited after the backfill, inside the switch
    assert new.texts == [f"{TOPICS[0]} 3\nedited after the backfill"]
    with engine.connect() as conn:
        types = column_types(conn, "articles")
        found = indexes(conn, "articles")
    assert types["embedding"] == "vector(12)"
    assert not {"embedding_next", "embedding_digest_next", "embedding_model_next"} & set(types)
    assert "ix_articles_embedding_next_hnsw" not in found
    assert found["ix_articles_embedding_hnsw"].opclasses == ("vector_cosine_ops",)
    assert "vector_cosine_ops" in found["ix_articles_embedding_hnsw"].definition
    # the application redeployed with the new configuration finds everything current
    with Session(engine) as session:
        assert stale_count(session, ArticleV2, embedder=new) == 0
        for article in session.scalars(select(ArticleV2)):
            body = "\n".join(part for part in (article.title, article.body) if part)
            np.testing.assert_allclose(
                article.embedding, HashingEmbedder(NEW).embed([body])[0], rtol=1e-6
            )
            assert article.embedding_digest == text_digest(body)
            assert article.embedding_model == new.model_name
        assert nearest_title(
            session, ArticleV2, HashingEmbedder(NEW), "postgres vacuum tuning 9\npart 9"
        ) == ("postgres vacuum tuning 9")
        session.execute(text("SET enable_seqscan = off"))
        plan = session.execute(
            text(
                "EXPLAIN SELECT id FROM articles ORDER BY embedding <=> CAST(:q AS vector) LIMIT 3"
            ),
            {"q": str(HashingEmbedder(NEW).embed(["x"])[0].tolist())},
        ).scalars()
        assert "ix_articles_embedding_hnsw" in "\n".join(plan)


def test_each_row_is_embedded_once_across_runs(engine: Engine, app: Any) -> None:
    new = FakeEmbedder(dimensions=NEW)
    change = ModelChange(Article, new)
    change.start(engine)
    with Session(engine) as session:
        change.backfill(session, batch_size=4, progress=False)
        change.backfill(session, batch_size=4, progress=False)
        change.finish(session)
    with Session(engine) as session:
        titles = session.execute(select(ArticleV2.title, ArticleV2.body)).all()
    assert Counter(new.texts) == Counter(f"{t}\n{b}" for t, b in titles)


def test_keep_previous_and_abort(engine: Engine, app: Any) -> None:
    change = ModelChange(Article, FakeEmbedder(dimensions=NEW))
    change.start(engine)
    change.create_index(engine)
    change.abort(engine)
    with engine.connect() as conn:
        assert not any(name.endswith("_next") for name in column_types(conn, "articles"))
        assert [name for name in indexes(conn, "articles") if "next" in name] == []
    change.start(engine)
    with Session(engine) as session:
        change.finish(session, keep_previous=True)  # no create_index: built in the switch
    with engine.connect() as conn:
        types = column_types(conn, "articles")
    assert (types["embedding"], types["embedding_previous"]) == ("vector(12)", "vector(8)")
    assert "embedding_digest_previous" in types


def test_finish_without_start_and_bad_settings_are_refused(engine: Engine, app: Any) -> None:
    change = ModelChange(Article, FakeEmbedder(dimensions=NEW))
    with Session(engine) as session, pytest.raises(vecorm.ConfigurationError, match="start"):
        change.finish(session)
    # Above pgvector's 2000 dimensions for vector indexes, the new index is a halfvec one.
    assert ModelChange(Article, FakeEmbedder(dimensions=3072)).config.index_precision == "halfvec"
    halfvec = ModelChange(Article, FakeEmbedder(dimensions=3072), storage="halfvec")
    halfvec.start(engine)
    with engine.connect() as conn:
        assert column_types(conn, "articles")["embedding_next"] == "halfvec(3072)"


def test_finish_waits_at_most_lock_timeout_for_writers(engine: Engine, app: Any) -> None:
    change = ModelChange(Article, FakeEmbedder(dimensions=NEW))
    change.start(engine)
    with engine.connect() as writer:
        writer.execute(update(Article).where(Article.id == 1).values(body="in flight"))
        with Session(engine) as session, pytest.raises(OperationalError, match="lock timeout"):
            change.finish(session, lock_timeout="200ms")
        writer.rollback()
    with engine.connect() as conn:
        assert column_types(conn, "articles")["embedding"] == "vector(8)"  # nothing switched


def test_create_index_names_a_session_idle_in_transaction_and_gives_up(
    engine: Engine, app: Any
) -> None:
    """issue #19: a session left idle in transaction made create_index() wait for ever."""
    change = ModelChange(Article, FakeEmbedder(dimensions=NEW))
    change.start(engine)
    with app() as session:
        change.backfill(session)
    with engine.connect() as idle:
        idle = idle.execution_options(isolation_level="REPEATABLE READ")
        idle.execute(text("SET application_name = 'forgotten-report'"))
        idle.execute(select(Article.id).limit(1)).all()  # a snapshot, then idle in transaction
        pid = idle.execute(text("SELECT pg_backend_pid()")).scalar_one()
        started = time.monotonic()
        with pytest.raises(IndexBuildBlocked) as raised:
            change.create_index(engine, wait_timeout=1.5)
        waited = time.monotonic() - started
        idle.rollback()
    assert 1.4 < waited < 4, waited
    message = str(raised.value)
    assert f"pid {pid} (idle in transaction, application_name='forgotten-report'" in message
    assert "waited 1.5 s" in message and "pg_terminate_backend" in message
    assert [blocker.pid for blocker in raised.value.blockers] == [pid]
    with engine.connect() as conn:  # no index at all, so no INVALID one
        assert "ix_articles_embedding_next_hnsw" not in indexes(conn, "articles")
    # Once the session has ended, the same call builds it.
    assert change.create_index(engine, wait_timeout=5) == "ix_articles_embedding_next_hnsw"


def test_status_on_a_throwaway_session_leaves_no_transaction_open(engine: Engine, app: Any) -> None:
    """The documented ``change.status(Session(engine))`` no longer stalls create_index()."""
    change = ModelChange(Article, FakeEmbedder(dimensions=NEW))
    change.start(engine)
    kept = Session(engine)  # never closed, as in the example
    assert change.status(kept) == ChangeStatus(rows=30, remaining=30)
    assert not kept.in_transaction()
    assert change.create_index(engine, wait_timeout=2) == "ix_articles_embedding_next_hnsw"
    with Session(engine) as session, session.begin():
        change.status(session)
        assert session.in_transaction()  # a transaction of the caller's stays open
    kept.close()
