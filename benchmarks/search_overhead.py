"""nearest() and hybrid_search() against raw psycopg, and the plan each gets, same server, same run.

    python benchmarks/search_overhead.py                 # 10,000 x 1536 and 20,000 x 1536
    python benchmarks/search_overhead.py --rows 5000 --wide-rows 10000 --queries 100
    VECORM_DATABASE_URL=postgresql://... python benchmarks/search_overhead.py

**Overhead** (``--rows`` x 1536 clustered vectors, HNSW m=16, a title column): a top-10 cosine
search that loads the entity (id, title; the vector is deferred, as the mixin declares it)
and its distance, one transaction per query, as an application runs it:

* raw psycopg 3 at pgvector's defaults against ``Model.nearest(q, 10)`` on a model declaring
  ``HNSW(ef_search=40, iterative_scan="off")`` (pgvector's own values);
* raw psycopg 3 with vecorm's settings (one ``set_config`` statement per transaction, as one
  would write it) against ``Model.nearest(q, 10)`` at vecorm's defaults;
* between them, the same statement in plain SQLAlchemy (a model declared by hand, no vecorm
  code running; the settings sent by hand): the ORM's own cost, so that vecorm / SQLAlchemy
  is what vecorm adds on top of it.

Each raw query is the statement vecorm sends, typed out; the ratio is median(path) /
median(raw), interleaved query by query so all paths see the same machine.

**Plans** (``--wide-rows`` x 1536 rows with a 700-character body and its tsvector beside the
vector, as a searchable model has: the vectors are stored out of line, which PostgreSQL's
cost of an exact scan leaves out): what other libraries run at their defaults (a plain ``ORDER
BY embedding <=> q LIMIT 10`` at ef_search 40) against ``nearest()`` and ``hybrid_search()`` at
vecorm's defaults, with each plan and recall@10 against numpy's exact top 10.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import psycopg
from latency_proxy import LatencyProxy
from pgvector.psycopg import register_vector
from sqlalchemy import URL, String, Text, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.engine import libpq_conninfo
from vecorm.search.explain import indexes_used
from vecorm.search.settings import index_search_options, settings_from_options

DIMS = 1536


class Base(DeclarativeBase):
    pass


class Item(vecorm.Searchable, Base):
    __tablename__ = "overhead_items"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",), dimensions=DIMS, index=vecorm.HNSW(), text_index=False, bm25=None
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))


class PgBase(DeclarativeBase):
    pass


class PgItem(vecorm.Searchable, PgBase):
    """The same table, declared with pgvector's own query-time values."""

    __tablename__ = "overhead_items"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",),
        dimensions=DIMS,
        index=vecorm.HNSW(ef_search=40, iterative_scan="off"),
        text_index=False,
        bm25=None,
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))


class PlainBase(DeclarativeBase):
    pass


class Plain(PlainBase):
    """The same table in plain SQLAlchemy, declared as the mixin declares it (the vector
    deferred, vecorm's binary-bound type): no vecorm code runs for its statements."""

    __tablename__ = "overhead_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))
    embedding = mapped_column(vecorm.Vector(DIMS), deferred=True)


class WideBase(DeclarativeBase):
    pass


class Article(vecorm.Searchable, WideBase):
    __tablename__ = "overhead_articles"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS, bm25=None)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(Text)


def clustered(rows: int, seed: int) -> np.ndarray:
    """Vectors with neighbours worth finding: 50 clusters in a 32-d latent space, projected
    into 1536 dimensions (one projection for rows and queries) plus a little noise. (Gaussian
    noise in all 1536 dimensions would make every row of a cluster about as near as the next,
    and recall@10 meaningless.)"""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(50, 32)) * 3
    projection = np.random.default_rng(1).normal(size=(32, DIMS)) / np.sqrt(32)
    latent = centres[rng.integers(0, 50, rows)] + rng.normal(size=(rows, 32))
    noise = 0.01 * rng.normal(size=(rows, DIMS))
    return (latent @ projection + noise).astype(np.float32)


def load(conninfo: str, table: str, columns: Sequence[str], rows: Any) -> None:
    """Binary COPY, then the HNSW index (built once, after the rows)."""
    with psycopg.connect(conninfo) as conn:
        register_vector(conn)
        types = ["integer", "text", "vector"]
        with conn.cursor().copy(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(types[: len(columns)])
            for row in rows:
                copy.write_row(row)


def build_index(engine: Engine, model: Any) -> None:
    (index,) = [ix for ix in model.__table__.indexes if ix.name.endswith("_hnsw")]
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        index.create(conn)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {model.__tablename__}"))


def drop_vector_index(engine: Engine, model: Any) -> None:
    (index,) = [ix for ix in model.__table__.indexes if ix.name.endswith("_hnsw")]
    with engine.begin() as conn:
        index.drop(conn)


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def interleaved(
    paths: dict[str, Callable[[np.ndarray], object]], queries: np.ndarray
) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in paths}
    for query in queries[: min(20, len(queries))]:  # warm the caches and the statements
        for action in paths.values():
            action(query)
    for query in queries:
        for name, action in paths.items():
            started = time.perf_counter()
            action(query)
            times[name].append(time.perf_counter() - started)
    return {name: median_ms(values) for name, values in times.items()}


