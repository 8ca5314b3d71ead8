"""Partitions in migrations: ``op.create_partition`` / ``op.drop_partition``, and autogenerate
that leaves the partitions of a model's table alone.

A partitioned model's table is in the metadata; its partitions usually are not (one per tenant,
added as tenants come). Alembic would propose dropping each of them; the comparator here removes
those drops (and the drops of their indexes) when the table is a partition of a metadata table::

    def upgrade() -> None:
        op.create_partition("documents", "documents_t7", values=[7])     # LIST
        op.create_partition("events", "events_p0", modulus=4, remainder=0)  # HASH

    def downgrade() -> None:
        op.drop_partition("documents_t7")

The new partition gets every index of the parent, vecorm's vector and GIN indexes included
(see :mod:`vecorm.scale.partitioning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations, ops
from alembic.util import DispatchPriority, PriorityDispatchResult
from sqlalchemy import text

from vecorm.alembic.plugin import comparator
from vecorm.alembic.renderers import OPERATIONS_IMPORT
from vecorm.scale.partitioning import CreatePartition


@Operations.register_operation("create_partition")
class CreatePartitionOp(MigrateOperation):
    """``CREATE TABLE name PARTITION OF parent FOR VALUES ...``; reversed by a drop."""

    def __init__(
        self,
        parent: str,
        name: str,
        *,
        values: Sequence[object] | None = None,
        modulus: int | None = None,
        remainder: int | None = None,
        bounds: tuple[object, object] | None = None,
        default: bool = False,
        schema: str | None = None,
    ) -> None:
        self.parent = parent
        self.name = name
        self.values = None if values is None else list(values)
        self.modulus = modulus
        self.remainder = remainder
        self.bounds = bounds
        self.default = default
        self.schema = schema
        self.to_ddl()  # validate now

    def to_ddl(self) -> CreatePartition:
        """The DDL element this operation runs."""
        return CreatePartition(
            self.parent,
            self.name,
            schema=self.schema,
            values=self.values,
            modulus=self.modulus,
            remainder=self.remainder,
            bounds=self.bounds,
            default=self.default,
        )

    @classmethod
    def create_partition(
        cls,
        operations: Operations,
        parent: str,
        name: str,
        *,
        values: Sequence[object] | None = None,
        modulus: int | None = None,
        remainder: int | None = None,
        bounds: tuple[object, object] | None = None,
        default: bool = False,
        schema: str | None = None,
    ) -> None:
        """Add partition ``name`` to partitioned table ``parent``, with the parent's indexes."""
        operations.invoke(
            cls(
                parent,
                name,
                values=values,
                modulus=modulus,
                remainder=remainder,
                bounds=bounds,
                default=default,
                schema=schema,
            )
        )

    def reverse(self) -> DropPartitionOp:
        return DropPartitionOp(self.name, schema=self.schema, _reverse=self)

    def to_diff_tuple(self) -> tuple[str, str | None, str, str]:
        return ("add_partition", self.schema, self.parent, self.name)


@Operations.register_operation("drop_partition")
class DropPartitionOp(MigrateOperation):
    """``DROP TABLE name``: the partition and its rows."""

    def __init__(
        self, name: str, *, schema: str | None = None, _reverse: CreatePartitionOp | None = None
    ) -> None:
        self.name = name
        self.schema = schema
        self._reverse = _reverse

    @classmethod
    def drop_partition(
        cls, operations: Operations, name: str, *, schema: str | None = None
    ) -> None:
        """Drop partition ``name`` (its rows go with it)."""
        operations.invoke(cls(name, schema=schema))

    def reverse(self) -> CreatePartitionOp:
        if self._reverse is None:
            raise ValueError(f"cannot reverse the drop of partition {self.name} without its bounds")
        return self._reverse


@Operations.implementation_for(CreatePartitionOp)
def _create_partition(operations: Operations, operation: CreatePartitionOp) -> None:
    operations.execute(operation.to_ddl())


@Operations.implementation_for(DropPartitionOp)
def _drop_partition(operations: Operations, operation: DropPartitionOp) -> None:
    preparer = operations.get_context().dialect.identifier_preparer
    name = preparer.quote(operation.name)
    if operation.schema:
        name = f"{preparer.quote_schema(operation.schema)}.{name}"
    operations.execute(f"DROP TABLE {name}")


def _render_arguments(operation: CreatePartitionOp) -> list[str]:
    args = [repr(operation.parent), repr(operation.name)]
    for key in ("values", "modulus", "remainder", "bounds"):
        value = getattr(operation, key)
        if value is not None:
            args.append(f"{key}={value!r}")
    if operation.default:
        args.append("default=True")
    if operation.schema:
        args.append(f"schema={operation.schema!r}")
    return args


@renderers.dispatch_for(CreatePartitionOp)
def _render_create_partition(autogen_context: AutogenContext, operation: CreatePartitionOp) -> str:
    if autogen_context.imports is not None:
        autogen_context.imports.add(OPERATIONS_IMPORT)
    return f"op.create_partition({', '.join(_render_arguments(operation))})"


@renderers.dispatch_for(DropPartitionOp)
def _render_drop_partition(autogen_context: AutogenContext, operation: DropPartitionOp) -> str:
    if autogen_context.imports is not None:
        autogen_context.imports.add(OPERATIONS_IMPORT)
    schema = f", schema={operation.schema!r}" if operation.schema else ""
    return f"op.drop_partition({operation.name!r}{schema})"


_PARTITIONS_SQL = text(
    """
    SELECT n.nspname, c.relname, pn.nspname, p.relname
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid AND c.relispartition
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class p ON p.oid = i.inhparent
    JOIN pg_namespace pn ON pn.oid = p.relnamespace
    WHERE c.relkind IN ('r', 'p')
    """
)


@comparator(
    "vecorm.partitions", "schema", priority=DispatchPriority.LAST, subgroup="vecorm_partitions"
)
def keep_partitions(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, schemas: set[str | None]
) -> PriorityDispatchResult:
    """Remove the drops Alembic planned for partitions of tables in the metadata."""
    connection = autogen_context.connection
    if connection is None or connection.dialect.name != "postgresql":
        return PriorityDispatchResult.CONTINUE
    default_schema = connection.dialect.default_schema_name
    known = {
        (table.schema or default_schema, table.name) for table in autogen_context.sorted_tables
    }
    partitions = {
        (schema if schema != default_schema else None, name)
        for schema, name, parent_schema, parent in connection.execute(_PARTITIONS_SQL)
        if (parent_schema, parent) in known
    }
    if not partitions:
        return PriorityDispatchResult.CONTINUE
    kept: list[Any] = []
    for op in upgrade_ops.ops:
        if isinstance(op, ops.DropTableOp) and (op.schema, op.table_name) in partitions:
            continue
        if isinstance(op, ops.ModifyTableOps) and (op.schema, op.table_name) in partitions:
            continue  # e.g. drops of the partition's own copies of the parent's indexes
        kept.append(op)
    upgrade_ops.ops = kept
    return PriorityDispatchResult.CONTINUE
