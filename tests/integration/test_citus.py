"""Citus: the SQL vecorm emits, the constraints it checks, and the same models on plain
PostgreSQL with HASH partitions standing in for shards (top-k per partition, then merged)."""

from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import (
    ForeignKey,
    ForeignKeyConstraint,
    String,
    UniqueConstraint,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
import vecorm.alembic
from vecorm.scale.citus import (
    check_distribution,
    distribute_table,
    distribution_plan,
    reference_table,
    undistribute_table,
)
from vecorm.scale.partitioning import create_hash_partitions
from vecorm.search.bm25 import BM25Arm
from vecorm.search.vector import python_distance
from vecorm.testing.assertions import explain, plan_nodes

DIMS = 16


class Base(DeclarativeBase):
    pass


class Category(Base):
    __tablename__ = "categories"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class Passage(vecorm.Searchable, Base):
    """Citus-ready: the distribution column is in the primary key. HASH partitions stand in
    for Citus shards on plain PostgreSQL."""

    __tablename__ = "passages"
    __table_args__ = {"postgresql_partition_by": "HASH (tenant_id)"}
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS, bm25=None)
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(80))
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"))


class WithBM25(vecorm.Searchable, Base):
    """Citus-ready keys, but the default BM25 statistics: statement triggers Citus refuses."""

    __tablename__ = "with_bm25"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS)
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class Project(Base):
    __tablename__ = "projects"
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)


class Task(Base):
    """A key to a table distributed by tenant_id too, that does not pair the two tenant_ids."""

    __tablename__ = "tasks"
    __table_args__ = (
        ForeignKeyConstraint(
            ["owner_tenant", "project_id"],
            ["projects.tenant_id", "projects.id"],
            name="fk_tasks_project",
        ),
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_tenant: Mapped[int]
    project_id: Mapped[int]


class PerTenant(vecorm.Searchable, Base):
    """BM25 statistics per tenant: the side tables distribute and co-locate with the table."""

    __tablename__ = "per_tenant"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=DIMS, bm25=vecorm.BM25(distributed_by="tenant_id")
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class KeptByTrigger(vecorm.Searchable, Base):
    """The tsvector kept by vecorm's row trigger: distributed with unsafe triggers allowed."""

    __tablename__ = "kept_by_trigger"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=DIMS, bm25=None, search_vector="trigger"
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class GlobalKey(vecorm.Searchable, Base):
    __tablename__ = "global_keys"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS)
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int]
    body: Mapped[str]


class UniqueSlug(vecorm.Searchable, Base):
    __tablename__ = "unique_slugs"
    __table_args__ = (UniqueConstraint("slug", name="uq_unique_slugs_slug"),)
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS)
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str]
    body: Mapped[str]


def _sql(statement: object) -> str:
    return str(
        statement.compile(  # type: ignore[attr-defined]
            dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
            compile_kwargs={"literal_binds": True},
        )
    )


def test_emitted_sql() -> None:
    assert _sql(
        distribute_table(Passage, "tenant_id", colocate_with="tenants", shard_count=32)
    ) == (
        "SELECT create_distributed_table('passages', 'tenant_id', colocate_with => 'tenants', "
        "shard_count => 32)"
    )
    assert _sql(reference_table(Category)) == ("SELECT create_reference_table('categories')")
    assert _sql(undistribute_table(Passage)) == "SELECT undistribute_table('passages')"
    assert distribution_plan({"c": Category, "p": Passage}, "tenant_id") == {
        "categories": "reference",
        "passages": "distributed",
    }


def test_a_trigger_kept_column_distributes_with_unsafe_triggers_for_that_call() -> None:
    assert _sql(distribute_table(KeptByTrigger, "tenant_id")) == (
        "WITH vecorm_unsafe_triggers AS MATERIALIZED \n"
        "(SELECT coalesce(pg_catalog.current_setting('citus.enable_unsafe_triggers', true), "
        "'off') AS previous, "
        "pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true) AS switched)\n"
        " SELECT create_distributed_table('kept_by_trigger', 'tenant_id'), "
        "pg_catalog.set_config('citus.enable_unsafe_triggers', vecorm_unsafe_triggers.previous, "
        "true) AS restored \nFROM vecorm_unsafe_triggers"
    )


