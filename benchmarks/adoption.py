"""Adopting a big, busy table online: writers' waits and rows/s, against raw psycopg.

A plain table of ``--rows`` documents (loaded with COPY) becomes ``vecorm.Searchable`` with
``SearchConfig(search_vector="trigger")`` while ``--writers`` threads keep inserting, updating
and deleting rows (``--rate`` statements/s each). The adoption is the real thing:

1. ``alembic revision --autogenerate`` in a scaffolded project (as ``vecorm init`` makes it),
   then ``alembic upgrade``: ``op.add_search_vector`` (catalog-only ADD COLUMN and trigger,
   short retried lock), the BM25 side tables and triggers, ``op.fill_search_vector`` (primary-key
   batches, each committed), GIN built CONCURRENTLY;
2. ``vecorm.embedding.backfill`` with a precomputed-vector provider (vectors prepared before
   the run, looked up by text: measures vecorm and PostgreSQL, not a model);
3. the HNSW index, CONCURRENTLY, in a revision of its own after the backfill (the block
   autogenerate put last in the adoption revision, cut out as docs/adopting.md says).

Every writer statement's duration is recorded. The same UPDATEs are then run with raw psycopg
on a twin table with no triggers and no writers (tsvector fill in the same batches, GIN, the
vectors by binary COPY into a temporary table + one UPDATE per batch, HNSW): the ratio says
what vecorm's path costs on top of the bare statements.

    python benchmarks/adoption.py                 # 1,000,000 rows, 2 writers, 64 dimensions
    python benchmarks/adoption.py --rows 50000    # quicker
    VECORM_DATABASE_URL=postgresql://... python benchmarks/adoption.py
"""

from __future__ import annotations

import argparse
import ast
import io
import logging
import os
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from alembic import command
from alembic.config import Config
from pgvector.psycopg import register_vector
from sqlalchemy import URL
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import vecorm
from vecorm.embedding.backfill import backfill
from vecorm.engine import libpq_conninfo
from vecorm.schema.generated import tsvector_expression
from vecorm.tools.scaffold import init_migrations

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aiou"]

PLAIN_MODELS = """
from sqlalchemy import BigInteger, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
"""

SEARCHABLE_MODELS = """
from sqlalchemy import BigInteger, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm


class Base(DeclarativeBase):
    pass


class Document(vecorm.Searchable, Base):
    __tablename__ = "documents"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions={dimensions},
        weights={{"title": "A"}},
        search_vector="trigger",
        {bm25}
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
"""


def vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    words = {"".join(rng.choice(SYLLABLES, size=rng.integers(2, 4))) for _ in range(size * 2)}
    return sorted(words)[:size]


def make_texts(rows: int, seed: int = 7) -> tuple[list[str], list[str]]:
    """Titles of 3 words and bodies of 9 (Zipfian word frequencies), each body unique."""
    rng = np.random.default_rng(seed)
    words = np.array(vocabulary(5000, rng))
    ranks = np.minimum(rng.zipf(1.3, size=(rows, 12)) - 1, len(words) - 1)
    picked = words[ranks]
    titles = [" ".join(row[:3]) for row in picked]
    bodies = [f"{' '.join(row[3:])} n{i}" for i, row in enumerate(picked)]
    return titles, bodies


