"""Building (or rebuilding) a vector index on a large table without surprises.

An HNSW build on millions of rows takes long, and takes far longer once its graph outgrows
``maintenance_work_mem`` (pgvector then says so in a NOTICE, mid-build). :func:`build_index`:

* estimates the graph's size first and warns (:class:`IndexBuildMemoryWarning`) before the
  build starts when it will not fit, with the setting that would;
* builds ``CONCURRENTLY`` (writes continue; an INVALID leftover of a failed build is dropped
  first), or ``REINDEX ... CONCURRENTLY`` with ``rebuild=True``;
* sets ``maintenance_work_mem`` / ``max_parallel_maintenance_workers`` on its connection for
  that statement only, putting the previous values back right after;
* reports progress from ``pg_stat_progress_create_index`` (a tqdm bar, or your callback),
  polled from a second connection;
* on a partitioned table, where PostgreSQL has no ``CONCURRENTLY``, creates the index
  ``ON ONLY`` the parent, builds each partition's concurrently and attaches it.

::

    from vecorm.scale.index_build import build_model_index

    report = build_model_index(engine, Document, maintenance_work_mem="4GB", parallel_workers=3)
    print(report.seconds, report.size_bytes)

The same from the command line: ``vecorm build-index myapp.models:Document --memory 4GB``; in a
migration: ``op.create_vector_index(..., concurrently=True, maintenance_work_mem="4GB")``.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Index, MetaData, Table, func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex

from vecorm.errors import ConfigurationError, IndexBuildError, VecormWarning
from vecorm.progress import new_bar
from vecorm.schema.concurrently import DEFAULT_WAIT_TIMEOUT, WaitTimeout, run_concurrently
from vecorm.schema.config import SearchConfig
from vecorm.schema.embeddings import EmbeddingRef, embedding_slot
from vecorm.schema.indexes import index_name, vector_index_name
from vecorm.schema.pgcatalog import qualified_table

_MEMORY = re.compile(r"^\s*(\d+)\s*(kB|MB|GB|TB)?\s*$", re.IGNORECASE)
_UNITS = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40, "": 2**10}
#: Bytes per neighbour in pgvector's in-memory HNSW graph (pointer + distance + flags).
_NEIGHBOUR_BYTES = 16
#: Per-element bookkeeping of the in-memory graph (element header, heap TIDs, level).
_ELEMENT_BYTES = 128


class IndexBuildMemoryWarning(VecormWarning):
    """An HNSW graph will not fit in ``maintenance_work_mem``: the build will be much slower."""


def parse_memory(value: str | int) -> int:
    """Bytes in a PostgreSQL memory setting: ``"64MB"``, ``"2GB"``, ``65536`` (kB, like PG)."""
    if isinstance(value, int):
        return value * 2**10
    match = _MEMORY.match(value)
    if not match:
        raise ConfigurationError(f"memory setting {value!r} must look like '512MB' or '4GB'")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def format_memory(size: int) -> str:
    """A setting PostgreSQL accepts, rounded up: ``"1300MB"``, ``"3GB"``."""
    megabytes = -(-size // 2**20)
    return f"{-(-megabytes // 1024)}GB" if megabytes >= 4096 else f"{megabytes}MB"


@dataclass(frozen=True)
class BuildProgress:
    """One sample of ``pg_stat_progress_create_index``."""

    phase: str
    done: int
    total: int
    partitions_done: int = 0
    partitions_total: int = 0


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_index` did."""

    index: str
    seconds: float
    size_bytes: int
    estimated_bytes: int | None
    maintenance_work_mem: int
    notices: tuple[str, ...]
    partitions: tuple[str, ...] = ()


