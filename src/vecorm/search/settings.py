"""Query-time index settings: pgvector's ``SET LOCAL`` parameters carried by each statement.

**Query-time settings.** pgvector reads ``hnsw.ef_search``, ``hnsw.iterative_scan``,
``ivfflat.probes`` ... when a scan runs. vecorm carries them on the statement as execution
options (``vecorm_hnsw_ef_search`` ...; :func:`search_options` builds them), and a listener on
SQLAlchemy's :class:`~sqlalchemy.engine.Engine` class applies them with
``set_config(name, value, true)`` (``SET LOCAL``) on the same connection, in the same
transaction, right before the statement (on psycopg 3, in the statement's own round trip:
:mod:`vecorm.search.pipelined`). The previous values go back right before the
connection's next statement that is not a search with the same settings (so a run of
searches in one transaction pays one statement, not two per search), or with the
transaction, whose end resets ``SET LOCAL``. Nothing reaches the pool's next user or your
other statements, and there is nothing to call. On Citus the same values are also carried
to the workers (:mod:`vecorm.search.propagation`)::

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
:class:`~vecorm.IVFFlat` declaration (:func:`index_search_options`): iterative scan
``relaxed_order`` (a filtered query still returns ``k`` rows), ``ef_search`` 200 and
``probes`` sqrt(lists) unless set, and for a search without conditions of the caller's,
decided per execution, ``enable_sort = off``: the index's plan, which PostgreSQL's costs
would trade for an exact scan of vectors stored out of line (see docs/querying.md for the
measurements behind them). :func:`apply_search_settings` runs the
``SET LOCAL`` itself, for the rest of the session's current transaction.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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

from vecorm.engine import sync_engine_of
from vecorm.errors import ConfigurationError
from vecorm.schema.cluster import is_citus
from vecorm.schema.config import HNSW, IVFFlat, SearchConfig
from vecorm.schema.dbapi import execute_raw
from vecorm.search import pipelined
from vecorm.search.explain import Explain
from vecorm.search.propagation import propagate

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPICursor, ExceptionContext, ExecutionContext

#: ``hnsw.ef_search`` of vecorm's searches when the model sets none (pgvector's is 40): a
#: wider first pass finds more of the true neighbours (recall@10 0.997 against 0.937 at 40
#: on 50,000 x 384 clustered rows, benchmarks/filtered_search.py), and for a filtered search
#: it makes pgvector's cost estimate realistic, so that PostgreSQL reads the rows of a
#: selective filter exactly (docs/querying.md).
DEFAULT_EF_SEARCH = 200
#: ... except filtered searches of vectors stored out of line (see
#: :func:`stored_out_of_line`): PostgreSQL's cost of an exact scan leaves out reading them,
#: so pgvector's estimate at 200 made it read every row of a 20,000 x 1536 table for a filter
#: that kept half of them (110 ms against 2 ms). Iterative scan finds the filtered rows.
FILTERED_EF_SEARCH = 40
#: A vector this large (bytes) is stored out of line: pgvector's types have EXTERNAL storage,
#: and PostgreSQL moves such values to the TOAST table once a row passes ~2 kB.
OUT_OF_LINE_BYTES = 2000
#: pgvector refuses ``hnsw.ef_search`` above this.
MAX_EF_SEARCH = 1000


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Setting:
    guc: str
    check: Callable[[object], str]


@dataclass(frozen=True)
class ByFilter:
    """An execution option's default that depends on the search as executed: ``filtered``
    when it has conditions of the caller's, else ``unfiltered`` (``None``: not set).

    :func:`~vecorm.search.vector.nearest` cannot know when it builds a statement whether a
    ``.where()`` will follow; a value set with ``execution_options()`` replaces this one.
    """

    filtered: object
    unfiltered: object

    def chosen(self, unfiltered: bool) -> object:
        return self.unfiltered if unfiltered else self.filtered


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
    "vecorm_enable_sort": _Setting("enable_sort", _choice("on", "off")),
    "vecorm_enable_indexscan": _Setting("enable_indexscan", _choice("on", "off")),
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


def stored_out_of_line(config: SearchConfig) -> bool:
    """Whether the model's vectors are too big to stay in the table's own pages (1536
    dimensions are, 384 are not), so that an exact scan reads each from the TOAST table."""
    element = 2 if config.storage == "halfvec" else 4
    return 8 + element * config.dimensions > OUT_OF_LINE_BYTES


def index_search_options(
    config: SearchConfig, *, depth: int = 0, filtered: bool | None = None
) -> dict[str, Any]:
    """The model's query-time defaults as execution options for a search of ``depth`` rows.

    ``filtered``: whether the search has conditions of the caller's; ``None`` (what
    :func:`~vecorm.search.vector.nearest` passes) decides it per execution, from the statement
    as run (:class:`ByFilter` values). An unfiltered search is an index search: PostgreSQL
    is told to avoid the sort an exact scan needs (``enable_sort = off``), because its cost
    estimate does not count reading vectors stored out of line, and it gets the wider
    :data:`DEFAULT_EF_SEARCH`. A filtered one is left to the planner, which weighs the
    filter's selectivity (at :data:`FILTERED_EF_SEARCH` for vectors stored out of line, whose
    exact scan PostgreSQL under-costs, left there: iterative scan returns ``depth`` rows).
    Otherwise ``ef_search`` is at least ``depth`` (up to 1000), as it must be without
    iterative scan (pgvector returns at most ``ef_search`` rows).
    """
    index = config.index
    if isinstance(index, HNSW):

        def ef_search(default: int, *, widen: bool = True) -> int:
            value = index.ef_search or default
            if widen or index.iterative_scan == "off":
                value = max(value, depth)
            return min(MAX_EF_SEARCH, value)

        wide = stored_out_of_line(config)
        options: dict[str, Any] = {
            "vecorm_hnsw_ef_search": (
                ef_search(FILTERED_EF_SEARCH, widen=False) if wide else ef_search(DEFAULT_EF_SEARCH)
            ),
            "vecorm_hnsw_iterative_scan": index.iterative_scan,
            "vecorm_plan_cache_mode": DEFAULT_PLAN_CACHE_MODE,
        }
        if index.max_scan_tuples is not None:
            options["vecorm_hnsw_max_scan_tuples"] = index.max_scan_tuples
        if index.scan_mem_multiplier is not None:
            options["vecorm_hnsw_scan_mem_multiplier"] = index.scan_mem_multiplier
        unfiltered: dict[str, Any] = {
            "vecorm_hnsw_ef_search": ef_search(DEFAULT_EF_SEARCH),
            "vecorm_enable_sort": "off",
        }
    elif isinstance(index, IVFFlat):
        options = {
            "vecorm_ivfflat_iterative_scan": index.iterative_scan,
            "vecorm_ivfflat_probes": index.probes or default_probes(index.lists),
            "vecorm_plan_cache_mode": DEFAULT_PLAN_CACHE_MODE,
        }
        if index.max_probes is not None:
            options["vecorm_ivfflat_max_probes"] = index.max_probes
        unfiltered = {"vecorm_enable_sort": "off"}
    else:
        return {}
    if filtered is None:
        for key, value in unfiltered.items():
            if options.get(key) != value:
                options[key] = ByFilter(options.get(key), value)
    elif not filtered:
        options.update(unfiltered)
    return options


def default_probes(lists: int) -> int:
    """``ivfflat.probes`` when the model sets none: sqrt(lists), pgvector's own advice
    (its default of 1 searches a single list)."""
    return max(1, math.ceil(math.sqrt(lists)))


def settings_from_options(
    options: Mapping[str, Any], *, unfiltered: bool = False
) -> dict[str, str]:
    """``{"hnsw.ef_search": "100", ...}`` for the vecorm execution options in ``options``;
    a :class:`ByFilter` value as chosen for an ``unfiltered`` search or a filtered one."""
    settings: dict[str, str] = {}
    for key, option in options.items():
        value = option.chosen(unfiltered) if isinstance(option, ByFilter) else option
        if value is None and isinstance(option, ByFilter):
            continue
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


#: What the hook's one statement does with each setting: keep its value, then set it
#: (``capture``); set it, its value before already kept (``set``); put that value back
#: (``restore``).
_CAPTURE, _SET, _RESTORE = "capture", "set", "restore"
_PG_SETTINGS = table("pg_settings", column("name"), column("reset_val"), schema="pg_catalog")


def _restored_value(index: int) -> ColumnElement[Any]:
    """The value kept for setting ``index``; for a setting that did not exist yet, its session
    value (``pg_settings.reset_val``) if a statement has loaded pgvector's library since, else
    the present value until the transaction ends: a placeholder set back to ``''`` would make
    the library's loading (by the next search in this transaction) fail on that value."""
    reset_value = (
        select(_PG_SETTINGS.c.reset_val)
        .where(_PG_SETTINGS.c.name == _setting_name(index))
        .scalar_subquery()
    )
    return func.coalesce(
        _setting_value(index), reset_value, func.current_setting(_setting_name(index))
    )