class Lookup:
    """The precomputed-vector provider: answers from vectors prepared before the run."""

    max_batch_size = 2000

    def __init__(self, texts: Sequence[str], dimensions: int, seed: int = 11) -> None:
        self.dimensions = dimensions
        self.model_name = f"precomputed-{dimensions}"
        matrix = np.random.default_rng(seed).standard_normal((len(texts), dimensions))
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        self.matrix = matrix.astype(np.float32)
        self.index = {value: n for n, value in enumerate(texts)}
        self.fallback = np.full(dimensions, 1.0 / np.sqrt(dimensions), dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        # Rows the writers inserted during the run are not in the table: one fixed vector.
        return np.stack(
            [self.matrix[i] if (i := self.index.get(t)) is not None else self.fallback
             for t in texts]
        )  # fmt: skip


def copy_rows(conninfo: str, table: str, titles: list[str], bodies: list[str]) -> float:
    started = time.perf_counter()
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {table} (id, title, body) FROM STDIN") as copy:
            buffer = io.StringIO()
            for i, (title, body) in enumerate(zip(titles, bodies, strict=True), start=1):
                buffer.write(f"{i}\t{title}\t{body}\n")
                if i % 50_000 == 0:
                    copy.write(buffer.getvalue())
                    buffer = io.StringIO()
            copy.write(buffer.getvalue())
        cur.execute(f"ANALYZE {table}")
        conn.commit()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- writers


@dataclass
class Sample:
    at: float
    kind: str
    seconds: float


@dataclass
class Writers:
    """``count`` threads, each on its own connection (autocommit), cycling INSERT / UPDATE /
    DELETE at ``rate`` statements per second and recording each statement's duration."""

    conninfo: str
    rows: int
    count: int
    rate: float
    samples: list[Sample] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self, worker: int) -> None:
        rng = np.random.default_rng(100 + worker)
        next_id = self.rows + 1 + worker * 10_000_000
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                due = time.perf_counter()
                n = 0
                while not self.stop.is_set():
                    n += 1
                    kind = ("insert", "update", "delete")[n % 3]
                    target = int(rng.integers(1, self.rows + 1))
                    started = time.perf_counter()
                    if kind == "insert":
                        next_id += 1
                        conn.execute(
                            "INSERT INTO documents (id, title, body) VALUES (%s, %s, %s)",
                            (next_id, f"writer {worker}", f"inserted row {n} lorem ipsum"),
                        )
                    elif kind == "update":
                        conn.execute(
                            "UPDATE documents SET body = %s WHERE id = %s",
                            (f"updated by writer {worker} step {n}", target),
                        )
                    else:
                        conn.execute("DELETE FROM documents WHERE id = %s", (target,))
                    finished = time.perf_counter()
                    self.samples.append(Sample(finished, kind, finished - started))
                    due += interval
                    pause = due - time.perf_counter()
                    if pause > 0:
                        self.stop.wait(pause)  # pacing: a benchmark's writers, not library code
                    else:
                        due = time.perf_counter()
        except BaseException as exc:
            self.errors.append(exc)

    @contextmanager
    def running(self) -> Iterator[Writers]:
        self.threads = [
            threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(self.count)
        ]
        for thread in self.threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join()
        if self.errors:
            raise self.errors[0]

    def between(self, start: float, stop: float) -> list[float]:
        return [s.seconds for s in self.samples if start <= s.at <= stop]


def waits(durations: Sequence[float]) -> str:
    if not durations:
        return f"{'-':>8}{'-':>10}{'-':>10}{'-':>10}"
    values = np.asarray(durations) * 1000
    return (
        f"{len(values):>8,}{np.percentile(values, 50):>10.1f}{np.percentile(values, 99):>10.1f}"
        f"{values.max():>10.1f}"
    )


# --------------------------------------------------------------------------- vecorm's path


def alembic_project(root: Path, url: URL) -> None:
    init_migrations(
        root / "migrations",
        ini_path=root / "alembic.ini",
        database_url=url.render_as_string(hide_password=False),
    )
    sys.path.insert(0, str(root))


def set_models(root: Path, name: str, source: str) -> Config:
    """Point the project at ``name``'s models; a new Config (Alembic reads the ini once)."""
    (root / f"{name}.py").write_text(source, encoding="utf-8")
    ini = root / "alembic.ini"
    lines = [
        f"target_metadata = {name}:Base" if line.startswith("target_metadata =") else line
        for line in ini.read_text(encoding="utf-8").splitlines()
    ]
    ini.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Config(str(ini))


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        if isinstance(func, ast.Attribute):
            return func.attr
    return None


