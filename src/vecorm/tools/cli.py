"""The ``vecorm`` command.

    vecorm demo             # the README's demo on the embedded server
    vecorm backfill myapp.models:Document   # embed missing or stale rows, resumable
    vecorm rechunk myapp.models:DocPassage  # cut parents written without the flush hook
    vecorm worker myapp.models:Document     # embed what requests leave, until SIGTERM
    vecorm doctor myapp.models:Document     # versions, extension, indexes, stale rows
    vecorm bench --rows 10000               # exact vs IVFFlat vs HNSW, recall vs latency
    vecorm adopt myapp.models:Document   # take over vectors already in the table
    vecorm build-index myapp.models:Document --memory 4GB   # CONCURRENTLY, with progress
    vecorm --help

User mistakes end in one clear line and a hint, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from vecorm.progress import ProgressChoice
from vecorm.tools.clitools import raise_user_error


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:  # a user's mistake becomes one line and a hint, never a traceback
            raise_user_error(exc)


_DATABASE_URL = click.option(
    "--database-url",
    envvar=["VECORM_DATABASE_URL", "DATABASE_URL"],
    default=None,
    help="The database (default: $VECORM_DATABASE_URL, then $DATABASE_URL).",
)
_BATCH_SIZE = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per transaction (default: the provider's batch size).",
)


def _embedder_option(whose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--embedder",
        "embedder_name",
        default=None,
        metavar="NAME",
        help=f"{_EMBEDDER_HELP} (default: {whose} SearchConfig(embedder=...)).",
    )


@click.group(cls=_Group)
@click.version_option(package_name="vecorm")
def main() -> None:
    """vecorm: embeddings and hybrid search for SQLAlchemy models on PostgreSQL + pgvector."""


_EMBEDDER_HELP = "local, hashing, openai, or MODULE:NAME of your own provider"


@main.command()
@click.option(
    "--database-url",
    envvar="VECORM_DATABASE_URL",
    default=None,
    help="Use this server instead of the embedded one (default: $VECORM_DATABASE_URL).",
)
@click.option(
    "--embedder",
    type=click.Choice(["auto", "local", "hashing", "openai"]),
    default="auto",
    show_default=True,
    help="auto: the local model when vecorm[local] is installed, else hashing. "
    "openai only when named here (needs OPENAI_API_KEY).",
)
def demo(database_url: str | None, embedder: str) -> None:
    """Load 65 passages, answer questions, compare semantic and hybrid search."""
    from vecorm.tools.clitools import parse_url
    from vecorm.tools.demo import run_demo

    run_demo(parse_url(database_url) if database_url else None, embedder=embedder, echo=click.echo)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--async", "use_async", is_flag=True, help="env.py runs on an AsyncEngine.")
@click.option(
    "--ini",
    "ini_path",
    default="alembic.ini",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write alembic.ini (kept if present).",
)
@click.option(
    "--metadata",
    "target_metadata",
    default="",
    help="Your models' MetaData, e.g. myapp.models:Base (stored in alembic.ini).",
)
def init(directory: str, use_async: bool, ini_path: str, target_metadata: str) -> None:
    """Create an Alembic environment in DIRECTORY that already imports vecorm's hooks."""
    from vecorm.tools.scaffold import init_migrations

    for path in init_migrations(
        directory, ini_path=ini_path, use_async=use_async, target_metadata=target_metadata
    ):
        click.echo(f"created {path}")
    click.echo(
        "next: set sqlalchemy.url (or $DATABASE_URL) and target_metadata in "
        f'{ini_path}, then `alembic revision --autogenerate -m "..."`'
    )


