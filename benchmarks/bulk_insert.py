"""Bulk loading: vecorm.bulk_insert against raw psycopg binary COPY and the ORM bulk insert.

The same N rows (precomputed vectors, ~40 words of Zipfian text each) go into the same
vecorm table (generated tsvector, GIN, BM25 statistics unless ``--no-bm25``, HNSW), emptied
before each run, three ways on one server in one run:

* raw psycopg: ``DROP INDEX``, one ``COPY ... FROM STDIN (FORMAT BINARY)`` of title, body and
  vector (pgvector-python's ``register_vector``), ``CREATE INDEX`` as it was, one transaction;
* ``vecorm.bulk_insert(session, Model, rows)``;
* the ORM bulk insert ``session.execute(insert(Model), rows)`` into the table as
  ``create_all`` leaves it (the index present), which psycopg 3 runs row by row.

Each path runs ``--repeats`` times (best kept), in rotating order. Rows/s counts the whole
load, index build included; the ratio is rows/s against raw COPY's (higher is better)::

    python benchmarks/bulk_insert.py                      # 20,000 x 1536
    python benchmarks/bulk_insert.py --rows 5000 --no-bm25
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import String, insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.engine import libpq_conninfo

VOCABULARY = 5000


class Base(DeclarativeBase):
    pass


def make_model(dimensions: int, bm25: bool) -> type[Any]:
    class BulkItem(vecorm.Searchable, Base):
        __tablename__ = "bench_bulk_items"
        __vecorm__ = vecorm.SearchConfig(
            fields=("title", "body"),
            dimensions=dimensions,
            bm25=vecorm.BM25() if bm25 else None,
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        body: Mapped[str]

    return BulkItem


def make_rows(count: int, dimensions: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, VOCABULARY + 1)
    words = rng.choice(VOCABULARY, size=(count, 44), p=weights / weights.sum())
    vectors = rng.standard_normal((count, dimensions)).astype(np.float32)
    return [
        {
            "title": " ".join(f"w{w}" for w in words[i, :4]),
            "body": " ".join(f"w{w}" for w in words[i, 4:]),
            "embedding": vectors[i],
        }
        for i in range(count)
    ]


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(
    url: object, rows: list[dict[str, Any]], model: type[Any], repeats: int, memory: str, orm: bool
) -> dict[str, float]:
    engine: Engine = vecorm.create_engine(url)  # type: ignore[arg-type]
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    table = model.__table__.name
    index = f"ix_{table}_embedding_hnsw"
    with engine.connect() as conn:
        definition = conn.execute(text(f"SELECT pg_get_indexdef('{index}'::regclass)")).scalar()
    conninfo = libpq_conninfo(engine.url)

    def empty() -> None:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {table} RESTART IDENTITY"))
            conn.execute(text(f"DROP INDEX IF EXISTS {index}"))
            conn.execute(text(str(definition)))  # as create_all left it

    def raw_copy() -> None:
        with psycopg.connect(conninfo) as conn:
            register_vector(conn)
            conn.execute(f"DROP INDEX {index}")
            with conn.cursor() as cursor:
                statement = f"COPY {table} (title, body, embedding) FROM STDIN (FORMAT BINARY)"
                with cursor.copy(statement) as copy:
                    copy.set_types(["varchar", "text", "vector"])
                    for row in rows:
                        copy.write_row((row["title"], row["body"], row["embedding"]))
            conn.execute(f"SET LOCAL maintenance_work_mem = '{memory}'")
            conn.execute(str(definition))

    def bulk_insert() -> None:
        with Session(engine) as session:
            vecorm.bulk_insert(session, model, rows, maintenance_work_mem=memory, progress=False)
            session.commit()

    def orm_insert() -> None:
        with Session(engine) as session:
            session.execute(insert(model), rows)
            session.commit()

    paths: list[tuple[str, Callable[[], None]]] = [("raw", raw_copy), ("vecorm", bulk_insert)]
    if orm:
        paths.append(("orm", orm_insert))
    times: dict[str, list[float]] = {name: [] for name, _ in paths}
    for round_number in range(repeats):
        shift = round_number % len(paths)
        for name, action in paths[shift:] + paths[:shift]:
            empty()
            times[name].append(timed(action))
            print(f"  {name:<7} {times[name][-1]:7.2f} s", flush=True)
    engine.dispose()
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=2, help="runs per path (best kept)")
    parser.add_argument("--memory", default="512MB", help="maintenance_work_mem of the builds")
    parser.add_argument("--no-bm25", action="store_true", help="a model without BM25 statistics")
    parser.add_argument("--no-orm", action="store_true", help="skip the (slow) ORM bulk insert")
    args = parser.parse_args()
    model = make_model(args.dims, bm25=not args.no_bm25)
    rows = make_rows(args.rows, args.dims)
    with vecorm.database() as url:
        best = run(url, rows, model, args.repeats, args.memory, orm=not args.no_orm)
    statistics = "off" if args.no_bm25 else "on"
    print(
        f"\nrows: {args.rows:,} x {args.dims}, BM25 statistics {statistics}, HNSW built "
        f"with maintenance_work_mem {args.memory}, best of {args.repeats}"
    )
    print(f"{'path':<46}{'seconds':>9}{'rows/s':>10}{'vs raw COPY':>13}")
    labels = {
        "raw": "raw psycopg COPY (FORMAT BINARY) + index after",
        "vecorm": "vecorm.bulk_insert",
        "orm": "ORM session.execute(insert(Model), rows)",
    }
    raw_rate = args.rows / best["raw"]
    for name, seconds in best.items():
        rate = args.rows / seconds
        print(f"{labels[name]:<46}{seconds:>9.2f}{rate:>10,.0f}{rate / raw_rate:>12.2f}x")


if __name__ == "__main__":
    main()
