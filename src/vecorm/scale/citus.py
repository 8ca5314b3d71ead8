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

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.selectable import Select
from sqlalchemy.types import NullType

from vecorm.errors import ConfigurationError


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
    and unique index (uniqueness is enforced per shard), and never NULL.
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


def distribute_table(
    target: Any,
    column: str,
    *,
    colocate_with: str | None = None,
    shard_count: int | None = None,
    check: bool = True,
) -> Select[Any]:
    """``SELECT create_distributed_table('table', 'column', colocate_with => ..., ...)``.

    Tables distributed by the same column and ``colocate_with`` each other keep matching rows on
    the same worker, so joins on the column (documents to their chunks) stay local.
    """
    table = _table_of(target)
    if check:
        check_distribution(table, column)
    if shard_count is not None and not 1 <= shard_count <= 64000:
        raise ConfigurationError(f"shard_count must be between 1 and 64000, not {shard_count}")
    call = CitusCall(
        "create_distributed_table",
        _qualified_name(table),
        column,
        colocate_with=colocate_with,
        shard_count=shard_count,
    )
    return select(call)


def reference_table(target: Any) -> Select[Any]:
    """``SELECT create_reference_table('table')``: a full copy on every node (small tables)."""
    return select(CitusCall("create_reference_table", _qualified_name(_table_of(target))))


def undistribute_table(target: Any) -> Select[Any]:
    """``SELECT undistribute_table('table')``: back to a local table (the reverse of both)."""
    return select(CitusCall("undistribute_table", _qualified_name(_table_of(target))))


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
