"""Filtered nearest-neighbour search: rows returned, recall@10 and latency per strategy.

The ``hybrid_search's semantic arm`` row is the rows a filtered ``hybrid_search`` (depth 10)
takes from its vector side, against the same exact top 10.

    python benchmarks/filtered_search.py                       # 20,000 x 32, embedded server
    python benchmarks/filtered_search.py --rows 50000 --dims 64
    VECORM_DATABASE_URL=postgresql://... python benchmarks/filtered_search.py

Clustered Gaussian data, HNSW(m=16, ef_construction=64), a filter matching ``--fraction``
(default 1%) of the rows chosen at random (``--correlated``: as many rows, all in one cluster,
the hard case for a graph walk from a query near another cluster), 30 queries near cluster
centres. Each
strategy runs ``Document.nearest(q, k=10).where(category == "rare")``; recall is against
numpy's exact top 10 of the rare rows.
Strategies: plain HNSW (pgvector's defaults), iterative scan at several ef_search, vecorm's
defaults (the walk capped at a twentieth of the table, a short result run again exactly),
the same with the walk not capped and with neither (vecorm before both), the exact scan
(``exact=True``), and the same query once the filter column has a B-tree index (where the
planner chooses the exact scan itself). Latencies are medians and 95th percentiles.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
from sqlalchemy import String, insert, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.search.settings import search_options
from vecorm.testing.assertions import indexes_used

#: pgvector's scan alone: no cap on the walk, no exact run of a short result.
PGVECTOR_ONLY = {"vecorm_exact_fallback": False}


class Base(DeclarativeBase):
    pass


def make_model(dims: int) -> Any:
    class Item(vecorm.Searchable, Base):
        __tablename__ = "bench_filtered"
        __vecorm__ = vecorm.SearchConfig(
            fields=("title",), dimensions=dims, index=vecorm.HNSW(), text_index=False
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(10))
        category: Mapped[str] = mapped_column(String(10))

    return Item


def _statement(model: Any, query: Any, exact: bool, where: bool, options: Any) -> Any:
    stmt = model.nearest(query, k=10, exact=exact).execution_options(**options)
    return stmt.where(model.category == "rare") if where else stmt


def _plan(session: Session, model: Any, query: Any, exact: bool, where: bool, options: Any) -> str:
    used = indexes_used(session, _statement(model, query, exact, where, options))
    return "HNSW" if any(name.endswith("_hnsw") for name in used) else "exact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dims", type=int, default=32)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fraction", type=float, default=0.01, help="rows the filter keeps")
    parser.add_argument(
        "--correlated", action="store_true", help="those rows all in one cluster, not at random"
    )
    args = parser.parse_args()

    Item = make_model(args.dims)
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(40, args.dims)).astype(np.float32) * 3
    cluster = rng.integers(0, 40, args.rows)
    vectors = centres[cluster]
    vectors = vectors + rng.normal(size=vectors.shape).astype(np.float32)
    rare = rng.random(args.rows) < args.fraction
    if args.correlated:  # as many rows, all from cluster 0 (1/40 of the rows)
        rare = (cluster == 0) & (rng.random(args.rows) < min(1.0, 40 * args.fraction))
    queries = centres[rng.integers(0, 40, args.queries)]
    queries = queries + rng.normal(size=queries.shape).astype(np.float32)
    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rare_ids = np.flatnonzero(rare)

    with vecorm.database() as url:
        engine = vecorm.create_engine(url)
        Base.metadata.create_all(engine)
        (hnsw,) = [ix for ix in Item.__table__.indexes if ix.name.endswith("_hnsw")]
        with engine.begin() as conn:
            hnsw.drop(conn)
            conn.execute(
                insert(Item),
                [
                    {"id": i, "title": "t", "category": "rare" if r else "common", "embedding": v}
                    for i, (v, r) in enumerate(zip(vectors, rare, strict=True))
                ],
            )
            started = time.perf_counter()
            hnsw.create(conn)
            built = time.perf_counter() - started
            conn.execute(text("ANALYZE bench_filtered"))
        where = "one cluster" if args.correlated else "at random"
        print(
            f"{args.rows} x {args.dims}, {rare.sum()} rare rows ({where}), "
            f"HNSW built in {built:.1f}s"
        )

        def run(
            label: str,
            exact: bool = False,
            where: bool = True,
            hybrid: bool = False,
            **options: Any,
        ) -> None:
            recalls, counts, timings = [], [], []
            with Session(engine) as session, session.begin():
                plan = _plan(session, Item, queries[0], exact, where, options)
                for query in queries:
                    stmt = _statement(Item, query, exact, where, options)
                    if hybrid:  # the rows its semantic arm found (depth 10)
                        stmt = Item.hybrid_search(
                            "t", k=10, vector=query, depth=10, where=Item.category == "rare"
                        )
                    started = time.perf_counter()
                    found = session.execute(stmt).all()
                    timings.append(time.perf_counter() - started)
                    ids = [row[0].id for row in found if not hybrid or row.semantic_rank]
                    plan = "in-statement fallback" if hybrid else plan
                    candidates = rare_ids if where else np.arange(args.rows)
                    distances = 1 - normalised[candidates] @ (query / np.linalg.norm(query))
                    truth = set(candidates[np.argsort(distances)[:10]].tolist())
                    counts.append(len(ids))
                    recalls.append(len(truth & set(ids)) / 10)
            p95 = float(np.percentile(timings, 95))
            print(
                f"{label:38s} rows {np.mean(counts):5.2f}  recall@10 {np.mean(recalls):.3f} "
                f"(min {min(recalls):.1f})  {1000 * statistics.median(timings):6.2f} ms "
                f"p95 {1000 * p95:6.2f} ms  {plan}"
            )

        for ef_search in (40, 200):
            run(
                f"no filter, ef_search {ef_search}",
                where=False,
                **search_options(ef_search=ef_search),
            )
        run(
            "plain HNSW (pgvector defaults)",
            **search_options(ef_search=40, iterative_scan="off", plan_cache_mode="auto"),
            **PGVECTOR_ONLY,
        )
        for ef_search in (40, 100, 200, 400):
            run(
                f"relaxed iterative, ef_search {ef_search}",
                **search_options(ef_search=ef_search),
                **PGVECTOR_ONLY,
            )
        run(
            "strict iterative, ef_search 200",
            **search_options(ef_search=200, iterative_scan="strict_order"),
            **PGVECTOR_ONLY,
        )
        run("vecorm default")
        run("hybrid_search's semantic arm", hybrid=True)
        run("vecorm default, walk not capped", vecorm_hnsw_max_scan_tuples=20_000)
        run("vecorm 0.x: not capped, no fallback", **PGVECTOR_ONLY)
        run("exact=True", exact=True)
        with engine.begin() as conn:
            conn.execute(text("CREATE INDEX ON bench_filtered (category)"))
            conn.execute(text("ANALYZE bench_filtered"))
        run("vecorm default, B-tree on category")
        engine.dispose()


if __name__ == "__main__":
    main()
