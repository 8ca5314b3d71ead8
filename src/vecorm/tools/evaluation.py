"""Judge search on relevance judgements: metrics, latency and significance per search mode.

:func:`evaluate` runs each *mode* (dense exact, dense HNSW, BM25, ``ts_rank``, the seed's
blend, RRF, the normalised blend, or your own) for every query on your model and your
judgements, and returns nDCG@10, Recall@100 and MRR@10 (computed by ``ir-measures``, whose
nDCG is trec_eval's own code through ``pytrec_eval``), median / p95 statement latency and a
paired t-test of each mode's per-query nDCG@10 against the baseline (dense exact)::

    report = vecorm.evaluate(
        session, Document,
        queries={"q1": "statin myopathy risk"},
        qrels={"q1": {"doc-17": 1, "doc-4": 0}},
    )
    print(report.table())
    report.modes["blend"].metrics["nDCG@10"]

A query that finds nothing scores 0 (trec_eval's ``-c``: every judged query counts).
``vecorm eval DIR`` (:func:`run_beir`) does the same on a BEIR-layout collection loaded into a
scratch table, with embeddings cached on disk by content hash.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import Select, func, literal, select
from sqlalchemy.orm import Session

from vecorm.embedding.embedders.base import Embedder
from vecorm.errors import ConfigurationError
from vecorm.progress import new_bar, shows
from vecorm.search.vector import QueryInput, nearest, primary_key_columns

#: The measures reported, as ir-measures names them.
MEASURES: tuple[str, ...] = ("nDCG@10", "R@100", "RR@10")
#: The report's metric columns: table header (and JSON key) -> ir-measures name.
METRIC_COLUMNS: dict[str, str] = {"nDCG@10": "nDCG@10", "Recall@100": "R@100", "MRR@10": "RR@10"}
#: Rows retrieved per query (Recall@100 needs 100).
DEFAULT_DEPTH = 100

ModeFunction = Callable[[Any, str, QueryInput, int], Select[Any]]
"""``(model, text, vector, depth) -> Select`` whose first columns are the primary key, best
row first."""


# --------------------------------------------------------------------------- modes


def _keys_only(model: Any, stmt: Select[Any]) -> Select[Any]:
    return stmt.with_only_columns(*primary_key_columns(model))


def dense_exact(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
    """Exact nearest neighbours (no index): the ceiling of the embedding."""
    return _keys_only(model, nearest(model, vector, k=depth, exact=True))


def dense_index(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
    """Nearest neighbours through the vector index, ``ef_search`` = depth with iterative
    scan, as the hybrid's semantic arm searches (the planner may still scan exactly)."""
    stmt = _keys_only(model, nearest(model, vector, k=depth))
    return stmt.execution_options(vecorm_hnsw_ef_search=max(depth, 1))


