"""BM25 at scale: query latency at 20k and 200k documents, write throughput, bulk load.

Synthetic text with Zipfian word frequencies (so a few words are in most documents, as in
real text), queries of 3 *common* words (the expensive case: every query term has a huge
posting list). Prints, per collection size:

* median / p95 latency of a BM25 top-100 at the defaults (MaxScore pruning for queries over
  ``BM25().prune_above`` postings) and scoring every posting of the query terms
  (``prune_above=None``), each query timed both ways in turn, and how often the two top-100
  lists are identical (same keys in the same order, scores equal to 9 decimals; both are
  exact);
* the bulk-load time (COPY with statistics deferred, rebuilt once);

then ORM bulk-insert throughput of 1536-d rows with text, with BM25 statistics maintained
and without (``SearchConfig(bm25=None)``), and their ratio: per round (the two runs in
alternating order) and the median over rounds.

    python benchmarks/bm25_scale.py                      # 20k and 200k documents
    python benchmarks/bm25_scale.py --sizes 20000 --words 30
    VECORM_DATABASE_URL=postgresql://... python benchmarks/bm25_scale.py
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import numpy as np
from sqlalchemy import Integer, Text, insert, text
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

import vecorm
from vecorm import bm25
from vecorm.engine import create_engine
from vecorm.schema.config import BM25
from vecorm.tools.embedded import database

#: The default column's BM25(prune_above=...).
PRUNE_ABOVE = BM25().prune_above
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aiou"]


def vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    """Pronounceable made-up words (3 syllables + 'x', which no stemmer strips)."""
    words: set[str] = set()
    while len(words) < size:
        picks = rng.integers(0, len(SYLLABLES), size=(size, 3))
        words.update("".join(SYLLABLES[i] for i in row) + "x" for row in picks)
    return sorted(words)[:size]


def corpus(count: int, words: int, rng: np.random.Generator, vocab: list[str]) -> list[str]:
    ranks = np.arange(1, len(vocab) + 1)
    weights = 1.0 / ranks**1.07  # Zipf
    weights /= weights.sum()
    lengths = np.maximum(5, rng.poisson(words, size=count))
    tokens = rng.choice(len(vocab), size=int(lengths.sum()), p=weights)
    bodies, start = [], 0
    for length in lengths:
        bodies.append(" ".join(vocab[i] for i in tokens[start : start + length]))
        start += length
    return bodies


def make_model(name: str, *, dimensions: int, with_bm25: bool, index: bool) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    attributes = {
        "__tablename__": name,
        "__vecorm__": vecorm.SearchConfig(
            fields=("body",),
            dimensions=dimensions,
            index=vecorm.HNSW() if index else None,
            text_index=False,
            bm25=BM25() if with_bm25 else None,
        ),
        "id": mapped_column(Integer, primary_key=True),
        "body": mapped_column(Text, nullable=False),
    }
    return type(f"Bench{name.title()}", (vecorm.Searchable, Base), attributes)


def load(engine: Any, model: type[Any], bodies: list[str]) -> float:
    """COPY the rows with statistics deferred, then rebuild them once."""
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    started = time.perf_counter()
    with Session(engine) as session:
        with bm25.bulk_load(session, model):
            raw = session.connection().connection.dbapi_connection
            assert raw is not None
            cursor = raw.cursor()
            buffer = io.StringIO()
            for i, body in enumerate(bodies):
                buffer.write(f"{i}\t{body}\n")
            with cursor.copy(f"COPY {model.__tablename__} (id, body) FROM STDIN") as copy:  # type: ignore[attr-defined]
                copy.write(buffer.getvalue())
        session.commit()
    elapsed = time.perf_counter() - started
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for suffix in ("", "_bm25_postings", "_bm25_terms"):
            conn.exec_driver_sql(f"VACUUM ANALYZE {model.__tablename__}{suffix}")
    return elapsed


Latency = tuple[float, float, list[list[tuple[Any, float]]]]


def latencies(
    session: Session, model: type[Any], queries: list[str], *variants: dict[str, Any]
) -> list[Latency]:
    """Median and p95 ms of each variant's statement execution, and its rows; each query
    runs every variant in turn, so that the machine's drift falls on all alike."""
    timings: list[list[float]] = [[] for _ in variants]
    results: list[list[list[tuple[Any, float]]]] = [[] for _ in variants]
    for query in queries:
        for options, timed, found in zip(variants, timings, results, strict=True):
            stmt = bm25.scores(model, query, depth=100, **options)
            started = time.perf_counter()
            rows = session.execute(stmt).all()
            timed.append((time.perf_counter() - started) * 1000)
            found.append([(tuple(row[:-1]), round(row.score, 9)) for row in rows])
    session.rollback()
    return [
        (statistics.median(timed), float(np.percentile(timed, 95)), found)
        for timed, found in zip(timings, results, strict=True)
    ]


