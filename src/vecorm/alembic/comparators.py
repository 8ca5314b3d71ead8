"""Autogenerate comparators, registered in Alembic's module-level ``comparators`` registry.

Alembic 1.18+ copies that registry into every autogenerate run, so ``import vecorm.alembic``
in env.py is all it takes. What they add to Alembic's own comparison:

* ``CREATE EXTENSION IF NOT EXISTS vector`` first in the upgrade, when the metadata uses a
  pgvector type and the database lacks the extension;
* an index name present on both sides is compared from the catalog (method, uniqueness and
  NULLS NOT DISTINCT, each key as ``pg_get_indexdef`` prints it: column or expression,
  collation, operator class and its parameters, direction, NULLS order; INCLUDE columns,
  ``WITH`` parameters, predicate), after PostgreSQL normalised the metadata's version (see
  :mod:`vecorm.alembic.catalog`); a difference is a drop + create, equality removes any diff
  Alembic produced for that name; an INVALID stored index (a failed ``CREATE INDEX
  CONCURRENTLY``) is dropped and built again;
* an index Alembic would drop, whose definition is exactly that of a metadata index Alembic
  would create on the same table, is renamed instead (``op.rename_index``), never rebuilt;
* an *adopted* index (``SearchConfig(vector_index_name=...)``, or a hand-made HNSW / IVFFlat
  index under a name vecorm did not give it, on the column of a new vector index) that differs
  from the metadata is kept as it is and reported: an :class:`IndexMismatchWarning` and an
  :class:`IndexMismatchOp` that runs nothing, renders both definitions and the commented-out
  rebuild, and makes ``alembic check`` fail (see docs/adopting.md);
* generated (``Computed``) columns are compared the same way, replacing Alembic's text comparison
  (which can only warn); a change becomes ``op.alter_column_expression(...)``;
* a vector column's new width (``Vector(384)`` -> ``Vector(512)``) becomes
  ``op.alter_vector_dimensions(...)`` instead of an ``alter_column`` that fails on the first
  stored vector (see :class:`vecorm.alembic.operations.AlterVectorDimensionsOp`);
* types from ``vecorm.*`` / ``pgvector.*`` bring their ``import`` into the revision, and the
  mixin's bookkeeping entry in ``Table.info`` stays out of it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from alembic.util import DispatchPriority, PriorityDispatchResult
from pgvector.sqlalchemy import HALFVEC, SPARSEVEC, VECTOR
from sqlalchemy import Column, Computed, Index, Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeEngine

from vecorm.alembic.catalog import (
    IndexSignature,
    SimulatedTable,
    extension_version,
    generated_column,
    index_signature_by_oid,
    index_state,
    simulated_table,
)
from vecorm.alembic.operations import (
    FILL_JOBS,
    AddSearchVectorOp,
    AlterColumnExpressionOp,
    AlterVectorDimensionsOp,
    CreateVectorExtensionOp,
    FillSearchVectorOp,
    RenameIndexOp,
)
from vecorm.alembic.plugin import comparator, excluded_in_run
from vecorm.errors import VecormWarning
from vecorm.schema.generated import SearchVectorTrigger, qualified_name, trigger_of
from vecorm.schema.indexes import ADOPTED_INFO_KEY, index_name
from vecorm.search.bm25.tables import tables_of as bm25_tables_of

log = logging.getLogger("vecorm.alembic")

_PGVECTOR_TYPES = (VECTOR, HALFVEC, SPARSEVEC)
_DENSE_VECTOR_TYPES = (VECTOR, HALFVEC)
_IMPORTABLE_PREFIXES = ("vecorm.", "pgvector.")
_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]
_VECTOR_METHODS = frozenset({"hnsw", "ivfflat"})


class IVFFlatCreateIndexOp(ops.CreateIndexOp):
    """A ``CreateIndexOp`` for an IVFFlat index; renders with a note on training data."""


class IndexMismatchWarning(VecormWarning):
    """An existing index vecorm adopts differs from the model's; it is kept, not rebuilt."""