def bm25_mode(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
    """BM25 over the generated tsvector (any-term)."""
    from vecorm.search.bm25 import scores

    return scores(model, text, depth=depth)


def ts_rank_mode(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
    """PostgreSQL's ``ts_rank`` (normalisation 1) over any-term matches."""
    from vecorm.search.text import text_search

    return _keys_only(model, text_search(model, text, depth, ranking="ts_rank"))


def seed_blend(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
    """The seed's hybrid: semantic top-50 LEFT JOIN unnormalised ``ts_rank``, ``w = 0.7``."""
    from vecorm.search.text import rank_expression
    from vecorm.search.tsquery import matches, tsquery_expression
    from vecorm.search.vector import distance_expression

    keys = primary_key_columns(model)
    distance = distance_expression(model, vector).label("distance")
    semantic = (
        select(*(key.label(f"pk_{i}") for i, key in enumerate(keys)), distance)
        .where(model.embedding.is_not(None))
        .order_by(distance, *keys)
        .limit(50)
        .subquery("semantic")
    )
    semantic_keys = [semantic.c[f"pk_{i}"] for i in range(len(keys))]
    query = tsquery_expression(text, language=model.__vecorm__.language, mode="all")
    rank = func.coalesce(
        select(rank_expression(model.search_vector, query, normalization=0))
        .where(
            matches(model, query),
            *(key == column for key, column in zip(keys, semantic_keys, strict=True)),
        )
        .scalar_subquery(),
        0.0,
    )
    score = (literal(0.7) * (literal(1.0) - semantic.c.distance) + literal(0.3) * rank).label(
        "score"
    )
    return select(*semantic_keys, score).order_by(score.desc(), *semantic_keys).limit(depth)


def _hybrid(method: Literal["blend", "rrf"], **options: Any) -> ModeFunction:
    def mode(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
        from vecorm.search.hybrid import hybrid_search

        stmt = hybrid_search(
            model, text, k=depth, vector=vector, method=method, depth=depth, **options
        )
        return _keys_only(model, stmt)

    mode.__doc__ = f"vecorm's hybrid search, method={method!r} {options or ''}".strip()
    return mode


rrf_mode = _hybrid("rrf")
blend_mode = _hybrid("blend")
#: The blend as classic top-k fusion: a row one arm missed counts as that arm's worst.
blend_topk_mode = _hybrid("blend", missing="worst")

#: Mode name -> statement builder, in the order the table prints them.
MODES: dict[str, ModeFunction] = {
    "dense": dense_exact,
    "dense_hnsw": dense_index,
    "bm25": bm25_mode,
    "ts_rank": ts_rank_mode,
    "seed_blend": seed_blend,
    "rrf": rrf_mode,
    "blend_topk": blend_topk_mode,
    "blend": blend_mode,
}
BASELINE = "dense"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ModeResult:
    """One mode's numbers: mean metrics, latency (ms) and the test against the baseline."""

    name: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    latencies_ms: list[float] = field(repr=False)
    p_value: float | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else math.nan

    @property
    def p95_ms(self) -> float:
        if not self.latencies_ms:
            return math.nan
        return float(np.percentile(self.latencies_ms, 95))


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate` returns: per-mode :class:`ModeResult`, in run order."""

    modes: dict[str, ModeResult]
    baseline: str | None
    queries: int

    def headers(self) -> list[str]:
        """The table's column names, which are also the keys of each mode in :meth:`as_dict`."""
        return ["mode", *METRIC_COLUMNS, "median ms", "p95 ms", self.p_header]

    @property
    def p_header(self) -> str:
        """``"p vs dense"``: the column of the paired t-test against the baseline."""
        return f"p vs {self.baseline or 'baseline'}"

    def rows(self) -> list[dict[str, Any]]:
        """One mapping per mode, keyed by :meth:`headers` (the numbers unrounded)."""
        return [
            {
                "mode": result.name,
                **{header: result.metrics[measure] for header, measure in METRIC_COLUMNS.items()},
                "median ms": result.median_ms,
                "p95 ms": result.p95_ms,
                self.p_header: result.p_value,
            }
            for result in self.modes.values()
        ]

    def table(self) -> str:
        """A Markdown table: one row per mode."""
        headers = self.headers()
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in self.rows():
            cells = [row["mode"]]
            cells.extend(f"{row[header]:.3f}" for header in METRIC_COLUMNS)
            cells.extend(f"{row[header]:.1f}" for header in ("median ms", "p95 ms"))
            p_value = row[self.p_header]
            cells.append("" if p_value is None else f"{p_value:.3g}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (``vecorm eval --json``): ``columns`` are the table's headers
        and each mode's keys are exactly those, plus ``per_query`` (the metric columns per
        query id)::

            {"queries": 300, "baseline": "dense", "columns": ["mode", "nDCG@10", ...],
             "modes": {"bm25": {"mode": "bm25", "nDCG@10": 0.69, ..., "p vs dense": 0.02,
                                "per_query": {"q1": {"nDCG@10": 1.0, ...}}}}}
        """
        modes: dict[str, Any] = {}
        for row, result in zip(self.rows(), self.modes.values(), strict=True):
            per_query = {
                query: {header: values[measure] for header, measure in METRIC_COLUMNS.items()}
                for query, values in result.per_query.items()
            }
            modes[result.name] = {**row, "per_query": per_query}
        return {
            "queries": self.queries,
            "baseline": self.baseline,
            "columns": self.headers(),
            "modes": modes,
        }


def score_run(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """``{measure: {query_id: value}}`` for ranked ``run`` lists; unretrieved queries score 0.

    Computed by ``ir-measures`` (trec_eval through ``pytrec_eval`` for nDCG and recall).
    """
    import ir_measures

    measures = [ir_measures.parse_measure(name) for name in MEASURES]
    scored_run = {
        query_id: {doc_id: float(len(ranked) - rank) for rank, doc_id in enumerate(ranked)}
        for query_id, ranked in run.items()
        if ranked
    }
    judged = {
        query_id: {doc_id: int(grade) for doc_id, grade in judgements.items()}
        for query_id, judgements in qrels.items()
    }
    values: dict[str, dict[str, float]] = {name: dict.fromkeys(judged, 0.0) for name in MEASURES}
    for metric in ir_measures.iter_calc(measures, judged, scored_run):
        if metric.query_id in judged:
            values[str(metric.measure)][metric.query_id] = float(metric.value)
    return values


def _paired_p_value(left: Sequence[float], right: Sequence[float]) -> float | None:
    from scipy import stats

    differences = np.asarray(left) - np.asarray(right)
    if len(differences) < 2 or not np.any(differences):
        return None if len(differences) < 2 else 1.0
    return float(stats.ttest_rel(left, right).pvalue)


def _doc_id(row: Sequence[Any], width: int) -> str:
    return str(row[0]) if width == 1 else "|".join(str(value) for value in row[:width])


def evaluate(
    session: Session,
    model: Any,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    modes: Iterable[str] | Mapping[str, ModeFunction] | None = None,
    k: int = 10,
    depth: int = DEFAULT_DEPTH,
    vectors: Mapping[str, QueryInput] | None = None,
    baseline: str | None = BASELINE,
    progress: bool = False,
) -> EvaluationReport:
    """Run ``modes`` for every judged query and score them against ``qrels``.

    ``queries`` maps query id to text, ``qrels`` query id to ``{document id: grade}`` where a
    document id is ``str(primary key)`` (``"a|b"`` for a composite key). ``vectors`` gives
    precomputed query vectors (else the model's embedder embeds the text); latency is the
    statement alone. ``modes`` names entries of :data:`MODES` (default: all, less ``bm25``
    for a model without BM25 statistics) or maps names to your own builders. ``k`` must be
    10: the reported measures are nDCG@10 and MRR@10.
    """
    if k != 10:
        raise ConfigurationError("evaluate reports nDCG@10, Recall@100 and MRR@10: pass k=10")
    chosen = _resolve_modes(modes)
    if modes is None:
        from vecorm.search.bm25 import has_bm25

        if not has_bm25(model):
            chosen.pop("bm25")  # SearchConfig(bm25=None): the hybrids use ts_rank instead
    judged = [query_id for query_id in qrels if query_id in queries]
    if not judged:
        raise ConfigurationError("no query in qrels has a text in queries; check the query ids")
    missing = [query_id for query_id in qrels if query_id not in queries]
    if missing:
        raise ConfigurationError(
            f"{len(missing)} judged queries have no text (e.g. {missing[0]!r}); "
            "pass their texts in queries or drop them from qrels"
        )
    from vecorm.search.vector import query_vector

    query_vectors = {
        query_id: (
            vectors[query_id]
            if vectors is not None and query_id in vectors
            else query_vector(model, queries[query_id])
        )
        for query_id in judged
    }
    width = len(primary_key_columns(model))
    results: dict[str, ModeResult] = {}
    for name, build in chosen.items():
        run: dict[str, list[str]] = {}
        latencies: list[float] = []
        for query_id in _progress(judged, progress, f"{name:>10}"):
            stmt = build(model, queries[query_id], query_vectors[query_id], depth)
            started = time.perf_counter()
            rows = session.execute(stmt).all()
            latencies.append((time.perf_counter() - started) * 1000.0)
            run[query_id] = [_doc_id(row, width) for row in rows]
        session.rollback()  # nothing to keep; ends the transaction the statements ran in
        per_measure = score_run({q: qrels[q] for q in judged}, run)
        metrics = {
            measure: float(np.mean(list(values.values())))
            for measure, values in per_measure.items()
        }
        per_query = {
            query_id: {measure: per_measure[measure][query_id] for measure in MEASURES}
            for query_id in judged
        }
        results[name] = ModeResult(name, metrics, per_query, latencies)
    if baseline is not None and baseline in results:
        base = results[baseline]
        for name, result in list(results.items()):
            if name == baseline:
                continue
            p_value = _paired_p_value(
                [result.per_query[q]["nDCG@10"] for q in judged],
                [base.per_query[q]["nDCG@10"] for q in judged],
            )
            results[name] = ModeResult(
                name, result.metrics, result.per_query, result.latencies_ms, p_value
            )
    return EvaluationReport(results, baseline if baseline in results else None, len(judged))


def _resolve_modes(
    modes: Iterable[str] | Mapping[str, ModeFunction] | None,
) -> dict[str, ModeFunction]:
    if modes is None:
        return dict(MODES)
    if isinstance(modes, Mapping):
        return dict(modes)
    chosen = {}
    for name in modes:
        if name not in MODES:
            raise ConfigurationError(
                f"unknown mode {name!r}; use one of {', '.join(MODES)} or pass a mapping of "
                "name -> builder"
            )
        chosen[name] = MODES[name]
    return chosen


def _progress(items: Sequence[str], enabled: bool, label: str) -> Iterable[str]:
    if not enabled or not shows("auto"):
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars come with vecorm[cli]
        return items
    return tqdm(items, desc=label, unit="q", leave=False)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- BEIR collections


@dataclass(frozen=True)
class Collection:
    """A BEIR-layout collection: ``corpus`` id -> (title, text), queries, judgements."""

    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def subset(self, *, max_queries: int | None = None, max_docs: int | None = None) -> Collection:
        """The first ``max_queries`` judged queries, every document they judge, and the first
        ``max_docs`` documents in all (judged ones first)."""
        query_ids = [q for q in self.qrels if q in self.queries][:max_queries]
        qrels = {q: self.qrels[q] for q in query_ids}
        judged = [d for q in query_ids for d in qrels[q] if d in self.corpus]
        keep = dict.fromkeys(judged)
        limit = len(self.corpus) if max_docs is None else max(max_docs, len(keep))
        for doc_id in self.corpus:
            if len(keep) >= limit:
                break
            keep.setdefault(doc_id)
        return Collection(
            {d: self.corpus[d] for d in keep}, {q: self.queries[q] for q in query_ids}, qrels
        )


def _open_jsonl(directory: Path, stem: str) -> Iterator[dict[str, Any]]:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        path = directory / name
        if path.exists():
            opener: Any = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)
            return
    raise ConfigurationError(f"{directory} has no {stem}.jsonl or {stem}.jsonl.gz (BEIR layout)")


def load_beir(directory: str | os.PathLike[str], split: str = "test") -> Collection:
    """Read ``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]`` and ``qrels/<split>.tsv``."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigurationError(f"{root} is not a directory")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        raise ConfigurationError(f"{qrels_path} does not exist; pick a split with --split")
    corpus = {
        str(doc["_id"]): (str(doc.get("title") or ""), str(doc.get("text") or ""))
        for doc in _open_jsonl(root, "corpus")
    }
    queries = {str(query["_id"]): str(query["text"]) for query in _open_jsonl(root, "queries")}
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) < 3 or row[2] == "score":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return Collection(corpus, queries, qrels)


# --------------------------------------------------------------------------- embedding cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vecorm/embeddings`` (``~/.cache/vecorm/embeddings``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vecorm" / "embeddings"


class EmbeddingCache:
    """Vectors on disk, one ``.npy`` per text, keyed by SHA-256 of model name and text::

    vectors = EmbeddingCache(Path("/tmp/cache")).embed(embedder, ["a", "b"])
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def _path(self, model_name: str, text: str) -> Path:
        digest = hashlib.sha256(f"{model_name}\x00{text}".encode()).hexdigest()
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)
        return self.directory / folder / digest[:2] / f"{digest}.npy"

    def embed(
        self, embedder: Embedder, texts: Sequence[str], *, progress: bool = False
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Vectors for ``texts``, embedding (in provider-sized batches) only uncached ones."""
        vectors: list[np.ndarray[Any, Any] | None] = []
        for text in texts:
            path = self._path(embedder.model_name, text)
            vectors.append(np.load(path) if path.exists() else None)
        todo = [i for i, vector in enumerate(vectors) if vector is None]
        batch = max(1, int(getattr(embedder, "max_batch_size", 64) or 64))
        bar: Any = None
        if progress and todo:
            bar = new_bar(total=len(todo), desc="embedding", unit="text", enabled="auto")
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            computed = np.asarray(embedder.embed([texts[i] for i in chunk]), dtype=np.float32)
            for i, vector in zip(chunk, computed, strict=True):
                path = self._path(embedder.model_name, texts[i])
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(temporary, vector)
                os.replace(temporary, path)
                vectors[i] = vector
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        if not texts:
            return np.zeros((0, embedder.dimensions), dtype=np.float32)
        return np.vstack([vector for vector in vectors if vector is not None]).astype(np.float32)


# --------------------------------------------------------------------------- scratch model


def scratch_model(dimensions: int, *, table: str = "vecorm_eval_documents") -> type[Any]:
    """A searchable ``(id, title, body)`` model on its own metadata, for one evaluation run."""
    from sqlalchemy import Text
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    from vecorm.mixin import Searchable
    from vecorm.schema.config import HNSW, SearchConfig

    class ScratchBase(DeclarativeBase):
        pass

    attributes = {
        "__tablename__": table,
        "__vecorm__": SearchConfig(
            fields=("title", "body"), dimensions=dimensions, index=HNSW(m=16, ef_construction=64)
        ),
        "id": mapped_column(Text, primary_key=True),
        "title": mapped_column(Text, nullable=False),
        "body": mapped_column(Text, nullable=False),
    }
    return type("EvalDocument", (Searchable, ScratchBase), attributes)


def load_collection(
    session: Session,
    model: Any,
    collection: Collection,
    vectors: np.ndarray[Any, Any],
    *,
    batch_size: int = 500,
) -> None:
    """Insert the corpus with its vectors: BM25 statistics and the vector index are built
    once, after the load."""
    from sqlalchemy import Index, insert

    from vecorm.search.bm25 import bulk_load

    table = model.__table__
    vector_indexes = [
        index
        for index in table.indexes
        if isinstance(index, Index) and index.dialect_options["postgresql"]["using"] == "hnsw"
    ]
    connection = session.connection()
    for index in vector_indexes:
        index.drop(connection)
    items = list(collection.corpus.items())
    with bulk_load(session, model):
        for start in range(0, len(items), batch_size):
            session.execute(
                insert(model),
                [
                    {"id": doc_id, "title": title, "body": body, "embedding": vectors[i]}
                    for i, (doc_id, (title, body)) in enumerate(
                        items[start : start + batch_size], start=start
                    )
                ],
            )
    for index in vector_indexes:
        index.create(connection)
    session.commit()
    # Planner statistics for the fresh tables (names come from scratch_model, not the user).
    for name in (table.name, *(f"{table.name}_bm25_{side}" for side in ("postings", "terms"))):
        session.connection().exec_driver_sql(f"ANALYZE {name}")
    session.commit()


def document_text(title: str, body: str) -> str:
    """What is embedded for a BEIR document: ``title + " " + text``."""
    return f"{title} {body}".strip()


# --------------------------------------------------------------------------- sweeps


def sweep(
    session: Session,
    model: Any,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    vectors: Mapping[str, QueryInput],
    *,
    progress: bool = False,
) -> dict[str, list[tuple[float, float, float]]]:
    """nDCG@10 and median latency over a grid of each knob:
    ``{knob: [(value, nDCG@10, median ms), ...]}`` for the blend weight, RRF k, BM25 k1 and b,
    and ``ef_search`` of the HNSW arm."""
    grids: dict[str, list[tuple[float, ModeFunction]]] = {
        "blend weight": [
            (w, _hybrid("blend", semantic_weight=w)) for w in (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
        ],
        "rrf k": [(float(k), _hybrid("rrf", rrf_k=k)) for k in (1, 10, 30, 60, 100)],
        "bm25 k1": [(k1, _bm25_with(k1=k1)) for k1 in (0.5, 0.9, 1.2, 1.5, 2.0)],
        "bm25 b": [(b, _bm25_with(b=b)) for b in (0.2, 0.4, 0.6, 0.75, 0.9)],
        "ef_search": [(float(ef), _dense_with_ef(ef)) for ef in (10, 20, 40, 100, 200)],
    }
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for knob, grid in grids.items():
        points = []
        for value, build in grid:
            report = evaluate(
                session,
                model,
                queries,
                qrels,
                modes={f"{knob}={value:g}": build},
                vectors=vectors,
                baseline=None,
                progress=progress,
            )
            result = next(iter(report.modes.values()))
            points.append((value, result.metrics["nDCG@10"], result.median_ms))
        curves[knob] = points
    return curves


def _bm25_with(**options: float) -> ModeFunction:
    def mode(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
        from vecorm.search.bm25 import scores

        return scores(model, text, depth=depth, **options)  # type: ignore[arg-type]

    return mode


def _dense_with_ef(ef_search: int) -> ModeFunction:
    def mode(model: Any, text: str, vector: QueryInput, depth: int) -> Select[Any]:
        return dense_index(model, text, vector, depth).execution_options(
            vecorm_hnsw_ef_search=ef_search, vecorm_hnsw_iterative_scan="relaxed_order"
        )

    return mode


def plot_sweep(curves: Mapping[str, list[tuple[float, float, float]]], path: Path) -> None:
    """One panel per knob: nDCG@10 (left axis) and median latency (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for axis, (knob, points) in zip(axes[0], curves.items(), strict=True):
        values = [point[0] for point in points]
        axis.plot(values, [point[1] for point in points], "o-", color="tab:blue")
        axis.set_xlabel(knob)
        axis.set_ylabel("nDCG@10", color="tab:blue")
        latency = axis.twinx()
        latency.plot(values, [point[2] for point in points], "s--", color="tab:orange")
        latency.set_ylabel("median ms", color="tab:orange")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------- vecorm eval


@dataclass(frozen=True)
class BeirRun:
    """What :func:`run_beir` measured."""

    report: EvaluationReport
    documents: int
    curves: dict[str, list[tuple[float, float, float]]] | None = None


def run_beir(
    directory: str | os.PathLike[str],
    *,
    embedder: Embedder,
    split: str = "test",
    modes: Sequence[str] | None = None,
    url: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_queries: int | None = None,
    max_docs: int | None = None,
    do_sweep: bool = False,
    plot: str | os.PathLike[str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> BeirRun:
    """Load a BEIR collection into a scratch table and :func:`evaluate` it (``vecorm eval``).

    ``url`` (default ``$VECORM_DATABASE_URL``, else a temporary embedded server) is where the
    scratch table lives; it is dropped afterwards.
    """
    from sqlalchemy.orm import Session as OrmSession

    from vecorm.engine import create_engine
    from vecorm.tools.embedded import database

    collection = load_beir(directory, split)
    if max_queries is not None or max_docs is not None:
        collection = collection.subset(max_queries=max_queries, max_docs=max_docs)
    cache = EmbeddingCache(cache_dir)
    texts = [document_text(title, body) for title, body in collection.corpus.values()]
    echo(
        f"{len(collection.corpus)} documents, {len(collection.qrels)} judged queries "
        f"({split}); embedder {embedder.model_name}; cache {cache.directory}"
    )
    document_vectors = cache.embed(embedder, texts, progress=progress)
    query_ids = list(collection.qrels)
    query_matrix = cache.embed(
        embedder, [collection.queries[q] for q in query_ids], progress=progress
    )
    query_vectors = {q: query_matrix[i] for i, q in enumerate(query_ids)}
    model = scratch_model(embedder.dimensions)
    with database(url) as resolved:
        engine = create_engine(resolved)
        try:
            model.metadata.drop_all(engine)
            model.metadata.create_all(engine)
            try:
                with OrmSession(engine) as session:
                    load_collection(session, model, collection, document_vectors)
                    report = evaluate(
                        session,
                        model,
                        collection.queries,
                        collection.qrels,
                        modes=modes,
                        vectors=query_vectors,
                        progress=progress,
                    )
                    curves = None
                    if do_sweep:
                        curves = sweep(
                            session,
                            model,
                            collection.queries,
                            collection.qrels,
                            query_vectors,
                            progress=progress,
                        )
                        if plot is not None:
                            plot_sweep(curves, Path(plot))
            finally:
                model.metadata.drop_all(engine)
        finally:
            engine.dispose()
    return BeirRun(report, len(collection.corpus), curves)


def run_eval_command(
    directory: str,
    *,
    split: str,
    embedder_name: str,
    modes: str | None,
    json_path: str | None,
    sweep: bool,
    plot: str,
    cache_dir: str | None,
    database_url: str | None,
    max_queries: int | None,
    max_docs: int | None,
    progress: bool,
    echo: Callable[[str], None],
) -> BeirRun:
    """``vecorm eval``: parse the options, :func:`run_beir`, print the table, write JSON."""
    from vecorm.tools.clitools import load_embedder, parse_url
    from vecorm.tools.demo import DIMENSIONS

    chosen = [name.strip() for name in modes.split(",") if name.strip()] if modes else None
    if chosen is not None:
        _resolve_modes(chosen)  # a wrong name fails before any work
    embedder = load_embedder(embedder_name, dimensions=DIMENSIONS)
    result = run_beir(
        directory,
        embedder=embedder,
        split=split,
        modes=chosen,
        url=parse_url(database_url) if database_url else None,
        cache_dir=cache_dir,
        max_queries=max_queries,
        max_docs=max_docs,
        do_sweep=sweep,
        plot=plot if sweep else None,
        progress=progress,
        echo=echo,
    )
    echo(result.report.table())
    if result.curves is not None:
        for knob, points in result.curves.items():
            cells = ", ".join(f"{value:g}: {ndcg:.3f} ({ms:.1f} ms)" for value, ndcg, ms in points)
            echo(f"sweep {knob}: {cells}")
        echo(f"trade-offs drawn in {plot}")
    if json_path is not None:
        payload = result.report.as_dict()
        payload["documents"] = result.documents
        payload["embedder"] = embedder.model_name
        if result.curves is not None:
            payload["sweep"] = {
                knob: [
                    {"value": value, "nDCG@10": ndcg, "median ms": ms} for value, ndcg, ms in points
                ]
                for knob, points in result.curves.items()
            }
        Path(json_path).write_text(json.dumps(payload, indent=2), encoding="utf-8")
        echo(f"numbers written to {json_path}")
    return result