def _settings_statement(kinds: tuple[str, ...]) -> Select[Any]:
    """One ``SELECT`` doing ``kinds[i]`` to setting ``i`` (left to right): a ``capture`` gives
    two columns (the old value, the new one), the others one (the new value)."""
    columns: list[ColumnElement[Any]] = []
    for index, kind in enumerate(kinds):
        name = _setting_name(index)
        if kind == _CAPTURE:
            columns.append(func.current_setting(name, true()))
        value = _restored_value(index) if kind == _RESTORE else _setting_value(index)
        columns.append(func.set_config(name, value, true()))
    return select(*columns)


# Compiled once per dialect and shape: the hook runs around search statements.
_compiled: weakref.WeakKeyDictionary[Dialect, dict[tuple[str, ...], SQLCompiler]] = (
    weakref.WeakKeyDictionary()
)


def _statement_for(dialect: Dialect, kinds: tuple[str, ...]) -> SQLCompiler:
    cache = _compiled.setdefault(dialect, {})
    compiled = cache.get(kinds)
    if compiled is None:
        compiled = _settings_statement(kinds).compile(dialect=dialect)
        cache[kinds] = compiled
    return compiled


def _raw_statement(conn: Connection, steps: list[tuple[str, str, str | None]]) -> tuple[str, Any]:
    """The text and DBAPI arguments of the one statement doing ``(kind, name, value)``
    ``steps`` on ``conn``."""
    compiled = _statement_for(conn.dialect, tuple(kind for kind, _, _ in steps))
    bound: dict[str, Any] = {}
    for index, (_, name, value) in enumerate(steps):
        bound[f"vecorm_name_{index}"] = name
        bound[f"vecorm_value_{index}"] = value
    params = compiled.construct_params(bound)
    arguments: Any = params
    if compiled.positional:
        arguments = tuple(params[key] for key in compiled.positiontup or ())
    return compiled.string, arguments