class IndexMismatchOp(ops.MigrateOperation):
    """An adopted index whose definition differs from the metadata's: reported, never run.

    Renders as comments giving the stored (``found``) and configured (``expected``)
    definitions and the drop + create that would rebuild it, commented out; ``alembic check``
    lists it as ``("vecorm_index_mismatch", ...)``.
    """

    def __init__(
        self,
        table_name: str,
        index_name: str,
        found: IndexSignature,
        expected: IndexSignature,
        rebuild: tuple[ops.MigrateOperation, ops.MigrateOperation],
        *,
        schema: str | None = None,
        downgrade: bool = False,
    ) -> None:
        self.table_name = table_name
        self.index_name = index_name
        self.found = found
        self.expected = expected
        self.rebuild = rebuild
        self.schema = schema
        self.downgrade = downgrade

    @property
    def message(self) -> str:
        return (
            f"vecorm: index {self.index_name!r} on {self.table_name!r} differs from the model and "
            f"is kept as it is (found {self.found.describe()}; the model expects "
            f"{self.expected.describe()}). Change the model's SearchConfig to match it, or "
            "uncomment the rebuild in the revision"
        )

    def reverse(self) -> IndexMismatchOp:
        """The downgrade's note: how to restore the stored index if the rebuild was run."""
        drop, create = self.rebuild
        return IndexMismatchOp(
            self.table_name,
            self.index_name,
            self.found,
            self.expected,
            (create.reverse(), drop.reverse()),
            schema=self.schema,
            downgrade=not self.downgrade,
        )

    def to_diff_tuple(self) -> tuple[str, str | None, str, str, str, str]:
        return (
            "vecorm_index_mismatch",
            self.schema,
            self.table_name,
            self.index_name,
            self.found.describe(),
            self.expected.describe(),
        )


@comparator(
    "vecorm.autogenerate",
    "column",
    qualifier="postgresql",
    priority=DispatchPriority.FIRST,
    subgroup="server_default",
)
def _claim_computed_columns(
    autogen_context: AutogenContext,
    alter_column_op: ops.AlterColumnOp,
    schema: str | None,
    tname: str,
    cname: str,
    conn_col: Column[Any],
    metadata_col: Column[Any],
) -> PriorityDispatchResult:
    """Generated on both sides: compared in :func:`compare_table`, not by Alembic's warning."""
    if isinstance(conn_col.server_default, Computed) and isinstance(
        metadata_col.server_default, Computed
    ):
        return PriorityDispatchResult.STOP
    return PriorityDispatchResult.CONTINUE


@comparator(
    "vecorm.autogenerate",
    "table",
    qualifier="postgresql",
    priority=DispatchPriority.LAST,
    subgroup="vecorm",
)
def compare_table(
    autogen_context: AutogenContext,
    modify_ops: ops.ModifyTableOps,
    schema: str | None,
    tname: str,
    conn_table: Table | None,
    metadata_table: Table | None,
) -> PriorityDispatchResult:
    """Compare indexes and generated columns of a table that exists on both sides.

    Each drop / create Alembic planned has one owner here. An index *name* present on both
    sides belongs to :func:`_reconcile_index` (compared from the catalog, rebuilt or left
    alone); a create of a name the database lacks and a drop of a name the metadata lacks
    belong to :func:`_adopt_replaced_indexes` (a rename when one is the other).
    """
    connection = autogen_context.connection
    if conn_table is None or metadata_table is None or connection is None:
        return PriorityDispatchResult.CONTINUE
    _claim_dimension_changes(modify_ops, tname, schema)
    indexes = _stored_counterparts(autogen_context, connection, metadata_table, schema)
    replaced = _replaced_indexes(connection, modify_ops, metadata_table, schema)
    computed = [
        column
        for column in metadata_table.c
        if isinstance(column.server_default, Computed)
        and column.name in conn_table.c
        and isinstance(conn_table.c[column.name].server_default, Computed)
        and autogen_context.run_object_filters(
            column, column.name, "column", False, conn_table.c[column.name]
        )
    ]
    if not indexes and not computed and replaced is None:
        return PriorityDispatchResult.CONTINUE
    with simulated_table(connection, metadata_table, schema) as probe:
        if probe is None:
            return PriorityDispatchResult.CONTINUE
        expected_indexes = {stored.index: probe.index_signature(stored.index) for stored in indexes}
        expected_columns = {column: probe.generated_column(column) for column in computed}
        expected_new = _simulate_new_indexes(probe, replaced, conn_table)
    for stored in indexes:
        _reconcile_index(
            modify_ops, conn_table, stored, expected_indexes[stored.index], tname, schema
        )
    if replaced is not None:
        _adopt_replaced_indexes(modify_ops, conn_table, replaced, expected_new, tname, schema)
    for column, expected_column in expected_columns.items():
        stored_column = generated_column(connection, tname, column.name, schema)
        if expected_column is None or stored_column is None:
            continue
        if expected_column.kind != stored_column.kind:
            log.warning(
                "vecorm: %s.%s changes between STORED and VIRTUAL; PostgreSQL cannot alter "
                "that in place: drop and add the column in a hand-written migration",
                tname,
                column.name,
            )
        elif expected_column.expression != stored_column.expression:
            log.info("Detected changed generated expression on '%s.%s'", tname, column.name)
            modify_ops.ops.append(
                AlterColumnExpressionOp(
                    tname,
                    column.name,
                    _metadata_expression(autogen_context, column),
                    existing_expression=stored_column.expression,
                    schema=schema,
                )
            )
    return PriorityDispatchResult.CONTINUE


