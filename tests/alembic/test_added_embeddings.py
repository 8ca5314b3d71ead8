"""Alembic and ``SearchConfig(embeddings=...)``: adding a second embedding to a searchable
model with rows autogenerates its three columns and its index (operator class, ``WITH``
parameters), the revision runs both ways, and a second autogenerate is empty."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text

from tests.alembic.conftest import Project, body, undefined_names
from tests.integration.catalog import column_types, indexes

MODELS = """
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import vecorm

    class Base(DeclarativeBase):
        pass

    class Document(vecorm.Searchable, Base):
        __tablename__ = "documents"
        __vecorm__ = vecorm.SearchConfig(
            fields=("title", "body"),
            dimensions=3,
            bm25=None,
            {embeddings}
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        body: Mapped[str | None]
"""

TITLE = (
    'embeddings={"title_embedding": vecorm.Embedding(fields=("title",), dimensions=4, '
    'distance="l2", index=vecorm.HNSW(m=8, ef_construction=40))},'
)


def _assert_empty(project: Project) -> None:
    revision = project.autogenerate("nothing to do")
    assert body(revision, "upgrade") == "pass", revision.read_text()
    revision.unlink()


def test_a_second_embedding_migrates_with_its_columns_and_index(
    project_factory: Callable[..., Project],
) -> None:
    project = project_factory()
    project.set_models(MODELS.format(embeddings=""))
    project.autogenerate("searchable documents")
    project.upgrade()
    with project.engine.begin() as conn:
        conn.execute(text("INSERT INTO documents (id, title, body) VALUES (1, 'a', 'b')"))
    before = None
    with project.engine.connect() as conn:
        before = column_types(conn, "documents"), set(indexes(conn, "documents"))

    project.set_models(MODELS.format(embeddings=TITLE))
    added = project.autogenerate("title embedding")
    upgrade = body(added, "upgrade")
    assert undefined_names(added) == ""
    assert "sa.Column('title_embedding', vecorm.types.Vector(dim=4, as_numpy=True)" in upgrade
    assert "sa.Column('title_embedding_digest', sa.LargeBinary()" in upgrade
    assert "sa.Column('title_embedding_model', sa.String(length=200)" in upgrade
    assert "'ix_documents_title_embedding_hnsw'" in upgrade
    assert "postgresql_with={'m': 8, 'ef_construction': 40}" in upgrade
    assert "postgresql_ops={'title_embedding': 'vector_l2_ops'}" in upgrade
    assert "drop_" not in upgrade  # nothing of the first embedding changes
    project.upgrade()
    with project.engine.connect() as conn:
        types = column_types(conn, "documents")
        found = indexes(conn, "documents")
    assert types["title_embedding"] == "vector(4)"
    assert types["title_embedding_digest"] == "bytea"
    hnsw = found["ix_documents_title_embedding_hnsw"]
    assert (hnsw.method, hnsw.opclasses, hnsw.options) == (
        "hnsw",
        ("vector_l2_ops",),
        ("ef_construction=40", "m=8"),
    )
    _assert_empty(project)

    project.downgrade("-1")
    with project.engine.connect() as conn:
        assert (column_types(conn, "documents"), set(indexes(conn, "documents"))) == before
        assert conn.execute(text("SELECT title FROM documents")).scalar_one() == "a"
    project.upgrade()
    _assert_empty(project)
