"""Index comparison for every index shape PostgreSQL has."""

from __future__ import annotations

from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.alembic.comparators import compare_table

NO_BM25: dict[str, None] = (
    {"bm25": None} if "bm25" in vecorm.SearchConfig.__dataclass_fields__ else {}
)


class ReplayBase(DeclarativeBase):
    pass


class Wide(vecorm.Searchable, ReplayBase):
    """3072 dimensions: vecorm indexes ``embedding::halfvec(3072)`` (pgvector's HNSW stops at
    2000 dimensions of ``vector``)."""

    __tablename__ = "wide"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3072, **NO_BM25)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


def test_a_same_name_rebuild_alembic_reports_for_an_equal_index_is_dropped(
    vecorm_engine: Engine,
) -> None:
    """Alembic 1.18.0 to 1.20.0 reported the halfvec expression index as changed on every run
    (a drop and a create of the same name). Replayed here on Alembic's plan: vecorm, which
    finds both equal in the catalog, removes the pair and has nothing else to do (it used to
    remove the pair, then try to turn it into a rename, and crash)."""
    ReplayBase.metadata.create_all(vecorm_engine)
    name = "ix_wide_embedding_halfvec_hnsw"
    metadata_table = ReplayBase.metadata.tables["wide"]
    (model_index,) = [index for index in metadata_table.indexes if index.name == name]
    with vecorm_engine.connect() as connection:
        conn_table = Table("wide", MetaData(), autoload_with=connection)
        (stored,) = [index for index in conn_table.indexes if index.name == name]
        alembic_plan = ops.ModifyTableOps(
            "wide", [ops.DropIndexOp.from_index(stored), ops.CreateIndexOp.from_index(model_index)]
        )
        autogen_context = AutogenContext(
            MigrationContext.configure(connection), ReplayBase.metadata
        )
        compare_table(autogen_context, alembic_plan, None, "wide", conn_table, metadata_table)
    assert alembic_plan.ops == []