def _claim_dimension_changes(
    modify_ops: ops.ModifyTableOps, tname: str, schema: str | None
) -> None:
    """Alembic's ``alter_column`` to another vector width becomes ``alter_vector_dimensions``.

    A plain ``ALTER COLUMN ... TYPE vector(512)`` dies at upgrade on the first stored row
    ("expected 512 dimensions, not 384"); the vecorm operation alters an empty column, does
    nothing once ``vecorm.embedding.reembed.ModelChange`` switched it, and otherwise says what to
    do.
    """
    for op in list(modify_ops.ops):
        if not isinstance(op, ops.AlterColumnOp):
            continue
        new, old = op.modify_type, op.existing_type
        if not isinstance(new, _DENSE_VECTOR_TYPES) or not isinstance(old, _DENSE_VECTOR_TYPES):
            continue
        if new.dim is None or old.dim is None or new.dim == old.dim:
            continue
        change = AlterVectorDimensionsOp(
            tname,
            op.column_name,
            new.dim,
            existing_dimensions=old.dim,
            type_name=_vector_type_name(new),
            existing_type_name=_vector_type_name(old),
            schema=schema,
        )
        log.warning("vecorm: %s", change.advice)
        op.modify_type = None
        position = modify_ops.ops.index(op)
        if op.has_changes():  # nullable, default or comment: still Alembic's to render
            modify_ops.ops.insert(position + 1, change)
        else:
            modify_ops.ops[position] = change


def _vector_type_name(type_: VECTOR | HALFVEC) -> str:
    return "halfvec" if isinstance(type_, HALFVEC) else "vector"


@dataclass(frozen=True)
class _StoredIndex:
    """A named metadata index and the stored index of the same name."""

    index: Index
    actual: IndexSignature
    valid: bool


def _stored_counterparts(
    autogen_context: AutogenContext,
    connection: Connection,
    metadata_table: Table,
    schema: str | None,
) -> list[_StoredIndex]:
    """Named metadata indexes stored under the same name, except those backing a constraint
    (Alembic compares unique constraints itself)."""
    found: list[_StoredIndex] = []
    for index in sorted(metadata_table.indexes, key=lambda ix: str(ix.name)):
        if not isinstance(index.name, str):
            continue
        state = index_state(connection, index.name, schema)
        if state is None or state[2]:
            continue
        if not autogen_context.run_object_filters(index, index.name, "index", False, None):
            continue
        found.append(_StoredIndex(index, index_signature_by_oid(connection, state[0]), state[1]))
    return found


def _reconcile_index(
    modify_ops: ops.ModifyTableOps,
    conn_table: Table,
    stored: _StoredIndex,
    expected: IndexSignature | None,
    tname: str,
    schema: str | None,
) -> None:
    """Make the plan for ``stored.index``'s name exactly: nothing, a rebuild, or a report."""
    index, actual = stored.index, stored.actual
    name = str(index.name)
    if stored.valid and expected is None:
        return  # could not be simulated (e.g. a column it needs is new): Alembic decides
    for op in [
        op
        for op in modify_ops.ops
        if isinstance(op, ops.CreateIndexOp | ops.DropIndexOp) and op.index_name == name
    ]:
        modify_ops.ops.remove(op)  # whatever Alembic planned for this name, this decides
    drop = ops.DropIndexOp.from_index(stored_index(conn_table, name, actual))
    if not stored.valid:
        # Left by a failed (or running) CREATE INDEX CONCURRENTLY: queries do not use it, yet
        # Alembic reflects it like any other index. Build it again.
        log.warning(
            "vecorm: index %r on %r is INVALID (a failed or running CREATE INDEX "
            "CONCURRENTLY?); the revision drops and rebuilds it",
            name,
            tname,
        )
    else:
        assert expected is not None
        if expected.comparable() == actual.comparable():
            return  # same index in the catalog's terms: whatever Alembic saw is noise
        if index.info.get(ADOPTED_INFO_KEY):
            mismatch = IndexMismatchOp(
                tname, name, actual, expected, (drop, _create_index_op(index)), schema=schema
            )
            _report_mismatch(modify_ops, mismatch)
            return
        log.info(
            "Detected changed index %r on %r: %s -> %s",
            name,
            tname,
            actual.describe(),
            expected.describe(),
        )
    # Drop first: a column type change in the same revision may need the old index gone.
    modify_ops.ops.insert(0, drop)
    modify_ops.ops.append(_create_index_op(index))


