"""How vecorm's operations appear in a generated revision (Alembic's ``renderers`` registry).

Every rendered operation adds ``import vecorm.alembic`` to the revision, so the file runs as
written even under an env.py that does not import vecorm::

    op.create_vector_extension()
    op.alter_column_expression('documents', 'search_vector', "to_tsvector(...)",
                               existing_expression="to_tsvector(...)")
"""

from __future__ import annotations

import textwrap

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops

from vecorm.alembic.comparators import ImportsOp, IndexMismatchOp, IVFFlatCreateIndexOp
from vecorm.alembic.operations import (
    AlterColumnExpressionOp,
    AlterVectorDimensionsOp,
    CreateVectorExtensionOp,
    CreateVectorIndexOp,
    DropVectorExtensionOp,
    DropVectorIndexOp,
    RenameIndexOp,
)

#: The import line that registers ``op.create_vector_extension`` and friends.
OPERATIONS_IMPORT = (
    "import vecorm.alembic  # noqa: F401  (registers op.create_vector_extension & co.)"
)

IVFFLAT_NOTE = (
    "# vecorm: IVFFlat learns its lists from the rows present when it is built; on an empty "
    "table,\n# backfill embeddings first and build the index in a later revision "
    "(see vecorm docs/alembic.md)."
)


def _needs_operations(autogen_context: AutogenContext) -> None:
    if autogen_context.imports is not None:
        autogen_context.imports.add(OPERATIONS_IMPORT)


def _schema_kw(schema: str | None) -> str:
    return f"schema={schema!r}" if schema else ""


@renderers.dispatch_for(CreateVectorExtensionOp)
def _render_create_extension(
    autogen_context: AutogenContext, operation: CreateVectorExtensionOp
) -> str:
    _needs_operations(autogen_context)
    return f"op.create_vector_extension({_schema_kw(operation.schema)})"


@renderers.dispatch_for(DropVectorExtensionOp)
def _render_drop_extension(
    autogen_context: AutogenContext, operation: DropVectorExtensionOp
) -> str:
    _needs_operations(autogen_context)
    return f"op.drop_vector_extension({_schema_kw(operation.schema)})"


@renderers.dispatch_for(AlterColumnExpressionOp)
def _render_alter_expression(
    autogen_context: AutogenContext, operation: AlterColumnExpressionOp
) -> str:
    _needs_operations(autogen_context)
    args = [
        repr(operation.table_name),
        repr(operation.column_name),
        repr(operation.expression),
        f"existing_expression={operation.existing_expression!r}",
    ]
    if operation.schema:
        args.append(_schema_kw(operation.schema))
    if operation.strategy != "auto":
        args.append(f"strategy={operation.strategy!r}")
    if not operation.rebuild_bm25:
        args.append("rebuild_bm25=False")
    return f"op.alter_column_expression({', '.join(args)})"


@renderers.dispatch_for(CreateVectorIndexOp)
def _render_create_vector_index(
    autogen_context: AutogenContext, operation: CreateVectorIndexOp
) -> str:
    _needs_operations(autogen_context)
    args = [
        repr(operation.index_name),
        repr(operation.table_name),
        repr(operation.column_name),
        f"method={operation.method!r}",
        f"opclass={operation.opclass!r}",
        f"with_={operation.with_!r}",
        f"concurrently={operation.concurrently!r}",
    ]
    if operation.precision is not None:
        args.append(f"precision={operation.precision!r}")
        args.append(f"dimensions={operation.dimensions!r}")
    if operation.maintenance_work_mem is not None:
        args.append(f"maintenance_work_mem={operation.maintenance_work_mem!r}")
    if operation.parallel_workers is not None:
        args.append(f"parallel_workers={operation.parallel_workers!r}")
    if operation.schema:
        args.append(_schema_kw(operation.schema))
    return f"op.create_vector_index({', '.join(args)})"


@renderers.dispatch_for(DropVectorIndexOp)
def _render_drop_vector_index(autogen_context: AutogenContext, operation: DropVectorIndexOp) -> str:
    _needs_operations(autogen_context)
    args = [repr(operation.index_name), f"concurrently={operation.concurrently!r}"]
    if operation.schema:
        args.append(_schema_kw(operation.schema))
    return f"op.drop_vector_index({', '.join(args)})"


@renderers.dispatch_for(IVFFlatCreateIndexOp)
def _render_ivfflat_index(
    autogen_context: AutogenContext, operation: IVFFlatCreateIndexOp
) -> list[str]:
    standard = renderers.dispatch(ops.CreateIndexOp)(autogen_context, operation)
    return [*IVFFLAT_NOTE.split("\n"), *([standard] if isinstance(standard, str) else standard)]


@renderers.dispatch_for(ImportsOp)
def _render_imports(autogen_context: AutogenContext, operation: ImportsOp) -> list[str]:
    if autogen_context.imports is not None:
        autogen_context.imports.update(operation.imports)
    return []


@renderers.dispatch_for(RenameIndexOp)
def _render_rename_index(autogen_context: AutogenContext, operation: RenameIndexOp) -> str:
    _needs_operations(autogen_context)
    args = [repr(operation.old_name), repr(operation.new_name)]
    if operation.table_name:
        args.append(f"table_name={operation.table_name!r}")
    if operation.schema:
        args.append(_schema_kw(operation.schema))
    return f"op.rename_index({', '.join(args)})"


@renderers.dispatch_for(IndexMismatchOp)
def _render_index_mismatch(
    autogen_context: AutogenContext, operation: IndexMismatchOp
) -> list[str]:
    """Comments only (and ``pass``, so a revision holding nothing else still compiles)."""
    rebuild: list[str] = []
    for op in operation.rebuild:
        rendered = renderers.dispatch(type(op))(autogen_context, op)
        for line in [rendered] if isinstance(rendered, str) else rendered:
            rebuild.extend(f"# {part}" for part in line.splitlines())
    advice = (
        "# If you uncommented the rebuild in upgrade(), restore the stored index with:"
        if operation.downgrade
        else "# Change the model's SearchConfig to match it, or rebuild it by uncommenting:"
    )
    return [
        f"# vecorm: index {operation.index_name!r} on {operation.table_name!r} differs from the "
        "model; it is kept as it is.",
        f"#   found:    {operation.found.describe()}",
        f"#   expected: {operation.expected.describe()}",
        advice,
        *rebuild,
        "pass",
    ]


@renderers.dispatch_for(AlterVectorDimensionsOp)
def _render_alter_vector_dimensions(
    autogen_context: AutogenContext, operation: AlterVectorDimensionsOp
) -> list[str]:
    """The operation, after comments that say why it may refuse to run and what to do."""
    _needs_operations(autogen_context)
    args = [
        repr(operation.table_name),
        repr(operation.column_name),
        repr(operation.dimensions),
        f"existing_dimensions={operation.existing_dimensions!r}",
    ]
    if operation.type_name != "vector" or operation.existing_type_name != "vector":
        args.append(f"type_name={operation.type_name!r}")
        args.append(f"existing_type_name={operation.existing_type_name!r}")
    if operation.schema:
        args.append(_schema_kw(operation.schema))
    args.append(f"discard_vectors={operation.discard_vectors!r}")
    note = textwrap.wrap(operation.note, width=94)
    return [*(f"# {line}" for line in note), f"op.alter_vector_dimensions({', '.join(args)})"]
