"""A vector index replaced by one of another precision: build first, drop after.

Changing ``HNSW(precision=...)`` renames the index
(``ix_documents_embedding_hnsw`` -> ``ix_documents_embedding_halfvec_hnsw``), so Alembic sees
one index to create and one to drop. On a large table a plain drop + create leaves searches
without an index, and locks writes, for the whole build. This schema-level pass, run after
the table comparisons, rewrites such a pair on an existing table into::

    op.create_vector_index('ix_documents_embedding_halfvec_hnsw', 'documents', 'embedding',
                           method='hnsw', opclass='halfvec_cosine_ops', with_={...},
                           concurrently=True, precision='halfvec', dimensions=1536)
    op.drop_vector_index('ix_documents_embedding_hnsw', concurrently=True)

and the downgrade builds the old index (from its catalog definition) before dropping the new
one. ``CONCURRENTLY`` runs in Alembic's ``autocommit_block``: the revision's earlier
statements are committed first. Left to Alembic: an index rebuilt under the same name (its
parameters changed), a change of method alone, and a pair whose column changes type in the
same revision.
"""

from __future__ import annotations

import logging
import re

from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from alembic.util import DispatchPriority, PriorityDispatchResult
from sqlalchemy import Column, Index, Table
from sqlalchemy.engine import Connection
from sqlalchemy.sql import visitors
from sqlalchemy.sql.functions import Function

from vecorm.alembic.catalog import IndexSignature, index_signature_by_oid, index_state
from vecorm.alembic.operations import CreateVectorIndexOp, DropVectorIndexOp
from vecorm.alembic.plugin import comparator
from vecorm.schema.types import HalfVec

log = logging.getLogger("vecorm.alembic")

_VECTOR_METHODS = frozenset({"hnsw", "ivfflat"})
#: A stored key: ``embedding``, ``((embedding)::halfvec(16))``,
#: ``((binary_quantize(embedding))::bit(16))``.
_STORED_KEY = re.compile(
    r'^\(\((?:binary_quantize\((?P<bq>"?[^()"]+"?)\)|(?P<half>"?[^()"]+"?))\)'
    r"::(?P<type>halfvec|bit)\((?P<dims>\d+)\)\)$"
)


def stored_index_op(
    name: str, table_name: str, signature: IndexSignature, schema: str | None
) -> CreateVectorIndexOp | None:
    """The :class:`CreateVectorIndexOp` that rebuilds a stored vector index, if it is one."""
    if signature.method not in _VECTOR_METHODS or len(signature.keys) != 1:
        return None
    key = signature.keys[0]
    precision: str | None = None
    dimensions: int | None = None
    match = _STORED_KEY.match(key)
    if match:
        key = match.group("bq") or match.group("half")
        precision = match.group("type")
        dimensions = int(match.group("dims"))
    elif not re.fullmatch(r'"?[^()":]+"?', key):
        return None  # some other expression: not one vecorm makes
    return CreateVectorIndexOp(
        name,
        table_name,
        key.strip('"'),
        method=signature.method,
        opclass=signature.opclasses[0],
        with_=signature.with_params,
        concurrently=True,
        schema=schema,
        precision=precision,
        dimensions=dimensions,
    )


def metadata_index_op(index: Index, schema: str | None) -> CreateVectorIndexOp | None:
    """The :class:`CreateVectorIndexOp` for a metadata vector index (vecorm's or alike)."""
    options = index.dialect_options["postgresql"]
    method = options["using"]
    if method not in _VECTOR_METHODS or len(index.expressions) != 1 or index.table is None:
        return None
    expression = index.expressions[0]
    if isinstance(expression, str):
        return None  # a column named by a string: resolved by Alembic, not an expression
    elements = list(visitors.iterate(expression))
    columns = [element for element in elements if isinstance(element, Column)]
    if len(columns) != 1:
        return None
    column = columns[0]
    precision: str | None = None
    if any(
        isinstance(element, Function) and element.name == "binary_quantize" for element in elements
    ):
        precision = "bit"
    elif not isinstance(column.type, HalfVec) and any(
        isinstance(getattr(element, "type", None), HalfVec) for element in elements
    ):
        precision = "halfvec"
    opclasses = list((options["ops"] or {}).values())
    if len(opclasses) != 1:
        return None
    return CreateVectorIndexOp(
        str(index.name),
        str(index.table.name),
        column.name,
        method=method,
        opclass=opclasses[0],
        with_=dict(options["with"] or {}),
        concurrently=True,
        schema=schema,
        precision=precision,
        dimensions=getattr(column.type, "dim", None) if precision else None,
    )


def _metadata_indexes(autogen_context: AutogenContext) -> dict[tuple[str | None, str], Table]:
    return {(table.schema, table.name): table for table in autogen_context.sorted_tables}


def _rewrite(connection: Connection, modify: ops.ModifyTableOps, metadata_table: Table) -> None:
    by_name = {str(index.name): index for index in metadata_table.indexes if index.name}
    retyped = {
        op.column_name
        for op in modify.ops
        if isinstance(op, ops.AlterColumnOp) and op.modify_type is not None
    }
    creates: list[tuple[ops.CreateIndexOp, CreateVectorIndexOp]] = []
    for op in modify.ops:
        if isinstance(op, ops.CreateIndexOp) and str(op.index_name) in by_name:
            new = metadata_index_op(by_name[str(op.index_name)], modify.schema)
            if new is not None and new.column_name not in retyped:
                creates.append((op, new))
    drops: list[tuple[ops.DropIndexOp, CreateVectorIndexOp]] = []
    for op in modify.ops:
        if not isinstance(op, ops.DropIndexOp) or op.index_name is None:
            continue
        if str(op.index_name) in by_name:
            continue  # a same-name rebuild: the new one cannot be built first
        state = index_state(connection, str(op.index_name), modify.schema)
        if state is None or not state[1]:
            continue
        old = stored_index_op(
            str(op.index_name),
            modify.table_name,
            index_signature_by_oid(connection, state[0]),
            modify.schema,
        )
        if old is not None and old.column_name not in retyped:
            drops.append((op, old))
    for create, new in creates:
        pair = next(
            (
                item
                for item in drops
                if item[1].column_name == new.column_name and item[1].precision != new.precision
            ),
            None,
        )
        if pair is None:
            continue
        drops.remove(pair)
        drop, old = pair
        position = min(modify.ops.index(create), modify.ops.index(drop))
        modify.ops.remove(create)
        modify.ops.remove(drop)
        replacement = DropVectorIndexOp(
            old.index_name, schema=modify.schema, concurrently=True, _reverse=old
        )
        modify.ops[position:position] = [new, replacement]
        log.info(
            "Detected vector index %r replaced by %r: building the new one concurrently first",
            old.index_name,
            new.index_name,
        )


@comparator(
    "vecorm.precision", "schema", priority=DispatchPriority.LAST, subgroup="vecorm_precision"
)
def build_before_drop(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, schemas: set[str | None]
) -> PriorityDispatchResult:
    """Rewrite a replaced vector index into build-concurrently-then-drop (module docstring)."""
    connection = autogen_context.connection
    if connection is None or connection.dialect.name != "postgresql":
        return PriorityDispatchResult.CONTINUE
    tables = _metadata_indexes(autogen_context)
    for modify in upgrade_ops.ops:
        if not isinstance(modify, ops.ModifyTableOps):
            continue
        metadata_table = tables.get((modify.schema, modify.table_name))
        if metadata_table is not None:
            _rewrite(connection, modify, metadata_table)
    return PriorityDispatchResult.CONTINUE


__all__ = ["build_before_drop", "metadata_index_op", "stored_index_op"]