@main.command()
@click.argument("model_path", metavar="MODULE:MODEL")
@click.option(
    "--re-embed",
    is_flag=True,
    help="Embed the rows again with the provider instead of recording their vectors.",
)
@click.option(
    "--embedder",
    "embedder_path",
    default=None,
    metavar="MODULE:NAME",
    help="The provider (default: the model's SearchConfig(embedder=...)). Without "
    "--re-embed only its model_name and dimensions are read.",
)
@_DATABASE_URL
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Rows per transaction."
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on stderr (default: when stderr is a terminal).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document (model, re_embed, recorded, embedded, missing, calls, "
    "seconds) on stdout; hints go to stderr.",
)
def adopt(
    model_path: str,
    re_embed: bool,
    embedder_path: str | None,
    database_url: str | None,
    batch_size: int | None,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Take over the vectors already stored for MODULE:MODEL (see docs/adopting.md).

    Records each existing vector as current for its row's text, without calling the provider;
    with --re-embed, embeds the rows again instead.
    """
    import dataclasses
    import os
    import sys

    from sqlalchemy import create_engine, make_url
    from sqlalchemy.orm import Session

    from vecorm.embedding.adopt import adopt as adopt_model
    from vecorm.objects import import_model, import_object

    if not database_url:
        raise click.UsageError("pass --database-url or set DATABASE_URL")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so `myapp.models` imports from the project root
    model = import_model(model_path)
    embedder = import_object(embedder_path) if embedder_path else None
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            result = adopt_model(
                session,
                model,
                embedder=embedder,
                re_embed=re_embed,
                batch_size=batch_size,
                progress=_bar(progress),
            )
    finally:
        engine.dispose()
    name = model.__name__
    if as_json:
        import json

        report = {"model": name, "re_embed": re_embed, **dataclasses.asdict(result)}
        click.echo(json.dumps(report, indent=2))
    elif re_embed:
        calls = f"{result.calls} provider call{'' if result.calls == 1 else 's'}"
        click.echo(f"{name}: embedded {result.embedded} rows in {calls}")
    else:
        click.echo(
            f"{name}: recorded {result.recorded} existing vectors as current (no provider calls)"
        )
    if result.missing:
        click.echo(
            f"{name}: {result.missing} rows have text but no vector; "
            f"`vecorm adopt {model_path} --re-embed` embeds them (recorded rows are kept)",
            err=as_json,
        )


@main.command()
@click.argument("model_path", metavar="MODULE:MODEL")
@_embedder_option("the model's")
@_DATABASE_URL
@_BATCH_SIZE
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on stderr (default: when stderr is a terminal). Without a bar, "
    "a progress line every 10 seconds.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document on stdout: rows, batches, seconds, rows_per_second, left.",
)
@click.option(
    "--embedding",
    "embedding",
    metavar="NAME",
    default=None,
    help="Fill only this embedding of the model (one of SearchConfig(embeddings=...), or "
    "'embedding'); default: every one. Needed with --embedder on a model of several.",
)
def backfill(
    model_path: str,
    embedder_name: str | None,
    database_url: str | None,
    batch_size: int | None,
    progress: bool | None,
    as_json: bool,
    embedding: str | None,
) -> None:
    """Embed the rows of MODULE:MODEL whose embedding is missing or stale.

    Commits every batch: interrupted, it carries on where it stopped when run again.
    """
    import json
    import logging
    import sys

    from vecorm.embedding.backfill import backfill as backfill_rows
    from vecorm.embedding.backfill import chosen_embeddings, stale_count
    from vecorm.schema.embeddings import embedding_slot
    from vecorm.tools.clitools import connect, load_embedder, load_model, require_url

    url = require_url(database_url)
    model = load_model(model_path)
    width = embedding_slot(model, embedding).config.dimensions
    embedder = load_embedder(embedder_name, dimensions=width) if embedder_name else None
    chosen_embeddings(model, embedding, embedder)  # refuses an embedder for several at once
    # No bar on stderr: periodic log lines instead (a long run never looks hung).
    lines = progress is False or (progress is None and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("vecorm.backfill")
    level = logger.level
    if lines:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        with connect(url) as session:
            result = backfill_rows(
                session,
                model,
                embedder=embedder,
                batch_size=batch_size,
                progress=_bar(progress),
                embedding=embedding,
            )
            left = stale_count(session, model, embedder=embedder, embedding=embedding)
    finally:
        if lines:
            logger.removeHandler(handler)
            logger.setLevel(level)
    name = model.__name__
    if as_json:
        document = {
            "model": model_path,
            "rows": result.embedded,
            "batches": result.batches,
            "calls": result.calls,
            "seconds": round(result.seconds, 3),
            "rows_per_second": round(result.rows_per_second, 1),
            "left": left,
            "rejected": [list(key) for key in result.rejected],
        }
        click.echo(json.dumps(document, default=str))
        if result.rejected:
            sys.exit(1)
        return
    if result.embedded == 0 and not result.rejected:
        click.echo(f"{name}: nothing to embed, every row is up to date")
    else:
        click.echo(
            f"{name}: embedded {result.embedded} rows in {result.batches} batches "
            f"({result.calls} provider calls, {result.rows_per_second:.0f} rows/s)"
        )
    if result.rejected:
        keys = ", ".join(repr(key if len(key) > 1 else key[0]) for key in result.rejected[:10])
        more = "" if len(result.rejected) <= 10 else f" and {len(result.rejected) - 10} more"
        click.echo(
            f"{name}: the provider refused the text of {len(result.rejected)} rows ({keys}"
            f"{more}): they stay unembedded until their text changes; the log says why",
            err=True,
        )
        sys.exit(1)
    if left:
        click.echo(f"{name}: {left} rows became stale meanwhile; run the command again")


@main.command()
@click.argument("model_path", metavar="MODULE:MODEL")
@_embedder_option("the passage model's")
@_DATABASE_URL
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Parents cut per flush.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document on stdout: model, passages, unembedded, seconds.",
)
def rechunk(
    model_path: str,
    embedder_name: str | None,
    database_url: str | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Cut the parents of the passage model MODULE:MODEL into passages.

    For parents written without vecorm's flush hook (COPY, raw SQL, bulk_insert, rows older
    than the passage model) or after a chunker change; unchanged passages are kept. New
    passages are embedded in the same transaction by --embedder or the model's own embedder;
    without one they are written without vectors, for `vecorm backfill` or a worker. One
    transaction: interrupted, it writes nothing.
    """
    import json
    import time

    from sqlalchemy import select

    from vecorm.embedding.events import install, uninstall
    from vecorm.embedding.passages import rechunk as rechunk_passages
    from vecorm.schema.config import search_config
    from vecorm.schema.pgcatalog import pg
    from vecorm.tools.clitools import connect, load_embedder, load_passage_model, require_url

    url = require_url(database_url)
    model = load_passage_model(model_path)
    config = search_config(model)
    embedder = load_embedder(embedder_name, dimensions=config.dimensions) if embedder_name else None
    embeds = embedder is not None or config.embedder is not None
    started = time.perf_counter()
    with connect(url) as session:
        # without a provider, the hook writes the passages and leaves their vectors
        install(session, embedder=embedder, mode="strict" if embeds else "worker")
        try:
            written = rechunk_passages(session, model, batch_size=batch_size)
            session.commit()
        finally:
            uninstall(session)
        unembedded = session.scalar(
            select(pg.count(model.parent_id)).where(model.embedding.is_(None))
        )
    seconds = time.perf_counter() - started
    name = model.__name__
    if as_json:
        document = {
            "model": model_path,
            "passages": written,
            "unembedded": unembedded,
            "seconds": round(seconds, 3),
        }
        click.echo(json.dumps(document))
    elif written:
        click.echo(f"{name}: wrote {written} passages in {seconds:.1f} s (unchanged ones kept)")
    else:
        click.echo(f"{name}: nothing to write, every passage is current")
    if unembedded:
        click.echo(
            f"{name}: {unembedded} passages have no vector yet; "
            f"`vecorm backfill {model_path}` embeds them",
            err=as_json,
        )


@main.command()
@click.argument("model_paths", metavar="MODULE:MODEL...", nargs=-1, required=True)
@_embedder_option("each model's")
@_DATABASE_URL
@_BATCH_SIZE
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds between passes over every model, for rows written without a notification.",
)
@click.option(
    "--heartbeat",
    type=click.Path(dir_okay=False),
    default=None,
    help="A file the worker rewrites with its health (JSON), for --check.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Do not run: print the health of the worker writing --heartbeat and the backlog as "
    "JSON; exit 1 when it is unhealthy.",
)
@click.option(
    "--max-lag",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="With --check: seconds without a heartbeat, or with rows waiting since the worker "
    "last caught up, that make it unhealthy (keep it above --poll-interval).",
)
def worker(
    model_paths: tuple[str, ...],
    embedder_name: str | None,
    database_url: str | None,
    batch_size: int | None,
    poll_interval: float,
    heartbeat: str | None,
    check: bool,
    max_lag: float,
) -> None:
    """Embed the rows of MODULE:MODEL... that requests leave (install(mode="worker")), raw SQL
    or COPY write, as they come, until SIGTERM or SIGINT (see docs/embedding.md).

    Woken by NOTIFY, with a full pass every --poll-interval seconds; run as many as you like.
    The first signal lets the batch in flight commit, then exits 0.
    """
    import json

    from vecorm.tools.clitools import require_url
    from vecorm.tools.worker_command import check_worker, run_worker

    url = require_url(database_url)
    if not check:
        run_worker(
            url,
            model_paths,
            embedder_name=embedder_name,
            batch_size=batch_size,
            poll_interval=poll_interval,
            heartbeat=heartbeat,
        )
        return
    if heartbeat is None:
        raise click.UsageError(
            "--check reads the running worker's heartbeat: pass --heartbeat PATH"
        )
    report, healthy = check_worker(
        url, model_paths, embedder_name=embedder_name, heartbeat=heartbeat, max_lag=max_lag
    )
    click.echo(json.dumps(report, indent=2))
    if not healthy:
        raise SystemExit(1)


