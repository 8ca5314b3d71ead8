"""The flush hook's overhead, and backfill throughput, on the same server in the same run.

    python benchmarks/embedding_hook.py                  # 100,000 rows x 384, embedded server
    python benchmarks/embedding_hook.py --rows 5000      # quicker
    VECORM_DATABASE_URL=postgresql://... python benchmarks/embedding_hook.py

Inserts (the same rows each time, committed every ``--commit-every`` rows):
  raw           psycopg ``executemany`` of precomputed vectors, digests and model (the baseline)
  precomputed   ORM inserts of precomputed vectors, digests and model, no hook
  hook+lookup   ORM inserts with ``vecorm.install``; the provider returns the precomputed
                vectors from a dict, so the difference to "precomputed" is the hook itself
                (change detection, digests, batching, assignment)
  hook+hashing  the same with the deterministic HashingEmbedder computing the vectors
Then ``backfill`` of rows written without vectors, with both providers (rows/s).
Ratios are time(path) / time(raw); lower is better.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import String, insert, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import vecorm
from vecorm.embedding.backfill import backfill
from vecorm.embedding.embedders import HashingEmbedder
from vecorm.embedding.events import install, uninstall
from vecorm.embedding.source import text_digest
from vecorm.engine import libpq_conninfo

DIMENSIONS = 384
WORDS = [
    "postgres",
    "vector",
    "index",
    "search",
    "hybrid",
    "ranking",
    "embedding",
    "model",
    "batch",
    "flush",
]


class Base(DeclarativeBase):
    pass


class Passage(vecorm.Searchable, Base):
    __tablename__ = "bench_passages"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"), dimensions=DIMENSIONS, index=None, text_index=False
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    body: Mapped[str]


class Lookup:
    """A provider that answers from precomputed vectors: measures everything but the model."""

    dimensions = DIMENSIONS
    max_batch_size = 256

    def __init__(self, vectors: dict[str, np.ndarray[Any, Any]], model_name: str) -> None:
        self.vectors = vectors
        self.model_name = model_name

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        return np.stack([self.vectors[value] for value in texts])


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(url: object, rows: int, commit_every: int) -> dict[str, float]:
    engine = vecorm.create_engine(url)  # type: ignore[arg-type]
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    table = Passage.__table__.name
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(WORDS), size=(rows, 6))
    titles = [f"passage {i}" for i in range(rows)]
    bodies = [" ".join(WORDS[k] for k in pick) for pick in picks]
    texts = [f"{title}\n{body}" for title, body in zip(titles, bodies, strict=True)]
    hashing = HashingEmbedder(dimensions=DIMENSIONS)
    started = time.perf_counter()
    matrix = np.concatenate(
        [hashing.embed(texts[start : start + 256]) for start in range(0, rows, 256)]
    )
    provider_seconds = time.perf_counter() - started
    vectors = dict(zip(texts, matrix, strict=True))
    digests = [text_digest(value) for value in texts]
    lookup = Lookup(vectors, hashing.model_name)
    conninfo = libpq_conninfo(engine.url)

    def truncate() -> None:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {table}"))

    def chunks() -> range:
        return range(0, rows, commit_every)

    def insert_raw() -> None:
        with psycopg.connect(conninfo) as conn:
            register_vector(conn)
            for start in chunks():
                stop = start + commit_every
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {table} (id, title, body, embedding, embedding_digest, "
                        "embedding_model) VALUES (%s, %s, %s, %s, %s, %s)",
                        [
                            (i, titles[i], bodies[i], matrix[i], digests[i], hashing.model_name)
                            for i in range(start, min(stop, rows))
                        ],
                    )
                conn.commit()

    def insert_orm(factory: sessionmaker[Session], precomputed: bool) -> None:
        with factory() as session:
            for start in chunks():
                for i in range(start, min(start + commit_every, rows)):
                    passage = Passage(id=i, title=titles[i], body=bodies[i])
                    if precomputed:
                        passage.embedding = matrix[i]
                        passage.embedding_digest = digests[i]
                        passage.embedding_model = hashing.model_name
                    session.add(passage)
                session.commit()

    plain = sessionmaker(engine)
    with_lookup = sessionmaker(engine)
    install(with_lookup, embedder=lookup)
    with_hashing = sessionmaker(engine)
    install(with_hashing, embedder=hashing)
    seconds: dict[str, float] = {}
    for name, action in (
        ("raw", insert_raw),
        ("precomputed", lambda: insert_orm(plain, True)),
        ("hook+lookup", lambda: insert_orm(with_lookup, False)),
        ("hook+hashing", lambda: insert_orm(with_hashing, False)),
    ):
        truncate()
        seconds[name] = timed(action)

    backfill_rates: dict[str, float] = {}
    for name, provider in (("lookup", lookup), ("hashing", hashing)):
        truncate()
        with engine.begin() as conn:
            for start in chunks():
                conn.execute(
                    insert(Passage),
                    [
                        {"id": i, "title": titles[i], "body": bodies[i]}
                        for i in range(start, min(start + commit_every, rows))
                    ],
                )
        with Session(engine) as session:
            result = backfill(session, Passage, embedder=provider, batch_size=256, progress=False)
        assert result.embedded == rows
        backfill_rates[name] = result.rows_per_second
    uninstall(with_lookup)
    uninstall(with_hashing)
    engine.dispose()
    return {
        **{f"{name}_seconds": value for name, value in seconds.items()},
        "provider_seconds": provider_seconds,
        "backfill_lookup_rows_per_s": backfill_rates["lookup"],
        "backfill_hashing_rows_per_s": backfill_rates["hashing"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--commit-every", type=int, default=1000)
    args = parser.parse_args()
    with vecorm.database() as url:
        result = run(url, args.rows, args.commit_every)
    rows = args.rows
    raw = result["raw_seconds"]
    print(f"rows: {rows:,} x {DIMENSIONS}, a commit every {args.commit_every:,} rows")
    print(f"{'insert path':<34}{'rows/s':>12}{'ratio vs raw':>15}")
    for label, key in (
        ("raw psycopg executemany", "raw_seconds"),
        ("ORM, precomputed vectors", "precomputed_seconds"),
        ("ORM + hook, lookup provider", "hook+lookup_seconds"),
        ("ORM + hook, HashingEmbedder", "hook+hashing_seconds"),
    ):
        print(f"{label:<34}{rows / result[key]:>12,.0f}{result[key] / raw:>14.2f}x")
    overhead = result["hook+lookup_seconds"] - result["precomputed_seconds"]
    print(
        f"\nhook overhead vs precomputed: {overhead:+.2f} s "
        f"({overhead / rows * 1e6:+.1f} us/row, "
        f"{result['hook+lookup_seconds'] / result['precomputed_seconds']:.2f}x)"
    )
    print(f"HashingEmbedder alone: {rows / result['provider_seconds']:,.0f} texts/s")
    print(
        f"backfill: {result['backfill_lookup_rows_per_s']:,.0f} rows/s (lookup provider), "
        f"{result['backfill_hashing_rows_per_s']:,.0f} rows/s (HashingEmbedder)"
    )


if __name__ == "__main__":
    main()
