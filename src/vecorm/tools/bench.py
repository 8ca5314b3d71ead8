"""``vecorm bench``: exact scan vs IVFFlat vs HNSW on random vectors, recall against latency.

Loads ``rows`` random unit vectors of ``dimensions`` values (10,000 x 1536 by default) into a
scratch table, then for each access path runs the same ``queries`` top-``k`` cosine queries:

* no index: the exact answer (the ground truth for recall) and its latency;
* IVFFlat (``lists`` = sqrt(rows) by default), sweeping ``ivfflat.probes``;
* HNSW (``m``, ``ef_construction``), sweeping ``hnsw.ef_search``.

Each setting reports recall@k against the exact answer and the median / p95 latency of one
query (``SET LOCAL`` per transaction, iterative scans off, the index forced so the planner's
choice does not blur the comparison; ``EXPLAIN`` confirms it). The table prints, and
:func:`plot` draws recall against latency to a PNG with matplotlib::

    from vecorm.tools.bench import BenchConfig, format_table, plot, run_benchmark

    with vecorm.database() as url:
        result = run_benchmark(vecorm.create_engine(url), BenchConfig(rows=2_000, dimensions=128))
    print(format_table(result))
    plot(result, "bench.png")

Uniformly random vectors are the hardest case for approximate indexes: in 1536 dimensions every
point is nearly equidistant from every other, so recall at a given setting is far below what real
embeddings get. ``data="clustered"`` scatters the points around ``rows / 100`` centres, which
behaves much more like real embeddings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    URL,
    BigInteger,
    Column,
    Index,
    MetaData,
    Table,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.engine import Connection, Engine

from vecorm.errors import ConfigurationError
from vecorm.schema.types import Vector
from vecorm.search.explain import indexes_used
from vecorm.search.settings import apply_search_settings

__all__ = [
    "BenchConfig",
    "BenchResult",
    "Measurement",
    "format_table",
    "plot",
    "run_bench_command",
    "run_benchmark",
]

IndexKind = Literal["none", "ivfflat", "hnsw"]
TABLE_NAME = "vecorm_bench_vectors"
_LOAD_BATCH = 500


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; every field has a sensible default for a laptop-sized run."""

    rows: int = 10_000
    dimensions: int = 1536
    queries: int = 50
    k: int = 10
    lists: int | None = None
    probes: tuple[int, ...] | None = None
    m: int = 16
    ef_construction: int = 64
    ef_search: tuple[int, ...] = (10, 20, 40, 80, 160, 320)
    seed: int = 0
    data: Literal["random", "clustered"] = "random"

    @property
    def ivfflat_lists(self) -> int:
        """``lists``, else sqrt(rows): enough lists for the probes sweep to mean something."""
        return self.lists if self.lists is not None else max(1, round(math.sqrt(self.rows)))

    @property
    def probe_sweep(self) -> tuple[int, ...]:
        """``probes``, else powers of two up to ``lists`` (and ``lists`` itself: exact)."""
        if self.probes is not None:
            return self.probes
        lists = self.ivfflat_lists
        sweep = [2**power for power in range(0, 16) if 2**power < lists]
        return (*sweep, lists)

    def validate(self) -> None:
        """Raise :class:`ConfigurationError` for sizes that cannot be benchmarked."""
        if self.rows < 10:
            raise ConfigurationError(f"rows must be at least 10, not {self.rows}")
        if not 1 <= self.dimensions <= 2000:
            raise ConfigurationError(
                f"dimensions must be between 1 and 2000 (pgvector's index limit), "
                f"not {self.dimensions}"
            )
        if self.data not in ("random", "clustered"):
            raise ConfigurationError(f"data must be 'random' or 'clustered', not {self.data!r}")
        if self.queries < 1 or self.k < 1:
            raise ConfigurationError("queries and k must be at least 1")
        if self.k > self.rows:
            raise ConfigurationError(f"k ({self.k}) cannot exceed rows ({self.rows})")
        if self.ivfflat_lists > self.rows:
            raise ConfigurationError(f"lists ({self.ivfflat_lists}) cannot exceed rows")
        if any(value < 1 for value in (*self.probe_sweep, *self.ef_search)):
            raise ConfigurationError("probes and ef_search values must be at least 1")