@dataclass
class _Replacements:
    """Alembic's plan to create some metadata indexes and drop some stored ones, same table."""

    created: list[tuple[ops.CreateIndexOp, Index]]
    dropped: list[tuple[ops.DropIndexOp, IndexSignature]]


def _replaced_indexes(
    connection: Connection,
    modify_ops: ops.ModifyTableOps,
    metadata_table: Table,
    schema: str | None,
) -> _Replacements | None:
    """Creates of names the database lacks and drops of valid indexes the metadata lacks, if
    Alembic planned both. A name on both sides is :func:`_reconcile_index`'s, never here."""
    by_name = {str(index.name): index for index in metadata_table.indexes if index.name}
    created = [
        (op, by_name[str(op.index_name)])
        for op in modify_ops.ops
        if isinstance(op, ops.CreateIndexOp)
        and str(op.index_name) in by_name
        and index_state(connection, str(op.index_name), schema) is None
    ]
    dropped: list[tuple[ops.DropIndexOp, IndexSignature]] = []
    for op in modify_ops.ops:
        if not isinstance(op, ops.DropIndexOp) or op.index_name is None:
            continue
        if str(op.index_name) in by_name:
            continue
        state = index_state(connection, op.index_name, schema)
        if state is not None and state[1] and not state[2]:
            dropped.append((op, index_signature_by_oid(connection, state[0])))
    if not created or not dropped:
        return None
    return _Replacements(created, dropped)


def _simulate_new_indexes(
    probe: SimulatedTable, replaced: _Replacements | None, conn_table: Table
) -> dict[str, IndexSignature]:
    """How PostgreSQL would store each index Alembic means to create on existing columns."""
    if replaced is None:
        return {}
    found: dict[str, IndexSignature] = {}
    for op, index in replaced.created:
        if not all(column.name in conn_table.c for column in index.columns):
            continue  # on a column this revision adds: nothing stored can match it
        signature = probe.index_signature(index)
        if signature is not None:
            found[str(op.index_name)] = signature
    return found


def _adopt_replaced_indexes(
    modify_ops: ops.ModifyTableOps,
    conn_table: Table,
    replaced: _Replacements,
    expected_new: dict[str, IndexSignature],
    tname: str,
    schema: str | None,
) -> None:
    """Rename a stored index that already is the new one; report a differing hand-made one."""
    unused = list(replaced.dropped)
    for create, _ in replaced.created:
        expected = expected_new.get(str(create.index_name))
        if expected is None:
            continue
        same = [pair for pair in unused if pair[1].comparable() == expected.comparable()]
        if same:
            drop, _ = same[0]
            unused.remove(same[0])
            rename = RenameIndexOp(
                str(drop.index_name), str(create.index_name), table_name=tname, schema=schema
            )
            log.info(
                "Detected index %r stored as %r: renaming it", create.index_name, drop.index_name
            )
            modify_ops.ops[modify_ops.ops.index(drop)] = rename
            modify_ops.ops.remove(create)
            continue
        for pair in unused:
            drop, actual = pair
            if _is_hand_made_twin(conn_table, tname, str(drop.index_name), actual, expected):
                unused.remove(pair)
                modify_ops.ops.remove(drop)
                modify_ops.ops.remove(create)
                _report_mismatch(
                    modify_ops,
                    IndexMismatchOp(
                        tname, str(drop.index_name), actual, expected, (drop, create), schema=schema
                    ),
                )
                break


def _is_hand_made_twin(
    conn_table: Table, tname: str, name: str, actual: IndexSignature, expected: IndexSignature
) -> bool:
    """A vector index on the same keys, under a name vecorm would not have given it."""
    if actual.method not in _VECTOR_METHODS or expected.method not in _VECTOR_METHODS:
        return False
    if actual.keys != expected.keys:
        return False
    columns = {_PREPARER.quote(column.name): column.name for column in conn_table.c}
    vecorm_names = {
        index_name(tname, columns[key], method)
        for key in actual.keys
        if key in columns
        for method in _VECTOR_METHODS
    }
    return name not in vecorm_names