@main.command()
@click.argument("model_paths", metavar="[MODULE:MODEL]...", nargs=-1)
@click.option(
    "--embedder",
    "embedder_name",
    default=None,
    metavar="NAME",
    help=f"{_EMBEDDER_HELP}, for the width and stale-row checks (default: each model's own).",
)
@click.option(
    "--database-url",
    envvar=["VECORM_DATABASE_URL", "DATABASE_URL"],
    default=None,
    help="The database (default: $VECORM_DATABASE_URL, then $DATABASE_URL, "
    "else a scratch embedded server).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document (database, ok, problems, warnings, findings) on stdout.",
)
def doctor(
    model_paths: tuple[str, ...],
    embedder_name: str | None,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Check the server, pgvector and your searchable models; exit 1 on a problem."""
    from vecorm.tools.clitools import parse_url
    from vecorm.tools.doctor import run_doctor

    url = parse_url(database_url) if database_url else None
    passed = run_doctor(
        url,
        model_paths,
        embedder_name=embedder_name,
        echo=click.echo,
        as_json=as_json,
        note=lambda message: click.echo(message, err=True),
    )
    if not passed:
        raise SystemExit(1)


@main.command()
@click.option(
    "--rows",
    type=click.IntRange(min=10),
    default=10_000,
    show_default=True,
    help="Random vectors to load.",
)
@click.option("--dimensions", type=click.IntRange(1, 2000), default=1536, show_default=True)
@click.option("--queries", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Neighbours per query.",
)
@click.option(
    "--lists", type=click.IntRange(min=1), default=None, help="IVFFlat lists [default: sqrt(rows)]."
)
@click.option("--m", type=click.IntRange(2, 100), default=16, show_default=True, help="HNSW m.")
@click.option("--ef-construction", type=click.IntRange(4, 1000), default=64, show_default=True)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default="vecorm-bench.png",
    show_default=True,
    help="Where to write the recall-vs-latency PNG.",
)
@click.option("--no-plot", is_flag=True, help="Print the table only.")
@click.option(
    "--data",
    type=click.Choice(["random", "clustered"]),
    default="random",
    show_default=True,
    help="random: uniform on the sphere (hardest); clustered: like real embeddings.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--database-url",
    envvar="VECORM_DATABASE_URL",
    default=None,
    help="Use this server instead of a scratch embedded one.",
)
def bench(
    rows: int,
    dimensions: int,
    queries: int,
    k: int,
    lists: int | None,
    m: int,
    ef_construction: int,
    plot_path: str,
    no_plot: bool,
    data: str,
    seed: int,
    database_url: str | None,
) -> None:
    """Exact scan vs IVFFlat vs HNSW on random vectors: recall against latency."""
    from vecorm.tools.bench import BenchConfig, run_bench_command
    from vecorm.tools.clitools import parse_url

    config = BenchConfig(
        rows=rows,
        dimensions=dimensions,
        queries=queries,
        k=k,
        lists=lists,
        m=m,
        ef_construction=ef_construction,
        seed=seed,
        data="clustered" if data == "clustered" else "random",
    )
    run_bench_command(
        parse_url(database_url) if database_url else None,
        config,
        plot_path=None if no_plot else plot_path,
        echo=click.echo,
        progress=lambda message: click.echo(message, err=True),
    )


@main.command("build-index")
@click.argument("model_path", metavar="MODULE:MODEL")
@_DATABASE_URL
@click.option("--memory", default=None, metavar="SIZE", help="maintenance_work_mem, e.g. 4GB.")
@click.option("--workers", type=click.IntRange(0, 1024), default=None, help="Parallel workers.")
@click.option("--rebuild", is_flag=True, help="REINDEX CONCURRENTLY an existing index.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option(
    "--embedding",
    metavar="NAME",
    default=None,
    help="The index of this one of the model's embeddings (SearchConfig(embeddings=...)).",
)
def build_index(
    model_path: str,
    database_url: str | None,
    memory: str | None,
    workers: int | None,
    rebuild: bool,
    progress: bool,
    embedding: str | None,
) -> None:
    """Build MODULE:MODEL's vector index CONCURRENTLY (see vecorm.scale.index_build)."""
    from vecorm.engine import create_engine
    from vecorm.scale.index_build import build_model_index
    from vecorm.tools.clitools import load_model, require_url

    engine = create_engine(require_url(database_url))
    try:
        report = build_model_index(
            engine,
            load_model(model_path),
            embedding=embedding,
            rebuild=rebuild,
            maintenance_work_mem=memory,
            parallel_workers=workers,
            progress=progress,
        )
    finally:
        engine.dispose()
    click.echo(
        f"built {report.index} in {report.seconds:.1f} s ({report.size_bytes / 2**20:.1f} MB)"
    )


@main.command("eval")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, help="qrels/<split>.tsv to judge by.")
@click.option(
    "--embedder",
    "embedder_name",
    default="local",
    show_default=True,
    help="local, hashing, openai, or MODULE:NAME (as on every command).",
)
@click.option(
    "--modes",
    default=None,
    help="Comma-separated modes (default: all; see vecorm.tools.evaluation).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write numbers here.")