def split_vector_index(config: Config, adoption: Path) -> None:
    """Move the adoption revision's HNSW block into a revision of its own (run after the
    backfill), as docs/adopting.md advises for a table with many rows."""
    source = adoption.read_text(encoding="utf-8")
    lines = source.splitlines()
    functions = {
        node.name: node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)
    }
    block_node = next(
        node
        for node in functions["upgrade"].body
        if isinstance(node, ast.With) and "hnsw" in (ast.get_source_segment(source, node) or "")
    )
    create = block_node.body[0]
    assert isinstance(create, ast.Expr) and isinstance(create.value, ast.Call)
    first = create.value.args[0]
    assert isinstance(first, ast.Constant)
    index_name = str(first.value)
    drop = next(
        node
        for node in functions["downgrade"].body
        if _call_name(node) == "drop_index"
        and isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.args[0], ast.Constant)
        and node.value.args[0].value == index_name
    )
    removed = set(range(block_node.lineno - 1, block_node.end_lineno or block_node.lineno))
    removed |= set(range(drop.lineno - 1, drop.end_lineno or drop.lineno))
    block = lines[block_node.lineno - 1 : block_node.end_lineno]
    kept = [line for number, line in enumerate(lines) if number not in removed]
    adoption.write_text("\n".join(kept) + "\n", encoding="utf-8")
    script = command.revision(config, message="vector index")
    assert script is not None and not isinstance(script, list)
    path = Path(script.path)
    body = textwrap.dedent("\n".join(block))
    text = path.read_text(encoding="utf-8")
    text = text.replace(
        'def upgrade() -> None:\n    """Upgrade schema."""\n    pass',
        "def upgrade() -> None:\n" + textwrap.indent(body, "    "),
    )
    text = text.replace(
        'def downgrade() -> None:\n    """Downgrade schema."""\n    pass',
        f"def downgrade() -> None:\n    op.drop_index({index_name!r}, table_name='documents')",
    )
    path.write_text(text, encoding="utf-8")


@dataclass
class Timings:
    migration: float = 0.0
    backfill: float = 0.0
    vector_index: float = 0.0
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)


