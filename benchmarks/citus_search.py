"""Searches on a real Citus cluster: router (one tenant) vs multi-shard, latency and recall.

    ../shared/citus/cluster.sh start        # prints the coordinator URL
    VECORM_CITUS_URL=postgresql://postgres@127.0.0.1:5600/postgres \\
        python benchmarks/citus_search.py --rows 200000

A searchable model (``bm25=None``, ranked with ts_rank; ``benchmarks/citus_bm25.py`` compares
``BM25(distributed_by="tenant_id")``) distributed by
``tenant_id`` over ``--shards`` shards, ``--tenants`` tenants, clustered Gaussian vectors
loaded with COPY, then the HNSW index built on every shard (m=16, ef_construction=64). For
``--queries`` queries near cluster centres, each statement runs once to warm up, then
``--repeat`` times; the median and p95 of those runs are reported, with recall@10 against
numpy's exact answer (over all rows, or the tenant's). Text queries name two selective
words (each in ~0.1% of the rows). The raw line is the same
``ORDER BY embedding <=> q LIMIT 10`` sent by psycopg at pgvector's defaults, for scale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import MetaData, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.scale.citus import distribute_table

SCHEMA = "vecorm_citus_bench"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


def make_model(dims: int) -> Any:
    class Doc(vecorm.Searchable, Base):
        __tablename__ = "docs"
        __vecorm__ = vecorm.SearchConfig(
            fields=("body",),
            dimensions=dims,
            bm25=None,
            embedder=vecorm.HashingEmbedder(dims),
            index=vecorm.HNSW(m=16, ef_construction=64),
        )
        tenant_id: Mapped[int] = mapped_column(primary_key=True)
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]

    return Doc


#: A text query names two topics: each is in 1 row of TOPICS (~200 of 200,000 rows), the way
#: a selective keyword is; the 10 WORDS are in a tenth of the rows each.
TOPICS = 997
WORDS = [
    "postgres",
    "vacuum",
    "index",
    "shard",
    "tenant",
    "replica",
    "backup",
    "query",
    "planner",
    "cluster",
]


def _data(rows: int, dims: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dims)).astype(np.float32)
    members = rng.integers(0, clusters, size=rows)
    vectors = centres[members] + 0.35 * rng.normal(size=(rows, dims)).astype(np.float32)
    return vectors.astype(np.float32), centres


def _load(url: str, model: Any, vectors: np.ndarray, tenants: int, shards: int) -> float:
    engine = vecorm.create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    vector_indexes = [i for i in model.__table__.indexes if "hnsw" in str(i.name)]
    for index in vector_indexes:  # built after the load, on every shard at once
        model.__table__.indexes.discard(index)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(distribute_table(model, "tenant_id", shard_count=shards))
    started = time.perf_counter()
    raw = _raw(url)
    with (
        raw.cursor() as cursor,
        cursor.copy(
            f"COPY {SCHEMA}.docs (tenant_id, id, body, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["int4", "int4", "text", "vector"])
        for i, vector in enumerate(vectors):
            words = f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} topic{i % TOPICS} {i}"
            copy.write_row((i % tenants, i, words, vector))
    raw.commit()
    with engine.begin() as conn:
        for index in vector_indexes:
            model.__table__.indexes.add(index)
            index.create(conn)
        conn.execute(text(f"ANALYZE {SCHEMA}.docs"))
    raw.close()
    engine.dispose()
    return time.perf_counter() - started


def _raw(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    register_vector(conn)
    return conn


def _timed(run: Callable[[], list[int]], repeat: int) -> tuple[list[float], list[int]]:
    ids = run()  # warm up (plans, connections to the workers)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        ids = run()
        times.append((time.perf_counter() - started) * 1000)
    return times, ids


def _recall(found: list[int], exact: list[int]) -> float:
    return len(set(found) & set(exact)) / len(exact)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args()
    url = os.environ.get("VECORM_CITUS_URL")
    if not url:
        raise SystemExit(
            "set VECORM_CITUS_URL to the coordinator (../shared/citus/cluster.sh start)"
        )
    model = make_model(args.dims)
    vectors, centres = _data(args.rows, args.dims, 100, seed=5)
    seconds = _load(url, model, vectors, args.tenants, args.shards)
    print(
        f"{args.rows:,} x {args.dims} rows, {args.tenants} tenants, {args.shards} shards: "
        f"COPY + HNSW build {seconds:.1f} s"
    )
    rng = np.random.default_rng(9)
    queries = [
        (c + 0.35 * rng.normal(size=args.dims)).astype(np.float32)
        for c in centres[rng.integers(0, len(centres), size=args.queries)]
    ]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    tenant_of = np.arange(args.rows) % args.tenants
    engine = vecorm.create_engine(url)
    raw = _raw(url)
    results: dict[str, tuple[list[float], list[float]]] = {}

    def record(name: str, times: list[float], recall: float | None) -> None:
        all_times, recalls = results.setdefault(name, ([], []))
        all_times.extend(times)
        if recall is not None:
            recalls.append(recall)

    with Session(engine) as session:
        for n, query in enumerate(queries):
            tenant = n % args.tenants
            words = f"topic{(7 * n) % TOPICS} topic{(7 * n + 1) % TOPICS}"
            scores = unit @ (query / np.linalg.norm(query))
            everywhere = list(np.argsort(-scores)[:10])
            mine_ids = np.flatnonzero(tenant_of == tenant)
            mine = list(mine_ids[np.argsort(-scores[mine_ids])[:10]])
            cases: list[tuple[str, Any, list[int] | None]] = [
                (
                    "nearest, tenant filter (router)",
                    model.nearest(query, k=10).where(model.tenant_id == tenant),
                    mine,
                ),
                ("nearest, all tenants (multi-shard)", model.nearest(query, k=10), everywhere),
                (
                    "hybrid rrf, tenant filter (router)",
                    model.hybrid_search(
                        words, vector=query, k=10, method="rrf", where=model.tenant_id == tenant
                    ),
                    None,
                ),
                (
                    "hybrid rrf, all tenants (multi-shard)",
                    model.hybrid_search(words, vector=query, k=10, method="rrf"),
                    None,
                ),
                (
                    "text_search, tenant filter (router)",
                    model.text_search(words, k=10).where(model.tenant_id == tenant),
                    None,
                ),
                (
                    "text_search, all tenants (multi-shard)",
                    model.text_search(words, k=10),
                    None,
                ),
            ]
            for name, statement, exact in cases:
                times, ids = _timed(
                    lambda s=statement: [row[0].id for row in session.execute(s)], args.repeat
                )
                session.commit()
                record(name, times, None if exact is None else _recall(ids, exact))
            for name, where, exact in [
                ("raw psycopg, tenant filter, pgvector defaults", "WHERE tenant_id = %s", mine),
                ("raw psycopg, all tenants, pgvector defaults", "", everywhere),
            ]:
                sql = (
                    f"SELECT id FROM {SCHEMA}.docs {where.replace('%s', str(tenant))} "
                    "ORDER BY embedding <=> %s LIMIT 10"
                )

                def run(sql: str = sql, query: np.ndarray = query) -> list[int]:
                    return [row[0] for row in raw.execute(sql, (query,))]

                times, ids = _timed(run, args.repeat)
                raw.commit()
                record(name, times, _recall(ids, exact))
    print("| statement | median ms | p95 ms | recall@10 |")
    print("|---|---|---|---|")
    for name, (times, recalls) in results.items():
        p95 = statistics.quantiles(times, n=20)[-1]
        recall = f"{statistics.mean(recalls):.3f}" if recalls else "-"
        print(f"| {name} | {statistics.median(times):.1f} | {p95:.1f} | {recall} |")
    raw.close()
    engine.dispose()
    if not args.keep:
        cleanup = vecorm.create_engine(url)
        with cleanup.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        cleanup.dispose()


if __name__ == "__main__":
    main()
