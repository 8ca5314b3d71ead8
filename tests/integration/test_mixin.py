"""The mixin's DDL on real PostgreSQL, read back from the catalog."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import ForeignKey, String, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from tests.integration.catalog import column_types, generated_expression, indexes


class Base(DeclarativeBase):
    pass


class Document(vecorm.Searchable, Base):
    __tablename__ = "documents"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "content"),
        index=vecorm.HNSW(m=16, ef_construction=64),
        weights={"title": "A", "content": "B"},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    content: Mapped[str | None]
    category: Mapped[str] = mapped_column(String(40), default="general")


class Note(vecorm.Searchable, Base):
    """Small dims, IVFFlat + L2, a custom primary key, renamed columns, a non-default schema."""

    __tablename__ = "notes"
    __table_args__ = {"schema": "kb", "comment": "user table args survive"}
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",),
        dimensions=3,
        distance="l2",
        index=vecorm.IVFFlat(lists=4),
        language="simple",
        embedding_column="body_vec",
        tsvector_column="body_tsv",
    )

    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    body: Mapped[str] = mapped_column("body_text")


class Page(vecorm.Searchable, Base):
    """Joined inheritance: the subclass table gets none of the vecorm columns."""

    __tablename__ = "pages"
    __vecorm__ = vecorm.SearchConfig(fields=("heading",), dimensions=4, distance="inner_product")
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str]
    heading: Mapped[str]
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "page"}


class WikiPage(Page):
    __tablename__ = "wiki_pages"
    id: Mapped[int] = mapped_column(ForeignKey("pages.id"), primary_key=True)
    revision: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"polymorphic_identity": "wiki"}


class BlogPage(Page):
    """Single-table inheritance on the same hierarchy."""

    __mapper_args__ = {"polymorphic_identity": "blog"}


class Snippet(vecorm.Searchable, Base):
    __tablename__ = "snippets"
    __vecorm__ = vecorm.SearchConfig(
        fields=("code",), dimensions=8, storage="halfvec", distance="l1", index=vecorm.HNSW(m=8)
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str]


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    with vecorm_engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA kb"))
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


def test_document_columns_and_generated_tsvector(engine: Engine) -> None:
    with engine.connect() as conn:
        types = column_types(conn, "documents")
        generated, expression = generated_expression(conn, "documents", "search_vector")
    assert types["embedding"] == "vector(1536)"
    assert types["search_vector"] == "tsvector"
    assert types["embedding_digest"] == "bytea"
    assert types["embedding_model"] == "character varying(200)"
    assert generated == "s"  # STORED, not PostgreSQL 18's default VIRTUAL
    assert "setweight(to_tsvector('english'::regconfig, (COALESCE(title, ''" in expression
    assert "'A'::\"char\"" in expression and "'B'::\"char\"" in expression


def test_document_indexes_have_method_opclass_and_params(engine: Engine) -> None:
    with engine.connect() as conn:
        found = indexes(conn, "documents")
    hnsw = found["ix_documents_embedding_hnsw"]
    assert hnsw.method == "hnsw"
    assert hnsw.opclasses == ("vector_cosine_ops",)
    assert hnsw.options == ("ef_construction=64", "m=16")
    gin = found["ix_documents_search_vector_gin"]
    assert gin.method == "gin"
    assert gin.opclasses == ("tsvector_ops",)


def test_custom_schema_key_and_column_names(engine: Engine) -> None:
    with engine.connect() as conn:
        types = column_types(conn, "notes", schema="kb")
        _, expression = generated_expression(conn, "notes", "body_tsv", schema="kb")
        found = indexes(conn, "notes", schema="kb")
        comment = conn.execute(text("SELECT obj_description('kb.notes'::regclass)")).scalar()
    assert types["body_vec"] == "vector(3)"
    assert types["code"] == "character varying(20)"
    assert "to_tsvector('simple'::regconfig, (COALESCE(body_text, ''::character varying)" in (
        expression
    )
    ivf = found["ix_notes_body_vec_ivfflat"]
    assert (ivf.method, ivf.opclasses, ivf.options) == ("ivfflat", ("vector_l2_ops",), ("lists=4",))
    assert "ix_notes_body_tsv_gin" in found
    assert comment == "user table args survive"


def test_inheritance_keeps_vecorm_columns_on_the_base_table(engine: Engine) -> None:
    with engine.connect() as conn:
        pages = column_types(conn, "pages")
        wiki = column_types(conn, "wiki_pages")
        page_indexes = indexes(conn, "pages")
        wiki_indexes = indexes(conn, "wiki_pages")
    assert pages["embedding"] == "vector(4)"
    assert set(wiki) == {"id", "revision"}
    assert page_indexes["ix_pages_embedding_hnsw"].opclasses == ("vector_ip_ops",)
    assert wiki_indexes.keys() == {"wiki_pages_pkey"}
    with Session(engine) as session:
        session.add_all(
            [
                WikiPage(heading="wiki", embedding=[1, 0, 0, 0]),
                BlogPage(heading="blog", embedding=[0, 1, 0, 0]),
            ]
        )
        session.commit()
        kinds = session.scalars(select(Page.kind).order_by(Page.heading)).all()
    assert kinds == ["blog", "wiki"]


def test_halfvec_storage_uses_halfvec_opclass(engine: Engine) -> None:
    with engine.connect() as conn:
        types = column_types(conn, "snippets")
        found = indexes(conn, "snippets")
    assert types["embedding"] == "halfvec(8)"
    assert found["ix_snippets_embedding_hnsw"].opclasses == ("halfvec_l1_ops",)
    assert found["ix_snippets_embedding_hnsw"].options == ("ef_construction=64", "m=8")


def test_embedding_is_deferred_and_round_trips_as_numpy(engine: Engine) -> None:
    vector = np.random.default_rng(1).random(1536, dtype=np.float32)
    with Session(engine) as session:
        session.add(Document(title="t", content="c", embedding=vector))
        session.commit()
    with Session(engine) as session:
        statements: list[str] = []
        from sqlalchemy import event

        @event.listens_for(engine, "before_cursor_execute")
        def record(*args: object) -> None:
            statements.append(str(args[2]))

        document = session.scalars(select(Document)).one()
        assert "embedding" not in statements[0]
        assert "search_vector" not in statements[0]
        loaded = document.embedding
        event.remove(engine, "before_cursor_execute", record)
    assert isinstance(loaded, np.ndarray) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, vector)


def test_generated_tsvector_follows_the_text(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Document(title="Vacuum tuning", content="autovacuum thresholds"))
        session.commit()
        matches = (
            session.execute(
                text(
                    "SELECT title FROM documents WHERE search_vector @@ "
                    "websearch_to_tsquery('english', 'autovacuum')"
                )
            )
            .scalars()
            .all()
        )
    assert matches == ["Vacuum tuning"]


def test_core_insert_binds_vectors(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Note.__table__),
            [{"code": f"n{i}", "body_text": "x", "body_vec": [i, i, i]} for i in range(3)],
        )
        rows = conn.execute(text("SELECT body_vec::text FROM kb.notes ORDER BY code")).scalars()
        assert list(rows) == ["[0,0,0]", "[1,1,1]", "[2,2,2]"]
