"""Scaling up: index precision (size, build, recall, latency) and partitioned tenants.

    python benchmarks/scale.py                          # 20,000 x 1536, then 100 x 1,000 tenants
    python benchmarks/scale.py --rows 50000             # the issue's size
    python benchmarks/scale.py --skip-tenants           # precision table only
    VECORM_DATABASE_URL=postgresql://... python benchmarks/scale.py

**Precision.** Clustered Gaussian vectors (``--clusters`` centres, noise ``--noise``), cosine,
HNSW(m=16, ef_construction=64), one table per configuration filled with the same rows
(``INSERT ... SELECT``), the index built after the data with ``maintenance_work_mem`` 1 GB.
Recall@10 is against numpy's exact top 10 over full-precision vectors; latency is the median
wall time of ``session.execute(Model.nearest(q, k=10)).all()`` (ORM objects included).
``ef_search`` 40 / 100 are set per statement; a binary index's statement raises ``ef_search``
to its candidate count (``k * rerank``) by itself, so it is measured at several ``rerank``.

**Tenants.** ``--tenants`` x ``--per-tenant`` rows of ``--tenant-dims`` dimensions, top-10
within one tenant: a LIST-partitioned table (one HNSW per partition, pruned to one) versus one
table with ``WHERE tenant_id = ...`` (HNSW + iterative scan) versus the exact scan.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import Integer, String, insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.search.settings import search_options
from vecorm.testing.assertions import indexes_used

K = 10


def clustered(
    rng: np.random.Generator, count: int, centres: np.ndarray, noise: float
) -> np.ndarray:
    points = centres[rng.integers(0, len(centres), count)]
    return (points + noise * rng.normal(size=points.shape)).astype(np.float32)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> list[set[int]]:
    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = queries @ normalised.T
    return [set(np.argsort(-row)[:k].tolist()) for row in scores]


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


# --------------------------------------------------------------------------- precision


def precision_models(dims: int) -> dict[str, Any]:
    class Base(DeclarativeBase):
        pass

    def model(name: str, index: vecorm.HNSW) -> Any:
        return type(
            name,
            (vecorm.Searchable, Base),
            {
                "__tablename__": f"scale_{name.lower()}",
                "__vecorm__": vecorm.SearchConfig(
                    fields=("title",), dimensions=dims, index=index, text_index=False, bm25=None
                )
                if "bm25" in vecorm.SearchConfig.__dataclass_fields__
                else vecorm.SearchConfig(
                    fields=("title",), dimensions=dims, index=index, text_index=False
                ),
                "__annotations__": {"id": Mapped[int], "title": Mapped[str]},
                "id": mapped_column(Integer, primary_key=True, autoincrement=False),
                "title": mapped_column(String(10)),
            },
        )

    return {
        "vector": model("Full", vecorm.HNSW(m=16, ef_construction=64, precision="vector")),
        "halfvec": model("Half", vecorm.HNSW(m=16, ef_construction=64, precision="halfvec")),
        "bit": model("Binary", vecorm.HNSW(m=16, ef_construction=64, precision="bit")),
    }


def load(engine: Engine, models: dict[str, Any], vectors: np.ndarray) -> None:
    tables = [model.__table__ for model in models.values()]
    first, *others = tables
    with engine.begin() as conn:
        for table in tables:
            table.create(conn)
            for index in list(table.indexes):
                index.drop(conn)
        for start in range(0, len(vectors), 1000):
            conn.execute(
                insert(first),
                [
                    {"id": start + i, "title": "t", "embedding": vector}
                    for i, vector in enumerate(vectors[start : start + 1000])
                ],
            )
        for table in others:
            conn.execute(
                text(
                    f"INSERT INTO {table.name} (id, title, embedding) "
                    f"SELECT id, title, embedding FROM {first.name}"
                )
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def build(engine: Engine, model: Any) -> tuple[float, int]:
    """Seconds to build the model's vector index, and its size in bytes."""
    (index,) = [ix for ix in model.__table__.indexes if ix.name.startswith("ix_")]
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        seconds, _ = timed(lambda: index.create(conn))
        size = conn.execute(
            text("SELECT pg_relation_size(CAST(:n AS regclass))"), {"n": index.name}
        )
        return seconds, int(size.scalar_one())


