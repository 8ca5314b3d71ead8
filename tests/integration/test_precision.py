"""Index precision: vector, halfvec expression and binary-quantized indexes on real PostgreSQL.

Each precision must create the right index (catalog), be used by ``nearest()`` (EXPLAIN) and
rank like an exact search within the recall stated in docs/scaling.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import String, insert, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from tests.integration.catalog import indexes
from vecorm.search.settings import index_search_options
from vecorm.search.vector import nearest_candidates, python_distance
from vecorm.testing.assertions import assert_index_used, indexes_used
from vecorm.testing.server import TestServer, fresh_database

DIMS = 128
ROWS = 1500


class Base(DeclarativeBase):
    pass


def _model(name: str, **config: object) -> type[vecorm.Searchable]:
    attributes: dict[str, object] = {
        "__tablename__": name,
        "__vecorm__": vecorm.SearchConfig(fields=("title",), **config),  # type: ignore[arg-type]
        "__annotations__": {"id": Mapped[int], "title": Mapped[str], "category": Mapped[str]},
        "id": mapped_column(primary_key=True),
        "title": mapped_column(String(40)),
        "category": mapped_column(String(10), default="a"),
    }
    return type(name.title().replace("_", ""), (vecorm.Searchable, Base), attributes)


VectorDoc = _model("vector_docs", dimensions=DIMS, index=vecorm.HNSW(precision="vector"))
HalfDoc = _model("half_docs", dimensions=DIMS, index=vecorm.HNSW(precision="halfvec"))
BitDoc = _model("bit_docs", dimensions=DIMS, index=vecorm.HNSW(precision="bit"))
BitIvfDoc = _model(
    "bit_ivf_docs", dimensions=DIMS, index=vecorm.IVFFlat(lists=10, precision="bit", rerank=30)
)
HalfStoredBitDoc = _model(
    "half_stored_bit_docs", dimensions=DIMS, storage="halfvec", index=vecorm.HNSW(precision="bit")
)
LargeDoc = _model("large_docs", dimensions=3072)  # text-embedding-3-large
HugeDoc = _model("huge_docs", dimensions=4096)

MODELS = {
    "vector": (VectorDoc, "ix_vector_docs_embedding_hnsw"),
    "halfvec": (HalfDoc, "ix_half_docs_embedding_halfvec_hnsw"),
    "bit": (BitDoc, "ix_bit_docs_embedding_bit_hnsw"),
    "bit_ivfflat": (BitIvfDoc, "ix_bit_ivf_docs_embedding_bit_ivfflat"),
    "halfvec_stored_bit": (HalfStoredBitDoc, "ix_half_stored_bit_docs_embedding_bit_hnsw"),
}
#: Recall@10 each precision must reach against exact full-precision search on the test data.
#: 128 sign bits tell near neighbours apart less well than 1536 do: at the default
#: rerank (k * 40 candidates) even an exact Hamming scan would find 0.84 here
#: (benchmarks/scale.py measures 1536 dimensions); ``candidates=`` buys the rest.
RECALL = {"vector": 0.97, "halfvec": 0.97, "bit": 0.75}


def clustered(count: int, dims: int, *, seed: int, clusters: int = 20) -> np.ndarray:
    """Points around ``clusters`` random centres: the shape real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dims))
    points = centres[rng.integers(0, clusters, count)] + 0.6 * rng.normal(size=(count, dims))
    return points.astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(ROWS, DIMS, seed=3)


@pytest.fixture(scope="module")
def filled(
    vecorm_server: TestServer, vecorm_template: str, vectors: np.ndarray
) -> Iterator[Engine]:
    """One database for the module (the tests only read): rows first, then the indexes."""
    with fresh_database(vecorm_server, vecorm_template) as url:
        engine = vecorm.create_engine(url)
        rows = [
            {"id": i, "title": f"doc {i}", "category": "ab"[i % 2], "embedding": vector}
            for i, vector in enumerate(vectors)
        ]
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
            for model, index_name in MODELS.values():
                table = model.__table__  # type: ignore[attr-defined]
                (index,) = [index for index in table.indexes if index.name == index_name]
                index.drop(conn)
                conn.execute(insert(table), rows)
                index.create(conn)
            conn.execute(text("ANALYZE"))
        try:
            yield engine
        finally:
            engine.dispose()


