"""Search quality on SciFact (BEIR): nDCG@10, Recall@100, MRR@10 and latency per method.

Reproduces the table of issue #9 with vecorm's own statements, one SQL statement per query,
all-MiniLM-L6-v2 embeddings of ``title + " " + text`` (the local provider, cached on disk),
the full corpus and the 300 test queries. SciFact is read in place (CC BY-NC, never copied):
``<repo>/../shared/data/scifact`` or ``$VECORM_SCIFACT_DIR``.

    python benchmarks/retrieval.py                 # embedded server, ~2 min with a warm cache
    python benchmarks/retrieval.py --json out.json
    VECORM_DATABASE_URL=postgresql://... python benchmarks/retrieval.py
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from vecorm import bm25
from vecorm.engine import create_engine
from vecorm.search.text import TsRankArm, rank_expression
from vecorm.search.tsquery import matches, tsquery_expression
from vecorm.search.vector import QueryInput, nearest, primary_key_columns
from vecorm.tools.embedded import database
from vecorm.tools.evaluation import (
    BASELINE,
    EmbeddingCache,
    EvaluationReport,
    ModeFunction,
    _hybrid,
    _keys_only,
    bm25_mode,
    dense_exact,
    dense_index,
    document_text,
    evaluate,
    load_beir,
    load_collection,
    scratch_model,
    seed_blend,
)


def scifact_dir() -> Path:
    configured = os.environ.get("VECORM_SCIFACT_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def full_text(ranking: str, mode: str, normalization: int) -> ModeFunction:
    def build(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
        query = tsquery_expression(text, language="english", mode=mode)  # type: ignore[arg-type]
        score = rank_expression(
            model.search_vector,
            query,
            ranking=ranking,  # type: ignore[arg-type]
            normalization=normalization,
        ).label("score")
        keys = primary_key_columns(model)
        return select(*keys).where(matches(model, query)).order_by(score.desc(), *keys).limit(depth)

    return build


def bm25_pruned(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
    return bm25.scores(model, text, depth=depth, prune_above=1)


def pgvector_defaults(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
    stmt = _keys_only(model, nearest(model, vector, k=depth))
    return stmt.execution_options(vecorm_hnsw_ef_search=40, vecorm_hnsw_iterative_scan="off")


def rrf_with_ts_rank_cd(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
    from vecorm.search.hybrid import hybrid_search

    arm = TsRankArm(ranking="ts_rank_cd", normalization=0)
    stmt = hybrid_search(model, text, k=depth, vector=vector, method="rrf", lexical=arm)
    return _keys_only(model, stmt)


WEBSEARCH_CD = full_text("ts_rank_cd", "websearch", 0)
OR_CD_0 = full_text("ts_rank_cd", "any", 0)
OR_CD_4 = full_text("ts_rank_cd", "any", 4)
OR_RANK_1 = full_text("ts_rank", "any", 1)
TM2C2 = _hybrid("blend", normalization="theoretical")

#: (label, vecorm spelling, builder) in the order of the issue's table.
METHODS: list[tuple[str, str, ModeFunction]] = [
    ("full text, websearch_to_tsquery (AND), ts_rank_cd", "", WEBSEARCH_CD),
    ("full text, lexemes OR-ed, ts_rank_cd (normalisation 0)", "", OR_CD_0),
    ("full text, lexemes OR-ed, ts_rank_cd (normalisation 4)", "", OR_CD_4),
    ("full text, lexemes OR-ed, ts_rank (normalisation 1)", "ranking='ts_rank'", OR_RANK_1),
    ("BM25 (k1 0.9, b 0.4), MaxScore pruning", "BM25(prune_above=1)", bm25_pruned),
    ("**BM25 (k1 0.9, b 0.4): vecorm's default**", "Document.text_search", bm25_mode),
    ("dense, exact cosine", "nearest(exact=True)", dense_exact),
    ("dense, HNSW m16, ef_search 40, no iterative scan", "pgvector defaults", pgvector_defaults),
    ("dense, HNSW m16, ef_search 100, iterative scan", "the hybrid's arm", dense_index),
    ("seed's hybrid: semantic top-50 LEFT JOIN ts_rank, w 0.7", "", seed_blend),
    ("RRF (k 60), dense top-100 + ts_rank_cd top-100", "", rrf_with_ts_rank_cd),
    ("RRF (k 60), dense top-100 + BM25 top-100", "method='rrf'", _hybrid("rrf")),
    ("blend, theoretical min-max (TM2C2), w 0.5", "normalization='theoretical'", TM2C2),
    (
        "blend, per-query min-max, w 0.5, a row one arm missed scores that arm's worst",
        "missing='worst'",
        _hybrid("blend", missing="worst"),
    ),
    (
        "**blend, per-query min-max, w 0.5, both scores of every candidate: "
        "vecorm's default hybrid**",
        "hybrid_search",
        _hybrid("blend"),
    ),
]


def table(report: EvaluationReport) -> str:
    lines = [
        "| method | nDCG@10 | Recall@100 | MRR@10 | median ms | p95 ms | p vs dense | vecorm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, note, _ in METHODS:
        result = report.modes[label]
        p_value = "" if result.p_value is None else f"{result.p_value:.2g}"
        lines.append(
            f"| {label} | {result.metrics['nDCG@10']:.3f} | {result.metrics['R@100']:.3f} | "
            f"{result.metrics['RR@10']:.3f} | {result.median_ms:.1f} | {result.p95_ms:.1f} | "
            f"{p_value} | {note} |"
        )
    return "\n".join(lines)


def goals(report: EvaluationReport) -> list[str]:
    ndcg = {label: report.modes[label].metrics["nDCG@10"] for label, _, _ in METHODS}
    bm25_default, dense, hnsw = ndcg[METHODS[5][0]], ndcg[METHODS[6][0]], ndcg[METHODS[8][0]]
    hybrid = ndcg[METHODS[-1][0]]
    best_single = max(bm25_default, dense, hnsw)
    hybrid_ms = report.modes[METHODS[-1][0]].median_ms
    checks = [
        (f"BM25 >= 0.69 nDCG@10: {bm25_default:.3f}", bm25_default >= 0.69),
        (f"dense exact 0.645 +- 0.005: {dense:.3f}", abs(dense - 0.645) <= 0.005),
        (f"HNSW within 0.005 of exact: {hnsw - dense:+.3f}", abs(hnsw - dense) <= 0.005),
        (f"MaxScore BM25 within 0.005 of the default: {ndcg[METHODS[4][0]] - bm25_default:+.4f}",
         abs(bm25_default - ndcg[METHODS[4][0]]) <= 0.005),
        (f"default hybrid >= 0.73: {hybrid:.3f}", hybrid >= 0.73),
        (f"default hybrid >= best single + 0.03: {hybrid - best_single:+.3f}",
         hybrid >= best_single + 0.03),
        (f"median hybrid latency <= 20 ms: {hybrid_ms:.1f} ms", hybrid_ms <= 20),
    ]  # fmt: skip
    return [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=scifact_dir())
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    from vecorm.embedding.embedders.local import LocalEmbedder

    collection = load_beir(args.data, "test")
    embedder = LocalEmbedder()
    cache = EmbeddingCache(args.cache_dir)
    texts = [document_text(title, body) for title, body in collection.corpus.values()]
    documents = cache.embed(embedder, texts, progress=True)
    query_ids = list(collection.qrels)
    query_matrix = cache.embed(embedder, [collection.queries[q] for q in query_ids])
    vectors = {q: query_matrix[i] for i, q in enumerate(query_ids)}
    model = scratch_model(embedder.dimensions, table="vecorm_bench_scifact")
    with database() as url:
        engine = create_engine(url)
        try:
            model.metadata.drop_all(engine)
            model.metadata.create_all(engine)
            with Session(engine) as session:
                load_collection(session, model, collection, documents)
                modes = {label: build for label, _, build in METHODS}
                modes = {METHODS[6][0]: modes[METHODS[6][0]], **modes}  # baseline first
                report = evaluate(
                    session,
                    model,
                    collection.queries,
                    collection.qrels,
                    modes=modes,
                    vectors=vectors,
                    baseline=METHODS[6][0],
                    progress=True,
                )
            model.metadata.drop_all(engine)
        finally:
            engine.dispose()
    print(
        f"\nSciFact test: {len(collection.corpus)} documents, {report.queries} queries, "
        f"{embedder.model_name}; p: paired t-test of per-query nDCG@10 vs {BASELINE} exact\n"
    )
    print(table(report))
    print("\nGoals (issue #9):")
    print("\n".join(goals(report)))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report.as_dict(), indent=2))


if __name__ == "__main__":
    main()