def timed(timings: Timings, name: str, action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    stopped = time.perf_counter()
    timings.phases[name] = (started, stopped)
    return stopped - started


def vecorm_path(
    url: URL, args: argparse.Namespace, titles: list[str], bodies: list[str], writers: Writers
) -> tuple[Timings, str]:
    timings = Timings()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        alembic_project(root, url)
        config = set_models(root, "plain_models", PLAIN_MODELS)
        command.revision(config, message="plain", autogenerate=True)
        command.upgrade(config, "head")
        seconds = copy_rows(libpq_conninfo(url), "documents", titles, bodies)
        print(f"loaded {args.rows:,} rows with COPY in {seconds:.1f} s", flush=True)
        searchable = SEARCHABLE_MODELS.format(
            dimensions=args.dimensions, bm25="" if args.bm25 else "bm25=None,"
        )
        config = set_models(root, "searchable_models", searchable)
        script = command.revision(config, message="adopt vecorm", autogenerate=True)
        assert script is not None and not isinstance(script, list)
        adoption = Path(script.path)
        revision_text = adoption.read_text(encoding="utf-8")
        split_vector_index(config, adoption)
        model = __import__("searchable_models").Document
        texts = [f"{t}\n{b}" for t, b in zip(titles, bodies, strict=True)]
        provider = Lookup(texts, args.dimensions)
        with writers.running():
            time.sleep(1.0)  # writers warm up before the migration starts
            timings.migration = timed(
                timings, "migration", lambda: command.upgrade(config, script.revision)
            )
            engine = vecorm.create_engine(url)

            def run_backfill() -> None:
                with Session(engine) as session:
                    backfill(session, model, embedder=provider, batch_size=args.backfill_batch)

            timings.backfill = timed(timings, "backfill", run_backfill)
            if args.vector_index:
                timings.vector_index = timed(
                    timings, "vector index", lambda: command.upgrade(config, "head")
                )
            time.sleep(1.0)
            engine.dispose()
        sys.path.remove(str(root))
    return timings, revision_text


# --------------------------------------------------------------------------- raw psycopg


def raw_path(url: URL, args: argparse.Namespace, titles: list[str], bodies: list[str]) -> Timings:
    """The same statements without vecorm, triggers or writers, on a twin table."""
    conninfo = libpq_conninfo(url)
    timings = Timings()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_documents")
        conn.execute("CREATE TABLE raw_documents (id bigint PRIMARY KEY, title text, body text)")
    copy_rows(conninfo, "raw_documents", titles, bodies)
    expression = tsvector_expression(("title", "body"), "english", {"title": "A"})
    dims = args.dimensions
    texts = [f"{t}\n{b}" for t, b in zip(titles, bodies, strict=True)]
    provider = Lookup(texts, dims)

    def migration() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("ALTER TABLE raw_documents ADD COLUMN search_vector tsvector")
            conn.execute(f"ALTER TABLE raw_documents ADD COLUMN embedding vector({dims})")
            conn.execute("ALTER TABLE raw_documents ADD COLUMN embedding_digest bytea")
            conn.execute("ALTER TABLE raw_documents ADD COLUMN embedding_model varchar(200)")
            for low in range(0, args.rows, args.fill_batch):
                conn.execute(
                    f"UPDATE raw_documents SET search_vector = {expression} "
                    "WHERE id > %s AND id <= %s",
                    (low, low + args.fill_batch),
                )
            conn.execute(
                "CREATE INDEX CONCURRENTLY ix_raw_gin ON raw_documents USING gin (search_vector)"
            )

    def fill_vectors() -> None:
        import hashlib

        with psycopg.connect(conninfo) as conn:
            register_vector(conn)
            for low in range(0, args.rows, args.backfill_batch):
                high = min(low + args.backfill_batch, args.rows)
                with conn.cursor() as cur:
                    rows = cur.execute(
                        "SELECT id, title, body FROM raw_documents WHERE id > %s AND id <= %s "
                        "ORDER BY id",
                        (low, high),
                    ).fetchall()
                    cur.execute(
                        f"CREATE TEMP TABLE IF NOT EXISTS raw_batch (id bigint, e vector({dims}),"
                        " d bytea) ON COMMIT DELETE ROWS"
                    )
                    with cur.copy(
                        "COPY raw_batch (id, e, d) FROM STDIN WITH (FORMAT BINARY)"
                    ) as cp:
                        cp.set_types(["int8", "vector", "bytea"])
                        for key, title, body in rows:
                            source = f"{title}\n{body}"
                            vector = provider.matrix[provider.index[source]]
                            cp.write_row((key, vector, hashlib.sha256(source.encode()).digest()))
                    cur.execute(
                        "UPDATE raw_documents r SET embedding = b.e, embedding_digest = b.d, "
                        "embedding_model = %s FROM raw_batch b WHERE r.id = b.id",
                        (provider.model_name,),
                    )
                conn.commit()

    def vector_index() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "CREATE INDEX CONCURRENTLY ix_raw_hnsw ON raw_documents USING hnsw "
                "(embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
            )

    timings.migration = timed(timings, "migration", migration)
    timings.backfill = timed(timings, "backfill", fill_vectors)
    if args.vector_index:
        timings.vector_index = timed(timings, "vector index", vector_index)
    return timings


# --------------------------------------------------------------------------- report