def test_alembic_operations_offline() -> None:
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
    )
    op = Operations(context)
    op.create_reference_table("categories")  # type: ignore[attr-defined]
    op.create_distributed_table("passages", "tenant_id", colocate_with="none")  # type: ignore[attr-defined]
    op.undistribute_table("passages")  # type: ignore[attr-defined]
    assert buffer.getvalue().split(";\n\n")[:3] == [
        "SELECT create_reference_table('categories')",
        "SELECT create_distributed_table('passages', 'tenant_id', colocate_with => 'none')",
        "SELECT undistribute_table('passages')",
    ]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (GlobalKey, r"primary key \(id\) must include the distribution column 'tenant_id'"),
        (UniqueSlug, "unique constraint uq_unique_slugs_slug must include 'tenant_id'"),
        (
            WithBM25,
            r"BM25 statistics .* SearchConfig\(bm25=vecorm.BM25\(distributed_by='tenant_id'\)\)",
        ),
        (PerTenant, r"kept per 'tenant_id' .* distribute it by 'tenant_id'"),
        (Task, r"foreign key fk_tasks_project to projects must pair tenant_id with tenant_id"),
    ],
)
def test_constraints_citus_imposes(model: type, message: str) -> None:
    column = "id" if model is PerTenant else "tenant_id"
    with pytest.raises(vecorm.ConfigurationError, match=message):
        check_distribution(model, column)
    with pytest.raises(vecorm.ConfigurationError, match=message):
        distribute_table(model, column)
    check_distribution(Passage, "tenant_id")
    check_distribution(PerTenant, "tenant_id")


def test_bm25_per_tenant_needs_the_column_in_the_primary_key() -> None:
    with pytest.raises(vecorm.ConfigurationError, match=r"distributed_by='org_id'.*primary-key"):

        class Wrong(vecorm.Searchable, Base):
            __tablename__ = "wrong_keys"
            __vecorm__ = vecorm.SearchConfig(
                fields=("body",), dimensions=DIMS, bm25=vecorm.BM25(distributed_by="org_id")
            )
            id: Mapped[int] = mapped_column(primary_key=True)
            org_id: Mapped[int]
            body: Mapped[str]


def test_a_model_with_statistics_per_tenant_distributes_with_them() -> None:
    """One DO block: the side tables co-located with the table, the statistics' triggers
    dropped for Citus's copy of the rows and made again after it, unsafe triggers on."""
    sql = _sql(distribute_table(PerTenant, "tenant_id", colocate_with="none", shard_count=8))
    lines = [line.strip() for line in sql.splitlines()]
    assert lines[0] == "DO $vecorm$" and lines[-1] == "$vecorm$"
    calls = [line for line in lines if "create_distributed_table" in line]
    assert calls == [
        "PERFORM pg_catalog.create_distributed_table('per_tenant', 'tenant_id', "
        "colocate_with => 'none', shard_count => 8);",
        *(
            f"PERFORM pg_catalog.create_distributed_table('per_tenant_bm25_{side}', "
            "'tenant_id', colocate_with => 'per_tenant');"
            for side in ("postings", "terms", "deltas")
        ),
    ]
    first_call = lines.index(calls[0])
    drops = [i for i, line in enumerate(lines) if line.startswith("DROP TRIGGER")]
    creates = [i for i, line in enumerate(lines) if line.startswith("CREATE TRIGGER")]
    assert len(drops) == len(creates) == 4
    assert max(drops) < first_call < min(creates)
    assert lines[4] == (
        "PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);"
    )
    assert lines[-3] == (
        "PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', previous, true);"
    )
    assert _sql(undistribute_table(PerTenant)) == (
        "SELECT undistribute_table('per_tenant'), "
        "undistribute_table('per_tenant_bm25_postings') AS undistribute_table_1, "
        "undistribute_table('per_tenant_bm25_terms') AS undistribute_table_2, "
        "undistribute_table('per_tenant_bm25_deltas') AS undistribute_table_3"
    )


def _bm25(
    docs: dict[tuple[int, int], Counter[str]], terms: Counter[str], tenant: int | None
) -> dict[tuple[int, int], float]:
    """Lucene's BM25 (k1 0.9, b 0.4) from the rows: the tenant's statistics, or everyone's."""
    scope = {key: counts for key, counts in docs.items() if tenant in (None, key[0])}
    lengths = {key: sum(counts.values()) for key, counts in scope.items()}
    avgdl = sum(lengths.values()) / len(scope)
    df = Counter(term for counts in scope.values() for term in counts)
    scores: dict[tuple[int, int], float] = {}
    for term, qtf in terms.items():
        idf = math.log(1 + (len(scope) - df[term] + 0.5) / (df[term] + 0.5))
        for key, counts in scope.items():
            if counts[term]:
                part = (
                    counts[term] * 1.9 / (counts[term] + 0.9 * (0.6 + 0.4 * lengths[key] / avgdl))
                )
                scores[key] = scores.get(key, 0.0) + qtf * idf * part
    return scores


