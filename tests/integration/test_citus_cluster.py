"""Citus for real: a coordinator and workers (``../shared/citus/cluster.sh start`` prints the
URL). Skipped unless ``VECORM_CITUS_URL`` names the coordinator; tests/integration/test_citus.py
keeps checking the emitted SQL against stand-ins on machines without Citus.

Every table lives in one schema of the coordinator's database, dropped before and after."""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import produce_migrations
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import ForeignKey, MetaData, String, delete, insert, select, text, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import vecorm
import vecorm.alembic
from vecorm.embedding.backfill import backfill, stale_count
from vecorm.embedding.events import install, uninstall
from vecorm.embedding.reembed import ModelChange
from vecorm.embedding.worker import Worker
from vecorm.scale.citus import (
    DistributeWithStatistics,
    check_distribution,
    distribute_table,
    reference_table,
)
from vecorm.search import bm25
from vecorm.search.explain import explain
from vecorm.search.settings import apply_search_settings, search_options
from vecorm.search.vector import python_distance
from vecorm.testing import RecordingEmbedder

URL = os.environ.get("VECORM_CITUS_URL")
pytestmark = pytest.mark.skipif(
    not URL, reason="needs a Citus cluster: VECORM_CITUS_URL (../shared/citus/cluster.sh start)"
)

SCHEMA = "vecorm_cluster_test"
DIMS = 16
ROWS = 3200
TENANTS = 8
SHARDS = 4
EMBEDDER = vecorm.HashingEmbedder(DIMS)


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Category(Base):
    __tablename__ = "categories"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class Doc(vecorm.Searchable, Base):
    """A Citus-ready searchable model: tenant in the key, no BM25 statistics."""

    __tablename__ = "docs"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=DIMS, bm25=None, embedder=EMBEDDER, index=vecorm.HNSW()
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"))


class WithBM25(vecorm.Searchable, Base):
    """The default SearchConfig (BM25 statistics for the whole table): what Citus refuses."""

    __tablename__ = "with_bm25"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS)
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class Ranked(vecorm.Searchable, Base):
    """BM25 statistics per tenant: distributed with the table, co-located."""

    __tablename__ = "ranked"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",),
        dimensions=DIMS,
        embedder=EMBEDDER,
        bm25=vecorm.BM25(distributed_by="tenant_id"),
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class Migrated(vecorm.Searchable, Base):
    """The same, distributed by the migration operation."""

    __tablename__ = "migrated"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",),
        dimensions=DIMS,
        embedder=EMBEDDER,
        bm25=vecorm.BM25(distributed_by="tenant_id"),
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class KeptByTrigger(vecorm.Searchable, Base):
    __tablename__ = "kept_by_trigger"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=DIMS, bm25=None, search_vector="trigger", embedder=EMBEDDER
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


WORDS = ["postgres", "vacuum", "index", "shard", "tenant", "replica", "backup", "query"]


def _body(i: int) -> str:
    return f"{WORDS[i % 8]} {WORDS[(i // 8) % 8]} note {i}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Engine, np.ndarray]]:
    assert URL is not None
    engine = vecorm.create_engine(URL)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    Base.metadata.create_all(engine)
    vectors = np.random.default_rng(7).normal(size=(ROWS, DIMS)).astype(np.float32)
    with engine.begin() as conn:
        conn.execute(reference_table(Category))
        conn.execute(distribute_table(Doc, "tenant_id", shard_count=SHARDS))
        conn.execute(insert(Category), [{"id": 1, "name": "ops"}, {"id": 2, "name": "dev"}])
        conn.execute(
            insert(Doc),
            [
                {
                    "tenant_id": i % TENANTS,
                    "id": i,
                    "body": _body(i),
                    "category_id": 1 + i % 2,
                    "embedding": vector,
                }
                for i, vector in enumerate(vectors)
            ],
        )
        conn.execute(text(f"ANALYZE {SCHEMA}.docs"))
    yield engine, vectors
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
    engine.dispose()


def _on_workers(session: Session, command: str) -> None:
    """``command`` (a ``SET LOCAL``) on the coordinator and, propagated, on the workers."""
    session.execute(
        text(f"DO $$BEGIN SET LOCAL citus.propagate_set_commands = 'local'; {command}; END$$")
    )


def _exact(vectors: np.ndarray, query: np.ndarray, ids: list[int], k: int) -> list[int]:
    distances = [python_distance(vecorm.Distance.COSINE, vectors[i], query) for i in ids]
    return [ids[j] for j in np.argsort(distances)[:k]]