def overhead(engine: Engine, rows: int, queries: int, latencies: Sequence[float] = (0.0,)) -> None:
    """The overhead table, once per one-way delay in ``latencies`` (0: no proxy)."""
    conninfo = libpq_conninfo(engine.url)
    Base.metadata.create_all(engine)
    drop_vector_index(engine, Item)
    vectors = clustered(rows, seed=2)
    load(
        conninfo,
        "overhead_items",
        ["id", "title", "embedding"],
        ((i, f"item {i}", v) for i, v in enumerate(vectors)),
    )
    build_index(engine, Item)
    probes = clustered(queries, seed=3)
    sql = (
        "SELECT id, title, embedding <=> %(q)s AS distance FROM overhead_items "
        "WHERE embedding IS NOT NULL ORDER BY distance, id LIMIT 10"
    )
    defaults = settings_from_options(
        index_search_options(vecorm.search_config(Item), filtered=False)
    )
    set_sql = "SELECT " + ", ".join(
        f"set_config('{name}', '{value}', true)" for name, value in defaults.items()
    )
    for latency_ms in latencies:
        with ExitStack() as stack:
            if latency_ms:  # the searches cross a "network" of that one-way delay
                port = stack.enter_context(LatencyProxy(socket_of(engine.url), latency_ms))
                via = stack.enter_context(_disposing(vecorm.create_engine(proxied(engine, port))))
                round_trip = _round_trip_ms(libpq_conninfo(via.url))
                timed = _time_paths(via, libpq_conninfo(via.url), probes, sql, set_sql)
            else:
                timed = _time_paths(engine, conninfo, probes, sql, set_sql)
        print(f"\nnearest(q, 10), entity loaded: {rows:,} x {DIMS}, median of {queries} queries")
        if latency_ms:
            print(
                f"through a proxy delaying each message {latency_ms} ms each way "
                f"(a round trip measured {round_trip:.2f} ms)"
            )
        print("(ratio: against raw psycopg; vs SQLAlchemy: against the same statement in plain")
        print(" SQLAlchemy, i.e. what vecorm adds on top of the ORM's own cost)")
        print(f"{'path':<32}{'ms':>8}{'ratio':>8}{'vs SQLAlchemy':>15}")
        for label, raw_label, orm_label in (
            ("raw, pgvector defaults", None, None),
            ("SQLAlchemy, pgvector defaults", "raw, pgvector defaults", None),
            (
                "vecorm, pgvector defaults",
                "raw, pgvector defaults",
                "SQLAlchemy, pgvector defaults",
            ),
            ("raw, vecorm's settings", None, None),
            ("SQLAlchemy, vecorm's settings", "raw, vecorm's settings", None),
            ("vecorm, its defaults", "raw, vecorm's settings", "SQLAlchemy, vecorm's settings"),
        ):
            ratio = f"{timed[label] / timed[raw_label]:.2f}x" if raw_label else ""
            over = f"{100 * (timed[label] / timed[orm_label] - 1):+.0f}%" if orm_label else ""
            print(f"{label:<32}{timed[label]:>8.3f}{ratio:>8}{over:>15}")


def _round_trip_ms(conninfo: str) -> float:
    """Median time of ``SELECT 1`` in autocommit: one round trip."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        times = []
        for _ in range(50):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchall()
            times.append(time.perf_counter() - started)
    return median_ms(times)


def _time_paths(
    engine: Engine, conninfo: str, probes: np.ndarray, sql: str, set_sql: str
) -> dict[str, float]:
    """Median ms of each path, interleaved query by query."""
    raw = psycopg.connect(conninfo)
    register_vector(raw)
    session = Session(engine)

    def raw_plain(query: np.ndarray) -> object:
        found = raw.execute(sql, {"q": query}, binary=True).fetchall()
        raw.commit()
        return found

    def raw_settings(query: np.ndarray) -> object:
        raw.execute(set_sql)
        found = raw.execute(sql, {"q": query}, binary=True).fetchall()
        raw.commit()
        return found

    def orm(model: Any) -> Callable[[np.ndarray], object]:
        def search(query: np.ndarray) -> object:
            found = session.execute(model.nearest(query, k=10)).all()
            session.commit()
            session.expunge_all()
            return found

        return search

    def sqlalchemy(settings: bool) -> Callable[[np.ndarray], object]:
        """The same statement written in plain SQLAlchemy (no vecorm code runs): the ORM's
        own share of the cost; with ``settings``, vecorm's values set by hand first."""

        def search(query: np.ndarray) -> object:
            distance = Plain.embedding.cosine_distance(query).label("distance")
            statement = (
                select(Plain, distance)
                .where(Plain.embedding.is_not(None))
                .order_by(distance, Plain.id)
                .limit(10)
            )
            if settings:
                session.execute(text(set_sql))
            found = session.execute(statement).all()
            session.commit()
            session.expunge_all()
            return found

        return search

    timed = interleaved(
        {
            "raw, pgvector defaults": raw_plain,
            "SQLAlchemy, pgvector defaults": sqlalchemy(settings=False),
            "vecorm, pgvector defaults": orm(PgItem),
            "raw, vecorm's settings": raw_settings,
            "SQLAlchemy, vecorm's settings": sqlalchemy(settings=True),
            "vecorm, its defaults": orm(Item),
        },
        probes,
    )
    raw.close()
    session.close()
    return timed