def _read_row(
    steps: list[tuple[str, str, str | None]], values: tuple[Any, ...]
) -> tuple[dict[str, str], dict[str, str]]:
    """The values ``capture`` steps kept, and the value each setting has now, by name, from
    the row of the steps' statement."""
    row = iter(values)
    captured: dict[str, str] = {}
    now: dict[str, str] = {}
    for kind, name, _ in steps:
        if kind == _CAPTURE:
            captured[name] = next(row)
        now[name] = next(row)
    return captured, now


def _run_raw(
    conn: Connection, steps: list[tuple[str, str, str | None]]
) -> tuple[dict[str, str], dict[str, str]]:
    """Run ``(kind, name, value)`` steps in one statement on ``conn``'s DBAPI connection,
    bypassing events (we are inside one); the values ``capture`` steps kept, and the value
    each setting has now, by name. On Citus the new values go to the workers too."""
    statement, arguments = _raw_statement(conn, steps)
    captured, now = _read_row(steps, execute_raw(conn, statement, arguments))
    propagate(conn, now)  # on Citus, to the workers too
    return captured, now


_SETTING_KEYS = frozenset(SETTINGS)
#: Execution option: ``False`` opts an engine, a connection or a statement out of the hook
#: (:func:`uninstall_search_settings` sets it on an engine).
SEARCH_SETTINGS_OPTION = "vecorm_search_settings"
#: Annotation that marks a ``WHERE`` condition vecorm added itself.
_OWN = "vecorm_own_condition"
_STATE_KEY = "vecorm_search_settings"
_SWITCH_KEY = "vecorm_search_settings_switch"
#: libpq's ``PQTRANS_INTRANS`` (psycopg 2 and 3): in a transaction that has not failed.
_IN_TRANSACTION = 2