def test_the_default_model_is_refused_in_words_before_citus_refuses_it(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    engine, _ = cluster
    fix = r"BM25 statistics.*BM25\(distributed_by='tenant_id'\)"
    with pytest.raises(vecorm.ConfigurationError, match=fix):
        check_distribution(WithBM25, "tenant_id")
    with pytest.raises(vecorm.ConfigurationError, match=fix):
        distribute_table(WithBM25, "tenant_id")
    with pytest.raises(vecorm.ConfigurationError, match=r"kept per 'tenant_id'"):
        check_distribution(Ranked, "id")
    # The premise, on the real cluster: Citus refuses the table for its triggers.
    with engine.connect() as conn, pytest.raises(DBAPIError, match="because it has triggers"):
        conn.execute(distribute_table(WithBM25, "tenant_id", check=False))
    with engine.connect() as conn:
        op = Operations(MigrationContext.configure(conn))
        with pytest.raises(vecorm.ConfigurationError, match=r"distributed_by='tenant_id'"):
            op.create_distributed_table("with_bm25", "tenant_id", schema=SCHEMA)  # type: ignore[attr-defined]


def test_query_settings_reach_the_workers_and_end_with_the_statement(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    engine, _ = cluster
    query = np.random.default_rng(3).normal(size=DIMS).astype(np.float32)
    narrow = search_options(ef_search=1, iterative_scan="off")
    plain = (
        select(Doc.id).order_by(Doc.embedding.cosine_distance(query)).limit(10)  # type: ignore[attr-defined]
    )
    with Session(engine) as session, session.begin():
        _on_workers(session, "SET LOCAL enable_seqscan = off")  # every shard scans its index
        # pgvector returns at most ef_search rows per index scan: one per shard.
        assert (
            len(session.execute(Doc.nearest(query, k=10).execution_options(**narrow)).all())
            == SHARDS
        )
        tenant = Doc.nearest(query, k=10).where(Doc.tenant_id == 3).execution_options(**narrow)
        walked = tenant.execution_options(vecorm_exact_fallback=False)
        assert len(session.execute(walked).all()) <= 1
        # The session runs a short filtered search again exactly, on the cluster too.
        assert len(session.execute(tenant).all()) == 10
        # vecorm's defaults (ef_search 200, relaxed iterative scan) on the workers: 10 rows.
        assert len(session.execute(Doc.nearest(query, k=10)).all()) == 10
        # After each statement the workers are back to pgvector's defaults (ef_search 40) ...
        assert len(session.execute(plain).all()) == 10
        # ... and apply_search_settings reaches them for the rest of the transaction.
        apply_search_settings(session, ef_search=1, iterative_scan="off")
        assert len(session.execute(plain).all()) == SHARDS


def test_nearest_recall_across_shards_and_within_a_tenant(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    engine, vectors = cluster
    rng = np.random.default_rng(11)
    everyone = list(range(ROWS))
    found = expected = 0
    with Session(engine) as session:
        for _ in range(10):
            query = rng.normal(size=DIMS).astype(np.float32)
            ids = [row[0].id for row in session.execute(Doc.nearest(query, k=10))]
            found += len(set(ids) & set(_exact(vectors, query, everyone, 10)))
            mine = [i for i in everyone if i % TENANTS == 5]
            routed = Doc.nearest(query, k=10).where(Doc.tenant_id == 5)
            ids = [row[0].id for row in session.execute(routed)]
            found += len(set(ids) & set(_exact(vectors, query, mine, 10)))
            expected += 20
    assert found / expected >= 0.95


def test_text_and_hybrid_search_with_a_reference_table_join(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    engine, _ = cluster
    with Session(engine) as session:
        hits = session.execute(
            Doc.text_search("vacuum replica", k=5).where(Doc.tenant_id == 1)
        ).all()
        assert hits and all(
            "vacuum" in row[0].body and "replica" in row[0].body and row[0].tenant_id == 1
            for row in hits
        )
        for method in ("blend", "rrf"):
            # Filters inside both arms (where=); the reference table joins the fused rows.
            statement = Doc.hybrid_search(
                "index backup",
                k=5,
                method=method,
                where=[Doc.tenant_id == 2, Doc.category_id == 1],
            ).join(Category, Category.id == Doc.category_id)
            rows = session.execute(statement.add_columns(Category.name)).all()
            assert len(rows) == 5
            assert all(row[0].tenant_id == 2 and row.name == "ops" for row in rows)
            # The lexical arm brings tenant 2's "backup" rows (all its rows say "index").
            assert any("backup" in row[0].body for row in rows)


def test_auto_embedding_on_flush_and_text_queries(cluster: tuple[Engine, np.ndarray]) -> None:
    engine, _ = cluster
    sessions = sessionmaker(engine)
    vecorm.install(sessions, embedder=EMBEDDER)
    try:
        with sessions() as session:
            session.add(
                Doc(tenant_id=6, id=100_001, body="cluster embedded on flush", category_id=1)
            )
            session.commit()
            row = session.get(Doc, (6, 100_001))
            assert row is not None and row.embedding is not None
            first = session.execute(
                Doc.nearest("cluster embedded on flush", k=1).where(Doc.tenant_id == 6)
            ).first()
            assert first is not None and first[0].id == 100_001
            row.body = "edited on the cluster"
            session.commit()
            again = session.execute(
                Doc.nearest("edited on the cluster", k=1).where(Doc.tenant_id == 6)
            ).first()
            assert again is not None and again[0].id == 100_001
            session.delete(row)
            session.commit()
    finally:
        vecorm.uninstall(sessions)


def test_a_trigger_kept_tsvector_distributes_and_keeps_working(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    engine, _ = cluster
    with engine.begin() as conn:
        conn.execute(distribute_table(KeptByTrigger, "tenant_id", colocate_with="none"))
        assert conn.execute(text("SHOW citus.enable_unsafe_triggers")).scalar() == "off"
    with Session(engine) as session:
        session.add_all(
            [
                KeptByTrigger(tenant_id=1, id=1, body="sharded trigger text"),
                KeptByTrigger(tenant_id=2, id=2, body="another tenant entirely"),
            ]
        )
        session.commit()
        hits = session.execute(KeptByTrigger.text_search("sharded", k=5)).all()
        assert [row[0].id for row in hits] == [1]
        row = session.get(KeptByTrigger, (2, 2))
        assert row is not None
        row.body = "sharded as well now"
        session.commit()
        hits = session.execute(KeptByTrigger.text_search("sharded", k=5)).all()
        assert sorted(row[0].id for row in hits) == [1, 2]


def _documents(conn: Connection, table: str) -> dict[tuple[int, int], Counter[str]]:
    """Lexeme counts per row, read from each row's tsvector (not from vecorm's statistics)."""
    found: dict[tuple[int, int], Counter[str]] = {
        (tenant, row_id): Counter()
        for tenant, row_id in conn.execute(text(f"SELECT tenant_id, id FROM {SCHEMA}.{table}"))
    }
    lexemes = text(
        "SELECT tenant_id, id, u.lexeme, coalesce(array_length(u.positions, 1), 1) "
        f"FROM {SCHEMA}.{table}, unnest(search_vector) u"
    )
    for tenant, row_id, lexeme, count in conn.execute(lexemes):
        found[(tenant, row_id)][lexeme] = count
    return found


def _query(conn: Connection, query: str) -> Counter[str]:
    """The query's lexemes and their counts, as PostgreSQL's English configuration makes them."""
    found = conn.execute(
        text(
            "SELECT u.lexeme, array_length(u.positions, 1) "
            "FROM unnest(to_tsvector('english', :q)) u"
        ),
        {"q": query},
    )
    return Counter({lexeme: count for lexeme, count in found})


def _reference(
    docs: dict[tuple[int, int], Counter[str]], terms: Counter[str], tenant: int | None
) -> dict[tuple[int, int], float]:
    """Lucene's BM25 with the model's k1 0.9, b 0.4, computed here from the rows: the
    statistics of the tenant when the search names one, of every row otherwise."""
    scope = {key: counts for key, counts in docs.items() if tenant in (None, key[0])}
    n = len(scope)
    lengths = {key: sum(counts.values()) for key, counts in scope.items()}
    avgdl = sum(lengths.values()) / n
    df = Counter(term for counts in scope.values() for term in counts)
    scores: dict[tuple[int, int], float] = {}
    for term, qtf in terms.items():
        if not df[term]:
            continue
        idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
        for key, counts in scope.items():
            if counts[term]:
                tf = counts[term]
                part = tf * 1.9 / (tf + 0.9 * (0.6 + 0.4 * lengths[key] / avgdl))
                scores[key] = scores.get(key, 0.0) + qtf * idf * part
    return scores


def _assert_ranked_like(
    got: list[tuple[tuple[int, int], float]], expected: dict[Any, float]
) -> None:
    """``got`` (key, score), best first, is the top of ``expected`` to 1e-6."""
    best = sorted(expected.values(), reverse=True)[: len(got)]
    assert len(got) == min(len(expected), len(got)) and got
    for (key, score), rank_score in zip(got, best, strict=True):
        assert score == pytest.approx(expected[key], abs=1e-6)
        assert score == pytest.approx(rank_score, abs=1e-6)


def _statistics(conn: Connection, table: str) -> dict[tuple[int, str], tuple[int, int]]:
    """``{(tenant, term): (df, length)}`` as vecorm keeps them (compacted plus pending)."""
    rows = conn.execute(
        text(
            "SELECT tenant_id, term, sum(df), sum(length) FROM ("
            f"SELECT tenant_id, term, df, length FROM {SCHEMA}.{table}_bm25_terms UNION ALL "
            f"SELECT tenant_id, term, df, length FROM {SCHEMA}.{table}_bm25_deltas) x "
            "GROUP BY 1, 2 HAVING sum(df) <> 0 OR term = ''"
        )
    )
    return {(tenant, term): (int(df), int(length)) for tenant, term, df, length in rows}


def _expected_statistics(
    docs: dict[tuple[int, int], Counter[str]],
) -> dict[tuple[int, str], tuple[int, int]]:
    expected: dict[tuple[int, str], tuple[int, int]] = {}
    for (tenant, _), counts in docs.items():
        documents, length = expected.get((tenant, ""), (0, 0))
        expected[(tenant, "")] = (documents + 1, length + sum(counts.values()))
        for term in counts:
            expected[(tenant, term)] = (expected.get((tenant, term), (0, 0))[0] + 1, 0)
    return expected


def _colocation(conn: Connection, table: str) -> set[int]:
    names = [f"{SCHEMA}.{table}"] + [
        f"{SCHEMA}.{table}_bm25_{side}" for side in ("postings", "terms", "deltas")
    ]
    found = conn.execute(
        text(
            "SELECT logicalrelid::text, colocationid FROM pg_dist_partition "
            "WHERE logicalrelid::text = ANY(:names) AND partmethod = 'h'"
        ),
        {"names": names},
    ).all()
    assert sorted(name for name, _ in found) == sorted(names)
    return {colocation for _, colocation in found}


RANKED_QUERIES = ["vacuum replica", "shard shard note", "tenant backup query postgres"]


def _assert_searches_rank_like_the_reference(engine: Engine, model: Any) -> None:
    table = model.__tablename__
    with Session(engine) as session:
        docs = _documents(session.connection(), table)
        assert _statistics(session.connection(), table) == _expected_statistics(docs)
        for query in RANKED_QUERIES:
            for tenant in (None, 3, 5):
                where = [] if tenant is None else [model.tenant_id == tenant]
                rows = session.execute(model.text_search(query, k=10, where=where)).all()
                assert all(tenant in (None, row[0].tenant_id) for row in rows)
                got = [((row[0].tenant_id, row[0].id), row.score) for row in rows]
                _assert_ranked_like(
                    got, _reference(docs, _query(session.connection(), query), tenant)
                )


def test_bm25_statistics_per_tenant_are_distributed_and_rank_like_a_reference(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    """Rows written before and after the distribution, by every kind of write; the scores
    equal BM25 computed here from the rows, with each tenant's statistics or everyone's."""
    engine, _ = cluster
    with engine.begin() as conn:
        conn.execute(
            insert(Ranked), [{"tenant_id": i % 8, "id": i, "body": _body(i)} for i in range(160)]
        )
        statement = distribute_table(Ranked, "tenant_id", shard_count=SHARDS, colocate_with="none")
        assert isinstance(statement, DistributeWithStatistics)
        conn.execute(statement)
        assert conn.execute(text("SHOW citus.enable_unsafe_triggers")).scalar() == "off"
        assert len(_colocation(conn, "ranked")) == 1
    # The rows Citus copied into the shards were not counted again.
    _assert_searches_rank_like_the_reference(engine, Ranked)
    with Session(engine) as session:
        session.add_all(
            Ranked(tenant_id=i % 8, id=i, body=_body(i) + " replica") for i in range(160, 200)
        )
        session.commit()
        session.execute(  # one multi-row INSERT: one statement per shard
            insert(Ranked).values(
                [{"tenant_id": i % 8, "id": i, "body": _body(i)} for i in range(200, 260)]
            )
        )
        session.execute(  # executemany: one statement per row
            insert(Ranked),
            [{"tenant_id": 3, "id": i, "body": "shard " * (i % 4 + 1)} for i in range(260, 280)],
        )
        row = session.get(Ranked, (3, 3))
        assert row is not None
        row.body = "vacuum vacuum vacuum replica"
        session.execute(
            update(Ranked).where(Ranked.tenant_id == 5).values(body=Ranked.body + " note note")
        )
        # Statements that change no text: each shard's trigger gets no changed row.
        session.execute(update(Ranked).values(body=Ranked.body))
        session.execute(delete(Ranked).where(Ranked.id.between(100, 130)))
        gone = session.get(Ranked, (5, 5))
        assert gone is not None
        session.delete(gone)
        session.commit()
    _assert_searches_rank_like_the_reference(engine, Ranked)
    with Session(engine) as session:
        # Hybrid search: the lexical scores of the tenant's rows are the tenant's BM25.
        docs = _documents(session.connection(), "ranked")
        expected = _reference(docs, _query(session.connection(), "vacuum replica"), 3)
        rows = session.execute(
            Ranked.hybrid_search("vacuum replica", k=8, where=[Ranked.tenant_id == 3])
        ).all()
        assert len(rows) == 8 and all(row[0].tenant_id == 3 for row in rows)
        for row in rows:
            key = (row[0].tenant_id, row[0].id)
            assert row.text_score == pytest.approx(expected.get(key, 0.0), abs=1e-6)


def _task_counts(plan: Any) -> list[int]:
    counts: list[int] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            job = node.get("Distributed Query", {}).get("Job")
            if job is not None:
                counts.append(job["Task Count"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(plan)
    return counts


def test_a_tenant_text_search_is_one_router_query(cluster: tuple[Engine, np.ndarray]) -> None:
    engine, _ = cluster
    with Session(engine) as session:
        routed = explain(
            session, Ranked.text_search("vacuum replica", k=5, where=[Ranked.tenant_id == 3])
        )
        # The whole statement, statistics included, runs on the tenant's shard.
        assert routed["Plan"]["Custom Plan Provider"] == "Citus Adaptive"
        assert _task_counts(routed) == [1]
        everywhere = explain(session, Ranked.text_search("vacuum replica", k=5))
        assert SHARDS in _task_counts(everywhere)


def test_maintenance_of_distributed_statistics(cluster: tuple[Engine, np.ndarray]) -> None:
    """rebuild, compact, bulk_load, TRUNCATE and COPY on the cluster keep the statistics
    exact."""
    engine, _ = cluster
    with engine.begin() as conn:
        # 70 new lexemes in one statement: 71 delta rows, so the trigger folds them (on the
        # tenant's worker) into the terms table.
        conn.execute(
            insert(Ranked).values(
                [{"tenant_id": 4, "id": 10_000 + i, "body": f"unique{i}"} for i in range(70)]
            )
        )
        pending = text(f"SELECT count(*) FROM {SCHEMA}.ranked_bm25_deltas WHERE tenant_id = 4")
        assert conn.execute(pending).scalar() == 0
    with Session(engine) as session:
        bm25.rebuild(session, Ranked)
        bm25.compact(session, Ranked)
        session.commit()
    _assert_searches_rank_like_the_reference(engine, Ranked)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {SCHEMA}.ranked"))
        assert _statistics(conn, "ranked") == {}
    with Session(engine) as session, session.begin(), bm25.bulk_load(session, Ranked):
        session.execute(
            insert(Ranked), [{"tenant_id": i % 8, "id": i, "body": _body(i)} for i in range(240)]
        )
    _assert_searches_rank_like_the_reference(engine, Ranked)
    with engine.begin() as conn:  # COPY: Citus copies each shard's rows, one batch a shard
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {SCHEMA}.ranked (tenant_id, id, body) FROM STDIN") as copy:
            for i in range(240, 400):
                copy.write_row((i % 8, i, _body(i) + " copied"))
    _assert_searches_rank_like_the_reference(engine, Ranked)


def test_the_operation_refuses_a_foreign_key_citus_refuses(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    engine, _ = cluster
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {SCHEMA}.lookup (id int PRIMARY KEY)"))
        conn.execute(
            text(
                f"CREATE TABLE {SCHEMA}.linked (tenant_id int, id int, "
                f"lookup_id int REFERENCES {SCHEMA}.lookup, PRIMARY KEY (tenant_id, id))"
            )
        )
    with engine.connect() as conn:
        op = Operations(MigrationContext.configure(conn))
        with pytest.raises(
            vecorm.ConfigurationError, match=r"lookup, a local table.*create_reference_table"
        ):
            op.create_distributed_table("linked", "tenant_id", schema=SCHEMA)  # type: ignore[attr-defined]
        # The premise: Citus refuses it too.
        with pytest.raises(DBAPIError, match="must be a distributed table or a reference table"):
            conn.execute(text(f"SELECT create_distributed_table('{SCHEMA}.linked', 'tenant_id')"))
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {SCHEMA}.linked, {SCHEMA}.lookup"))


def test_op_create_distributed_table_distributes_the_statistics(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    """The migration path: op.create_distributed_table on a table with statistics per
    tenant; autogenerate then finds nothing to do, and the scores are right."""
    engine, _ = cluster
    with engine.begin() as conn:
        conn.execute(
            insert(Migrated), [{"tenant_id": i % 8, "id": i, "body": _body(i)} for i in range(120)]
        )
        op = Operations(MigrationContext.configure(conn))
        op.create_distributed_table(
            "migrated", "tenant_id", schema=SCHEMA, colocate_with=f"{SCHEMA}.ranked"
        )  # type: ignore[attr-defined]
        assert _colocation(conn, "migrated") == _colocation(conn, "ranked")
    with engine.connect() as conn:
        assert _diffs(conn) == []
    with engine.begin() as conn:
        conn.execute(
            insert(Migrated), [{"tenant_id": 3, "id": i, "body": _body(i)} for i in range(120, 140)]
        )
    _assert_searches_rank_like_the_reference(engine, Migrated)
    # The downgrade: the table and its statistics come back to the coordinator, still exact.
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        op.undistribute_table("migrated", schema=SCHEMA)  # type: ignore[attr-defined]
        left = conn.execute(
            text("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE :name"),
            {"name": f"{SCHEMA}.migrated%"},
        )
        assert left.scalar() == 0
        conn.execute(
            insert(Migrated), [{"tenant_id": 5, "id": i, "body": _body(i)} for i in range(140, 150)]
        )
        assert _diffs(conn) == []
    _assert_searches_rank_like_the_reference(engine, Migrated)


class Deferred(vecorm.Searchable, Base):
    """Rows written without embeddings (raw SQL, COPY): the backfill's work."""

    __tablename__ = "deferred"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=DIMS, bm25=None, embedder=EMBEDDER
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


def _column_type(conn: Connection, table: str, column: str) -> str:
    return str(
        conn.execute(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(:table) AND attname = :column"
            ),
            {"table": f"{SCHEMA}.{table}", "column": column},
        ).scalar()
    )


def test_backfill_and_a_model_change_on_a_distributed_table(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    engine, _ = cluster
    with engine.begin() as conn:
        conn.execute(distribute_table(Deferred, "tenant_id", colocate_with="none"))
        conn.execute(
            insert(Deferred),
            [{"tenant_id": i % 5, "id": i, "body": f"deferred row {i}"} for i in range(300)],
        )
    with Session(engine) as session:
        assert stale_count(session, Deferred) == 300
        # FOR UPDATE SKIP LOCKED runs routed to one shard: one pass per tenant.
        result = backfill(session, Deferred, batch_size=32)
        assert result.embedded == 300 and result.batches == 5 * 2  # 60 rows a tenant: 32 + 28
        assert stale_count(session, Deferred) == 0
        hit = session.execute(
            Deferred.nearest("deferred row 42", k=1).where(Deferred.tenant_id == 2)
        ).first()
        assert hit is not None and hit[0].id == 42
    wider = vecorm.HashingEmbedder(2 * DIMS)
    change = ModelChange(Deferred, wider)
    change.start(engine)
    with Session(engine) as session:
        assert change.backfill(session).embedded == 300
        assert change.status(session).remaining == 0
    assert change.create_index(engine, wait_timeout=60) is not None
    with Session(engine) as session:
        change.finish(session)
    with engine.connect() as conn:
        assert _column_type(conn, "deferred", "embedding") == f"vector({2 * DIMS})"
        assert _column_type(conn, "deferred", "embedding_next") == "None"
    # The table is now wider than its model (the code change is the user's): start it over.
    Deferred.__table__.drop(engine)
    Deferred.__table__.create(engine)


def _diffs(conn: Connection) -> list[Any]:
    """Alembic's autogenerate diffs of this module's schema (vecorm's comparators included)."""
    context = MigrationContext.configure(
        conn,
        opts={
            "target_metadata": Base.metadata,
            "include_schemas": True,
            "include_name": lambda name, kind, _parent: kind != "schema" or name == SCHEMA,
        },
    )
    return list(produce_migrations(context, Base.metadata).upgrade_ops.as_diffs())


def test_autogenerate_sees_no_difference_on_distributed_tables(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    engine, _ = cluster
    with engine.connect() as conn:
        # Citus's own catalogs and objects, and the shards on the workers, are not diffs.
        assert _diffs(conn) == []
    with engine.connect() as conn:
        op = Operations(MigrationContext.configure(conn))
        with pytest.raises(vecorm.ConfigurationError, match=r"foreign keys join it to .*docs"):
            op.undistribute_table("categories", schema=SCHEMA)  # type: ignore[attr-defined]
    # A downgrade: the reverse order of the upgrade, then the tables are plain again.
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        op.undistribute_table("docs", schema=SCHEMA, cascade_via_foreign_keys=True)  # type: ignore[attr-defined]
        op.undistribute_table("categories", schema=SCHEMA)  # type: ignore[attr-defined]
        distributed = text(
            "SELECT logicalrelid::text FROM pg_dist_partition WHERE logicalrelid::text LIKE :s"
        )
        tables = conn.execute(distributed, {"s": f"{SCHEMA}.%"}).scalars().all()
        assert not {f"{SCHEMA}.docs", f"{SCHEMA}.categories"} & set(tables)
        assert _diffs(conn) == []
        op.create_reference_table("categories", schema=SCHEMA)  # type: ignore[attr-defined]
        op.create_distributed_table("docs", "tenant_id", schema=SCHEMA, shard_count=SHARDS)  # type: ignore[attr-defined]


def _precision_model(name: str, precision: str) -> Any:
    return type(
        f"Precision_{precision}",
        (vecorm.Searchable, Base),
        {
            "__tablename__": name,
            "__vecorm__": vecorm.SearchConfig(
                fields=("body",),
                dimensions=64,
                bm25=None,
                index=vecorm.HNSW(precision=precision),  # type: ignore[arg-type]
            ),
            "__annotations__": {"tenant_id": Mapped[int], "id": Mapped[int], "body": Mapped[str]},
            "tenant_id": mapped_column(primary_key=True),
            "id": mapped_column(primary_key=True),
        },
    )


HalfDoc = _precision_model("half_docs", "halfvec")
BitDoc = _precision_model("bit_docs", "bit")


@pytest.mark.parametrize("model", [HalfDoc, BitDoc], ids=["halfvec", "bit"])
def test_reduced_precision_indexes_search_the_cluster(
    cluster: tuple[Engine, np.ndarray], model: Any
) -> None:
    engine, _ = cluster
    rng = np.random.default_rng(21)
    centres = rng.normal(size=(20, 64))
    vectors = (centres[rng.integers(0, 20, 2000)] + 0.3 * rng.normal(size=(2000, 64))).astype(
        np.float32
    )
    with engine.begin() as conn:
        conn.execute(distribute_table(model, "tenant_id", shard_count=SHARDS))
        conn.execute(
            insert(model),
            [
                {"tenant_id": i % TENANTS, "id": i, "body": f"r{i}", "embedding": v}
                for i, v in enumerate(vectors)
            ],
        )
        conn.execute(text(f"ANALYZE {SCHEMA}.{model.__tablename__}"))
    everyone = list(range(len(vectors)))
    found = expected = 0
    with Session(engine) as session:
        for centre in centres[:8]:
            query = (centre + 0.3 * rng.normal(size=64)).astype(np.float32)
            ids = [row[0].id for row in session.execute(model.nearest(query, k=10))]
            found += len(set(ids) & set(_exact(vectors, query, everyone, 10)))
            mine = [i for i in everyone if i % TENANTS == 4]
            routed = model.nearest(query, k=10).where(model.tenant_id == 4)
            ids = [row[0].id for row in session.execute(routed)]
            found += len(set(ids) & set(_exact(vectors, query, mine, 10)))
            expected += 20
    assert found / expected >= 0.9


class Queued(vecorm.Searchable, Base):
    """Rows a worker-mode application leaves to embedding workers."""

    __tablename__ = "queued"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS, bm25=None, index=None)
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


def test_a_worker_embeds_what_worker_mode_writes_on_a_distributed_table(
    cluster: tuple[Engine, np.ndarray],
) -> None:
    """The hook's NOTIFY goes through the coordinator; the worker claims one tenant at a time."""
    engine, _ = cluster
    with engine.begin() as conn:
        conn.execute(distribute_table(Queued, "tenant_id", colocate_with="none"))
    recorder = RecordingEmbedder(EMBEDDER)
    worker = Worker(engine, [Queued], embedder=recorder, batch_size=8, poll_interval=300)
    app = sessionmaker(engine)
    install(app, mode="worker")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        _until(lambda: worker.health(backlog=False).caught_up_at is not None)
        with app() as session:
            session.add_all(
                Queued(tenant_id=i % 4, id=i, body=f"queued row {i}") for i in range(40)
            )
            session.commit()
        _until(lambda: worker.health().backlog == {"Queued": 0} and len(recorder.texts) == 40)
    finally:
        worker.stop()
        thread.join(30)
        uninstall(app)
    assert not thread.is_alive()
    assert sorted(recorder.texts) == sorted(f"queued row {i}" for i in range(40))
    with Session(engine) as session:
        hit = session.execute(
            Queued.nearest("queued row 17", k=1, embedder=EMBEDDER).where(Queued.tenant_id == 1)
        ).first()
        assert hit is not None and hit[0].id == 17


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    started, pause = time.monotonic(), threading.Event()
    while not condition():
        assert time.monotonic() - started < timeout, "not true within the time allowed"
        pause.wait(0.05)


PRECISION_MODELS = """
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import vecorm

    class Base(DeclarativeBase):
        pass

    class Moved(vecorm.Searchable, Base):
        __tablename__ = "vecorm_cluster_precision"
        __vecorm__ = vecorm.SearchConfig(
            fields=("body",), dimensions=64, bm25=None, index=vecorm.HNSW({index})
        )
        tenant_id: Mapped[int] = mapped_column(primary_key=True)
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
"""


WITH = "WITH (m='16', ef_construction='64')"


def _shard_index_definitions(conn: Connection, table: str) -> set[str]:
    """The vector index definitions on the workers' shards of ``table`` (names aside)."""
    rows = conn.execute(
        text(
            "SELECT result FROM run_command_on_workers($$SELECT string_agg(DISTINCT "
            "regexp_replace(indexdef, '^.* USING ', 'USING '), ' | ') FROM pg_indexes "
            f"WHERE tablename LIKE '{table}%' AND indexdef LIKE '%hnsw%'$$)"
        )
    )
    return {part for row in rows for part in (row[0] or "").split(" | ") if part}


def test_a_precision_change_migrates_a_distributed_table(tmp_path: Any) -> None:
    """A real Alembic project on the coordinator: the table distributed in a revision, then
    HNSW(precision="halfvec") autogenerated as a CONCURRENTLY build and a drop, run on every
    shard; searches use the new index; downgrade puts the full-precision index back."""
    from tests.alembic.conftest import body, make_project, undefined_names

    assert URL is not None
    project = make_project(tmp_path, make_url(URL), use_async=False)
    table = "vecorm_cluster_precision"
    clean = (f"DROP TABLE IF EXISTS public.{table} CASCADE", "DROP TABLE IF EXISTS alembic_version")
    with project.engine.begin() as conn:
        for statement in clean:
            conn.execute(text(statement))
    sys.path.insert(0, str(tmp_path))
    try:
        project.set_models(PRECISION_MODELS.format(index=""))
        initial = project.autogenerate("initial")
        text_of = initial.read_text()
        initial.write_text(
            text_of.replace(
                "    # ### end Alembic commands ###\n",
                f"    op.create_distributed_table('{table}', 'tenant_id', shard_count=4)\n"
                "    # ### end Alembic commands ###\n",
                1,
            )
        )
        project.upgrade()
        rng = np.random.default_rng(5)
        vectors = rng.normal(size=(1200, 64)).astype(np.float32)
        with project.engine.begin() as conn:
            conn.execute(
                text(
                    f"INSERT INTO {table} (tenant_id, id, body, embedding) VALUES (:t, :i, :b, :e)"
                ),
                [
                    {"t": i % 8, "i": i, "b": f"r{i}", "e": str(v.tolist())}
                    for i, v in enumerate(vectors)
                ],
            )
            conn.execute(text(f"ANALYZE {table}"))
            assert _shard_index_definitions(conn, table) == {
                f"USING hnsw (embedding vector_cosine_ops) {WITH}"
            }

        models = project.set_models(PRECISION_MODELS.format(index='precision="halfvec"'))
        change = project.autogenerate("halfvec")
        upgrade = body(change, "upgrade").splitlines()
        assert undefined_names(change) == ""
        assert upgrade[0].startswith(
            f"op.create_vector_index('ix_{table}_embedding_halfvec_hnsw', '{table}'"
        )
        assert "concurrently=True" in upgrade[0]
        assert upgrade[1] == f"op.drop_vector_index('ix_{table}_embedding_hnsw', concurrently=True)"
        project.upgrade()
        with project.engine.connect() as conn:
            assert _shard_index_definitions(conn, table) == {
                f"USING hnsw (((embedding)::halfvec(64)) halfvec_cosine_ops) {WITH}"
            }
        empty = project.autogenerate("nothing")
        assert body(empty, "upgrade") == "pass", empty.read_text()
        empty.unlink()
        # The halfvec model searches every shard through the new index, and finds the rows.
        Moved = __import__(models).Moved
        everyone = list(range(len(vectors)))
        with Session(project.engine) as session:
            query = vectors[17] + 0.01
            ids = [row[0].id for row in session.execute(Moved.nearest(query, k=10))]
            assert ids[0] == 17
            assert len(set(ids) & set(_exact(vectors, query, everyone, 10))) >= 9
        first = re.search(r"^revision: str = '(\w+)'", initial.read_text(), re.M)
        assert first is not None
        project.downgrade(first.group(1))
        with project.engine.connect() as conn:
            assert _shard_index_definitions(conn, table) == {
                f"USING hnsw (embedding vector_cosine_ops) {WITH}"
            }
    finally:
        sys.path.remove(str(tmp_path))
        with project.engine.begin() as conn:
            for statement in clean:
                conn.execute(text(statement))
        project.engine.dispose()
