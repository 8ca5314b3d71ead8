"""A filtered search walks the index only as far as pays, and one that comes back short is
run again exactly, in the same session call.

An HNSW or IVFFlat scan under a filter of yours returns fewer than ``k`` rows when the graph
walk (or the probed lists) runs out before ``k`` rows pass the filter: pgvector's iterative
scan stops at ``hnsw.max_scan_tuples``. That happens when the rows the filter keeps sit
together, away from the query (a tenant whose documents are all about one topic), and it is
silent: the rows returned look like a complete answer. Measured on 50,000 x 384 clustered
rows with a filter keeping 1% of them in one cluster: 7.3 rows of 10 on average, recall@10
0.46, in 136 ms where the exact scan takes 38 ms (``benchmarks/filtered_search.py
--correlated``).

So a :func:`~vecorm.search.vector.nearest` statement carries the execution option
``vecorm_exact_fallback``, and a ``do_orm_execute`` listener on SQLAlchemy's
:class:`~sqlalchemy.orm.Session` class (every session, sync or the one behind an
``AsyncSession``) runs a filtered one in two steps:

1. The index search, its HNSW walk capped at a twentieth of the table's rows, at least
   2,500 (``hnsw.max_scan_tuples``, from PostgreSQL's row estimate, unless you set it;
   pgvector's own cap is 20,000): a walk costs 10-30x an exact scan per row, so a longer one
   costs more than reading the filtered rows exactly. The cap has a price: a walk cut short
   may still return ``k`` rows, not all of them the nearest (pgvector hands on what it
   visited). Measured on 50,000 x 384 rows (a cap of 2,500): 1% of them kept at random,
   recall@10 0.990 capped, 0.995 not; 1% in one cluster, 1.000 in 118 ms capped, 0.795 in
   206 ms not.
2. When it returns fewer rows than its ``LIMIT``, the same statement ordered by
   ``distance + 0`` (what ``exact=True`` does), which no index serves, and with
   ``enable_indexscan = off`` (for a binary-quantised index's candidates): PostgreSQL
   computes the distance of every row that passes the filter (a B-tree on your filter
   column still finds them), and the caller gets that exact answer instead.

A search that returns ``k`` rows pays the buffering of its ``k`` rows (read whole before they
are handed on). Left alone: searches without conditions of yours (fewer than ``k`` rows there
means the table has fewer), ``exact=True``, results streamed (``yield_per``,
``stream_results``) and Core's ``connection.execute``, which no ORM event sees. Opt a
statement out with ``.execution_options(vecorm_exact_fallback=False)``::

    stmt = Document.nearest(q, k=10).where(Document.tenant_id == 7)
    session.execute(stmt).all()      # 10 rows when the tenant has 10 embedded documents

The listener is installed when this module is imported, as the settings listener is (see
:mod:`vecorm.search.settings` for why), and is inert for every statement without the option.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Select, Table, event
from sqlalchemy.engine import Connection, Result
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.elements import BindParameter, Label

from vecorm.schema.cluster import is_citus
from vecorm.schema.dbapi import execute_raw
from vecorm.schema.pgcatalog import qualified_table
from vecorm.search.settings import unfiltered

#: Execution option: ``True`` on vecorm's index searches, ``False`` to opt one out.
FALLBACK_OPTION = "vecorm_exact_fallback"
#: Execution option: ``True`` on a statement that falls back by itself (a filtered hybrid
#: search's semantic arm, :func:`~vecorm.search.vector.nearest_candidates`): only its walk is
#: capped here.
WALK_CAP_OPTION = "vecorm_cap_walk"
#: A filtered HNSW walk reads at most this share of the table's rows before it gives up (and
#: the statement runs exactly): measured, a graph walk costs 10-30x an exact scan per row, so
#: a walk this long already costs about an exact scan (benchmarks/filtered_search.py) ...
WALK_SHARE = 1 / 20
#: ... but never fewer rows than this: a walk cut short can still return k rows, not all of
#: them the nearest (recall@10 0.92 against 0.95 on 3,000 rows with a cap of 1,000; at a cap
#: of 5,000, 1% of 50,000 rows in one cluster got 0.91 against 1.000 at 2,500).
MIN_WALK = 2500
#: pgvector's default ``hnsw.max_scan_tuples``, which the cap never raises.
PGVECTOR_MAX_SCAN_TUPLES = 20_000
#: Seconds a connection keeps a table's row estimate.
ROWS_MAX_AGE = 300.0
_ROWS_KEY = "vecorm_table_rows"
_ROWS_SQL = (
    "SELECT c.reltuples FROM pg_catalog.pg_class c "
    "WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({}::pg_catalog.text)"
)
#: What the second run also sets: no index scans (bitmap scans stay), for the candidates of a
#: binary-quantised index, which a subquery takes through it whatever the outer ordering.
EXACT_OPTIONS = {"vecorm_enable_indexscan": "off"}


def _limit(statement: Select[Any]) -> int | None:
    """The statement's ``LIMIT`` as a number (a literal or a bound value), else ``None``."""
    clause = statement._limit_clause
    value = clause.value if isinstance(clause, BindParameter) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _table_rows(conn: Connection, table: Table) -> float | None:
    """PostgreSQL's estimate of ``table``'s rows (``pg_class.reltuples``), asked at most every
    :data:`ROWS_MAX_AGE` seconds per connection; ``None`` before the first ``ANALYZE``."""
    cache: dict[str, tuple[float, float | None]] = conn.connection.info.setdefault(_ROWS_KEY, {})
    name = qualified_table(conn, table)
    now = time.monotonic()
    cached = cache.get(name)
    if cached is not None and now - cached[0] < ROWS_MAX_AGE:
        return cached[1]
    literal = "'" + name.replace("'", "''") + "'"
    (rows,) = execute_raw(conn, _ROWS_SQL.format(literal)) or (None,)
    estimate = float(rows) if rows is not None and float(rows) >= 0 else None
    cache[name] = (now, estimate)
    return estimate