def report(args: argparse.Namespace, ours: Timings, raw: Timings, writers: Writers) -> None:
    rows = args.rows
    print()
    print(
        f"rows: {rows:,}, {args.writers} writers at {args.rate:g} statements/s each, "
        f"{args.dimensions} dimensions, BM25 statistics {'on' if args.bm25 else 'off'}, "
        f"fill batches of {args.fill_batch:,}, "
        f"backfill batches of {args.backfill_batch:,}"
    )
    print(f"{'step':<34}{'vecorm s':>10}{'rows/s':>10}{'raw s':>9}{'ratio':>8}")
    steps = (
        (
            "migration (column, fill, GIN" + (", BM25)" if args.bm25 else ")"),
            ours.migration,
            raw.migration,
        ),
        ("backfill (precomputed vectors)", ours.backfill, raw.backfill),
    )
    for label, mine, theirs in steps:
        print(f"{label:<34}{mine:>10.1f}{rows / mine:>10,.0f}{theirs:>9.1f}{mine / theirs:>7.2f}x")
    adoption = ours.migration + ours.backfill
    raw_adoption = raw.migration + raw.backfill
    print(
        f"{'adoption = migration + backfill':<34}{adoption:>10.1f}{rows / adoption:>10,.0f}"
        f"{raw_adoption:>9.1f}{adoption / raw_adoption:>7.2f}x"
    )
    if args.vector_index:
        print(
            f"{'HNSW index, CONCURRENTLY, after':<34}{ours.vector_index:>10.1f}"
            f"{rows / ours.vector_index:>10,.0f}{raw.vector_index:>9.1f}"
            f"{ours.vector_index / raw.vector_index:>7.2f}x"
        )
    print()
    print("writer statements during each step (milliseconds)")
    print(f"{'step':<34}{'count':>8}{'p50':>10}{'p99':>10}{'max':>10}")
    for name, (start, stop) in ours.phases.items():
        print(f"{name:<34}{waits(writers.between(start, stop))}")
    everything = [s.seconds for s in writers.samples]
    print(f"{'whole run':<34}{waits(everything)}")
    slowest = max(writers.samples, key=lambda s: s.seconds)
    began = slowest.at - slowest.seconds
    during = next(
        (
            f", began {began - start:.1f} s into the {name}"
            for name, (start, stop) in ours.phases.items()
            if start <= began <= stop
        ),
        "",
    )
    print(f"longest wait: {slowest.seconds * 1000:.0f} ms ({slowest.kind}{during})")


@contextmanager
def server() -> Iterator[URL]:
    """$VECORM_DATABASE_URL, else the embedded server."""
    given = os.environ.get("VECORM_DATABASE_URL")
    if given:
        yield make_url(given)
        return
    with vecorm.database() as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50.0, help="statements/s per writer")
    parser.add_argument("--dimensions", type=int, default=64)
    parser.add_argument("--fill-batch", type=int, default=1000)
    parser.add_argument("--backfill-batch", type=int, default=1000)
    parser.add_argument(
        "--no-vector-index",
        dest="vector_index",
        action="store_false",
        help="skip the HNSW builds (the longest step at 1M rows on a small machine)",
    )
    parser.add_argument("--show-revision", action="store_true")
    parser.add_argument(
        "--no-bm25",
        dest="bm25",
        action="store_false",
        help="SearchConfig(bm25=None): no BM25 statistics to fill",
    )
    args = parser.parse_args()
    progress = logging.StreamHandler(sys.stderr)
    progress.setFormatter(logging.Formatter("  %(message)s"))
    for name in ("alembic.vecorm", "vecorm.backfill"):
        logging.getLogger(name).addHandler(progress)
        logging.getLogger(name).setLevel(logging.INFO)
    titles, bodies = make_texts(args.rows)
    with server() as url:
        writers = Writers(libpq_conninfo(url), args.rows, args.writers, args.rate)
        ours, revision = vecorm_path(url, args, titles, bodies, writers)
        raw = raw_path(url, args, titles, bodies)
    if args.show_revision:
        print(revision)
    report(args, ours, raw, writers)


if __name__ == "__main__":
    main()