def _report_mismatch(modify_ops: ops.ModifyTableOps, mismatch: IndexMismatchOp) -> None:
    warnings.warn(IndexMismatchWarning(mismatch.message), stacklevel=2)
    modify_ops.ops.append(mismatch)


def _with_ivfflat_note(op: ops.MigrateOperation) -> ops.MigrateOperation:
    """Alembic's own ``CreateIndexOp`` for an IVFFlat index, as the kind that renders a note."""
    if (
        type(op) is ops.CreateIndexOp
        and op.kw.get("postgresql_using") == "ivfflat"
        and op.index_name is not None
    ):
        log.warning(
            "vecorm: IVFFlat index %r is built from the rows present when the revision runs; "
            "on an empty table, backfill first and build it in a later revision",
            op.index_name,
        )
        return IVFFlatCreateIndexOp(
            op.index_name,
            op.table_name,
            op.columns,
            schema=op.schema,
            unique=op.unique,
            if_not_exists=op.if_not_exists,
            **op.kw,
        )
    return op


def _create_index_op(index: Index) -> ops.CreateIndexOp:
    if index.dialect_options["postgresql"]["using"] == "ivfflat":
        return IVFFlatCreateIndexOp.from_index(index)
    return ops.CreateIndexOp.from_index(index)


def stored_index(conn_table: Table, name: str, signature: IndexSignature) -> Index:
    """An :class:`~sqlalchemy.Index` on the reflected table that renders the stored index.

    A key that is a bare column (with at most a non-default operator class) stays a column;
    any other key is the catalog's own text (``n DESC NULLS LAST``, ``lower((name)::text)
    COLLATE "C" text_pattern_ops``, ``((embedding)::halfvec(3072)) halfvec_cosine_ops``), so
    the downgrade builds exactly what was stored.
    """
    by_quoted = {_PREPARER.quote(column.name): column for column in conn_table.c}
    keys: list[Any] = []
    ops_by_column: dict[str, str] = {}
    for key, definition, opclass in zip(
        signature.keys, signature.key_definitions, signature.opclasses, strict=True
    ):
        column = by_quoted.get(key)
        if column is not None and definition == key:
            keys.append(column)
        elif column is not None and definition == f"{key} {opclass}":
            keys.append(column)
            ops_by_column[column.name] = opclass
        else:
            keys.append(text(definition))
    kwargs: dict[str, Any] = {}
    if signature.method != "btree":  # PostgreSQL's default, left out as Alembic does
        kwargs["postgresql_using"] = signature.method
    if signature.options:
        kwargs["postgresql_with"] = signature.with_params
    if ops_by_column:
        kwargs["postgresql_ops"] = ops_by_column
    if signature.predicate:
        kwargs["postgresql_where"] = text(signature.predicate)
    if signature.include:
        kwargs["postgresql_include"] = [
            by_quoted[key].name if key in by_quoted else key for key in signature.include
        ]
    if signature.nulls_not_distinct:
        kwargs["postgresql_nulls_not_distinct"] = True
    index = Index(name, *keys, unique=signature.unique, **kwargs)
    if index.table is None:  # only expressions: bind it to the table by hand
        index._set_parent(conn_table)
    # Index() attaches itself to the reflected table; keep that table as reflected.
    conn_table.indexes.discard(index)
    return index


def _metadata_expression(autogen_context: AutogenContext, column: Column[Any]) -> str:
    computed = column.server_default
    assert isinstance(computed, Computed)
    return str(
        computed.sqltext.compile(
            dialect=autogen_context.dialect, compile_kwargs={"literal_binds": True}
        )
    )


@comparator("vecorm.autogenerate", "schema", priority=DispatchPriority.LAST, subgroup="vecorm")
def compare_schema(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, schemas: set[str | None]
) -> PriorityDispatchResult:
    """Add the extension when needed; imports for vecorm types; no private ``Table.info``."""
    connection = autogen_context.connection
    if (
        connection is not None
        and connection.dialect.name == "postgresql"
        and _metadata_uses_pgvector(autogen_context)
        and extension_version(connection) is None
    ):
        log.info("Detected missing extension 'vector'")
        upgrade_ops.ops.insert(0, CreateVectorExtensionOp())
    for op in _walk(upgrade_ops):
        if isinstance(op, ops.OpContainer):
            op.ops = [_with_ivfflat_note(child) for child in op.ops]
        elif isinstance(op, ops.AlterColumnOp):
            _existing_type_as_declared(autogen_context, op)
    modules = {
        type(type_).__module__
        for type_ in _types_in(upgrade_ops)
        if type(type_).__module__.startswith(_IMPORTABLE_PREFIXES)
    }
    if modules:
        upgrade_ops.ops.append(ImportsOp(frozenset(f"import {module}" for module in modules)))
    return PriorityDispatchResult.CONTINUE


