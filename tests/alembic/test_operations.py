"""vecorm's ``op.*`` operations in hand-written revisions, run by the env.py of ``vecorm init``."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import text

from tests.alembic.conftest import Project
from tests.integration.catalog import column_types, generated_expression, indexes
from vecorm.alembic import EmptyIVFFlatWarning

HEADER = """
from alembic import op
import sqlalchemy as sa
import vecorm.types

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None
"""


def _revision(project: Project, revision: str, down: str | None, code: str) -> Path:
    path = project.versions / f"{revision}.py"
    source = HEADER.format(revision=revision, down=down) + textwrap.dedent(code)
    path.write_text(source, encoding="utf-8")
    return path


def test_extension_table_and_concurrent_index(
    project_factory: Callable[..., Project], capsys: pytest.CaptureFixture[str]
) -> None:
    project = project_factory()
    with project.engine.begin() as conn:
        conn.execute(text("DROP EXTENSION vector"))
    _revision(
        project,
        "r1",
        None,
        """
        def upgrade():
            op.create_vector_extension()
            op.create_table(
                "items",
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("embedding", vecorm.types.Vector(3)),
            )
            op.execute("INSERT INTO items (embedding) VALUES ('[1,0,0]'), ('[0,1,0]')")

        def downgrade():
            op.drop_table("items")
            op.drop_vector_extension()
        """,
    )
    _revision(
        project,
        "r2",
        "r1",
        """
        def upgrade():
            op.create_vector_index(
                "ix_items_embedding_hnsw", "items", "embedding", method="hnsw",
                opclass="vector_l2_ops", with_={"m": 8, "ef_construction": 32},
                concurrently=True,
            )

        def downgrade():
            op.drop_vector_index("ix_items_embedding_hnsw", concurrently=True)
        """,
    )
    command.upgrade(project.config(), "head", sql=True)  # offline: SQL only
    offline = capsys.readouterr().out
    assert "CREATE EXTENSION IF NOT EXISTS vector;" in offline
    assert (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_items_embedding_hnsw ON items "
        "USING hnsw (embedding vector_l2_ops) WITH (m = 8, ef_construction = 32);"
    ) in offline

    project.upgrade()
    with project.engine.connect() as conn:
        found = indexes(conn, "items")["ix_items_embedding_hnsw"]
        assert (found.method, found.opclasses, found.options) == (
            "hnsw",
            ("vector_l2_ops",),
            ("ef_construction=32", "m=8"),
        )
        assert column_types(conn, "items")["embedding"] == "vector(3)"

    project.downgrade("r1")
    with project.engine.connect() as conn:
        assert "ix_items_embedding_hnsw" not in indexes(conn, "items")
    # A failed CONCURRENTLY build leaves an INVALID index: the next run replaces it.
    with project.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE INDEX ix_items_embedding_hnsw ON items "
                "USING hnsw (embedding vector_cosine_ops)"
            )
        )
        conn.execute(
            text(
                "UPDATE pg_index SET indisvalid = false "
                "WHERE indexrelid = 'ix_items_embedding_hnsw'::regclass"
            )
        )
    project.upgrade()
    with project.engine.connect() as conn:
        assert indexes(conn, "items")["ix_items_embedding_hnsw"].opclasses == ("vector_l2_ops",)
        assert conn.execute(
            text(
                "SELECT indisvalid FROM pg_index "
                "WHERE indexrelid = 'ix_items_embedding_hnsw'::regclass"
            )
        ).scalar_one()

    project.downgrade("base")
    with project.engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
            ).scalar_one()
            == 0
        )


def test_ivfflat_on_an_empty_table_warns(project_factory: Callable[..., Project]) -> None:
    project = project_factory()
    _revision(
        project,
        "r1",
        None,
        """
        def upgrade():
            op.create_table(
                "items",
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("embedding", vecorm.types.Vector(3)),
            )
            op.create_vector_index(
                "ix_items_embedding_ivfflat", "items", "embedding", method="ivfflat",
                opclass="vector_cosine_ops", with_={"lists": 2},
            )

        def downgrade():
            op.drop_table("items")
        """,
    )
    with pytest.warns(EmptyIVFFlatWarning, match="empty table items"):
        project.upgrade()
    with project.engine.connect() as conn:
        assert indexes(conn, "items")["ix_items_embedding_ivfflat"].options == ("lists=2",)


TSV = "to_tsvector('{language}'::regconfig, coalesce(body, ''))"


@pytest.mark.parametrize("strategy", ["set_expression", "recreate"])
def test_alter_column_expression_keeps_indexes(
    project_factory: Callable[..., Project], strategy: str
) -> None:
    project = project_factory()
    with project.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE notes (id serial PRIMARY KEY, body text, "
                f"tsv tsvector GENERATED ALWAYS AS ({TSV.format(language='english')}) STORED)"
            )
        )
        conn.execute(text("CREATE INDEX ix_notes_tsv_gin ON notes USING gin (tsv)"))
        conn.execute(text("INSERT INTO notes (body) VALUES ('the cats')"))
        context = MigrationContext.configure(conn)
        Operations(context).alter_column_expression(
            "notes",
            "tsv",
            TSV.format(language="simple"),
            existing_expression=TSV.format(language="english"),
            strategy=strategy,
        )
    with project.engine.connect() as conn:
        kind, expression = generated_expression(conn, "notes", "tsv")
        assert kind == "s" and "'simple'::regconfig" in expression
        assert indexes(conn, "notes")["ix_notes_tsv_gin"].method == "gin"
        assert conn.execute(text("SELECT tsv::text FROM notes")).scalar_one() == "'cats':2 'the':1"


def test_backfill_embeddings_step(project_factory: Callable[..., Project]) -> None:
    project = project_factory()
    module = project.set_models(
        """
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
        import vecorm

        class Base(DeclarativeBase):
            pass

        class Note(vecorm.Searchable, Base):
            __tablename__ = "notes"
            __vecorm__ = vecorm.SearchConfig(
                fields=("body",), dimensions=8, index=None,
                embedder=vecorm.HashingEmbedder(dimensions=8),
            )
            id: Mapped[int] = mapped_column(primary_key=True)
            body: Mapped[str]
        """
    )
    with project.engine.begin() as conn:
        conn.execute(text("CREATE TABLE notes (id serial PRIMARY KEY, body varchar NOT NULL)"))
        conn.execute(text("INSERT INTO notes (body) VALUES ('alpha'), ('beta'), ('gamma')"))
    revision = project.autogenerate("searchable notes")
    source = revision.read_text()
    source = source.replace(
        "    # ### end Alembic commands ###\n\n\ndef downgrade",
        f"    op.backfill_embeddings({module + ':Note'!r}, batch_size=2)\n"
        "    # ### end Alembic commands ###\n\n\ndef downgrade",
        1,
    )
    revision.write_text(source)
    project.upgrade()
    with project.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT embedding IS NOT NULL, embedding_model FROM notes ORDER BY id")
        ).all()
    assert rows == [(True, "vecorm-hashing-8")] * 3