def exact_top(
    vectors: np.ndarray, query: np.ndarray, k: int, ids: np.ndarray | None = None
) -> set[int]:
    candidates = np.arange(len(vectors)) if ids is None else ids
    distances = [python_distance(vecorm.Distance.COSINE, vectors[i], query) for i in candidates]
    return {int(candidates[i]) for i in np.argsort(distances)[:k]}


def test_each_precision_creates_its_index(filled: Engine) -> None:
    with filled.connect() as conn:
        found = {name: indexes(conn, model.__tablename__) for name, (model, _) in MODELS.items()}
    definition = {name: found[name][index].definition for name, (_, index) in MODELS.items()}
    assert "USING hnsw (embedding vector_cosine_ops)" in definition["vector"]
    assert "USING hnsw (((embedding)::halfvec(128)) halfvec_cosine_ops)" in definition["halfvec"]
    assert (
        "USING hnsw (((binary_quantize(embedding))::bit(128)) bit_hamming_ops)" in definition["bit"]
    )
    assert (
        "USING ivfflat (((binary_quantize(embedding))::bit(128)) bit_hamming_ops)"
        in (definition["bit_ivfflat"])
    )
    assert (
        "((binary_quantize(embedding))::bit(128)) bit_hamming_ops"
        in (definition["halfvec_stored_bit"])
    )
    assert found["bit"]["ix_bit_docs_embedding_bit_hnsw"].options == (
        "ef_construction=64",
        "m=16",
    )
    # Nothing but the configured vector index and the GIN index.
    assert sorted(found["halfvec"]) == [
        "half_docs_pkey",
        "ix_half_docs_embedding_halfvec_hnsw",
        "ix_half_docs_search_vector_gin",
    ]


@pytest.mark.parametrize("name", list(MODELS))
def test_nearest_uses_the_index(filled: Engine, vectors: np.ndarray, name: str) -> None:
    model, index = MODELS[name]
    query = clustered(1, DIMS, seed=11)[0]
    with Session(filled) as session, session.begin():
        session.execute(text("SET LOCAL enable_seqscan = off"))
        assert_index_used(session, model.nearest(query, k=10), index)
        filtered = model.nearest(query, k=10).where(model.category == "a")
        assert_index_used(session, filtered, index)
        assert index not in indexes_used(session, model.nearest(query, k=10, exact=True))


def test_halfvec_query_writes_the_index_expression() -> None:
    sql = str(HalfDoc.nearest(np.ones(DIMS), k=3).compile(dialect=postgresql.dialect()))
    assert "CAST(half_docs.embedding AS HALFVEC(128)) <=> CAST(" in sql
    assert "AS HALFVEC(128))" in sql.split("<=>")[1]


def test_binary_query_is_one_statement_with_consistent_settings() -> None:
    stmt = BitDoc.nearest(np.ones(DIMS), k=10).where(BitDoc.category == "a")
    sql = str(stmt.compile(dialect=postgresql.dialect()))
    outer, inner = sql.split("bit_docs.id = ANY(ARRAY((SELECT bit_docs.id", 1)
    # Candidates by Hamming distance through the index, filtered by the same WHERE ...
    assert "binary_quantize(bit_docs.embedding) AS BIT(128)) <~> CAST(binary_quantize(" in inner
    assert "bit_docs.category = " in inner and "LIMIT" in inner
    # ... re-ranked by the exact distance on the stored column.
    assert "bit_docs.embedding <=> CAST(" in outer  # the exact distance, selected ...
    assert sql.rsplit("ORDER BY", 1)[1].split()[:3] == ["distance,", "bit_docs.id", "LIMIT"]
    assert stmt.get_execution_options()["vecorm_hnsw_ef_search"] == 400  # k * rerank (40)
    assert stmt.get_execution_options()["vecorm_hnsw_iterative_scan"] == "relaxed_order"
    wide = BitDoc.nearest(np.ones(DIMS), k=10, candidates=900)
    assert wide.get_execution_options()["vecorm_hnsw_ef_search"] == 900
    with pytest.raises(vecorm.ConfigurationError, match="candidates must be an integer >= k"):
        BitDoc.nearest(np.ones(DIMS), k=10, candidates=5)


