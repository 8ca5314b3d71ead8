"""A vector column changes width (``dimensions=8`` -> ``12``) while it holds vectors.

PostgreSQL cannot cast a stored ``vector(8)`` to ``vector(12)``: Alembic's own
``op.alter_column(..., type_=Vector(12))`` dies at upgrade ("expected 12 dimensions, not 8").
Autogenerate renders ``op.alter_vector_dimensions`` instead, with a note naming
``vecorm.embedding.reembed.ModelChange``; the operation refuses, saying what to do, while the
column holds
vectors, does nothing once ModelChange has switched the column, and alters an emptied column.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.alembic.conftest import Project, body, undefined_names
from tests.integration.catalog import column_types
from vecorm.alembic import VectorDimensionsError
from vecorm.embedding.reembed import ModelChange
from vecorm.testing import FakeEmbedder

MODELS = """
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import vecorm

    NO_BM25 = {{"bm25": None}} if "bm25" in vecorm.SearchConfig.__dataclass_fields__ else {{}}

    class Base(DeclarativeBase):
        pass

    class Article(vecorm.Searchable, Base):
        __tablename__ = "articles"
        __vecorm__ = vecorm.SearchConfig(fields=("title",), dimensions={dimensions}, **NO_BM25)
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
"""

STORED_VECTORS = text("SELECT count(embedding) FROM articles")


def _embedding_type(project: Project) -> str:
    with project.engine.connect() as conn:
        return column_types(conn, "articles")["embedding"]


def test_dimension_change_with_vectors_is_refused_then_follows_model_change(
    project_factory: Callable[..., Project], capsys: pytest.CaptureFixture[str]
) -> None:
    project = project_factory()
    old_models = project.set_models(MODELS.format(dimensions=8))
    initial = project.autogenerate("articles")
    project.upgrade()
    with project.engine.begin() as conn:
        for number in range(3):
            conn.execute(
                text("INSERT INTO articles (title, embedding) VALUES (:t, :v)"),
                {"t": f"article {number}", "v": str([float(number + 1)] * 8)},
            )

    project.set_models(MODELS.format(dimensions=12))
    widened = project.autogenerate("wider vectors")
    source = widened.read_text()
    assert undefined_names(widened) == ""
    assert "alter_column" not in source
    assert body(widened, "upgrade") == (
        "op.alter_vector_dimensions('articles', 'embedding', 12, existing_dimensions=8, "
        "discard_vectors=False)"
    )
    assert body(widened, "downgrade") == (
        "op.alter_vector_dimensions('articles', 'embedding', 8, existing_dimensions=12, "
        "discard_vectors=False)"
    )
    assert "# vecorm: articles.embedding changes from vector(8) to vector(12)" in source
    assert "vecorm.embedding.reembed.ModelChange" in source

    # 1. Vectors stored: refused, with what to do; nothing changed.
    with pytest.raises(VectorDimensionsError) as refused:
        project.upgrade()
    message = str(refused.value)
    assert "articles.embedding changes from vector(8) to vector(12)" in message
    assert "vecorm.embedding.reembed.ModelChange" in message and "discard_vectors=True" in message
    assert _embedding_type(project) == "vector(8)"

    # ... and `alembic upgrade --sql` renders the same refusal into the script.
    command.upgrade(project.config(), f"{initial.name.split('_')[0]}:head", sql=True)
    (guard,) = [line for line in capsys.readouterr().out.splitlines() if "$vecorm$" in line]
    with project.engine.begin() as conn, pytest.raises(DBAPIError, match="ModelChange"):
        conn.execute(text(guard.rstrip(";")))

    # 2. Re-embedded through ModelChange: the revision finds the new type and does nothing.
    article = importlib.import_module(old_models).Article
    change = ModelChange(article, FakeEmbedder(dimensions=12))
    change.start(project.engine)
    with Session(project.engine) as session:
        change.backfill(session, progress=False)
        change.finish(session)
    assert _embedding_type(project) == "vector(12)"
    project.upgrade()
    with project.engine.connect() as conn:
        assert conn.execute(STORED_VECTORS).scalar_one() == 3
    again = project.autogenerate("nothing left")
    assert body(again, "upgrade") == "pass", again.read_text()
    again.unlink()

    # 3. discard_vectors=True: the vectors are set to NULL (stale, for backfill) and it runs.
    widened.write_text(source.replace("discard_vectors=False", "discard_vectors=True"))
    project.downgrade("-1")
    assert _embedding_type(project) == "vector(8)"
    with project.engine.connect() as conn:
        assert conn.execute(STORED_VECTORS).scalar_one() == 0
    project.upgrade()
    assert _embedding_type(project) == "vector(12)"