def query_benchmark(engine: Any, sizes: list[int], words: int, query_count: int) -> None:
    rng = np.random.default_rng(7)
    vocab = vocabulary(50_000, rng)
    common = vocab[:60]  # the most frequent words (rank order = frequency order)
    queries = [" ".join(rng.choice(common, 3, replace=False)) for _ in range(query_count)]
    print(f"\n## BM25 top-100, {query_count} queries of 3 common words, ~{words} words/doc\n")
    print(
        f"| documents | postings | load s | default (prune_above={PRUNE_ABOVE:,}) median ms | p95 "
        "| every posting (prune_above=None) median ms | p95 | top-100 identical |"
    )
    print("|---|---|---|---|---|---|---|---|")
    previous: float | None = None
    for size in sizes:
        model = make_model(f"bm25_scale_{size}", dimensions=4, with_bm25=True, index=False)
        seconds = load(engine, model, corpus(size, words, rng, vocab))
        with Session(engine) as session:
            postings = session.scalar(text(f"SELECT count(*) FROM bm25_scale_{size}_bm25_postings"))
            latencies(session, model, queries[:5], {})  # warm the cache
            # the defaults (MaxScore over PRUNE_ABOVE postings) and every posting
            pruned, exact = latencies(session, model, queries, {}, {"prune_above": None})
        same = np.mean([a == b for a, b in zip(pruned[2], exact[2], strict=True)])
        print(
            f"| {size:,} | {postings:,} | {seconds:.0f} | {pruned[0]:.1f} | {pruned[1]:.1f} | "
            f"{exact[0]:.1f} | {exact[1]:.1f} | {same:.0%} |"
        )
        if previous is not None:
            print(
                f"\npruned latency grew {pruned[0] / previous:.1f}x for "
                f"{size / sizes[0]:.0f}x the documents"
            )
        previous = previous or pruned[0]
        model.metadata.drop_all(engine)


def _insert_rate(
    engine: Any, *, with_bm25: bool, bodies: list[str], vectors: np.ndarray[Any, Any], batch: int
) -> float:
    """Rows per second of ORM bulk inserts (one commit per batch) into a fresh table."""
    model = make_model("bm25_writes", dimensions=1536, with_bm25=with_bm25, index=True)
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    rows = len(bodies)
    started = time.perf_counter()
    with Session(engine) as session:
        for start in range(0, rows, batch):
            session.execute(
                insert(model),
                [
                    {"id": i, "body": bodies[i], "embedding": vectors[i]}
                    for i in range(start, min(rows, start + batch))
                ],
            )
            session.commit()
    rate = rows / (time.perf_counter() - started)
    model.metadata.drop_all(engine)
    return rate


def write_benchmark(engine: Any, rows: int, batch: int, rounds: int) -> None:
    """Inserts with and without BM25 statistics, in alternating order over ``rounds`` rounds
    (this machine's speed drifts, so each round's ratio pairs two runs minutes apart at most)."""
    rng = np.random.default_rng(3)
    vocab = vocabulary(20_000, rng)
    bodies = corpus(rows, 150, rng, vocab)
    vectors = rng.standard_normal((rows, 1536)).astype(np.float32)
    print(
        f"\n## ORM bulk insert: {rows} rows of 1536-d vectors + ~150 words, HNSW index, "
        f"batches of {batch}, {rounds} rounds\n"
    )
    print("| round | none (bm25=None) rows/s | BM25 maintained rows/s | ratio |\n|---|---|---|---|")
    ratios = []
    for round_number in range(rounds):
        order = (False, True) if round_number % 2 == 0 else (True, False)
        rates = {
            with_bm25: _insert_rate(
                engine, with_bm25=with_bm25, bodies=bodies, vectors=vectors, batch=batch
            )
            for with_bm25 in order
        }
        ratios.append(rates[True] / rates[False])
        print(
            f"| {round_number + 1} | {rates[False]:.0f} | {rates[True]:.0f} | {ratios[-1]:.2f}x |"
        )
    print(
        f"\nthroughput with BM25 statistics: median {statistics.median(ratios):.2f}x of without "
        f"(range {min(ratios):.2f}x-{max(ratios):.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--words", type=int, default=40, help="mean words per document")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--write-rows", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-writes", action="store_true")
    parser.add_argument("--skip-queries", action="store_true")
    args = parser.parse_args()
    with database() as url:
        engine = create_engine(url)
        try:
            if not args.skip_queries:
                query_benchmark(
                    engine, [int(s) for s in args.sizes.split(",")], args.words, args.queries
                )
            if not args.skip_writes:
                write_benchmark(engine, args.write_rows, args.batch, args.rounds)
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