@pytest.mark.parametrize("name", list(RECALL))
def test_rankings_match_exact_search(filled: Engine, vectors: np.ndarray, name: str) -> None:
    model, _ = MODELS[name]
    queries = clustered(8, DIMS, seed=21)
    recalls = []
    wide_recalls = []
    with Session(filled) as session:
        for query in queries:
            if name.startswith("bit"):
                wide = session.execute(model.nearest(query, k=10, candidates=1000)).all()
                got = {row[0].id for row in wide}
                wide_recalls.append(len(got & exact_top(vectors, query, 10)) / 10)
            rows = session.execute(model.nearest(query, k=10)).all()
            assert len(rows) == 10
            got = {row[0].id for row in rows}
            recalls.append(len(got & exact_top(vectors, query, 10)) / 10)
            distances = [row.distance for row in rows]
            assert distances == sorted(distances)
            if name.startswith("bit"):  # re-ranked by the exact distance on the stored column
                first = rows[0][0]
                expected = python_distance(vecorm.Distance.COSINE, vectors[first.id], query)
                assert rows[0].distance == pytest.approx(expected, abs=1e-5)
    assert np.mean(recalls) >= RECALL[name], recalls
    if wide_recalls:
        assert np.mean(wide_recalls) >= 0.97, wide_recalls


@pytest.mark.parametrize("name", ["halfvec", "bit"])
def test_filters_apply_inside_the_search(filled: Engine, vectors: np.ndarray, name: str) -> None:
    model, _ = MODELS[name]
    ids_b = np.arange(1, ROWS, 2)
    recalls = []
    with Session(filled) as session:
        # Two queries through the same cached statement shape: values are not stale.
        for seed in (31, 32):
            query = clustered(1, DIMS, seed=seed)[0]
            rows = session.execute(model.nearest(query, k=10).where(model.category == "b")).all()
            assert {row[0].category for row in rows} == {"b"}
            assert len(rows) == 10
            got = {row[0].id for row in rows}
            recalls.append(len(got & exact_top(vectors, query, 10, ids_b)) / 10)
    assert np.mean(recalls) >= 0.9, recalls


def test_hybrid_search_and_distance_to_keep_working(filled: Engine, vectors: np.ndarray) -> None:
    query = vectors[7] + 0.01
    with Session(filled) as session, session.begin():
        for model, _ in MODELS.values():
            rows = session.execute(model.hybrid_search("doc", k=5, vector=query)).all()
            assert rows[0][0].id == 7
        session.execute(text("SET LOCAL enable_seqscan = off"))
        # The semantic arm of a halfvec model orders by the index's expression.
        hybrid = HalfDoc.hybrid_search("doc", k=5, vector=query)
        assert_index_used(session, hybrid, "ix_half_docs_embedding_halfvec_hnsw")
        # ... and that of a binary model takes its Hamming candidates from the bit index.
        bit_hybrid = BitDoc.hybrid_search("doc", k=5, vector=query)
        assert_index_used(session, bit_hybrid, "ix_bit_docs_embedding_bit_hnsw")
        document = session.get(HalfDoc, 7)
        assert document is not None
        in_sql = session.execute(select(HalfDoc.distance_to(query)).where(HalfDoc.id == 7)).scalar()
        assert document.distance_to(query) == pytest.approx(in_sql, abs=1e-6)