class ImportsOp(ops.OpContainer):
    """Renders nothing but adds ``imports`` to the revision; a no-op in diffs and when run.

    Alembic resets the import list between comparison and rendering, so the imports a vector
    column needs travel with the operations until the revision is rendered.
    """

    def __init__(self, imports: frozenset[str]) -> None:
        super().__init__(ops=())
        self.imports = imports

    def reverse(self) -> ImportsOp:
        return ImportsOp(self.imports)


def _existing_type_as_declared(autogen_context: AutogenContext, op: ops.AlterColumnOp) -> None:
    """Render ``existing_type`` in the class the model declares, not the reflected one.

    Once vecorm is imported, reflection returns its types (``vecorm.types.Vector`` ...) for
    every ``vector`` column, so a project whose models use stock ``pgvector.sqlalchemy``
    types would get ``existing_type=vecorm.types.Vector(dim=3)`` and an ``import
    vecorm.types`` in revisions that merely make the column NOT NULL. Its migrations should
    read like its models: the reflected type is rendered in the declared type's class (a
    pgvector class that vecorm's type subclasses), with the database's width. Nothing else
    changes: both render the same SQL.
    """
    existing = op.existing_type
    if not isinstance(existing, TypeEngine) or not type(existing).__module__.startswith("vecorm."):
        return
    table = _metadata_table(autogen_context, op.schema, op.table_name)
    column = None if table is None else table.c.get(op.column_name)
    if column is None:
        return
    declared: Any = type(column.type)
    if declared.__module__.startswith("vecorm.") or not isinstance(existing, declared):
        return
    size = getattr(existing, "dim", getattr(existing, "length", None))
    try:
        op.existing_type = declared(size)
    except TypeError:  # a constructor of another shape: keep the reflected type
        return


def _metadata_uses_pgvector(autogen_context: AutogenContext) -> bool:
    return any(
        isinstance(column.type, _PGVECTOR_TYPES)
        for table in autogen_context.sorted_tables
        for column in table.c
    )


def _walk(operation: ops.MigrateOperation) -> Iterator[ops.MigrateOperation]:
    """``operation``, what it contains, and the operations its reverse will render."""
    yield operation
    if isinstance(operation, ops.OpContainer):
        for child in operation.ops:
            yield from _walk(child)
    reverse = getattr(operation, "_reverse", None)
    if isinstance(reverse, ops.MigrateOperation):
        yield from _walk(reverse)


def _types_in(upgrade_ops: ops.UpgradeOps) -> Iterator[TypeEngine[Any]]:
    for op in _walk(upgrade_ops):
        if isinstance(op, ops.CreateTableOp):
            for item in op.columns:
                if isinstance(item, Column):
                    yield item.type
        elif isinstance(op, ops.AddColumnOp):
            yield op.column.type
        elif isinstance(op, ops.AlterColumnOp):
            for candidate in (op.modify_type, op.existing_type):
                if isinstance(candidate, TypeEngine):
                    yield candidate


# --------------------------------------------------------------------------- online adoption

#: A table with more rows than this (``pg_class.reltuples``) gets a note on the rewrite that
#: adding a generated column costs, naming ``SearchConfig(search_vector="trigger")``.
REWRITE_WARNING_ROWS = 100_000


class ConcurrentCreateIndexOp(ops.CreateIndexOp):
    """``CREATE INDEX CONCURRENTLY`` inside ``op.get_context().autocommit_block()``: builds
    without blocking writers (what the online adoption renders for the table's new indexes)."""

    @classmethod
    def from_op(cls, op: ops.CreateIndexOp) -> ConcurrentCreateIndexOp:
        kw = {**op.kw, "postgresql_concurrently": True}
        return cls(
            op.index_name,
            op.table_name,
            op.columns,
            schema=op.schema,
            unique=op.unique,
            if_not_exists=op.if_not_exists,
            **kw,
        )

    def reverse(self) -> ops.DropIndexOp:
        # In the downgrade's transaction (a brief lock; CONCURRENTLY cannot run there).
        assert self.index_name is not None
        return ops.DropIndexOp(
            self.index_name, table_name=self.table_name, schema=self.schema, _reverse=self
        )


