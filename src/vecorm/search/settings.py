"""Query-time index settings: pgvector's ``SET LOCAL`` parameters carried by each statement.

**Query-time settings.** pgvector reads ``hnsw.ef_search``, ``hnsw.iterative_scan``,
``ivfflat.probes`` ... when a scan runs. vecorm carries them on the statement as execution
options (``vecorm_hnsw_ef_search`` ...; :func:`search_options` builds them), and a listener on
SQLAlchemy's :class:`~sqlalchemy.engine.Engine` class applies them with
``set_config(name, value, true)`` (``SET LOCAL``) on the same connection, in the same
transaction, right before the statement, and puts the previous values back right after it (or
after a failure, from ``handle_error``). Nothing outlives the statement, so nothing reaches the
pool's next user, and there is nothing to call. On Citus the same values are also carried to
the workers (:mod:`vecorm.search.propagation`)::

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Select,
    String,
    bindparam,
    column,
    event,
    func,
    select,
    table,
    true,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from vecorm.errors import ConfigurationError
from vecorm.schema.config import HNSW, IVFFlat, SearchConfig
from vecorm.schema.dbapi import execute_raw
from vecorm.search.propagation import propagate

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPICursor, ExceptionContext, ExecutionContext

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
    """Set each name back; a setting that did not exist yet gets its session value
    (``pg_settings.reset_val``) if the statement loaded pgvector's library, else keeps the
    statement's value until the transaction ends: a placeholder set back to ``''`` would make
    the library's loading (by the next search in this transaction) fail on that value."""
    columns = []
    for index in range(count):
        reset_value = (
            select(_PG_SETTINGS.c.reset_val)
            .where(_PG_SETTINGS.c.name == _setting_name(index))
            .scalar_subquery()
        )
        restored = func.coalesce(
            _setting_value(index), reset_value, func.current_setting(_setting_name(index))
        )
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
    return execute_raw(conn, compiled.string, arguments)


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
    propagate(conn, settings)  # on Citus, to the workers too
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
    _restore(conn, pending[1])


def _restore(conn: Connection, previous: Mapping[str, str | None]) -> None:
    restored = _run_raw(conn, "restore", previous)
    propagate(conn, dict(zip(previous, restored, strict=True)))


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
    _restore(conn, pending[1])


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
    """Kept for compatibility: vecorm's settings apply on every engine once
    ``vecorm.search.settings``
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
    connection = target.connection() if isinstance(target, Session) else target
    propagate(connection, resolved)