@click.option("--sweep", is_flag=True, help="Also sweep blend weight, RRF k, k1, b, ef_search.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default="vecorm-eval-sweep.png",
    show_default=True,
    help="Where --sweep draws its trade-offs.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Embedding cache (default: ~/.cache/vecorm/embeddings).",
)
@click.option(
    "--database-url",
    envvar="VECORM_DATABASE_URL",
    default=None,
    help="Server for the scratch table (default: $VECORM_DATABASE_URL, else embedded).",
)
@click.option("--max-queries", type=click.IntRange(1), default=None, help="Judge a subset.")
@click.option(
    "--max-docs",
    type=click.IntRange(1),
    default=None,
    help="Load at most this many documents (judged ones first).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_command(
    directory: str,
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
) -> None:
    """Judge vecorm's search modes on a BEIR-layout collection in DIRECTORY."""
    from vecorm.tools.evaluation import run_eval_command

    run_eval_command(
        directory,
        split=split,
        embedder_name=embedder_name,
        modes=modes,
        json_path=json_path,
        sweep=sweep,
        plot=plot,
        cache_dir=cache_dir,
        database_url=database_url,
        max_queries=max_queries,
        max_docs=max_docs,
        progress=progress,
        echo=click.echo,
    )


def _bar(flag: bool | None) -> ProgressChoice:
    """``--progress`` forces a bar, ``--no-progress`` hides it, neither: a terminal decides."""
    return True if flag is None else ("always" if flag else False)