class RewritingAddColumnOp(ops.AddColumnOp):
    """Alembic's ``add_column`` of a generated column on a table with many rows: renders a
    comment naming the rewrite (ACCESS EXCLUSIVE for its whole length) and the online switch."""

    rows: int = 0

    @classmethod
    def from_op(cls, op: ops.AddColumnOp, rows: int) -> RewritingAddColumnOp:
        made = cls(op.table_name, op.column, schema=op.schema, **op.kw)
        made.rows = rows
        return made


@comparator(
    "vecorm.autogenerate", "schema", priority=DispatchPriority.LAST, subgroup="vecorm_online"
)
def compare_online_adoption(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, schemas: set[str | None]
) -> PriorityDispatchResult:
    """Trigger-kept tsvector columns: the online path on existing tables, the trigger on new
    ones; a note on generated columns that would rewrite a big table.

    Independent of the BM25 comparator's order (Alembic runs a named plugin's copy after the
    module-level ones): both read :func:`~vecorm.alembic.catalog.adopted_online`, so its
    ``op.create_bm25_statistics`` renders ``rebuild=False`` and the fill counts the rows.
    """
    connection = autogen_context.connection
    if connection is None or connection.dialect.name != "postgresql":
        return PriorityDispatchResult.CONTINUE
    tail: list[ops.MigrateOperation] = []
    for operation in list(upgrade_ops.ops):
        if isinstance(operation, ops.CreateTableOp):
            table = _metadata_table(autogen_context, operation.schema, operation.table_name)
            trigger = None if table is None else trigger_of(table)
            if trigger is not None:
                tail.append(_add_search_vector(trigger, operation.schema, add_column=False))
        elif isinstance(operation, ops.ModifyTableOps):
            table = _metadata_table(autogen_context, operation.schema, operation.table_name)
            trigger = None if table is None else trigger_of(table)
            if trigger is not None and table is not None:
                bm25_tables = bm25_tables_of(table)
                counts = bm25_tables is not None and not excluded_in_run(
                    autogen_context, "vecorm.bm25"
                )
                adopted = _online_adoption(connection, operation, trigger, counts)
                if adopted and bm25_tables is not None and counts:
                    adopted.extend(_postings_index_after_fill(upgrade_ops, bm25_tables.postings))
                tail.extend(adopted)
            elif trigger is None:
                _note_rewrites(connection, operation)
    upgrade_ops.ops.extend(tail)
    return PriorityDispatchResult.CONTINUE


def _metadata_table(autogen_context: AutogenContext, schema: str | None, name: str) -> Table | None:
    for table in autogen_context.sorted_tables:
        if table.name == name and table.schema == schema:
            return table
    return None


def _add_search_vector(
    trigger: SearchVectorTrigger, schema: str | None, *, add_column: bool
) -> AddSearchVectorOp:
    return AddSearchVectorOp(
        trigger.table_name,
        trigger.column,
        trigger.columns,
        language=trigger.language,
        weights=trigger.weights,
        schema=schema,
        add_column=add_column,
    )


def _online_adoption(
    connection: Connection,
    modify_ops: ops.ModifyTableOps,
    trigger: SearchVectorTrigger,
    counts_bm25: bool,
) -> list[ops.MigrateOperation]:
    """Rewrite one table's ops for the online path; returns what runs after the transaction
    (``counts_bm25``: the table keeps BM25 statistics, which the fill then completes)."""
    added = [
        op
        for op in modify_ops.ops
        if isinstance(op, ops.AddColumnOp) and op.column.name == trigger.column
    ]
    schema = modify_ops.schema
    if not added:
        if _trigger_matches(connection, trigger, schema):
            return []
        log.info(
            "Detected missing or changed trigger on '%s.%s'", trigger.table_name, trigger.column
        )
        modify_ops.ops.insert(0, _add_search_vector(trigger, schema, add_column=False))
        return []
    log.info(
        "Detected trigger-kept column '%s.%s' (online path)", trigger.table_name, trigger.column
    )
    indexes = [op for op in modify_ops.ops if isinstance(op, ops.CreateIndexOp)]
    modify_ops.ops = [
        op for op in modify_ops.ops if op not in added and not isinstance(op, ops.CreateIndexOp)
    ]
    # First, so that every ALTER on the table finds the lock already taken (short, retried).
    modify_ops.ops.insert(0, _add_search_vector(trigger, schema, add_column=True))
    fill = FillSearchVectorOp(
        trigger.table_name,
        trigger.column,
        trigger.columns,
        language=trigger.language,
        weights=trigger.weights,
        schema=schema,
        bm25=counts_bm25,
        jobs=FILL_JOBS,
    )
    return [fill, *(ConcurrentCreateIndexOp.from_op(op) for op in indexes)]


