"""Precision changes, partitions and Citus operations as Alembic revisions that run as written."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.alembic.conftest import Project, body, undefined_names
from tests.integration.catalog import indexes

MODELS = """
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import vecorm

    # These tests are about vector indexes: no BM25 side tables where the config has them.
    NO_BM25 = {{"bm25": None}} if "bm25" in vecorm.SearchConfig.__dataclass_fields__ else {{}}

    class Base(DeclarativeBase):
        pass

    class Document(vecorm.Searchable, Base):
        __tablename__ = "documents"
        __vecorm__ = vecorm.SearchConfig(fields=("title",), {config}, **NO_BM25)
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
"""

INDEX_NAMES = {
    "vector": "ix_documents_embedding_hnsw",
    "halfvec": "ix_documents_embedding_halfvec_hnsw",
    "bit": "ix_documents_embedding_bit_hnsw",
}
DEFINITIONS = {
    "vector": "USING hnsw (embedding vector_cosine_ops)",
    "halfvec": "USING hnsw (((embedding)::halfvec(16)) halfvec_cosine_ops)",
    "bit": "USING hnsw (((binary_quantize(embedding))::bit(16)) bit_hamming_ops)",
}


def _vector_indexes(project: Project) -> dict[str, str]:
    with project.engine.connect() as conn:
        found = indexes(conn, "documents")
    return {name: info.definition for name, info in found.items() if "embedding" in name}


def _assert_empty(project: Project) -> None:
    revision = project.autogenerate("nothing to do")
    assert body(revision, "upgrade") == "pass", revision.read_text()
    assert body(revision, "downgrade") == "pass", revision.read_text()
    revision.unlink()


@pytest.mark.parametrize(
    ("first", "second"), [("vector", "halfvec"), ("halfvec", "bit"), ("bit", "vector")]
)
def test_precision_change_builds_the_new_index_concurrently_then_drops_the_old(
    project_factory: Callable[..., Project], first: str, second: str
) -> None:
    project = project_factory()
    project.set_models(
        MODELS.format(config=f'dimensions=16, index=vecorm.HNSW(precision="{first}")')
    )
    initial = project.autogenerate("initial")
    project.upgrade()
    assert list(_vector_indexes(project)) == [INDEX_NAMES[first]]
    _assert_empty(project)

    project.set_models(
        MODELS.format(config=f'dimensions=16, index=vecorm.HNSW(precision="{second}")')
    )
    change = project.autogenerate("precision")
    upgrade = body(change, "upgrade").splitlines()
    assert undefined_names(change) == ""
    assert upgrade[0].startswith(f"op.create_vector_index('{INDEX_NAMES[second]}', 'documents'")
    assert "concurrently=True" in upgrade[0]
    assert (f"precision='{second}', dimensions=16" in upgrade[0]) == (second != "vector")
    assert upgrade[1] == f"op.drop_vector_index('{INDEX_NAMES[first]}', concurrently=True)"
    project.upgrade()
    found = _vector_indexes(project)
    assert list(found) == [INDEX_NAMES[second]]
    assert DEFINITIONS[second] in found[INDEX_NAMES[second]]
    _assert_empty(project)

    project.downgrade(initial.name.split("_")[0])
    found = _vector_indexes(project)
    assert list(found) == [INDEX_NAMES[first]]
    assert DEFINITIONS[first] in found[INDEX_NAMES[first]]


def test_large_dimensions_get_an_expression_index_that_autogenerates_idempotently(
    project_factory: Callable[..., Project],
) -> None:
    project = project_factory()
    project.set_models(MODELS.format(config="dimensions=3072"))
    initial = project.autogenerate("initial")
    assert undefined_names(initial) == ""
    assert "'ix_documents_embedding_halfvec_hnsw'" in body(initial, "upgrade")
    project.upgrade()
    found = _vector_indexes(project)
    assert (
        "USING hnsw (((embedding)::halfvec(3072)) halfvec_cosine_ops)"
        in (found["ix_documents_embedding_halfvec_hnsw"])
    )
    _assert_empty(project)
    # A parameter change keeps the name: Alembic's drop + create, compared from the catalog.
    project.set_models(MODELS.format(config="dimensions=3072, index=vecorm.HNSW(m=8)"))
    rebuilt = project.autogenerate("m=8")
    upgrade = body(rebuilt, "upgrade")
    assert "op.drop_index('ix_documents_embedding_halfvec_hnsw'" in upgrade
    assert "postgresql_with={'m': 8, 'ef_construction': 64}" in upgrade
    project.upgrade()
    with project.engine.connect() as conn:
        assert indexes(conn, "documents")["ix_documents_embedding_halfvec_hnsw"].options == (
            "ef_construction=64",
            "m=8",
        )
    _assert_empty(project)
    project.downgrade(initial.name.split("_")[0])
    with project.engine.connect() as conn:
        restored = indexes(conn, "documents")["ix_documents_embedding_halfvec_hnsw"]
    assert restored.options == ("ef_construction=64", "m=16")
    assert "((embedding)::halfvec(3072)) halfvec_cosine_ops" in restored.definition


PARTITIONED = """
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import vecorm

    NO_BM25 = {"bm25": None} if "bm25" in vecorm.SearchConfig.__dataclass_fields__ else {}

    class Base(DeclarativeBase):
        pass

    class Document(vecorm.Searchable, Base):
        __tablename__ = "documents"
        __table_args__ = {"postgresql_partition_by": "LIST (tenant_id)"}
        __vecorm__ = vecorm.SearchConfig(
            fields=("title",), dimensions=16, index=vecorm.HNSW(precision="halfvec"), **NO_BM25
        )
        tenant_id: Mapped[int] = mapped_column(primary_key=True)
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
"""

ADD_PARTITIONS = """
    op.create_partition("documents", "documents_t1", values=[1])
    op.create_partition("documents", "documents_t2", values=[2])