def measure(
    engine: Engine,
    model: Any,
    queries: np.ndarray,
    truth: list[set[int]],
    **nearest: Any,
) -> tuple[float, float]:
    """Mean recall@10 and median latency (ms) of ``model.nearest(q, k=10, ...)``."""
    options = nearest.pop("options", {})
    recalls, latencies = [], []
    with Session(engine) as session:
        for query in queries[:5]:  # warm the cache: every configuration is measured warm
            session.execute(model.nearest(query, k=K, **nearest).execution_options(**options))
            session.rollback()
        for query, expected in zip(queries, truth, strict=True):
            stmt = model.nearest(query, k=K, **nearest).execution_options(**options)
            seconds, rows = timed(lambda stmt=stmt: session.execute(stmt).all())
            session.rollback()
            latencies.append(seconds * 1000)
            recalls.append(len({row[0].id for row in rows} & expected) / K)
    return float(np.mean(recalls)), statistics.median(latencies)


def precision_table(engine: Engine, args: argparse.Namespace) -> list[str]:
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(args.clusters, args.dims)).astype(np.float32)
    vectors = clustered(rng, args.rows, centres, args.noise)
    queries = clustered(rng, args.queries, centres, args.noise)
    truth = exact_top(vectors, queries)
    models = precision_models(args.dims)
    load(engine, models, vectors)
    lines = [
        f"### Precision: {args.rows:,} clustered {args.dims}-d vectors, cosine, "
        "HNSW m=16 ef_construction=64",
        "",
        "| index | build | size | recall@10 (ef_search 40 / 100) | median query (ef 40 / 100) |",
        "|---|---|---|---|---|",
    ]
    sizes: dict[str, int] = {}
    recall: dict[str, float] = {}
    for name, model in models.items():
        seconds, size = build(engine, model)
        sizes[name] = size
        label = {
            "vector": "`vector` HNSW",
            "halfvec": f"`halfvec` expression HNSW (`embedding::halfvec({args.dims})`)",
            "bit": f"`binary_quantize(embedding)::bit({args.dims})` HNSW + exact re-rank",
        }[name]
        size_text = f"{size / 2**20:.1f} MB ({size / sizes['vector']:.2f}x)"
        if name != "bit":
            r40, t40 = measure(engine, model, queries, truth, options=search_options(ef_search=40))
            r100, t100 = measure(
                engine, model, queries, truth, options=search_options(ef_search=100)
            )
            recall[name] = r100
            lines.append(
                f"| {label} | {seconds:.1f} s | {size_text} | {r40:.3f} / {r100:.3f} | "
                f"{t40:.1f} / {t100:.1f} ms |"
            )
            continue
        for rerank in args.rerank:
            default = " (default)" if rerank == vecorm.search_config(model).rerank else ""
            r, t = measure(engine, model, queries, truth, candidates=K * rerank)
            recall[f"bit@{rerank}"] = r
            lines.append(
                f"| {label}, rerank {rerank}{default} ({K * rerank} candidates, ef_search "
                f"{max(200, K * rerank)}) | {seconds:.1f} s | {size_text} | {r:.3f} | {t:.1f} ms |"
            )
    lines += [
        "",
        f"halfvec / vector size: {sizes['halfvec'] / sizes['vector']:.2f}x, recall@10 "
        f"(ef 100) {recall['halfvec']:.3f} vs {recall['vector']:.3f}; "
        f"bit / vector size: {sizes['bit'] / sizes['vector']:.3f}x.",
    ]
    return lines


# --------------------------------------------------------------------------- tenants


def tenant_models(dims: int) -> tuple[Any, Any]:
    class Base(DeclarativeBase):
        pass

    def config() -> vecorm.SearchConfig:
        extra: dict[str, Any] = {}
        if "bm25" in vecorm.SearchConfig.__dataclass_fields__:
            extra["bm25"] = None
        return vecorm.SearchConfig(
            fields=("title",), dimensions=dims, index=vecorm.HNSW(), text_index=False, **extra
        )

    class Partitioned(vecorm.Searchable, Base):
        __tablename__ = "scale_tenant_parts"
        __table_args__ = {"postgresql_partition_by": "LIST (tenant_id)"}
        __vecorm__ = config()
        tenant_id: Mapped[int] = mapped_column(primary_key=True)
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(10))

    class Flat(vecorm.Searchable, Base):
        """The usual shape: a global key, ``tenant_id`` an ordinary (unindexed) column."""

        __tablename__ = "scale_tenant_flat"
        __vecorm__ = config()
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant_id: Mapped[int]
        title: Mapped[str] = mapped_column(String(10))

    return Partitioned, Flat


