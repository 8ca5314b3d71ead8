"""Searchable models on LIST and HASH partitioned tables: indexes, partitions, pruning, search."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import String, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from tests.integration.catalog import indexes
from vecorm.scale.partitioning import (
    CreatePartition,
    attach_partition,
    check_partition_indexes,
    create_hash_partitions,
    create_partition,
    partition_names,
    partition_strategy,
    partitions,
)
from vecorm.search.vector import python_distance
from vecorm.testing.assertions import explain, indexes_used, plan_nodes

DIMS = 32


class Base(DeclarativeBase):
    pass


class TenantDoc(vecorm.Searchable, Base):
    __tablename__ = "tenant_docs"
    __table_args__ = {"postgresql_partition_by": "LIST (tenant_id)"}
    __vecorm__ = vecorm.SearchConfig(fields=("title",), dimensions=DIMS)
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))


class HashedDoc(vecorm.Searchable, Base):
    """HASH partitions and a binary-quantized index: the candidate scan is pruned too."""

    __tablename__ = "hashed_docs"
    __table_args__ = {"postgresql_partition_by": "HASH (tenant_id)"}
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",), dimensions=DIMS, index=vecorm.HNSW(precision="bit")
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))


TENANTS = (1, 2, 3)
PER_TENANT = 200


def _vectors(seed: int, count: int = PER_TENANT) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, DIMS)).astype(np.float32)


@pytest.fixture
def tenants(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    with vecorm_engine.begin() as conn:
        for tenant in TENANTS:
            create_partition(conn, TenantDoc, f"tenant_docs_t{tenant}", values=[tenant])
        create_hash_partitions(conn, HashedDoc, 4)
        for tenant in TENANTS:
            rows = [
                {"tenant_id": tenant, "id": i, "title": f"t{tenant} doc {i}", "embedding": vector}
                for i, vector in enumerate(_vectors(tenant))
            ]
            conn.execute(insert(TenantDoc), rows)
            conn.execute(insert(HashedDoc), rows)
        conn.execute(text("ANALYZE"))
    return vecorm_engine


def test_indexes_declared_once_are_on_every_partition(tenants: Engine) -> None:
    with tenants.begin() as conn:
        found = check_partition_indexes(conn, TenantDoc)
        assert partition_names(found) == ["tenant_docs_t1", "tenant_docs_t2", "tenant_docs_t3"]
        assert found[0].bound == "FOR VALUES IN (1)"
        for info in found:
            assert info.indexes == (
                "ix_tenant_docs_embedding_hnsw",
                "ix_tenant_docs_search_vector_gin",
                "tenant_docs_pkey",
            )
            own = indexes(conn, info.name)
            hnsw = [ix for ix in own.values() if ix.method == "hnsw"]
            assert [ix.opclasses for ix in hnsw] == [("vector_cosine_ops",)]
        hashed = check_partition_indexes(conn, HashedDoc)
        assert hashed[0].bound == "FOR VALUES WITH (modulus 4, remainder 0)"
        bit = [ix for ix in indexes(conn, "hashed_docs_p0").values() if ix.method == "hnsw"]
        assert "((binary_quantize(embedding))::bit(32)) bit_hamming_ops" in bit[0].definition
        # A partition added later, after data exists elsewhere, gets them too.
        create_partition(conn, TenantDoc, "tenant_docs_t9", values=[9])
        assert partitions(conn, TenantDoc)[-1].indexes == found[0].indexes


def test_attach_prepared_table_and_missing_index_report(tenants: Engine) -> None:
    with tenants.begin() as conn:
        conn.execute(text("CREATE TABLE tenant_docs_t7 (LIKE tenant_docs INCLUDING ALL)"))
        attach_partition(conn, TenantDoc, "tenant_docs_t7", values=[7])
        assert "tenant_docs_t7" in partition_names(check_partition_indexes(conn, TenantDoc))
        # An index made on the parent ONLY (first step of a concurrent build) is reported.
        conn.execute(text("CREATE INDEX ix_tenant_docs_title ON ONLY tenant_docs (title)"))
        with pytest.raises(
            vecorm.ConfigurationError, match="tenant_docs_t1 lacks ix_tenant_docs_title"
        ):
            check_partition_indexes(conn, TenantDoc)


@pytest.mark.parametrize("model", [TenantDoc, HashedDoc], ids=["list", "hash-bit"])
def test_nearest_with_the_partition_key_prunes_to_one_partition(
    tenants: Engine, model: type[vecorm.Searchable]
) -> None:
    query = _vectors(42, 1)[0]
    stmt = model.nearest(query, k=5).where(model.tenant_id == 2)  # type: ignore[attr-defined]
    with Session(tenants) as session, session.begin():
        # 200 rows a partition: make the planner show the plan it would pick on a big one.
        session.execute(text("SET LOCAL enable_seqscan = off"))
        session.execute(text("SET LOCAL enable_sort = off"))
        scanned = {
            node.get("Relation Name")
            for node in plan_nodes(explain(session, stmt))
            if node.get("Relation Name")
        }
        used = indexes_used(session, stmt)
        rows = [(row[0].tenant_id, row[0].id) for row in session.execute(stmt)]
    # One partition only, through its own vector index.
    assert len(scanned) == 1, scanned
    (partition,) = scanned
    vector_indexes = [name for name in used if name.startswith(partition) and "pkey" not in name]
    assert vector_indexes, used  # e.g. tenant_docs_t2_embedding_idx, hashed_docs_p2_binary_...
    assert {tenant for tenant, _ in rows} == {2}
    vectors = _vectors(2)
    distances = [python_distance(vecorm.Distance.COSINE, vector, query) for vector in vectors]
    assert [row_id for _, row_id in rows] == list(np.argsort(distances)[:5])


def test_partition_ddl_and_errors() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    assert partition_strategy(TenantDoc) == "list" and partition_strategy(HashedDoc) == "hash"
    ddl = CreatePartition("docs", "docs_acme", values=["acme", "o'hara"], schema="kb")
    assert str(ddl.compile(dialect=dialect)) == (
        "CREATE TABLE kb.docs_acme PARTITION OF kb.docs FOR VALUES IN ('acme', 'o''hara')"
    )
    attach = CreatePartition("docs", "docs_2024", bounds=(1, 100), attach=True)
    assert str(attach.compile(dialect=dialect)) == (
        "ALTER TABLE docs ATTACH PARTITION docs_2024 FOR VALUES FROM (1) TO (100)"
    )
    with pytest.raises(vecorm.ConfigurationError, match="give one of values"):
        CreatePartition("docs", "x", values=[1], default=True)
    with pytest.raises(vecorm.ConfigurationError, match="0 <= remainder < modulus"):
        CreatePartition("docs", "x", modulus=4, remainder=4)

    class Plain(DeclarativeBase):
        pass

    class Flat(vecorm.Searchable, Plain):
        __tablename__ = "flat"
        __vecorm__ = vecorm.SearchConfig(fields=("title",), dimensions=3)
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]

    assert partition_strategy(Flat) is None
    with pytest.raises(vecorm.ConfigurationError, match="flat is not partitioned"):
        create_partition(None, Flat, "flat_1", values=[1])  # type: ignore[arg-type]