def test_a_role_granted_access_writes_statistics_per_tenant(vecorm_engine: Engine) -> None:
    """A role given grant_access (no owner) writes and folds the statistics per tenant."""
    PerTenant.__table__.create(vecorm_engine)  # type: ignore[attr-defined]
    with vecorm_engine.begin() as conn:
        conn.execute(text("CREATE ROLE per_tenant_writer"))
        try:
            vecorm.grant_access(conn, PerTenant, "per_tenant_writer")
            conn.execute(text("SET LOCAL ROLE per_tenant_writer"))
            for tenant in (0, 1):  # 70 new lexemes a statement: 71 delta rows, always a fold
                conn.execute(
                    insert(PerTenant).values(
                        [
                            {"tenant_id": tenant, "id": i, "body": f"vacuum word{i}"}
                            for i in range(tenant * 100, tenant * 100 + 70)
                        ]
                    )
                )
            conn.execute(delete(PerTenant).where(PerTenant.id.in_([1, 2, 101])))
            conn.execute(text("RESET ROLE"))
            counted = text(
                "SELECT tenant_id, sum(df) FROM (SELECT tenant_id, df FROM per_tenant_bm25_terms "
                "WHERE term = '' UNION ALL SELECT tenant_id, df FROM per_tenant_bm25_deltas "
                "WHERE term = '') c GROUP BY 1 ORDER BY 1"
            )
            assert [tuple(row) for row in conn.execute(counted)] == [(0, 68), (1, 69)]
            folded = text("SELECT count(*) FROM per_tenant_bm25_terms WHERE term = ''")
            assert conn.execute(folded).scalar() == 2
        finally:
            conn.execute(text("RESET ROLE"))
            conn.execute(text("DROP OWNED BY per_tenant_writer"))
            conn.execute(text("DROP ROLE per_tenant_writer"))


def test_statistics_per_tenant_on_plain_postgresql(vecorm_engine: Engine) -> None:
    """Without Citus the same triggers keep the statistics per tenant: a search filtered on a
    tenant ranks with its statistics, any other with everyone's (equal to BM25 from the rows)."""
    PerTenant.__table__.create(vecorm_engine)  # type: ignore[attr-defined]
    words = ["vacuum", "index", "replica", "shard", "backup"]
    with Session(vecorm_engine) as session:
        session.execute(
            insert(PerTenant),
            [
                {"tenant_id": i % 3, "id": i, "body": f"{words[i % 5]} {words[i * 7 % 5]} {i}"}
                for i in range(90)
            ],
        )
        session.execute(
            update(PerTenant).where(PerTenant.id < 20).values(body=PerTenant.body + " vacuum")
        )
        session.execute(delete(PerTenant).where(PerTenant.id > 80))
        session.commit()
        docs: dict[tuple[int, int], Counter[str]] = {
            key: Counter() for key in session.execute(select(PerTenant.tenant_id, PerTenant.id))
        }
        lexemes = text(
            "SELECT tenant_id, id, u.lexeme, coalesce(array_length(u.positions, 1), 1) "
            "FROM per_tenant, unnest(search_vector) u"
        )
        for tenant, row_id, lexeme, count in session.execute(lexemes):
            docs[(tenant, row_id)][lexeme] = count
        for tenant, where in (
            (None, []),
            (1, [PerTenant.tenant_id == 1]),
            (1, [PerTenant.tenant_id.in_([1])]),
        ):
            expected = _bm25(docs, Counter(["vacuum", "replica"]), tenant)
            rows = session.execute(PerTenant.text_search("vacuum replica", k=100, where=where))
            got = {(row[0].tenant_id, row[0].id): row.score for row in rows}
            assert got.keys() == expected.keys()
            for key, score in got.items():
                assert score == pytest.approx(expected[key], abs=1e-6)
        # Hybrid search: the lexical score of each row is the tenant's BM25.
        expected = _bm25(docs, Counter(["index", "shard"]), 2)
        rows = session.execute(
            PerTenant.hybrid_search(
                "index shard",
                k=5,
                where=PerTenant.tenant_id == 2,
                embedder=vecorm.HashingEmbedder(DIMS),
            )
        ).all()
        assert len(rows) == 5 and all(row[0].tenant_id == 2 for row in rows)
        for row in rows:
            key = (row[0].tenant_id, row[0].id)
            assert row.text_score == pytest.approx(expected.get(key, 0.0), abs=1e-6)
        # ... and so is the score it completes for rows only the semantic arm found.
        tenant_rows = select(PerTenant.tenant_id, PerTenant.id).where(PerTenant.tenant_id == 2)
        completed = BM25Arm().scores_of(
            PerTenant, "index shard", keys=tenant_rows, where=[PerTenant.tenant_id == 2]
        )
        got = {(row.pk_0, row.pk_1): row.score for row in session.execute(completed)}
        assert got.keys() == expected.keys()
        for key, score in got.items():
            assert score == pytest.approx(expected[key], abs=1e-6)