def own_condition(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """``condition``, marked as one of vecorm's own (``embedding IS NOT NULL``, a distance
    bound, the row left out of "more like this"): it does not make a search *filtered*."""
    return condition._annotate({_OWN: True})


def unfiltered(statement: object) -> bool:
    """Whether ``statement`` is a single-table ``SELECT`` whose ``WHERE`` holds only vecorm's
    own conditions (a ``.where()``, ``.join()`` or ``select_from()`` of yours makes it
    filtered); an :class:`~vecorm.search.explain.Explain` is judged by its statement."""
    if isinstance(statement, Explain):  # its plan is the statement's
        statement = statement.statement
    if not isinstance(statement, Select):
        return False
    if statement._setup_joins or statement._from_obj:
        return False
    return all(condition._annotations.get(_OWN) for condition in statement._where_criteria)


def _unfiltered(context: ExecutionContext) -> bool:
    return unfiltered(getattr(context.compiled, "statement", None))


@dataclass
class _Applied:
    """The settings vecorm's hook has in effect on a connection, in one transaction."""

    # SQLAlchemy's root transaction they belong to; once it has ended (COMMIT, ROLLBACK, the
    # pool's reset) nothing refers to it, and SET LOCAL ended with it.
    transaction: weakref.ref[Any]
    values: dict[str, str] = field(default_factory=dict)
    previous: dict[str, str | None] = field(default_factory=dict)  # before vecorm set each
    pinned: bool = False  # a server-side cursor still scans with them: keep to the end


def _before_cursor_execute(
    conn: Connection,
    cursor: DBAPICursor,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    info = conn.info
    if _SWITCH_KEY in info:  # left by a failure that skipped handle_error: not in effect
        stale: _Switch = info.pop(_SWITCH_KEY)
        if stale.pipeline is not None:
            pipelined.abandon(stale.pipeline, RuntimeError("statement failed"))
    state: _Applied | None = info.get(_STATE_KEY)
    searching = context is not None and not _SETTING_KEYS.isdisjoint(context.execution_options)
    if state is None and not searching:
        return  # nothing of vecorm's in effect, and not a search: all other statements pay
    if state is not None and state.transaction() is not conn.get_transaction():
        del info[_STATE_KEY]  # its transaction ended, and SET LOCAL with it
        state = None
    if (
        context is None
        or not searching
        or executemany
        or context.execution_options.get(SEARCH_SETTINGS_OPTION) is False
    ):
        if state is not None and not state.pinned:
            _put_back(conn, state)
        return
    options = context.execution_options
    by_filter = any(isinstance(value, ByFilter) for value in options.values())
    settings = settings_from_options(options, unfiltered=by_filter and _unfiltered(context))
    dbapi_connection = conn.connection.dbapi_connection
    if getattr(dbapi_connection, "autocommit", False):
        raise ConfigurationError(
            "vecorm query settings use SET LOCAL, which needs a transaction, but this "
            "connection is in AUTOCOMMIT mode; run the statement in a transaction "
            "(the default isolation level) or leave out the vecorm_* execution options"
        )
    if state is None:
        transaction = conn.get_transaction()
        assert transaction is not None  # SQLAlchemy 2 begins one before it executes
        state = _Applied(weakref.ref(transaction))
    # A server-side cursor scans while rows are fetched, after this hook, maybe between
    # other statements: keep the settings until the transaction ends.
    server_side = bool(getattr(context, "_is_server_side", False)) or bool(
        context.execution_options.get("stream_results", False)
    )
    if server_side:
        state.pinned = True
    if settings != state.values:
        steps = _switch_steps(state, settings)
        switch = _Switch(state, steps, settings)
        if not server_side and pipelined.available(conn) and not is_citus(conn):
            # Sent with the search, in its round trip (vecorm.search.pipelined).
            switch.pipeline = pipelined.start(conn, *_raw_statement(conn, steps))
        else:
            switch.captured, _ = _run_raw(conn, steps)
        info[_SWITCH_KEY] = switch  # recorded once the search has run
        return
    info[_STATE_KEY] = state


@dataclass
class _Switch:
    """Settings switched for the statement being executed, recorded in effect once it has
    run: if it fails on the server, the transaction's (or the savepoint's) rollback undoes
    them, and a record of them would make the next search skip setting them again."""

    state: _Applied
    steps: list[tuple[str, str, str | None]]
    settings: Mapping[str, str]
    captured: dict[str, str] = field(default_factory=dict)
    pipeline: pipelined.Pending | None = None

    def record(self, conn: Connection, values: tuple[Any, ...] | None = None) -> None:
        if values is not None:  # the row of the pipelined settings statement
            self.captured, _ = _read_row(self.steps, values)
        _switched(self.state, self.steps, self.captured, self.settings)
        conn.info[_STATE_KEY] = self.state


def _after_cursor_execute(
    conn: Connection,
    cursor: DBAPICursor,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    """Record the settings a search switched; first close the pipeline that carried them,
    which raises an error of either statement here, inside SQLAlchemy's execution."""
    switch: _Switch | None = conn.info.pop(_SWITCH_KEY, None)
    if switch is None:
        return
    values = None if switch.pipeline is None else pipelined.finish(switch.pipeline)
    switch.record(conn, values)


def _handle_error(context: ExceptionContext) -> None:
    """A statement that switched settings failed: close its pipeline, and record the
    settings only if they ran and the transaction goes on (the statement failed before it
    was sent), so that the connection's next statement puts the old values back."""
    conn = context.connection
    switch: _Switch | None = None if conn is None else conn.info.pop(_SWITCH_KEY, None)
    if conn is None or switch is None:
        return
    values = None
    if switch.pipeline is not None:
        values = pipelined.abandon(switch.pipeline, context.original_exception)
        if values is None:
            return
    if _transaction_status(conn) in (_IN_TRANSACTION, None):
        switch.record(conn, values)


def _switch_steps(
    state: _Applied, settings: Mapping[str, str]
) -> list[tuple[str, str, str | None]]:
    """The steps making ``settings`` the ones in effect, in one statement: vecorm's other
    settings go back to their old values, and each new name's old value is kept."""
    steps: list[tuple[str, str, str | None]] = [
        (_RESTORE, name, state.previous[name]) for name in state.values if name not in settings
    ]
    for name, value in settings.items():
        if state.values.get(name) != value:
            steps.append((_SET if name in state.previous else _CAPTURE, name, value))
    return steps


def _switched(
    state: _Applied,
    steps: list[tuple[str, str, str | None]],
    captured: Mapping[str, str],
    settings: Mapping[str, str],
) -> None:
    """Record in ``state`` that ``steps`` ran: ``settings`` are in effect."""
    state.previous.update(captured)
    for kind, name, _ in steps:
        if kind == _RESTORE:
            del state.values[name], state.previous[name]
    state.values.update(settings)


def _put_back(conn: Connection, state: _Applied) -> None:
    """Set vecorm's settings back before a statement that is not a search with the same
    settings (nothing to do if the transaction failed: its ROLLBACK resets them)."""
    del conn.info[_STATE_KEY]
    status = _transaction_status(conn)
    if status is not None and status != _IN_TRANSACTION:
        return
    steps: list[tuple[str, str, str | None]] = [
        (_RESTORE, name, state.previous[name]) for name in state.values
    ]
    _run_raw(conn, steps)


def _transaction_status(conn: Connection) -> int | None:
    """libpq's transaction status of ``conn`` (psycopg 2 and 3); ``None`` for other drivers."""
    info = getattr(conn.connection.driver_connection, "info", None)
    status = getattr(info, "transaction_status", None)
    return status if isinstance(status, int) else None


# Every engine, made before or after this import, sync or the sync_engine of an async one
# (see the module docstring for why this happens on import).
event.listen(Engine, "before_cursor_execute", _before_cursor_execute)
event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
event.listen(Engine, "handle_error", _handle_error)


def _opted_out(engine: Engine) -> bool:
    return engine.get_execution_options().get(SEARCH_SETTINGS_OPTION) is False


def install_search_settings(bind: Engine | AsyncEngine) -> None:
    """Kept for compatibility: vecorm's settings apply on every engine once
    ``vecorm.search.settings``
    is imported, so there is nothing to install. It only undoes
    :func:`uninstall_search_settings` on ``bind``."""
    engine = sync_engine_of(bind)
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
    sync_engine_of(bind).update_execution_options(**{SEARCH_SETTINGS_OPTION: False})


def search_settings_installed(bind: Engine | AsyncEngine) -> bool:
    """Whether vecorm's settings apply on ``bind``: ``True`` unless it was opted out with
    :func:`uninstall_search_settings`."""
    listening = event.contains(Engine, "before_cursor_execute", _before_cursor_execute)
    return listening and not _opted_out(sync_engine_of(bind))


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
    target.execute(_settings_statement((_SET,) * len(resolved)), parameters)
    connection = target.connection() if isinstance(target, Session) else target
    propagate(connection, resolved)