def tenant_table(engine: Engine, args: argparse.Namespace) -> list[str]:
    from vecorm.scale.partitioning import create_partition

    rng = np.random.default_rng(args.seed + 1)
    dims, tenants, per_tenant = args.tenant_dims, args.tenants, args.per_tenant
    Partitioned, Flat = tenant_models(dims)
    data = {}
    for tenant in range(tenants):
        centres = rng.normal(size=(10, dims)).astype(np.float32)
        data[tenant] = (clustered(rng, per_tenant, centres, args.noise), centres)
    with engine.begin() as conn:
        for model in (Partitioned, Flat):
            model.__table__.create(conn)
            for index in list(model.__table__.indexes):
                index.drop(conn)
        for tenant in range(tenants):
            create_partition(conn, Partitioned, f"scale_tenant_parts_t{tenant}", values=[tenant])
            conn.execute(
                insert(Partitioned),
                [
                    {"tenant_id": tenant, "id": i, "title": "t", "embedding": vector}
                    for i, vector in enumerate(data[tenant][0])
                ],
            )
        conn.execute(
            text(
                "INSERT INTO scale_tenant_flat (tenant_id, id, title, embedding) "
                f"SELECT tenant_id, tenant_id * {per_tenant} + id, title, embedding "
                "FROM scale_tenant_parts"
            )
        )
    builds = {}
    for model in (Partitioned, Flat):
        (index,) = list(model.__table__.indexes)
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
            builds[model] = timed(lambda index=index, conn=conn: index.create(conn))[0]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))

    picks = rng.integers(0, tenants, args.queries)
    queries = [clustered(rng, 1, data[int(t)][1], args.noise)[0] for t in picks]
    truth = [exact_top(data[int(t)][0], q[None, :])[0] for t, q in zip(picks, queries, strict=True)]

    def run(model: Any, **nearest: Any) -> tuple[float, float, float, str]:
        options = nearest.pop("options", {})
        recalls, latencies, counts = [], [], []
        plans = set()
        with Session(engine) as session:
            for tenant, query, expected in zip(picks, queries, truth, strict=True):
                stmt = (
                    model.nearest(query, k=K, **nearest)
                    .where(model.tenant_id == int(tenant))
                    .execution_options(**options)
                )
                session.execute(stmt).all()  # warm
                used = indexes_used(session, stmt)
                plans.add("HNSW" if any("embedding" in name for name in used) else "exact")
                seconds, rows = timed(lambda stmt=stmt: session.execute(stmt).all())
                session.rollback()
                latencies.append(seconds * 1000)
                counts.append(len(rows))
                found = {row[0].id % per_tenant for row in rows}
                recalls.append(len(found & expected) / K)
        plan = "/".join(sorted(plans))
        return float(np.mean(recalls)), statistics.median(latencies), float(np.mean(counts)), plan

    pgvector_defaults = search_options(ef_search=40, iterative_scan="off")
    rows = [
        ("partitioned by LIST (tenant_id), HNSW per partition (pruned to one)", Partitioned, {}),
        ("one table, HNSW + WHERE tenant_id, iterative scan (vecorm default)", Flat, {}),
        (
            "one table, HNSW + WHERE tenant_id, pgvector defaults (ef 40, no iterative scan)",
            Flat,
            {"options": pgvector_defaults},
        ),
        ("exact, partitioned (pruned, `exact=True`)", Partitioned, {"exact": True}),
        ("exact, one table (`exact=True`)", Flat, {"exact": True}),
    ]
    lines = [
        f"### Tenants: {tenants} x {per_tenant:,} rows of {dims}-d, top-10 within one tenant",
        "",
        "| strategy | plan | index build | recall@10 | rows returned (of 10) | median query |",
        "|---|---|---|---|---|---|",
    ]
    for label, model, nearest in rows:
        recall, latency, count, plan = run(model, **nearest)
        build = "" if nearest.get("exact") else f"{builds[model]:.1f} s"
        lines.append(
            f"| {label} | {plan} | {build} | {recall:.3f} | {count:.1f} | {latency:.2f} ms |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.6)
    parser.add_argument("--rerank", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--per-tenant", type=int, default=1000)
    parser.add_argument("--tenant-dims", type=int, default=128)
    parser.add_argument("--skip-precision", action="store_true")
    parser.add_argument("--skip-tenants", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with vecorm.database() as url:
        engine = vecorm.create_engine(url)
        try:
            version = engine.connect().execute(text("SHOW server_version")).scalar_one()
            print(f"PostgreSQL {version}, pgvector 0.8.x, seed {args.seed}\n")
            if not args.skip_precision:
                print("\n".join(precision_table(engine, args)), "\n", flush=True)
            if not args.skip_tenants:
                print("\n".join(tenant_table(engine, args)))
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