def test_dimensions_over_2000_get_a_valid_index_by_default(
    vecorm_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    assert vecorm.search_config(LargeDoc).index_precision == "halfvec"
    assert vecorm.search_config(HugeDoc).index_precision == "bit"
    with caplog.at_level(logging.INFO, logger="vecorm"):
        _model("larger_docs", dimensions=3072)
    assert "3072 dimensions exceed pgvector's limit for vector indexes" in caplog.text
    assert "LargerDocs" in caplog.text
    Base.metadata.create_all(vecorm_engine)
    big = clustered(40, 3072, seed=5)
    with vecorm_engine.begin() as conn:
        conn.execute(
            insert(LargeDoc), [{"id": i, "title": "t", "embedding": v} for i, v in enumerate(big)]
        )
        conn.execute(
            insert(HugeDoc),
            [{"id": i, "title": "t", "embedding": np.resize(v, 4096)} for i, v in enumerate(big)],
        )
        found = indexes(conn, "large_docs")["ix_large_docs_embedding_halfvec_hnsw"]
        assert "((embedding)::halfvec(3072)) halfvec_cosine_ops" in found.definition
        assert "ix_huge_docs_embedding_bit_hnsw" in indexes(conn, "huge_docs")
    with Session(vecorm_engine) as session, session.begin():
        session.execute(text("SET LOCAL enable_seqscan = off"))
        stmt = LargeDoc.nearest(big[3], k=3)
        assert_index_used(session, stmt, "ix_large_docs_embedding_halfvec_hnsw")
        assert session.execute(stmt).first()[0].id == 3  # type: ignore[index]
        huge = HugeDoc.nearest(np.resize(big[4], 4096), k=3)
        assert_index_used(session, huge, "ix_huge_docs_embedding_bit_hnsw")
        assert session.execute(huge).first()[0].id == 4  # type: ignore[index]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            dict(dimensions=3072, index=vecorm.HNSW(precision="vector")),
            "Impossible.__vecorm__: pgvector cannot index vector over 2000 dimensions",
        ),
        (
            dict(dimensions=16000, storage="halfvec", index=vecorm.HNSW(precision="halfvec")),
            "cannot index halfvec over 4000 dimensions",
        ),
        (
            dict(storage="halfvec", index=vecorm.HNSW(precision="vector")),
            "precision='vector' on a storage='halfvec' column",
        ),
        (dict(dimensions=3072, index=vecorm.HNSW(rerank=4)), "rerank applies to precision='bit'"),
    ],
)
def test_impossible_precision_is_a_clear_error(config: dict[str, object], message: str) -> None:
    class Other(DeclarativeBase):
        pass

    with pytest.raises(vecorm.ConfigurationError, match="IVFFlat rerank applies to precision"):
        vecorm.IVFFlat(precision="halfvec", rerank=4)
    with pytest.raises(vecorm.ConfigurationError, match="HNSW precision must be one of"):
        vecorm.HNSW(precision="float8")  # type: ignore[arg-type]
    with pytest.raises(vecorm.ConfigurationError, match=message):
        type(
            "Impossible",
            (vecorm.Searchable, Other),
            {
                "__tablename__": "impossible",
                "__vecorm__": vecorm.SearchConfig(fields=("title",), **config),  # type: ignore[arg-type]
                "__annotations__": {"id": Mapped[int], "title": Mapped[str]},
                "id": mapped_column(primary_key=True),
                "title": mapped_column(String(40)),
            },
        )


@pytest.mark.parametrize("name", ["halfvec", "bit"])
def test_nearest_candidates_for_a_hybrid_arm(filled: Engine, name: str) -> None:
    model, index = MODELS[name]
    query = clustered(1, DIMS, seed=41)[0]
    arm = nearest_candidates(model, query, where=[model.category == "a"], depth=10)
    arm = arm.execution_options(**index_search_options(vecorm.search_config(model), depth=10 * 40))
    with Session(filled) as session, session.begin():
        keys = [row.pk_0 for row in session.execute(arm)]
        expected = [
            row[0].id
            for row in session.execute(model.nearest(query, k=10).where(model.category == "a"))
        ]
        session.execute(text("SET LOCAL enable_seqscan = off"))
        assert_index_used(session, arm, index)
    assert keys == expected and all(key % 2 == 0 for key in keys)
