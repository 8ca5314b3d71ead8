"""Citus: spreading a searchable model's table over worker nodes.

Citus (the distributed engine for PostgreSQL) shards a table by a *distribution column*. For a
searchable model that is usually ``tenant_id``: each tenant's rows, their HNSW index and their
searches then live on one worker. vecorm checks the constraints Citus imposes when the model is
declared, and emits the calls::

    check_distribution(Document, "tenant_id")     # raises if Citus would refuse it
    with engine.begin() as conn:
        conn.execute(distribute_table(Document, "tenant_id", colocate_with="tenants"))
        conn.execute(reference_table(Category))    # small lookup tables: a copy on each node

    # SELECT create_distributed_table('documents', 'tenant_id', colocate_with => 'tenants')

Migrations use ``op.create_distributed_table(...)`` / ``op.create_reference_table(...)``
(:mod:`vecorm.alembic.citus`). docs/scaling.md says which searches push down to the workers
(top-k per shard, merged on the coordinator) and what recall to expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Table, bindparam, func, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.selectable import Select
from sqlalchemy.types import NullType

from vecorm.errors import ConfigurationError
from vecorm.schema.generated import trigger_of
from vecorm.search.bm25 import ddl as bm25_ddl
from vecorm.search.bm25.tables import tables_of as bm25_tables_of


def bm25_refusal(column: str) -> str:
    """Why a model whose BM25 statistics are kept for the whole table cannot be distributed
    by ``column`` (check_distribution, the operation), and what to declare instead."""
    return (
        "its BM25 statistics are kept for the whole table, in side tables that Citus cannot "
        "co-locate with it, by triggers that would write other shards. Declare "
        f"SearchConfig(bm25=vecorm.BM25(distributed_by={column!r})): the statistics are then "
        f"kept per {column}, distributed and co-located with the table (docs/scaling.md); or "
        "SearchConfig(bm25=None) to rank with ts_rank"
    )


class CitusCall(ColumnElement[Any]):
    """``name(:arg, ..., key => :value, ...)``: a call with PostgreSQL's named-argument notation,
    every value a bound parameter."""

    __visit_name__ = "vecorm_citus_call"
    inherit_cache = False
    type = NullType()

    def __init__(self, name: str, *args: object, **kwargs: object) -> None:
        self.name = name
        self.args: list[BindParameter[Any]] = [
            bindparam(None, value, unique=True) for value in args
        ]
        self.kwargs: dict[str, BindParameter[Any]] = {
            key: bindparam(None, value, unique=True)
            for key, value in kwargs.items()
            if value is not None
        }


@compiles(CitusCall)
def _compile_citus_call(element: CitusCall, compiler: SQLCompiler, **kw: Any) -> str:
    parts = [compiler.process(arg, **kw) for arg in element.args]
    parts += [f"{key} => {compiler.process(value, **kw)}" for key, value in element.kwargs.items()]
    return f"{element.name}({', '.join(parts)})"


def _table_of(target: Any) -> Table:
    table = getattr(target, "__table__", target)
    if not isinstance(table, Table):
        raise ConfigurationError(f"{target!r} is neither a mapped class nor a Table")
    return table


def _qualified_name(table: Table) -> str:
    return f"{table.schema}.{table.name}" if table.schema else str(table.name)


def check_distribution(target: Any, column: str) -> None:
    """Raise :class:`ConfigurationError` unless Citus can distribute ``target`` by ``column``.

    Citus requires the distribution column in the primary key and in every unique constraint
    and unique index (uniqueness is enforced per shard), and never NULL; a foreign key to a
    table that has the column too (distributed by it as well) must pair the two columns; and
    it refuses a
    table with triggers writing other shards, so a model keeping BM25 statistics for the
    whole table is refused too (``BM25(distributed_by=column)`` keeps them per value).
    """
    table = _table_of(target)
    name = _qualified_name(table)
    if column not in table.c:
        raise ConfigurationError(f"{name} has no column {column!r} to distribute by")
    if table.c[column].nullable and not table.c[column].primary_key:
        raise ConfigurationError(
            f"{name}.{column} is nullable; Citus needs a NOT NULL distribution column"
        )
    keys = [key.name for key in table.primary_key.columns]
    if keys and column not in keys:
        raise ConfigurationError(
            f"{name}: the primary key ({', '.join(keys)}) must include the distribution column "
            f"{column!r}; declare {column} with mapped_column(primary_key=True) as well"
        )
    for constraint in table.constraints:
        columns = [c.name for c in getattr(constraint, "columns", ())]
        if type(constraint).__name__ == "UniqueConstraint" and column not in columns:
            raise ConfigurationError(
                f"{name}: unique constraint {constraint.name or columns} must include {column!r}"
            )
    for index in table.indexes:
        if index.unique and column not in [c.name for c in index.columns]:
            raise ConfigurationError(f"{name}: unique index {index.name} must include {column!r}")
    for key in table.foreign_key_constraints:
        referred = key.referred_table
        pairs = {(element.parent.name, element.column.name) for element in key.elements}
        # A table with the column is distributed by it too (distribution_plan): Citus accepts
        # a key between two distributed tables only when it pairs their distribution columns.
        if column in referred.c and (column, column) not in pairs:
            raise ConfigurationError(
                f"{name}: foreign key {key.name or sorted(pairs)} to "
                f"{_qualified_name(referred)} must pair {column} with {column} (Citus keeps "
                "foreign keys between distributed tables only on co-located tables, by their "
                f"distribution column); add {column} to the key, or make "
                f"{_qualified_name(referred)} a reference table without {column}"
            )
    statistics = bm25_tables_of(table)
    if statistics is not None and statistics.distributed_by != column:
        if statistics.distributed_by is None:
            raise ConfigurationError(f"Citus cannot distribute {name}: {bm25_refusal(column)}")
        raise ConfigurationError(
            f"Citus cannot distribute {name} by {column!r}: its BM25 statistics are kept per "
            f"{statistics.distributed_by!r} (BM25(distributed_by=...)); distribute it by "
            f"{statistics.distributed_by!r} or declare BM25(distributed_by={column!r})"
        )


def distribute_table(
    target: Any,
    column: str,
    *,
    colocate_with: str | None = None,
    shard_count: int | None = None,
    check: bool = True,
    search_vector_trigger: bool | None = None,
) -> Select[Any] | DistributeWithStatistics:
    """``SELECT create_distributed_table('table', 'column', colocate_with => ..., ...)``.

    Tables distributed by the same column and ``colocate_with`` each other keep matching rows on
    the same worker, so joins on the column (documents to their chunks) stay local.

    A table whose tsvector column vecorm's row trigger keeps (``SearchConfig(search_vector=
    "trigger")``; ``search_vector_trigger`` says so when ``target`` is a bare table) is
    distributed with ``citus.enable_unsafe_triggers`` on for that one call: Citus refuses any
    table with triggers unless it is, and leaves to the user that a trigger touches only its
    own row's shard, which this trigger does (it sets a column of the row being written).
    The statement turns the setting on before the call and back to its previous value after.

    A model keeping BM25 statistics per ``column`` (``BM25(distributed_by=column)``)
    distributes with them: one ``DO`` block (:class:`DistributeWithStatistics`) that also
    distributes its three side tables co-located with it, their rows as they are, and makes
    the statistics' triggers again around the calls, so that Citus's copy of the rows already
    there does not count them twice.
    """
    table = _table_of(target)
    if check:
        check_distribution(table, column)
    if shard_count is not None and not 1 <= shard_count <= 64000:
        raise ConfigurationError(f"shard_count must be between 1 and 64000, not {shard_count}")
    statistics = bm25_tables_of(table)
    if statistics is not None and statistics.distributed_by == column:
        return DistributeWithStatistics(
            table.name, table.schema, column, colocate_with=colocate_with, shard_count=shard_count
        )
    call = CitusCall(
        "create_distributed_table",
        _qualified_name(table),
        column,
        colocate_with=colocate_with,
        shard_count=shard_count,
    )
    if search_vector_trigger is None:
        search_vector_trigger = trigger_of(table) is not None
    if search_vector_trigger:
        return _with_unsafe_triggers(call)
    return select(call)


_UNSAFE_TRIGGERS = "citus.enable_unsafe_triggers"
_UNSAFE = "'citus.enable_unsafe_triggers'"


def _with_unsafe_triggers(call: CitusCall) -> Select[Any]:
    """``WITH s AS MATERIALIZED (SELECT current_setting(..) AS previous, set_config(.., 'on'))
    SELECT call, set_config(.., s.previous) FROM s``: on for ``call`` only (the CTE is
    evaluated before the outer target list, which PostgreSQL evaluates in order)."""
    switch = (
        select(
            func.coalesce(func.pg_catalog.current_setting(_UNSAFE_TRIGGERS, true()), "off").label(
                "previous"
            ),
            func.pg_catalog.set_config(_UNSAFE_TRIGGERS, "on", true()).label("switched"),
        )
        .cte("vecorm_unsafe_triggers")
        .prefix_with("MATERIALIZED")
    )
    restore = func.pg_catalog.set_config(_UNSAFE_TRIGGERS, switch.c.previous, true())
    return select(call, restore.label("restored")).select_from(switch)


class DistributeWithStatistics(ExecutableDDLElement):
    """``DO $vecorm$ ... $vecorm$``: distribute a table whose BM25 statistics are kept per
    ``column`` and its side tables, co-located, in one statement::

        DO $vecorm$
        DECLARE previous text := coalesce(current_setting('citus.enable_unsafe_triggers', true),
                                          'off');
        BEGIN
          PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
          DROP TRIGGER IF EXISTS docs_bm25_insert ON docs; ...
          PERFORM create_distributed_table('docs', 'tenant_id', colocate_with => 'none');
          PERFORM create_distributed_table('docs_bm25_postings', 'tenant_id',
                                           colocate_with => 'docs');
          ... (_terms, _deltas)
          CREATE TRIGGER docs_bm25_insert AFTER INSERT ON docs ...; ...
          PERFORM set_config('citus.enable_unsafe_triggers', previous, true);
        END $vecorm$

    Citus runs a table's triggers on each shard once it is distributed, and they fire for the
    rows ``create_distributed_table`` copies into the shards: the triggers are dropped for the
    copy (the side tables bring the statistics of those rows with them) and made again after
    it, with ``citus.enable_unsafe_triggers`` on for the block (Citus leaves to the user that a
    trigger writes only co-located shards; these write only the side tables' rows of the
    distribution values they were given). Every name is quoted and every value a literal.
    """

    inherit_cache = False

    def __init__(
        self,
        table_name: str,
        schema: str | None,
        column: str,
        *,
        colocate_with: str | None = None,
        shard_count: int | None = None,
    ) -> None:
        self.table_name = table_name
        self.schema = schema
        self.column = column
        self.colocate_with = colocate_with
        self.shard_count = shard_count


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@compiles(DistributeWithStatistics)
def _compile_distribute_with_statistics(
    element: DistributeWithStatistics, compiler: Any, **_: Any
) -> str:
    preparer = compiler.preparer
    dialect = compiler.dialect

    def name(table: str) -> str:
        quoted = preparer.quote(table)
        return f"{preparer.quote_schema(element.schema)}.{quoted}" if element.schema else quoted

    def distribute(table: str, **options: object) -> str:
        named = "".join(
            f", {key} => {value if isinstance(value, int) else _literal(str(value))}"
            for key, value in options.items()
            if value is not None
        )
        return (
            f"  PERFORM pg_catalog.create_distributed_table({_literal(name(table))}, "
            f"{_literal(element.column)}{named});\n"
        )

    table = element.table_name
    events = bm25_ddl.TRIGGER_EVENTS
    drops = "".join(
        f"  {bm25_ddl.DropTrigger(table, element.schema, event).sql(dialect)};\n"
        for event in events
    )
    creates = "".join(
        f"  {bm25_ddl.CreateTrigger(table, element.schema, event).sql(dialect)};\n"
        for event in events
    )
    sides = "".join(
        distribute(bm25_ddl.object_name(table, side), colocate_with=name(table))
        for side in ("postings", "terms", "deltas")
    )
    body = (
        "DECLARE\n"
        f"  previous text := coalesce(pg_catalog.current_setting({_UNSAFE}, true), "
        "'off');\n"
        "BEGIN\n"
        f"  PERFORM pg_catalog.set_config({_UNSAFE}, 'on', true);\n"
        f"{drops}"
        f"{distribute(table, colocate_with=element.colocate_with, shard_count=element.shard_count)}"
        f"{sides}"
        f"{creates}"
        f"  PERFORM pg_catalog.set_config({_UNSAFE}, previous, true);\n"
        "END"
    )
    if "$vecorm$" in body:
        raise ConfigurationError(f"cannot distribute {table!r}: a name contains '$vecorm$'")
    return f"DO $vecorm$\n{body}\n$vecorm$"


def reference_table(target: Any) -> Select[Any]:
    """``SELECT create_reference_table('table')``: a full copy on every node (small tables)."""
    return select(CitusCall("create_reference_table", _qualified_name(_table_of(target))))


def undistribute_table(target: Any, *, cascade_via_foreign_keys: bool = False) -> Select[Any]:
    """``SELECT undistribute_table('table')``: back to a local table (the reverse of both).

    ``cascade_via_foreign_keys=True`` brings back the tables foreign keys join it to as well,
    which Citus requires (``cascade_via_foreign_keys => true``). A model keeping BM25
    statistics per distribution value brings back its side tables too."""
    options = {"cascade_via_foreign_keys": True} if cascade_via_foreign_keys else {}
    table = _table_of(target)
    calls = [CitusCall("undistribute_table", _qualified_name(table), **options)]
    statistics = bm25_tables_of(table)
    if statistics is not None and statistics.distributed_by is not None:
        # Statistics per distribution value were distributed with the table: back with it.
        calls += [
            CitusCall("undistribute_table", _qualified_name(side))
            for side in (statistics.postings, statistics.terms, statistics.deltas)
        ]
    return select(*calls)


def distribution_plan(models: Mapping[str, Any], column: str) -> dict[str, str]:
    """``{table: "distributed" | "reference"}``: tables having ``column`` are distributed by it
    (and must satisfy :func:`check_distribution`), the others become reference tables."""
    plan: dict[str, str] = {}
    for target in models.values():
        table = _table_of(target)
        if column in table.c:
            check_distribution(table, column)
            plan[_qualified_name(table)] = "distributed"
        else:
            plan[_qualified_name(table)] = "reference"
    return plan