@dataclass(frozen=True)
class Measurement:
    """One access path at one setting: recall@k and per-query latency in milliseconds."""

    index: IndexKind
    setting: str
    value: int | None
    recall: float
    median_ms: float
    p95_ms: float
    plan_index: str | None


@dataclass
class BenchResult:
    """Every measurement, plus load and build times (seconds) and index sizes (bytes)."""

    config: BenchConfig
    measurements: list[Measurement] = field(default_factory=list)
    load_seconds: float = 0.0
    build_seconds: dict[str, float] = field(default_factory=dict)
    index_bytes: dict[str, int] = field(default_factory=dict)

    def of(self, index: IndexKind) -> list[Measurement]:
        """The measurements of one access path, in sweep order."""
        return [item for item in self.measurements if item.index == index]


def _unit_vectors(rng: np.random.Generator, count: int, dimensions: int) -> npt.NDArray[Any]:
    matrix = rng.standard_normal((count, dimensions)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def _clustered_vectors(
    rng: np.random.Generator, centers: npt.NDArray[Any], count: int
) -> npt.NDArray[Any]:
    """Points scattered around random ``centers`` (cosine ~0.7 to their own): like embeddings."""
    dimensions = centers.shape[1]
    chosen = centers[rng.integers(0, len(centers), size=count)]
    noise = rng.standard_normal((count, dimensions)).astype(np.float32) / np.sqrt(dimensions)
    matrix: npt.NDArray[Any] = (chosen + noise).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def make_data(config: BenchConfig) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """``(rows, queries)`` unit vectors for ``config``: uniform on the sphere, or clustered."""
    rng = np.random.default_rng(config.seed)
    if config.data == "clustered":
        centers = _unit_vectors(rng, max(1, config.rows // 100), config.dimensions)
        return (
            _clustered_vectors(rng, centers, config.rows),
            _clustered_vectors(rng, centers, config.queries),
        )
    return (
        _unit_vectors(rng, config.rows, config.dimensions),
        _unit_vectors(rng, config.queries, config.dimensions),
    )


def _table(dimensions: int) -> Table:
    return Table(
        TABLE_NAME,
        MetaData(),
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("embedding", Vector(dimensions), nullable=False),
    )


def run_benchmark(
    engine: Engine,
    config: BenchConfig | None = None,
    *,
    progress: Callable[[str], object] | None = None,
) -> BenchResult:
    """Load the vectors, measure every access path, drop the table; see the module docstring."""
    config = config or BenchConfig()
    config.validate()
    say = progress or (lambda message: None)
    vectors, queries = make_data(config)
    bench_table = _table(config.dimensions)
    result = BenchResult(config)
    bench_table.drop(engine, checkfirst=True)
    bench_table.create(engine)
    try:
        say(f"loading {config.rows:,} {config.data} {config.dimensions}-d vectors")
        started = time.perf_counter()
        with engine.begin() as conn:
            for start in range(0, config.rows, _LOAD_BATCH):
                chunk = vectors[start : start + _LOAD_BATCH]
                conn.execute(
                    insert(bench_table),
                    [{"id": start + offset, "embedding": row} for offset, row in enumerate(chunk)],
                )
            conn.exec_driver_sql(f"ANALYZE {TABLE_NAME}")
        result.load_seconds = time.perf_counter() - started

        say(f"exact scan: {config.queries} queries")
        truth, exact = _measure(engine, bench_table, queries, config, "none", None, None)
        result.measurements.append(exact)

        lists = config.ivfflat_lists
        ivfflat = Index(
            f"ix_{TABLE_NAME}_ivfflat",
            bench_table.c.embedding,
            postgresql_using="ivfflat",
            postgresql_with={"lists": lists},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        )
        say(f"building IVFFlat (lists={lists})")
        result.build_seconds["ivfflat"], result.index_bytes["ivfflat"] = _build(engine, ivfflat)
        for probes in config.probe_sweep:
            say(f"IVFFlat probes={probes}")
            result.measurements.append(
                _measure(engine, bench_table, queries, config, "ivfflat", probes, truth)[1]
            )
        ivfflat.drop(engine)

        hnsw = Index(
            f"ix_{TABLE_NAME}_hnsw",
            bench_table.c.embedding,
            postgresql_using="hnsw",
            postgresql_with={"m": config.m, "ef_construction": config.ef_construction},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        )
        say(f"building HNSW (m={config.m}, ef_construction={config.ef_construction})")
        result.build_seconds["hnsw"], result.index_bytes["hnsw"] = _build(engine, hnsw)
        for ef_search in config.ef_search:
            say(f"HNSW ef_search={ef_search}")
            result.measurements.append(
                _measure(engine, bench_table, queries, config, "hnsw", ef_search, truth)[1]
            )
    finally:
        bench_table.drop(engine, checkfirst=True)
    return result


def _build(engine: Engine, index: Index) -> tuple[float, int]:
    with engine.begin() as conn:
        # Room for the whole graph in memory: pgvector builds far faster when it fits.
        conn.execute(select(func.set_config("maintenance_work_mem", "512MB", literal(True))))
        started = time.perf_counter()
        index.create(conn)
        seconds = time.perf_counter() - started
        size = conn.execute(
            select(func.pg_relation_size(func.to_regclass(literal(str(index.name)))))
        ).scalar_one()
    return seconds, int(size)


@contextmanager
def _settings(conn: Connection, index: IndexKind, value: int | None) -> Iterator[None]:
    with conn.begin():
        if index == "ivfflat":
            apply_search_settings(conn, probes=value, iterative_scan="off")
        elif index == "hnsw":
            apply_search_settings(conn, ef_search=value, iterative_scan="off")
        if index != "none":
            # Measure the index even where the planner would rather scan a small table.
            conn.execute(select(func.set_config("enable_seqscan", "off", literal(True))))
        yield


def _measure(
    engine: Engine,
    bench_table: Table,
    queries: npt.NDArray[Any],
    config: BenchConfig,
    index: IndexKind,
    value: int | None,
    truth: Sequence[set[int]] | None,
) -> tuple[list[set[int]], Measurement]:
    distance = bench_table.c.embedding.cosine_distance
    answers: list[set[int]] = []
    timings: list[float] = []
    with engine.connect() as conn, _settings(conn, index, value):
        probe = select(bench_table.c.id).order_by(distance(queries[0])).limit(config.k)
        used = indexes_used(conn, probe)
        for query in queries:  # warm the cache so the first setting is not penalised
            conn.execute(select(bench_table.c.id).order_by(distance(query)).limit(config.k)).all()
        for query in queries:
            statement = select(bench_table.c.id).order_by(distance(query)).limit(config.k)
            started = time.perf_counter()
            ids = conn.execute(statement).scalars().all()
            timings.append((time.perf_counter() - started) * 1000.0)
            answers.append(set(ids))
    expected = truth if truth is not None else answers
    recall = float(
        np.mean([len(got & want) / len(want) for got, want in zip(answers, expected, strict=True)])
    )
    setting = {"none": "exact", "ivfflat": f"probes={value}", "hnsw": f"ef_search={value}"}[index]
    measurement = Measurement(
        index=index,
        setting=setting,
        value=value,
        recall=recall,
        median_ms=float(np.median(timings)),
        p95_ms=float(np.percentile(timings, 95)),
        plan_index=used[0] if used else None,
    )
    return answers, measurement


def format_table(result: BenchResult) -> str:
    """The measurements as a fixed-width text table, with load and build times."""
    config = result.config
    lines = [
        f"{config.rows:,} {config.data} {config.dimensions}-d vectors, {config.queries} queries, "
        f"top {config.k} by cosine distance (loaded in {result.load_seconds:.1f} s)",
    ]
    if "ivfflat" in result.build_seconds:
        lines.append(
            f"IVFFlat lists={config.ivfflat_lists}: built in {result.build_seconds['ivfflat']:.1f}"
            f" s, {_megabytes(result.index_bytes['ivfflat'])}"
        )
    if "hnsw" in result.build_seconds:
        lines.append(
            f"HNSW m={config.m} ef_construction={config.ef_construction}: built in "
            f"{result.build_seconds['hnsw']:.1f} s, {_megabytes(result.index_bytes['hnsw'])}"
        )
    lines.append("")
    header = f"{'index':<9}{'setting':<15}{'recall@' + str(config.k):>10}{'median ms':>11}"
    lines.append(header + f"{'p95 ms':>9}  plan")
    lines.append("-" * (len(header) + 9 + 2 + 12))
    for item in result.measurements:
        plan = item.plan_index or "Seq Scan"
        lines.append(
            f"{item.index:<9}{item.setting:<15}{item.recall:>10.3f}{item.median_ms:>11.2f}"
            f"{item.p95_ms:>9.2f}  {plan}"
        )
    return "\n".join(lines)


def _megabytes(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


def plot(result: BenchResult, path: str | Path) -> Path:
    """Draw recall@k against median latency (log scale) to a PNG at ``path``; return it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigurationError(
            "the plot needs matplotlib: pip install 'vecorm[bench]' (or pass --no-plot)"
        ) from exc
    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.ticker import FuncFormatter

    config = result.config
    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=120)
    try:
        for kind, label, marker in (
            ("ivfflat", f"IVFFlat (lists={config.ivfflat_lists}), probes", "o"),
            ("hnsw", f"HNSW (m={config.m}), ef_search", "s"),
        ):
            points = result.of(kind)  # type: ignore[arg-type]
            if not points:
                continue
            xs = [point.median_ms for point in points]
            ys = [point.recall for point in points]
            axes.plot(xs, ys, marker=marker, label=label)
            for point in points:
                axes.annotate(
                    str(point.value),
                    (point.median_ms, point.recall),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
        for point in result.of("none"):
            axes.scatter(
                [point.median_ms],
                [point.recall],
                marker="*",
                s=160,
                color="black",
                label="no index (exact)",
                zorder=3,
            )
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.set_xlabel("median query latency (ms, log scale)")
        axes.set_ylabel(f"recall@{config.k}")
        axes.set_ylim(0, 1.05)
        axes.grid(True, which="both", alpha=0.3)
        axes.set_title(
            f"pgvector: recall vs latency, {config.rows:,} x {config.dimensions}-d {config.data} "
            "vectors"
        )
        axes.legend(loc="lower right")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, format="png")
    finally:
        pyplot.close(figure)
    return target


def matplotlib_available() -> bool:
    """Whether :func:`plot` can run (``pip install 'vecorm[bench]'``)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def run_bench_command(
    url: URL | None,
    config: BenchConfig,
    *,
    plot_path: str | Path | None = "vecorm-bench.png",
    echo: Callable[[str], object] = print,
    progress: Callable[[str], object] | None = None,
) -> BenchResult:
    """``vecorm bench``: run on ``url`` (else a scratch embedded server), print, plot."""
    from vecorm.engine import create_engine
    from vecorm.tools.embedded import database

    config.validate()
    if plot_path is not None and not matplotlib_available():
        raise ConfigurationError(
            "the plot needs matplotlib: pip install 'vecorm[bench]', or pass --no-plot"
        )
    with database(url) as resolved:
        engine = create_engine(resolved)
        try:
            result = run_benchmark(engine, config, progress=progress)
        finally:
            engine.dispose()
    echo(format_table(result))
    if plot_path is not None:
        echo(f"plot: {plot(result, plot_path)}")
    return result