@contextmanager
def _disposing(engine: Engine) -> Iterator[Engine]:
    try:
        yield engine
    finally:
        engine.dispose()


def socket_of(url: URL) -> str:
    """Where ``url``'s server listens: its unix socket's path, or ``host:port``."""
    host = str(url.query.get("host") or url.host or "localhost")
    port = url.port or int(str(url.query.get("port", 5432)))
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else f"{host}:{port}"


def proxied(engine: Engine, port: int) -> URL:
    """``engine``'s URL, through the proxy listening on ``port``."""
    query = {k: v for k, v in engine.url.query.items() if k not in ("host", "port")}
    return engine.url.set(host="127.0.0.1", port=port, query=query)


def plans(engine: Engine, rows: int, queries: int) -> None:
    conninfo = libpq_conninfo(engine.url)
    WideBase.metadata.create_all(engine)
    drop_vector_index(engine, Article)
    vectors = clustered(rows, seed=4)
    words = [f"word{n}" for n in range(500)]
    rng = np.random.default_rng(4)
    bodies = [" ".join(rng.choice(words, 100)) for _ in range(rows)]
    load(
        conninfo,
        "overhead_articles",
        ["id", "body", "embedding"],
        ((i, bodies[i], v) for i, v in enumerate(vectors)),
    )
    build_index(engine, Article)
    probes = clustered(queries, seed=5)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def truth(query: np.ndarray) -> set[int]:
        return set(np.argsort(1 - unit @ (query / np.linalg.norm(query)))[:10].tolist())

    raw = psycopg.connect(conninfo)
    register_vector(raw)
    session = Session(engine)
    sql = "SELECT id, body FROM overhead_articles ORDER BY embedding <=> %(q)s LIMIT 10"
    found: dict[str, list[set[int]]] = {"peer": [], "nearest": [], "hybrid": []}

    def peer(query: np.ndarray) -> object:
        ids = {row[0] for row in raw.execute(sql, {"q": query}).fetchall()}
        raw.commit()
        found["peer"].append(ids)
        return ids

    def nearest(query: np.ndarray) -> object:
        ids = {row.id for row, _ in session.execute(Article.nearest(query, k=10))}
        session.commit()
        session.expunge_all()
        found["nearest"].append(ids)
        return ids

    def hybrid(query: np.ndarray) -> object:
        stmt = Article.hybrid_search(str(rng.choice(words)), k=10, vector=query)
        ids = {row[0].id for row in session.execute(stmt)}
        session.commit()
        session.expunge_all()
        return ids

    timed = interleaved({"peer": peer, "nearest": nearest, "hybrid": hybrid}, probes)
    warm = min(20, len(probes))
    recall = {
        name: statistics.mean(
            len(ids & truth(q)) / 10 for ids, q in zip(sets[warm:], probes, strict=True)
        )
        for name, sets in found.items()
        if sets
    }
    plan_of = {}
    raw_plan = " ".join(row[0] for row in raw.execute("EXPLAIN " + sql, {"q": probes[0]}))
    raw.rollback()
    plan_of["peer"] = "HNSW" if "Index Scan" in raw_plan else "exact"
    with session.begin():
        plan_of["nearest"] = (
            "HNSW" if indexes_used(session, Article.nearest(probes[0], k=10)) else "exact"
        )
        hybrid_plan = indexes_used(session, Article.hybrid_search("word1", k=10, vector=probes[0]))
        plan_of["hybrid"] = "HNSW" if any(n.endswith("_hnsw") for n in hybrid_plan) else "exact"
    raw.close()
    session.close()
    print(f"\nplans on {rows:,} x {DIMS} rows with a body and its tsvector, median of {queries}")
    print(f"{'path':<46}{'ms':>8}{'recall@10':>11}  plan")
    labels = {
        "peer": "plain ORDER BY <=> LIMIT 10, ef_search 40",
        "nearest": "vecorm nearest(q, 10), defaults",
        "hybrid": "vecorm hybrid_search(text, 10), defaults",
    }
    for name, label in labels.items():
        shown = f"{recall[name]:.3f}" if name in recall else "-"
        print(f"{label:<46}{timed[name]:>8.2f}{shown:>11}  {plan_of[name]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--wide-rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="time the overhead table again through a proxy adding this one-way delay",
    )
    args = parser.parse_args()
    with vecorm.database() as url:
        engine = vecorm.create_engine(url)
        try:
            latencies = (0.0, args.latency_ms) if args.latency_ms else (0.0,)
            overhead(engine, args.rows, args.queries, latencies)
            plans(engine, args.wide_rows, args.queries)
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