def estimate_hnsw_memory(
    rows: int, dimensions: int, *, precision: str = "vector", m: int = 16
) -> int:
    """Bytes pgvector's in-memory HNSW graph needs for ``rows`` (an estimate, within ~20%).

    Each element holds its value (4, 2 or 1/8 byte a dimension) and ``2 * m`` neighbours on
    level 0 (``m`` on the few upper levels).
    """
    value = {"vector": 4 * dimensions, "halfvec": 2 * dimensions, "bit": -(-dimensions // 8)}[
        precision
    ] + 8
    neighbours = (2 * m + m // 2) * _NEIGHBOUR_BYTES
    return rows * (value + neighbours + _ELEMENT_BYTES)


def _row_estimate(connection: Connection, qualified: str) -> int:
    """``reltuples`` of the table and its partitions (counted when never analysed)."""
    estimate = connection.execute(
        text(
            "SELECT sum(greatest(c.reltuples, 0)), bool_or(c.reltuples >= 0) FROM pg_class c "
            "WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:t) OR c.oid IN "
            "(SELECT inhrelid FROM pg_catalog.pg_inherits "
            "WHERE inhparent OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:t))"
        ),
        {"t": qualified},
    ).one()
    if estimate[1]:
        return int(estimate[0] or 0)
    return int(connection.execute(text(f"SELECT count(*) FROM {qualified}")).scalar_one())


def _qualified(connection: Connection, table: Table) -> str:
    return qualified_table(connection, table)


def _index_facts(index: Index) -> tuple[str, int | None, str, int]:
    """``(method, dimensions, precision, m)`` of a vector index declaration."""
    options = index.dialect_options["postgresql"]
    method = str(options["using"] or "btree")
    opclass = next(iter((options["ops"] or {}).values()), "")
    precision = (
        "bit" if opclass.startswith("bit_") else "halfvec" if "halfvec" in opclass else "vector"
    )
    dims = None
    for column in index.table.c if index.table is not None else ():
        dims = getattr(column.type, "dim", None) or dims
    m = int((options["with"] or {}).get("m", 16))
    return method, dims, precision, m


def estimate_index_memory(connection: Connection, index: Index) -> int | None:
    """Estimated bytes of ``index``'s HNSW build graph, or ``None`` (not HNSW, unknown dims)."""
    method, dims, precision, m = _index_facts(index)
    if method != "hnsw" or index.table is None:
        return None
    qualified = _qualified(connection, index.table)
    if dims is None:  # a bare Column in a migration: read the typmod (= dimensions)
        dims = connection.execute(
            text(
                "SELECT max(a.atttypmod) FROM pg_catalog.pg_attribute a "
                "WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:t) "
                "AND a.attname OPERATOR(pg_catalog.=) ANY(:columns) AND a.atttypmod > 0"
            ),
            {"t": qualified, "columns": [column.name for column in index.table.c]},
        ).scalar()
    if not dims:
        return None
    rows = _row_estimate(connection, qualified)
    return estimate_hnsw_memory(rows, dims, precision=precision, m=m)


def _current_memory(connection: Connection) -> int:
    value = connection.execute(select(func.current_setting("maintenance_work_mem"))).scalar_one()
    return parse_memory(str(value))


@contextmanager
def statement_settings(connection: Connection, settings: dict[str, str]) -> Iterator[None]:
    """``set_config(name, value, false)`` on ``connection`` for the block, then the old values.

    ``CONCURRENTLY`` cannot run in a transaction, so ``SET LOCAL`` is not available: this is
    the session-level equivalent, undone as soon as the statement returns (or fails).
    """
    previous: dict[str, str] = {}
    for name, value in settings.items():
        previous[name] = connection.execute(select(func.current_setting(name))).scalar_one()
        connection.execute(select(func.set_config(name, value, False)))
    try:
        yield
    finally:
        for name, value in previous.items():
            connection.execute(select(func.set_config(name, value, False)))


_PROGRESS_SQL = text(
    """
    SELECT phase, coalesce(nullif(tuples_total, 0), blocks_total),
           CASE WHEN tuples_total > 0 THEN tuples_done ELSE blocks_done END,
           partitions_done, partitions_total
    FROM pg_stat_progress_create_index WHERE pid OPERATOR(pg_catalog.=) :pid
    """
)


class _ProgressPoller(threading.Thread):
    """Reads the build's progress row from a second connection until stopped."""

    def __init__(
        self, engine: Engine, pid: int, report: Callable[[BuildProgress], None], interval: float
    ) -> None:
        super().__init__(name="vecorm-index-progress", daemon=True)
        self.engine = engine
        self.pid = pid
        self.report = report
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stopped.wait(self.interval):
                row = conn.execute(_PROGRESS_SQL, {"pid": self.pid}).first()
                conn.rollback()
                if row is not None:
                    self.report(
                        BuildProgress(
                            str(row[0]),
                            int(row[2] or 0),
                            int(row[1] or 0),
                            int(row[3] or 0),
                            int(row[4] or 0),
                        )
                    )

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def tqdm_progress(description: str) -> tuple[Callable[[BuildProgress], None], Callable[[], None]]:
    """A bar fed by :class:`BuildProgress` samples (drawn on a terminal with tqdm, see
    :mod:`vecorm.progress`), and the function that closes it."""
    bar = new_bar(total=0, desc=description, unit="row", enabled=True)

    def report(sample: BuildProgress) -> None:
        if sample.total and bar.total != sample.total:
            bar.reset(total=sample.total)
        bar.n = sample.done
        partitions = (
            f" [{sample.partitions_done}/{sample.partitions_total} partitions]"
            if sample.partitions_total
            else ""
        )
        bar.set_postfix_str(sample.phase + partitions, refresh=False)
        bar.refresh()

    return report, bar.close


def _notices(connection: Connection) -> tuple[list[str], Callable[[], None]]:
    """Collect the server's NOTICEs on ``connection`` (psycopg 3); returns them and an undo."""
    collected: list[str] = []
    raw = connection.connection.dbapi_connection
    add = getattr(raw, "add_notice_handler", None)
    if add is None:
        return collected, lambda: None

    def handler(diagnostic: Any) -> None:
        collected.append(str(diagnostic.message_primary))

    add(handler)
    return collected, lambda: raw.remove_notice_handler(handler)  # type: ignore[union-attr]


def _index_on(index: Index, table_name: str, name: str) -> Index:
    """``index`` re-declared on a same-shaped table ``table_name`` (a partition) as ``name``."""
    assert index.table is not None
    copy = index.table.to_metadata(MetaData(), name=table_name)
    (source,) = [candidate for candidate in copy.indexes if candidate.name == index.name]
    return Index(name, *source.expressions, unique=source.unique, **source.dialect_kwargs)


def _child_name(index: Index, partition: str) -> str:
    """``ix_<partition>_<rest of the parent's name>``, shortened like vecorm's own names."""
    assert index.table is not None
    parent = str(index.name)
    prefix = f"ix_{index.table.name}_"
    rest = parent[len(prefix) :] if parent.startswith(prefix) else parent
    column, _, method = rest.partition("_")
    return index_name(partition, column, method) if method else index_name(partition, rest, "idx")


def _partitions(connection: Connection, qualified: str) -> list[str]:
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:t) ORDER BY c.relname"
        ),
        {"t": qualified},
    )
    return [str(name) for (name,) in rows]