"""


def test_partitioned_model_and_partitions_as_revisions(
    project_factory: Callable[..., Project],
) -> None:
    project = project_factory()
    project.set_models(PARTITIONED)
    initial = project.autogenerate("partitioned documents")
    assert "postgresql_partition_by='LIST (tenant_id)'" in body(initial, "upgrade")
    project.upgrade()
    revision_id = project.autogenerate_empty("tenants 1 and 2")
    (script,) = project.versions.glob(f"{revision_id}_*.py")
    source = script.read_text()
    source = source.replace("def upgrade() -> None:\n", "def upgrade() -> None:" + ADD_PARTITIONS)
    source = source.replace(
        "def downgrade() -> None:\n",
        'def downgrade() -> None:\n    op.drop_partition("documents_t2")\n'
        '    op.drop_partition("documents_t1")\n',
    )
    script.write_text("import vecorm.alembic  # noqa: F401\n" + source)
    project.upgrade()
    with project.engine.connect() as conn:
        for partition in ("documents_t1", "documents_t2"):
            definitions = [info.definition for info in indexes(conn, partition).values()]
            assert any(
                "USING hnsw (((embedding)::halfvec(16)) halfvec_cosine_ops)" in d
                for d in definitions
            ), definitions
    # The partitions are not in the metadata, and autogenerate leaves them alone.
    _assert_empty(project)
    project.downgrade(initial.name.split("_")[0])
    with project.engine.connect() as conn:
        assert indexes(conn, "documents_t1") == {}


PER_TENANT = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
import vecorm

class Base(DeclarativeBase):
    pass

class Note(vecorm.Searchable, Base):
    __tablename__ = "notes"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=3, index=None, bm25=vecorm.BM25(distributed_by="tenant_id")
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
"""


def test_bm25_statistics_per_tenant_as_revisions(project_factory: Callable[[], Project]) -> None:
    """The keyed side tables and their functions in a revision that runs as written; rows
    written then are counted per tenant; a second autogenerate is empty; it downgrades."""
    from sqlalchemy import text

    project = project_factory()
    project.set_models(PER_TENANT)
    source = project.autogenerate("notes").read_text()
    assert "op.create_bm25_statistics(" in source and "ROWS FROM" in source
    assert "CREATE SEQUENCE" not in source  # statistics per tenant use no sequence
    project.upgrade()
    with project.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO notes (tenant_id, id, body) VALUES "
                "(1, 1, 'vacuum'), (1, 2, 'lock wait'), (2, 3, 'vacuum vacuum full')"
            )
        )
    count = text(
        "SELECT tenant_id, sum(df), sum(length) FROM (SELECT tenant_id, term, df, length "
        "FROM notes_bm25_terms UNION ALL SELECT tenant_id, term, df, length "
        "FROM notes_bm25_deltas) c WHERE term = '' GROUP BY 1 ORDER BY 1"
    )
    with project.engine.connect() as conn:
        assert [tuple(row) for row in conn.execute(count)] == [(1, 2, 3), (2, 1, 3)]
    revision = project.autogenerate("nothing").read_text()
    assert "op." not in revision.split("def upgrade")[1].split("def downgrade")[0], revision
    project.downgrade("base")
    project.upgrade()
