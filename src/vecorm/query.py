"""Nearest-neighbour statements, distance expressions and query-time index settings.

Everything here *builds* SQLAlchemy statements; nothing executes on its own. A nearest-neighbour
search is an ordinary :class:`~sqlalchemy.sql.Select` of ``(Model, distance)`` that composes
like any other::

    stmt = (
        Document.nearest("how do I tune autovacuum?", k=10)   # or a list / numpy vector
        .where(Document.category == "postgres")
        .options(selectinload(Document.author))
    )
    for document, distance in session.execute(stmt):
        ...

The ``ORDER BY`` uses the operator of the index's operator class (``<=>`` for cosine ...), so
PostgreSQL walks the HNSW / IVFFlat index, and a primary-key tie-break makes the order total.

**Query-time settings.** pgvector reads ``hnsw.ef_search``, ``hnsw.iterative_scan``,
``ivfflat.probes`` ... when a scan runs. vecorm carries them on the statement as execution
options (``vecorm_hnsw_ef_search`` ...; :func:`search_options` builds them), and a listener on
SQLAlchemy's :class:`~sqlalchemy.engine.Engine` class applies them with
``set_config(name, value, true)`` (``SET LOCAL``) on the same connection, in the same
transaction, right before the statement, and puts the previous values back right after it (or
after a failure, from ``handle_error``). Nothing outlives the statement, so nothing reaches the
pool's next user, and there is nothing to call::

    engine = sqlalchemy.create_engine(url)        # or Flask-SQLAlchemy's db.engine, an async one
    session.execute(Document.nearest(q, k=100).execution_options(**search_options(ef_search=200)))

The listener is installed when this module is imported, against vecorm's rule that side
effects wait for a call, because: without it the options are silently ignored (measured: a
filtered top-10 at 1% selectivity returned 0 of 10 rows, hybrid search missed the true nearest
row); a class listener is the only hook that reaches engines the application made itself
(Flask-SQLAlchemy, FastAPI apps, test fixtures), including ones made before the import and the
``sync_engine`` of async engines; and it is inert for every other statement, which pays one
set-disjointness test. :func:`uninstall_search_settings` opts an engine out.

:func:`nearest` fills these options from the model's :class:`~vecorm.HNSW` /
:class:`~vecorm.IVFFlat` declaration: iterative scan ``relaxed_order`` (a filtered query still
returns ``k`` rows), ``ef_search`` 200 and ``probes`` sqrt(lists) unless set (see
docs/querying.md for the measurements behind them). :func:`apply_search_settings` runs the
``SET LOCAL`` itself, for the rest of the session's current transaction.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    cast,
    column,
    event,
    func,
    inspect,
    literal,
    select,
    table,
    true,
    tuple_,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.schema import Column
from sqlalchemy.sql.visitors import InternalTraversal

from vecorm.config import HNSW, Distance, IVFFlat, SearchConfig
from vecorm.embedders.base import Embedder
from vecorm.embedders.query import embed_query
from vecorm.errors import ConfigurationError
from vecorm.indexes import indexed_expression
from vecorm.types import Bit, FloatArray, HalfVec, Vector, to_float_array

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPICursor, ExceptionContext, ExecutionContext

QueryInput = str | Sequence[float] | npt.NDArray[Any]
"""What a search accepts: text (embedded with the model's embedder) or a vector."""

#: ``hnsw.ef_search`` of vecorm's statements when the model sets none (pgvector's is 40).
#: Wider search costs about 2x on unfiltered queries but finds filtered neighbours, and it
#: makes pgvector's cost estimate honest enough for the planner to pick an exact scan when
#: a filter is selective (docs/querying.md, benchmarks/filtered_search.py).
DEFAULT_EF_SEARCH = 200
#: pgvector refuses ``hnsw.ef_search`` above this.
MAX_EF_SEARCH = 1000


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Setting:
    guc: str
    check: Callable[[object], str]


def _integer(low: int, high: int) -> Callable[[object], str]:
    def check(value: object) -> str:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigurationError(f"must be an integer between {low} and {high}, not {value!r}")
        return str(value)

    return check


def _number(low: float, high: float) -> Callable[[object], str]:
    def check(value: object) -> str:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigurationError(f"must be a number between {low} and {high}, not {value!r}")
        return repr(float(value))

    return check


def _choice(*names: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in names:
            raise ConfigurationError(f"must be one of {', '.join(map(repr, names))}, not {value!r}")
        return str(value)

    return check


#: Execution option key -> the pgvector setting it controls.
SETTINGS: Mapping[str, _Setting] = {
    "vecorm_hnsw_ef_search": _Setting("hnsw.ef_search", _integer(1, MAX_EF_SEARCH)),
    "vecorm_hnsw_iterative_scan": _Setting(
        "hnsw.iterative_scan", _choice("off", "relaxed_order", "strict_order")
    ),
    "vecorm_hnsw_max_scan_tuples": _Setting("hnsw.max_scan_tuples", _integer(1, 2_147_483_647)),
    "vecorm_hnsw_scan_mem_multiplier": _Setting("hnsw.scan_mem_multiplier", _number(1, 1000)),
    "vecorm_ivfflat_probes": _Setting("ivfflat.probes", _integer(1, 32768)),
    "vecorm_ivfflat_iterative_scan": _Setting(
        "ivfflat.iterative_scan", _choice("off", "relaxed_order")
    ),
    "vecorm_ivfflat_max_probes": _Setting("ivfflat.max_probes", _integer(1, 32768)),
    "vecorm_plan_cache_mode": _Setting(
        "plan_cache_mode", _choice("auto", "force_custom_plan", "force_generic_plan")
    ),
}
#: ``plan_cache_mode`` of vecorm's index searches. psycopg prepares a statement after its
#: fifth run, and PostgreSQL may then reuse a generic plan, one made without the parameter
#: values: it cannot see that ``category = 'rare'`` keeps 1% of the rows (so it walks the
#: graph instead of reading them exactly) nor how many rows a LIMIT asks for. Planning a
#: search afresh costs well under a millisecond.
DEFAULT_PLAN_CACHE_MODE = "force_custom_plan"


def search_options(
    *,
    ef_search: int | None = None,
    iterative_scan: str | None = None,
    max_scan_tuples: int | None = None,
    scan_mem_multiplier: float | None = None,
    probes: int | None = None,
    max_probes: int | None = None,
    plan_cache_mode: str | None = None,
) -> dict[str, Any]:
    """Execution options that set pgvector's query-time parameters for one statement.

    ``iterative_scan`` applies to HNSW and, when it is ``"off"`` or ``"relaxed_order"``, to
    IVFFlat too (IVFFlat has no strict order). ``plan_cache_mode`` is PostgreSQL's (vecorm's
    searches use ``"force_custom_plan"``, see :data:`DEFAULT_PLAN_CACHE_MODE`)::

        stmt = Document.nearest(q, k=50).execution_options(**search_options(ef_search=100))
    """
    chosen: dict[str, object] = {
        "vecorm_hnsw_ef_search": ef_search,
        "vecorm_hnsw_iterative_scan": iterative_scan,
        "vecorm_hnsw_max_scan_tuples": max_scan_tuples,
        "vecorm_hnsw_scan_mem_multiplier": scan_mem_multiplier,
        "vecorm_ivfflat_probes": probes,
        "vecorm_ivfflat_max_probes": max_probes,
        "vecorm_plan_cache_mode": plan_cache_mode,
    }
    if iterative_scan in ("off", "relaxed_order"):
        chosen["vecorm_ivfflat_iterative_scan"] = iterative_scan
    options = {key: value for key, value in chosen.items() if value is not None}
    settings_from_options(options)  # validate now, where the mistake is made
    return options


def index_search_options(config: SearchConfig, *, depth: int = 0) -> dict[str, Any]:
    """The model's query-time defaults as execution options; ``ef_search`` >= ``depth``."""
    index = config.index
    if isinstance(index, HNSW):
        ef_search = index.ef_search or DEFAULT_EF_SEARCH
        options: dict[str, Any] = {
            "vecorm_hnsw_ef_search": min(MAX_EF_SEARCH, max(ef_search, depth)),
            "vecorm_hnsw_iterative_scan": index.iterative_scan,
            "vecorm_plan_cache_mode": DEFAULT_PLAN_CACHE_MODE,
        }
        if index.max_scan_tuples is not None:
            options["vecorm_hnsw_max_scan_tuples"] = index.max_scan_tuples
        if index.scan_mem_multiplier is not None:
            options["vecorm_hnsw_scan_mem_multiplier"] = index.scan_mem_multiplier
        return options
    if isinstance(index, IVFFlat):
        options = {
            "vecorm_ivfflat_iterative_scan": index.iterative_scan,
            "vecorm_ivfflat_probes": index.probes or default_probes(index.lists),
            "vecorm_plan_cache_mode": DEFAULT_PLAN_CACHE_MODE,
        }
        if index.max_probes is not None:
            options["vecorm_ivfflat_max_probes"] = index.max_probes
        return options
    return {}


def default_probes(lists: int) -> int:
    """``ivfflat.probes`` when the model sets none: sqrt(lists), pgvector's own advice
    (its default of 1 searches a single list)."""
    return max(1, math.ceil(math.sqrt(lists)))


def settings_from_options(options: Mapping[str, Any]) -> dict[str, str]:
    """``{"hnsw.ef_search": "100", ...}`` for the vecorm execution options in ``options``."""
    settings: dict[str, str] = {}
    for key, value in options.items():
        setting = SETTINGS.get(key)
        if setting is None:
            if key.startswith("vecorm_hnsw_") or key.startswith("vecorm_ivfflat_"):
                known = ", ".join(sorted(SETTINGS))
                raise ConfigurationError(f"unknown execution option {key!r}; use one of {known}")
            continue
        try:
            settings[setting.guc] = setting.check(value)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{key} ({setting.guc}) {exc}") from None
    return settings


def _setting_name(index: int) -> BindParameter[str]:
    return bindparam(f"vecorm_name_{index}", type_=String)


def _setting_value(index: int) -> BindParameter[str]:
    return bindparam(f"vecorm_value_{index}", type_=String)


def _set_config_statement(count: int) -> Select[Any]:
    """``SELECT current_setting(n, true), set_config(n, v, true), ...``: old values, then set."""
    columns: list[ColumnElement[Any]] = []
    for index in range(count):
        columns.append(func.current_setting(_setting_name(index), true()))
        columns.append(func.set_config(_setting_name(index), _setting_value(index), true()))
    return select(*columns)


def _restore_statement(count: int) -> Select[Any]:
    """Set each name back; a setting that did not exist yet (library not loaded) gets its
    session value (``pg_settings.reset_val``)."""
    columns = []
    for index in range(count):
        reset_value = (
            select(_PG_SETTINGS.c.reset_val)
            .where(_PG_SETTINGS.c.name == _setting_name(index))
            .scalar_subquery()
        )
        restored = func.coalesce(_setting_value(index), reset_value)
        columns.append(func.set_config(_setting_name(index), restored, true()))
    return select(*columns)


_PG_SETTINGS = table("pg_settings", column("name"), column("reset_val"), schema="pg_catalog")
_BUILDERS = {"set": _set_config_statement, "restore": _restore_statement}
# Compiled once per dialect and shape: the hook runs around every search statement.
_compiled: weakref.WeakKeyDictionary[Dialect, dict[tuple[str, int], SQLCompiler]] = (
    weakref.WeakKeyDictionary()
)


def _statement_for(dialect: Dialect, kind: str, count: int) -> SQLCompiler:
    cache = _compiled.setdefault(dialect, {})
    compiled = cache.get((kind, count))
    if compiled is None:
        compiled = _BUILDERS[kind](count).compile(dialect=dialect)
        cache[(kind, count)] = compiled
    return compiled


def _run_raw(conn: Connection, kind: str, values: Mapping[str, str | None]) -> tuple[Any, ...]:
    """Run the ``kind`` statement for ``values`` on ``conn``'s DBAPI connection, bypassing
    events (we are inside one)."""
    compiled = _statement_for(conn.dialect, kind, len(values))
    bound: dict[str, Any] = {}
    for index, (name, value) in enumerate(values.items()):
        bound[f"vecorm_name_{index}"] = name
        bound[f"vecorm_value_{index}"] = value
    params = compiled.construct_params(bound)
    arguments: Any = params
    if compiled.positional:
        arguments = tuple(params[key] for key in compiled.positiontup or ())
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(compiled.string, arguments)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return tuple(row or ())


_SETTING_KEYS = frozenset(SETTINGS)
#: Execution option: ``False`` opts an engine, a connection or a statement out of the hook
#: (:func:`uninstall_search_settings` sets it on an engine).
SEARCH_SETTINGS_OPTION = "vecorm_search_settings"
_RESTORE_KEY = "vecorm_search_settings_restore"
#: libpq's ``PQTRANS_INTRANS`` (psycopg 2 and 3): in a transaction that has not failed.
_IN_TRANSACTION = 2


def _before_cursor_execute(
    conn: Connection,
    cursor: DBAPICursor,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    if context is None or _SETTING_KEYS.isdisjoint(context.execution_options):
        return  # not a vecorm search: this test is all that other statements pay
    options = context.execution_options
    if executemany or options.get(SEARCH_SETTINGS_OPTION) is False:
        return
    # A failed statement's leftover (only if handle_error could not run): its transaction
    # may be over, so it is dropped rather than applied.
    conn.info.pop(_RESTORE_KEY, None)
    settings = settings_from_options(options)
    dbapi_connection = conn.connection.dbapi_connection
    if getattr(dbapi_connection, "autocommit", False):
        raise ConfigurationError(
            "vecorm query settings use SET LOCAL, which needs a transaction, but this "
            "connection is in AUTOCOMMIT mode; run the statement in a transaction "
            "(the default isolation level) or leave out the vecorm_* execution options"
        )
    row = _run_raw(conn, "set", settings)
    server_side = bool(getattr(context, "_is_server_side", False)) or bool(
        options.get("stream_results", False)
    )
    # A server-side cursor scans while rows are fetched, after this hook: keep the settings
    # until the transaction ends (COMMIT / ROLLBACK still resets them).
    if not server_side:
        conn.info[_RESTORE_KEY] = (id(cursor), dict(zip(settings, row[::2], strict=True)))


def _after_cursor_execute(
    conn: Connection,
    cursor: DBAPICursor,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    if context is None or _SETTING_KEYS.isdisjoint(context.execution_options):
        return
    pending = conn.info.pop(_RESTORE_KEY, None)
    if pending is None or pending[0] != id(cursor):
        return
    _run_raw(conn, "restore", pending[1])


def _transaction_status(conn: Connection) -> int | None:
    """libpq's transaction status of ``conn`` (psycopg 2 and 3); ``None`` for other drivers."""
    info = getattr(conn.connection.driver_connection, "info", None)
    status = getattr(info, "transaction_status", None)
    return status if isinstance(status, int) else None


def _handle_error(exception: ExceptionContext) -> None:
    """Put the previous values back when the statement failed between the two hooks (a
    parameter the driver cannot adapt, another listener's exception ...)."""
    conn, context = exception.connection, exception.execution_context
    if conn is None or context is None or _SETTING_KEYS.isdisjoint(context.execution_options):
        return
    # Whatever goes wrong here, the caller must see their own error, not ours: a failed
    # restore leaves the transaction aborted or the connection dead, and either ends the
    # settings anyway.
    with contextlib.suppress(Exception):
        _restore_after_failure(conn, context, is_disconnect=exception.is_disconnect)


def _restore_after_failure(
    conn: Connection, context: ExecutionContext, *, is_disconnect: bool
) -> None:
    if is_disconnect or conn.invalidated or conn.closed:
        return  # the connection is discarded, and its settings with it
    pending = conn.info.pop(_RESTORE_KEY, None)
    if pending is None or pending[0] != id(context.cursor):
        return
    status = _transaction_status(conn)
    if status is not None and status != _IN_TRANSACTION:
        return  # the server aborted the transaction: its ROLLBACK resets SET LOCAL
    _run_raw(conn, "restore", pending[1])


# Every engine, made before or after this import, sync or the sync_engine of an async one
# (see the module docstring for why this happens on import). handle_error goes first, so no
# other handler's exception can skip the restore.
event.listen(Engine, "before_cursor_execute", _before_cursor_execute)
event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
event.listen(Engine, "handle_error", _handle_error, insert=True)


def _target(bind: Engine | AsyncEngine) -> Engine:
    return bind.sync_engine if isinstance(bind, AsyncEngine) else bind


def _opted_out(engine: Engine) -> bool:
    return engine.get_execution_options().get(SEARCH_SETTINGS_OPTION) is False


def install_search_settings(bind: Engine | AsyncEngine) -> None:
    """Kept for compatibility: vecorm's settings apply on every engine once ``vecorm.query``
    is imported, so there is nothing to install. It only undoes
    :func:`uninstall_search_settings` on ``bind``."""
    engine = _target(bind)
    if _opted_out(engine):
        engine.update_execution_options(**{SEARCH_SETTINGS_OPTION: True})


def uninstall_search_settings(bind: Engine | AsyncEngine) -> None:
    """Opt ``bind`` out: its connections opened from now on ignore the ``vecorm_*`` settings
    options, and searches run with pgvector's settings (or yours, see
    :func:`apply_search_settings`).

    It sets the execution option :data:`SEARCH_SETTINGS_OPTION` to ``False`` on the engine;
    the same option opts out one connection or one statement::

        vecorm.uninstall_search_settings(engine)
        conn = engine.connect().execution_options(vecorm_search_settings=False)
    """
    _target(bind).update_execution_options(**{SEARCH_SETTINGS_OPTION: False})


def search_settings_installed(bind: Engine | AsyncEngine) -> bool:
    """Whether vecorm's settings apply on ``bind``: ``True`` unless it was opted out with
    :func:`uninstall_search_settings`."""
    listening = event.contains(Engine, "before_cursor_execute", _before_cursor_execute)
    return listening and not _opted_out(_target(bind))


def apply_search_settings(target: Session | Connection, **settings: Any) -> None:
    """``SET LOCAL`` pgvector settings now, for the rest of the current transaction.

    Takes the arguments of :func:`search_options`. It serves statements without settings of
    their own (hand-written SQL, an engine opted out with :func:`uninstall_search_settings`);
    vecorm's searches carry theirs, which win for that statement::

        with Session(engine) as session, session.begin():
            vecorm.apply_search_settings(session, ef_search=200, iterative_scan="strict_order")
            by_distance = select(Document).order_by(Document.distance_to(q)).limit(100)
            rows = session.scalars(by_distance).all()
    """
    resolved = settings_from_options(search_options(**settings))
    if not resolved:
        return
    if isinstance(target, Connection) and not target.in_transaction():
        raise ConfigurationError("apply_search_settings needs a transaction: call conn.begin()")
    parameters: dict[str, str] = {}
    for index, (name, value) in enumerate(resolved.items()):
        parameters[f"vecorm_name_{index}"] = name
        parameters[f"vecorm_value_{index}"] = value
    target.execute(_set_config_statement(len(resolved)), parameters)


# --------------------------------------------------------------------------- expressions


def _config(model: Any) -> SearchConfig:
    from vecorm.mixin import search_config

    return search_config(model)


def _name(model: Any) -> str:
    return getattr(model, "__name__", type(model).__name__)


def query_vector(model: Any, query: QueryInput, *, embedder: Embedder | None = None) -> FloatArray:
    """``query`` as a validated float32 vector for ``model``; text is embedded (LRU cached).

    Raises :class:`~vecorm.ConfigurationError` for text when no embedder is configured.
    """
    config = _config(model)
    if isinstance(query, str):
        provider = embedder if embedder is not None else config.embedder
        if provider is None:
            raise ConfigurationError(
                f"{_name(model)}: a text query needs an embedder; pass embedder=... or set "
                f"SearchConfig(embedder=...) on {_name(model)}.__vecorm__, or pass a vector"
            )
        vector: object = embed_query(provider, query)
    else:
        vector = query
    return to_float_array(vector, config.dimensions, label=f"{_name(model)} query vector")


def metric_of(model: Any, distance: Distance | str | None = None) -> Distance:
    """``distance`` parsed, or the model's configured metric."""
    return Distance.parse(distance) if distance is not None else _config(model).metric


def distance_expression(
    model: Any,
    query: QueryInput,
    *,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
) -> ColumnElement[float | None]:
    """``embedding <=> :query`` (the operator of ``distance``, default the model's metric).

    Inner product is pgvector's ``<#>``: the *negative* inner product, so smaller is nearer.
    Only the configured metric can use the model's index.
    """
    config = _config(model)
    metric = metric_of(model, distance)
    embedding = model.embedding
    value = query_vector(model, query, embedder=embedder)
    if (
        config.index_precision == "halfvec"
        and config.storage == "vector"
        and metric is config.metric
    ):
        # The expression index's own expression, or the planner cannot use it.
        target: ColumnElement[Any] = indexed_expression(embedding, config)
        vector = bindparam(None, value, type_=HalfVec(config.dimensions))
    else:
        target = embedding
        vector = bindparam(None, value, type_=embedding.type)
    expression: ColumnElement[float | None] = target.op(metric.operator, return_type=Float)(vector)
    return expression


def exact_distance_expression(
    model: Any,
    query: QueryInput,
    *,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
) -> ColumnElement[float | None]:
    """``embedding <=> :query`` on the stored column, whatever the index's precision."""
    metric = metric_of(model, distance)
    embedding = model.embedding
    vector = bindparam(None, query_vector(model, query, embedder=embedder), type_=embedding.type)
    expression: ColumnElement[float | None] = embedding.op(metric.operator, return_type=Float)(
        vector
    )
    return expression


def hamming_expression(
    model: Any, query: QueryInput, *, embedder: Embedder | None = None
) -> ColumnElement[float | None]:
    """``binary_quantize(embedding)::bit(N) <~> binary_quantize(:query)::bit(N)``: the
    ordering a ``precision="bit"`` index serves."""
    config = _config(model)
    value = query_vector(model, query, embedder=embedder)
    vector_type = (
        Vector(config.dimensions) if config.storage == "vector" else HalfVec(config.dimensions)
    )
    quantized = cast(
        func.binary_quantize(bindparam(None, value, type_=vector_type)), Bit(config.dimensions)
    )
    indexed = cast(func.binary_quantize(model.embedding), Bit(config.dimensions))
    expression: ColumnElement[float | None] = indexed.op("<~>", return_type=Float)(quantized)
    return expression


class BinaryCandidates(ColumnElement[bool]):
    """``pk = ANY(ARRAY(SELECT pk FROM t WHERE <filters> ORDER BY <hamming> LIMIT n))``
    (``(pk1, pk2) IN (...)`` for a composite key).

    The first stage of a search on a binary-quantized index. The filters are the enclosing
    statement's own ``WHERE`` criteria on the model's table, read when the statement is
    compiled, so ``nearest(...).where(Document.tenant_id == 7)`` filters (and prunes
    partitions) inside the candidate scan too, not only after it.
    """

    __visit_name__ = "vecorm_binary_candidates"
    inherit_cache = True
    type = Boolean()
    _traverse_internals = [
        ("keys", InternalTraversal.dp_clauseelement_tuple),
        ("order", InternalTraversal.dp_clauseelement),
        ("count", InternalTraversal.dp_clauseelement),
    ]

    def __init__(
        self,
        keys: Sequence[ColumnElement[Any]],
        order: ColumnElement[Any],
        count: int,
    ) -> None:
        self.keys = tuple(keys)
        self.order = order
        self.count = literal(count, Integer)


def _own_table_criteria(
    criteria: Sequence[ColumnElement[Any]], own_tables: set[Any]
) -> list[ColumnElement[Any]]:
    """The criteria that reference only ``own_tables`` (a filter on a joined table would turn
    the candidate subquery into a correlated one)."""
    kept = []
    for criterion in criteria:
        if isinstance(criterion, BinaryCandidates):
            continue
        columns = [
            element for element in visitors.iterate(criterion) if isinstance(element, Column)
        ]
        if all(element.table in own_tables for element in columns):
            kept.append(criterion)
    return kept


@compiles(BinaryCandidates)
def _compile_binary_candidates(element: BinaryCandidates, compiler: SQLCompiler, **kw: Any) -> str:
    own_tables = {key.table for key in element.keys if isinstance(key, Column)}
    enclosing = compiler.stack[-1]["selectable"] if compiler.stack else None
    criteria = list(getattr(enclosing, "_where_criteria", ()))
    inner = (
        select(*element.keys)
        .where(*_own_table_criteria(criteria, own_tables))
        .order_by(element.order)
        .limit(element.count)
        .correlate(None)  # its own scan of the table, which shadows the outer one inside
    )
    if len(element.keys) == 1:
        # "= ANY(ARRAY(...))": the candidates are computed once (an InitPlan), then fetched by
        # primary key, whatever the planner guesses about the table's size.
        key = compiler.process(element.keys[0], **kw)
        return f"{key} = ANY(ARRAY({compiler.process(inner.scalar_subquery(), **kw)}))"
    return compiler.process(tuple_(*element.keys).in_(inner), **kw)


def similarity_expression(
    distance: ColumnElement[float | None], metric: Distance
) -> ColumnElement[Any]:
    """A higher-is-better score: ``1 - d`` for cosine, the inner product for ``<#>``,
    ``1 / (1 + d)`` for L2 and L1."""
    if metric is Distance.COSINE:
        return literal(1.0) - distance
    if metric is Distance.INNER_PRODUCT:
        return -distance
    return literal(1.0) / (literal(1.0) + distance)


def python_distance(metric: Distance, left: object, right: object) -> float:
    """The distance pgvector computes, in Python (float64): same sign conventions."""
    a = np.asarray(left, dtype=np.float64)
    b = np.asarray(right, dtype=np.float64)
    if metric is Distance.COSINE:
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float("nan") if norms == 0.0 else 1.0 - float(a @ b) / norms
    if metric is Distance.L2:
        return float(np.linalg.norm(a - b))
    if metric is Distance.INNER_PRODUCT:
        return -float(a @ b)
    return float(np.abs(a - b).sum())


def instance_distance(
    instance: Any,
    query: QueryInput,
    *,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
) -> float | None:
    """Distance from ``instance.embedding`` to ``query`` in Python; ``None`` without embedding."""
    embedding = instance.embedding
    if embedding is None:
        return None
    model = type(instance)
    vector = query_vector(model, query, embedder=embedder)
    config = _config(model)
    metric = metric_of(model, distance)
    if config.storage == "halfvec" or (
        config.index_precision == "halfvec" and metric is config.metric
    ):
        # As the SQL casts round them (distance_expression compares halfvec to halfvec).
        vector = vector.astype(np.float16).astype(np.float32)
        embedding = np.asarray(embedding, dtype=np.float32).astype(np.float16)
    return python_distance(metric, embedding, vector)


def row_limit(count: int) -> ColumnElement[int]:
    """A ``LIMIT`` rendered into the SQL as a number when the statement runs.

    psycopg prepares a statement after its fifth run, and PostgreSQL may then use a generic
    plan; with ``LIMIT $1`` that plan guesses a tenth of the table and can prefer a sequential
    scan and sort to the vector index (measured: 2x slower hybrid searches). A literal keeps
    the estimate right; the compiled form is still cached once::

        select(Document).order_by(distance).limit(row_limit(10))
    """
    return literal(int(count), Integer, literal_execute=True)


def primary_key_columns(model: Any) -> tuple[ColumnElement[Any], ...]:
    """The mapped primary-key columns of ``model``, in order."""
    mapper = inspect(model)
    return tuple(mapper.primary_key)


def keys_equal(left: Sequence[Any], right: Sequence[Any]) -> ColumnElement[bool]:
    """``left_0 = right_0 AND ...``: the join condition of two (composite) keys."""
    return and_(*(a == b for a, b in zip(left, right, strict=True)))


def keys_in(keys: Sequence[Any], rows: Select[Any]) -> ColumnElement[bool]:
    """``key IN (rows)``, or ``(key_0, key_1) IN (rows)`` for a composite key."""
    chosen = keys[0] if len(keys) == 1 else tuple_(*keys)
    condition: ColumnElement[bool] = chosen.in_(rows)
    return condition


def nearest(
    model: Any,
    query: QueryInput,
    k: int = 10,
    *,
    distance: Distance | str | None = None,
    max_distance: float | None = None,
    embedder: Embedder | None = None,
    with_score: bool = False,
    exact: bool = False,
    candidates: int | None = None,
) -> Select[Any]:
    """``SELECT model, distance ... ORDER BY distance, pk LIMIT k`` as a composable ``Select``.

    ``max_distance`` keeps rows with ``distance <= max_distance``; ``with_score`` adds a
    ``score`` column (see :func:`similarity_expression`); ``exact=True`` orders by an
    expression the index cannot serve, forcing an exact scan (use it when a ``where`` keeps
    only a few rows and no index on the filter column lets PostgreSQL see that)::

        stmt = nearest(Document, [0.1, 0.2, 0.3], k=5).where(Document.category == "ml")

    On a ``precision="halfvec"`` index the distance is computed in half precision (the
    index's own expression); on a ``precision="bit"`` index the statement takes
    ``candidates`` rows (default ``k * rerank``) by Hamming distance through the index, with
    ``hnsw.ef_search`` raised to match, and orders them by the exact distance.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigurationError(f"k must be a positive integer, not {k!r}")
    if candidates is not None and (
        isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < k
    ):
        raise ConfigurationError(f"candidates must be an integer >= k ({k}), not {candidates!r}")
    config = _config(model)
    metric = metric_of(model, distance)
    binary = config.index_precision == "bit" and metric is config.metric and not exact
    expression = distance_expression(model, query, distance=metric, embedder=embedder)
    distance_column = expression.label("distance")
    columns: list[Any] = [model, distance_column]
    if with_score:
        columns.append(similarity_expression(expression, metric).label("score"))
    stmt = select(*columns).where(model.embedding.is_not(None))
    depth = k
    if binary:
        depth = candidates if candidates is not None else k * config.rerank
        keys = primary_key_columns(model)
        order = hamming_expression(model, query, embedder=embedder)
        stmt = stmt.where(BinaryCandidates(keys, order, depth))
    if max_distance is not None:
        stmt = stmt.where(expression <= max_distance)
    # "+ 0" is the same order, but not the index's expression: the planner must scan exactly.
    ordering: ColumnElement[Any] = expression + 0.0 if exact else distance_column
    stmt = stmt.order_by(ordering, *primary_key_columns(model)).limit(row_limit(k))
    options = index_search_options(config, depth=depth)
    return stmt.execution_options(**options) if options else stmt


def nearest_candidates(
    model: Any,
    query: QueryInput,
    *,
    where: Sequence[ColumnElement[bool]] = (),
    depth: int,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
    candidates: int | None = None,
) -> Select[Any]:
    """``pk_0 .. pk_n, distance`` of the ``depth`` nearest rows under ``where``, nearest first,
    through the model's index whatever its precision (a hybrid search's semantic arm).

    Run it with :func:`index_search_options` ``(config, depth=candidates)``.
    """
    config = _config(model)
    metric = metric_of(model, distance)
    expression = distance_expression(model, query, distance=metric, embedder=embedder)
    distance_column = expression.label("distance")
    keys = primary_key_columns(model)
    stmt = select(*(key.label(f"pk_{i}") for i, key in enumerate(keys)), distance_column).where(
        model.embedding.is_not(None), *where
    )
    if config.index_precision == "bit" and metric is config.metric:
        count = candidates if candidates is not None else depth * config.rerank
        order = hamming_expression(model, query, embedder=embedder)
        stmt = stmt.where(BinaryCandidates(keys, order, count))
    return stmt.order_by(distance_column, *keys).limit(row_limit(depth))