def _index_valid(connection: Connection, qualified: str) -> bool | None:
    return connection.execute(
        text(
            "SELECT indisvalid FROM pg_catalog.pg_index "
            "WHERE indexrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:n)"
        ),
        {"n": qualified},
    ).scalar()


def build_index(
    connection: Connection,
    index: Index,
    *,
    concurrently: bool = True,
    rebuild: bool = False,
    maintenance_work_mem: str | None = None,
    parallel_workers: int | None = None,
    progress: bool | Callable[[BuildProgress], None] = False,
    poll_interval: float = 0.5,
    wait_timeout: WaitTimeout = DEFAULT_WAIT_TIMEOUT,
) -> BuildReport:
    """Build (``rebuild=True``: ``REINDEX``) ``index`` on an AUTOCOMMIT ``connection``.

    ``maintenance_work_mem`` (e.g. ``"4GB"``) and ``parallel_workers``
    (``max_parallel_maintenance_workers``) apply to this build only. Warns with
    :class:`IndexBuildMemoryWarning` before the build when the HNSW graph will not fit.

    A concurrent build waits for every transaction older than it (a session left idle in
    transaction stalls it for ever). ``wait_timeout`` (seconds, or an interval such as
    ``"5min"``; ``None``: no limit) bounds each wait; then
    :class:`~vecorm.errors.IndexBuildBlocked` names those sessions, and no INVALID index is
    left behind.
    """
    if index.table is None or not isinstance(index.name, str):
        raise IndexBuildError("build_index needs a named Index attached to a Table")
    if concurrently and not getattr(connection.connection.dbapi_connection, "autocommit", False):
        raise IndexBuildError(
            "CONCURRENTLY cannot run inside a transaction: pass a connection made with "
            "engine.connect().execution_options(isolation_level='AUTOCOMMIT')"
        )
    table = index.table
    qualified = _qualified(connection, table)
    settings: dict[str, str] = {}
    if maintenance_work_mem is not None:
        settings["maintenance_work_mem"] = format_memory(parse_memory(maintenance_work_mem))
    if parallel_workers is not None:
        if isinstance(parallel_workers, bool) or not 0 <= parallel_workers <= 1024:
            raise ConfigurationError(f"parallel_workers must be 0 to 1024, not {parallel_workers}")
        settings["max_parallel_maintenance_workers"] = str(parallel_workers)
    memory = (
        parse_memory(settings["maintenance_work_mem"])
        if "maintenance_work_mem" in settings
        else _current_memory(connection)
    )
    estimate = estimate_index_memory(connection, index)
    if estimate is not None and estimate > memory:
        warnings.warn(
            IndexBuildMemoryWarning(
                f"the HNSW graph of {index.name} needs about {format_memory(estimate)} but "
                f"maintenance_work_mem is {format_memory(memory)}: the build will slow down "
                f"sharply once it is full. Pass maintenance_work_mem={format_memory(estimate)!r} "
                "(the server needs that much free memory) or build off-peak"
            ),
            stacklevel=2,
        )
    reporter: Callable[[BuildProgress], None] | None = None
    close: Callable[[], None] = lambda: None  # noqa: E731
    if progress is True:
        reporter, close = tqdm_progress(f"building {index.name}")
    elif callable(progress):
        reporter = progress
    pid = int(connection.execute(select(func.pg_backend_pid())).scalar_one())
    poller = _ProgressPoller(connection.engine, pid, reporter, poll_interval) if reporter else None
    collected, undo_notices = _notices(connection)
    partitions: list[str] = []
    started = time.perf_counter()
    if poller is not None:
        poller.start()
    try:
        with statement_settings(connection, settings):
            if rebuild:
                keyword = " CONCURRENTLY" if concurrently else ""
                name = qualified_table(connection, table, str(index.name))
                reindex = text(f"REINDEX INDEX{keyword} {name}")
                if concurrently:
                    run_concurrently(
                        connection,
                        lambda: connection.execute(reindex),
                        index=name,
                        wait_timeout=wait_timeout,
                        what=f"REINDEX INDEX CONCURRENTLY {name}",
                    )
                else:
                    connection.execute(reindex)
            else:
                partitions = _partitions(connection, qualified)
                if partitions and concurrently:
                    _build_partitioned(connection, index, partitions, wait_timeout)
                else:
                    _build_one(
                        connection, index, concurrently=concurrently, wait_timeout=wait_timeout
                    )
    finally:
        seconds = time.perf_counter() - started
        if poller is not None:
            poller.stop()
        close()
        undo_notices()
    for notice in collected:
        if "maintenance_work_mem" in notice:
            warnings.warn(IndexBuildMemoryWarning(f"{index.name}: {notice}"), stacklevel=2)
    size = connection.execute(
        text("SELECT pg_total_relation_size(to_regclass(:n))"),
        {"n": _qualified_index(connection, index)},
    ).scalar()
    return BuildReport(
        index=index.name,
        seconds=seconds,
        size_bytes=int(size or 0),
        estimated_bytes=estimate,
        maintenance_work_mem=memory,
        notices=tuple(collected),
        partitions=tuple(partitions),
    )


