"""BM25 statistics per tenant on a real Citus cluster: what the triggers cost writers, and
BM25 against ts_rank searches, router (one tenant) and multi-shard.

    ../shared/citus/cluster.sh start        # prints the coordinator URL
    VECORM_CITUS_URL=postgresql://postgres@127.0.0.1:5600/postgres \\
        python benchmarks/citus_bm25.py --rows 20000

Two models distributed by ``tenant_id`` over ``--shards`` shards, the same rows in each:
``bm25=None`` (no side tables, ``ts_rank``) and ``BM25(distributed_by="tenant_id")``. Each
write runs ``--repeat`` times on fresh keys and the median is reported, with the ratio of the
BM25 model's time to the plain one's; each search runs once to warm up, then ``--repeat``
times per query over ``--queries`` two-word queries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import MetaData, delete, insert, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.scale.citus import distribute_table

SCHEMA = "vecorm_citus_bm25_bench"
WORDS = [f"w{i}" for i in range(400)]


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


def make_model(name: str, bm25: vecorm.BM25 | None) -> Any:
    return type(
        name,
        (vecorm.Searchable, Base),
        {
            "__tablename__": name.lower(),
            "__vecorm__": vecorm.SearchConfig(
                fields=("body",), dimensions=8, bm25=bm25, index=None
            ),
            "__annotations__": {"tenant_id": Mapped[int], "id": Mapped[int], "body": Mapped[str]},
            "tenant_id": mapped_column(primary_key=True),
            "id": mapped_column(primary_key=True),
        },
    )


Plain = make_model("Plain", None)
PerTenant = make_model("PerTenant", vecorm.BM25(distributed_by="tenant_id"))


def _body(i: int) -> str:
    # A Zipf-like vocabulary: a few common words, many rare ones, 12 words a row.
    return " ".join(WORDS[(i * 7919 + j * j * 104729) % (1 + (j * 37) % 400)] for j in range(12))


def _rows(start: int, count: int, tenants: int) -> list[dict[str, Any]]:
    return [
        {"tenant_id": i % tenants, "id": i, "body": _body(i)} for i in range(start, start + count)
    ]


def _median(run: Callable[[int], None], repeat: int) -> float:
    times = []
    for attempt in range(repeat):
        started = time.perf_counter()
        run(attempt)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    url = os.environ["VECORM_CITUS_URL"]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    engine: Engine = vecorm.create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        for model in (Plain, PerTenant):
            conn.execute(distribute_table(model, "tenant_id", shard_count=args.shards))
    print(f"{args.rows} rows, {args.tenants} tenants, {args.shards} shards")
    loaded = {}
    for model in (Plain, PerTenant):
        started = time.perf_counter()
        with engine.begin() as conn:
            for start in range(0, args.rows, 5000):
                batch = _rows(start, min(5000, args.rows - start), args.tenants)
                conn.execute(insert(model).values(batch))
        loaded[model] = time.perf_counter() - started
        with engine.begin() as conn:
            conn.execute(text(f"ANALYZE {SCHEMA}.{model.__tablename__}"))
    print(
        f"load (multi-row INSERTs of 5000): ts_rank {loaded[Plain]:.1f} s, "
        f"BM25 per tenant {loaded[PerTenant]:.1f} s"
    )

    def writes(model: Any) -> dict[str, float]:
        base = 10_000_000 + (model is PerTenant) * 1_000_000
        found = {}

        def one_insert(attempt: int) -> None:
            with Session(engine) as session:
                session.add(model(tenant_id=1, id=base + attempt, body=_body(attempt)))
                session.commit()

        def many_rows(attempt: int) -> None:
            with engine.begin() as conn:
                conn.execute(
                    insert(model).values(_rows(base + 1000 + attempt * 1000, 1000, args.tenants))
                )

        def executemany(attempt: int) -> None:
            with engine.begin() as conn:
                conn.execute(insert(model), _rows(base + 100_000 + attempt * 100, 100, 1))

        def tenant_update(attempt: int) -> None:
            with engine.begin() as conn:
                conn.execute(
                    update(model)
                    .where(model.tenant_id == 2, model.id < 2000)
                    .values(body=model.body + f" w{attempt}")
                )

        def tenant_delete(attempt: int) -> None:
            with engine.begin() as conn:
                conn.execute(
                    delete(model).where(
                        model.id.between(base + 1000 + attempt * 1000, base + 1099 + attempt * 1000)
                    )
                )

        found["ORM insert of 1 row"] = _median(one_insert, args.repeat * 4)
        found["INSERT of 1000 rows (one statement)"] = _median(many_rows, args.repeat)
        found["executemany of 100 rows (one statement each)"] = _median(executemany, args.repeat)
        found["UPDATE of one tenant's ~40 rows"] = _median(tenant_update, args.repeat)
        found["DELETE of 100 rows, every tenant"] = _median(tenant_delete, args.repeat)
        return found

    plain, keyed = writes(Plain), writes(PerTenant)
    print("\n| write | ts_rank model ms | BM25 per tenant ms | ratio |\n|---|---|---|---|")
    for name in plain:
        print(
            f"| {name} | {plain[name]:.1f} | {keyed[name]:.1f} | {keyed[name] / plain[name]:.1f} |"
        )

    queries = [f"{WORDS[3 + q % 30]} {WORDS[100 + q * 11 % 250]}" for q in range(args.queries)]
    print("\n| search | ts_rank median ms | BM25 median ms |\n|---|---|---|")
    for label, tenant in (("text_search(q, 10, where=tenant)", 7), ("text_search(q, 10)", None)):
        medians = []
        for model in (Plain, PerTenant):
            times = []
            with Session(engine) as session:
                for query in queries:
                    where = [] if tenant is None else [model.tenant_id == tenant]
                    statement = model.text_search(query, k=10, where=where)
                    session.execute(statement).all()
                    for _ in range(args.repeat):
                        started = time.perf_counter()
                        session.execute(statement).all()
                        times.append(time.perf_counter() - started)
            medians.append(1000 * statistics.median(times))
        print(f"| {label} | {medians[0]:.1f} | {medians[1]:.1f} |")
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
    engine.dispose()


if __name__ == "__main__":
    main()