def _postings_index_after_fill(
    upgrade_ops: ops.UpgradeOps, postings: Table
) -> list[ops.MigrateOperation]:
    """Take the new postings table's ranking index (term, impact) out of the revision's
    transaction and build it CONCURRENTLY after the fill. The fill writes a posting per word
    of every row; into that index they land all over its pages (measured: the BM25 part of a
    1,000,000-row adoption, 200 s of its 248), while one build after sorts them once. Rows
    written meanwhile are maintained as before (the key index, in primary-key order, stays);
    a BM25 search before the build reads the postings without it: slower, the same rows."""
    moved: list[ops.MigrateOperation] = []
    names = {index.name for index in postings.indexes if index.name and not index.unique}
    # A new table's indexes come in a ModifyTableOps of their own, after its CreateTableOp.
    for container in [upgrade_ops, *upgrade_ops.ops]:
        if not isinstance(container, ops.UpgradeOps | ops.ModifyTableOps):
            continue
        for operation in list(container.ops):
            if (
                isinstance(operation, ops.CreateIndexOp)
                and operation.table_name == postings.name
                and operation.schema == postings.schema
                and operation.index_name in names
            ):
                container.ops.remove(operation)
                moved.append(ConcurrentCreateIndexOp.from_op(operation))
    upgrade_ops.ops = [
        op for op in upgrade_ops.ops if not (isinstance(op, ops.ModifyTableOps) and op.is_empty())
    ]
    return moved


_FUNCTION_BODY_SQL = text(
    "SELECT p.prosrc FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n "
    "ON n.oid = p.pronamespace WHERE p.proname OPERATOR(pg_catalog.=) :name "
    "AND n.nspname OPERATOR(pg_catalog.=) coalesce(:schema, pg_catalog.current_schema())"
)
_TRIGGER_SQL = text(
    "SELECT pg_catalog.pg_get_triggerdef(t.oid) FROM pg_catalog.pg_trigger t "
    "WHERE t.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table) "
    "AND t.tgname OPERATOR(pg_catalog.=) :name"
)


def _trigger_matches(
    connection: Connection, trigger: SearchVectorTrigger, schema: str | None
) -> bool:
    """Whether the database has ``trigger``'s function (same body) and trigger (same columns)."""
    body = connection.execute(
        _FUNCTION_BODY_SQL, {"name": trigger.function_name, "schema": schema}
    ).scalar()
    table_sql = qualified_name(schema, trigger.table_name)
    definition = connection.execute(
        _TRIGGER_SQL, {"table": table_sql, "name": trigger.trigger_name}
    ).scalar()
    if body != trigger.function_body() or definition is None:
        return False
    watched = ", ".join(_PREPARER.quote(name) for name in trigger.columns)
    return f"UPDATE OF {watched} ON" in str(definition)


_RELTUPLES_SQL = text(
    "SELECT c.reltuples FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname OPERATOR(pg_catalog.=) :name "
    "AND n.nspname OPERATOR(pg_catalog.=) coalesce(:schema, pg_catalog.current_schema())"
)


def _note_rewrites(connection: Connection, modify_ops: ops.ModifyTableOps) -> None:
    """Mark ``add_column`` of a stored generated column on a big table (see
    :class:`RewritingAddColumnOp`)."""
    for position, op in enumerate(modify_ops.ops):
        if not (
            type(op) is ops.AddColumnOp
            and isinstance(op.column.type, postgresql.TSVECTOR)
            and isinstance(op.column.server_default, Computed)
            and op.column.server_default.persisted
        ):
            continue
        rows = connection.execute(
            _RELTUPLES_SQL, {"name": modify_ops.table_name, "schema": modify_ops.schema}
        ).scalar()
        if rows is not None and rows > REWRITE_WARNING_ROWS:
            log.warning(
                "vecorm: adding generated column %s.%s rewrites the table (~%d rows) under an "
                'ACCESS EXCLUSIVE lock; SearchConfig(search_vector="trigger") adds it online '
                "(docs/adopting.md)",
                modify_ops.table_name,
                op.column.name,
                int(rows),
            )
            modify_ops.ops[position] = RewritingAddColumnOp.from_op(op, int(rows))