def _qualified_index(connection: Connection, index: Index) -> str:
    if index.table is None:
        return connection.dialect.identifier_preparer.quote(str(index.name))
    return qualified_table(connection, index.table, str(index.name))


def _build_one(
    connection: Connection,
    index: Index,
    *,
    concurrently: bool,
    wait_timeout: WaitTimeout = DEFAULT_WAIT_TIMEOUT,
) -> None:
    qualified = _qualified_index(connection, index)
    if not concurrently:
        connection.execute(CreateIndex(index, if_not_exists=True))
        return
    if _index_valid(connection, qualified) is False:
        # A failed CONCURRENTLY build leaves an INVALID index behind; start afresh.
        drop = text(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}")
        run_concurrently(
            connection,
            lambda: connection.execute(drop),
            index=qualified,
            wait_timeout=wait_timeout,
            what=f"DROP INDEX CONCURRENTLY {qualified} (left INVALID by a failed build)",
        )
    index.dialect_options["postgresql"]["concurrently"] = True
    try:
        run_concurrently(
            connection,
            lambda: connection.execute(CreateIndex(index, if_not_exists=True)),
            index=qualified,
            wait_timeout=wait_timeout,
        )
    finally:
        index.dialect_options["postgresql"]["concurrently"] = False


def _build_partitioned(
    connection: Connection, index: Index, partitions: list[str], wait_timeout: WaitTimeout
) -> None:
    """``ON ONLY`` the parent, each partition concurrently, then attach (PostgreSQL's recipe)."""
    assert index.table is not None
    parent_sql = str(CreateIndex(index, if_not_exists=True).compile(dialect=connection.dialect))
    table_sql = _qualified(connection, index.table)
    parent_sql = parent_sql.replace(f" ON {table_sql} ", f" ON ONLY {table_sql} ", 1)
    connection.exec_driver_sql(parent_sql)
    for partition in partitions:
        child_index = _index_on(index, partition, _child_name(index, partition))
        attached = connection.execute(
            text(
                "SELECT 1 FROM pg_inherits ih JOIN pg_index x ON x.indexrelid = ih.inhrelid "
                "WHERE ih.inhparent OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:parent) "
                "AND x.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:child)"
            ),
            {"parent": _qualified_index(connection, index), "child": partition},
        ).scalar()
        if attached:
            continue
        _build_one(connection, child_index, concurrently=True, wait_timeout=wait_timeout)
        connection.execute(
            text(
                f"ALTER INDEX {_qualified_index(connection, index)} ATTACH PARTITION "
                f"{_qualified_index(connection, child_index)}"
            )
        )


def model_vector_index(model: Any, embedding: EmbeddingRef = None) -> Index:
    """The vector index vecorm declares on ``model``'s table for its ``embedding`` (default:
    ``embedding``; another of ``SearchConfig(embeddings=...)`` by name)."""
    config: SearchConfig = embedding_slot(model, embedding).config
    table = model.__table__
    name = vector_index_name(str(table.name), config.embedding_column, config)
    for index in table.indexes:
        if index.name == name:
            return index  # type: ignore[no-any-return]
    raise IndexBuildError(f"{model.__name__} declares no vector index (index=None?)")


def build_model_index(
    engine: Engine, model: Any, *, embedding: EmbeddingRef = None, **options: Any
) -> BuildReport:
    """:func:`build_index` for ``model``'s vector index (of its ``embedding``, default
    ``embedding``), on its own AUTOCOMMIT connection."""
    index = model_vector_index(model, embedding)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return build_index(connection, index, **options)