@pytest.fixture
def shards(vecorm_engine: Engine) -> tuple[Engine, np.ndarray]:
    Base.metadata.create_all(vecorm_engine)
    vectors = np.random.default_rng(4).normal(size=(400, DIMS)).astype(np.float32)
    with vecorm_engine.begin() as conn:
        create_hash_partitions(conn, Passage, 4)
        conn.execute(insert(Category), [{"id": 1, "name": "faq"}])
        conn.execute(
            insert(Passage),
            [
                {"tenant_id": i % 8, "id": i, "body": f"p{i}", "category_id": 1, "embedding": v}
                for i, v in enumerate(vectors)
            ],
        )
        # Stand-ins for Citus's functions, recording their calls (Citus is not installed here).
        conn.execute(text("CREATE TABLE citus_calls (call text)"))
        conn.execute(
            text(
                "CREATE FUNCTION create_distributed_table(t regclass, c text, "
                "colocate_with text DEFAULT 'default', shard_count int DEFAULT NULL) "
                "RETURNS void LANGUAGE sql AS $$ INSERT INTO citus_calls "
                "VALUES (format('%s by %s colocate %s', t, c, colocate_with)) $$"
            )
        )
        conn.execute(text("ANALYZE"))
    return vecorm_engine, vectors


def test_operation_checks_the_catalog_then_calls_citus(shards: tuple[Engine, np.ndarray]) -> None:
    engine, _ = shards
    with engine.connect() as conn:
        op = Operations(MigrationContext.configure(conn))
        with pytest.raises(vecorm.ConfigurationError, match="unique index global_keys_pkey lacks"):
            op.create_distributed_table("global_keys", "tenant_id")  # type: ignore[attr-defined]
        with pytest.raises(vecorm.ConfigurationError, match=r"distributed_by='tenant_id'"):
            op.create_distributed_table("with_bm25", "tenant_id")  # type: ignore[attr-defined]
        conn.execute(
            text(
                "CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RETURN NEW; END $$; CREATE TRIGGER audit BEFORE UPDATE ON "
                "kept_by_trigger FOR EACH ROW EXECUTE FUNCTION audit()"
            )
        )
        with pytest.raises(vecorm.ConfigurationError, match=r"with triggers \(audit\)"):
            op.create_distributed_table("kept_by_trigger", "tenant_id")  # type: ignore[attr-defined]
        conn.execute(text("DROP TRIGGER audit ON kept_by_trigger"))
        op.create_distributed_table("kept_by_trigger", "tenant_id")  # type: ignore[attr-defined]
        op.create_distributed_table("passages", "tenant_id", colocate_with="none")  # type: ignore[attr-defined]
        assert conn.execute(text("SELECT call FROM citus_calls")).scalars().all() == [
            "kept_by_trigger by tenant_id colocate default",
            "passages by tenant_id colocate none",
        ]


def test_same_models_search_across_and_within_shards(shards: tuple[Engine, np.ndarray]) -> None:
    engine, vectors = shards
    query = np.random.default_rng(9).normal(size=DIMS).astype(np.float32)
    distances = np.array([python_distance(vecorm.Distance.COSINE, v, query) for v in vectors])
    with Session(engine) as session, session.begin():
        session.execute(text("SET LOCAL enable_seqscan = off"))
        # Across shards: each partition's index returns its top k, merged by distance.
        everywhere = Passage.nearest(query, k=10)
        nodes = list(plan_nodes(explain(session, everywhere)))
        scanned = {node["Relation Name"] for node in nodes if "Relation Name" in node}
        assert len(scanned) == 4 and any(n["Node Type"] == "Merge Append" for n in nodes)
        ids = [row[0].id for row in session.execute(everywhere)]
        assert ids == list(np.argsort(distances)[:10])
        # Within one tenant: routed to one shard, like a Citus router query.
        tenant = Passage.nearest(query, k=5).where(Passage.tenant_id == 3)
        nodes = list(plan_nodes(explain(session, tenant)))
        assert len({node["Relation Name"] for node in nodes if "Relation Name" in node}) == 1
        mine = [i for i in range(len(vectors)) if i % 8 == 3]
        expected = [mine[j] for j in np.argsort(distances[mine])[:5]]
        assert [row[0].id for row in session.execute(tenant)] == expected