def _walk_cap(state: ORMExecuteState) -> dict[str, Any]:
    """``hnsw.max_scan_tuples`` for a filtered HNSW walk: :data:`WALK_SHARE` of the table's
    rows (at least :data:`MIN_WALK`, at most pgvector's default), unless the model or the
    statement sets it; nothing on Citus, whose coordinator holds no rows."""
    options = state.execution_options
    if options.get("vecorm_hnsw_iterative_scan") in (None, "off"):
        return {}
    if "vecorm_hnsw_max_scan_tuples" in options or state.bind_mapper is None:
        return {}
    table = state.bind_mapper.local_table
    if not isinstance(table, Table):
        return {}
    conn = state.session.connection(bind_arguments=state.bind_arguments)
    if is_citus(conn):
        return {}
    rows = _table_rows(conn, table)
    if rows is None:
        return {}
    cap = min(PGVECTOR_MAX_SCAN_TUPLES, max(MIN_WALK, int(rows * WALK_SHARE)))
    return {"vecorm_hnsw_max_scan_tuples": cap}


def _exact(statement: Select[Any]) -> Select[Any] | None:
    """``statement`` ordered by ``distance + 0``, which no index serves (what ``exact=True``
    does), when it is still ordered by the ``distance`` column first; else ``None``."""
    order = statement._order_by_clauses
    first = getattr(order[0], "element", None) if order else None
    if not isinstance(first, Label) or first.name != "distance":
        return None
    return statement.order_by(None).order_by(first.element + 0.0, *order[1:])


def _do_orm_execute(state: ORMExecuteState) -> Result[Any] | None:
    options = state.execution_options
    if options.get(WALK_CAP_OPTION) is True and options.get(FALLBACK_OPTION) is not False:
        cap = _walk_cap(state)
        return state.invoke_statement(execution_options=cap) if cap else None
    if options.get(FALLBACK_OPTION) is not True or not state.is_select:
        return None
    if options.get("stream_results") or options.get("yield_per"):
        return None  # rows are handed on as they come: nothing to count first
    statement = state.statement
    if not isinstance(statement, Select) or unfiltered(statement):
        return None
    limit = _limit(statement)
    if limit is None:
        return None
    exact = _exact(statement)
    if exact is None:
        return None
    first = state.invoke_statement(execution_options=_walk_cap(state)).freeze()
    if len(first.data) >= limit:
        return first()
    return state.invoke_statement(statement=exact, execution_options=EXACT_OPTIONS)


event.listen(Session, "do_orm_execute", _do_orm_execute)
