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

from vecorm.alembic.comparators import (
    ConcurrentCreateIndexOp,
    ImportsOp,
    IndexMismatchOp,
    IVFFlatCreateIndexOp,
    RewritingAddColumnOp,
)
from vecorm.alembic.operations import (
    AddSearchVectorOp,
    AlterColumnExpressionOp,
    AlterVectorDimensionsOp,
    CreateVectorExtensionOp,
    CreateVectorIndexOp,
    DropSearchVectorOp,
    DropVectorExtensionOp,
    DropVectorIndexOp,
    FillSearchVectorOp,
    NothingToUndoOp,
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


def _search_vector_args(
    table_name: str,
    column_name: str,
    fields: list[str],
    language: str,
    weights: dict[str, str] | None,
    schema: str | None,
) -> list[str]:
    args = [repr(table_name), repr(column_name), repr(fields), f"language={language!r}"]
    if weights:
        args.append(f"weights={weights!r}")
    if schema:
        args.append(_schema_kw(schema))
    return args


@renderers.dispatch_for(AddSearchVectorOp)
def _render_add_search_vector(autogen_context: AutogenContext, operation: AddSearchVectorOp) -> str:
    _needs_operations(autogen_context)
    args = _search_vector_args(
        operation.table_name,
        operation.column_name,
        operation.fields,
        operation.language,
        operation.weights,
        operation.schema,
    )
    if not operation.add_column:
        return f"op.add_search_vector({', '.join(args)}, add_column=False)"
    return (
        "# vecorm: a plain tsvector column kept by a trigger: no table rewrite; the lock is "
        "taken\n# with a short lock_timeout, retried, and held only until the fill below "
        "commits this transaction.\n"
        f"op.add_search_vector({', '.join(args)})"
    )


@renderers.dispatch_for(DropSearchVectorOp)
def _render_drop_search_vector(
    autogen_context: AutogenContext, operation: DropSearchVectorOp
) -> str:
    _needs_operations(autogen_context)
    added = operation.added
    args = _search_vector_args(
        added.table_name,
        added.column_name,
        added.fields,
        added.language,
        added.weights,
        added.schema,
    )
    if not operation.drop_column:
        args.append("drop_column=False")
    return f"op.drop_search_vector({', '.join(args)})"


@renderers.dispatch_for(FillSearchVectorOp)
def _render_fill_search_vector(
    autogen_context: AutogenContext, operation: FillSearchVectorOp
) -> str:
    _needs_operations(autogen_context)
    args = _search_vector_args(
        operation.table_name,
        operation.column_name,
        operation.fields,
        operation.language,
        operation.weights,
        operation.schema,
    )
    if operation.bm25:
        args.append("bm25=True")
    args.append(f"batch_size={operation.batch_size!r}")
    args.append(f"jobs={operation.jobs!r}")  # shown, so that a bigger server raises it
    return (
        "# vecorm: commits the statements above, then fills the existing rows in batches "
        "of their own\n# (progress on the alembic.vecorm logger); rows written meanwhile "
        "are filled by the trigger.\n"
        f"op.fill_search_vector({', '.join(args)})"
    )


@renderers.dispatch_for(NothingToUndoOp)
def _render_nothing_to_undo(autogen_context: AutogenContext, operation: NothingToUndoOp) -> str:
    return f"# vecorm: {operation.note}"


@renderers.dispatch_for(ConcurrentCreateIndexOp)
def _render_concurrent_index(
    autogen_context: AutogenContext, operation: ConcurrentCreateIndexOp
) -> str:
    standard = renderers.dispatch(ops.CreateIndexOp)(autogen_context, operation)
    lines = [standard] if isinstance(standard, str) else list(standard)
    body = textwrap.indent("\n".join(lines), "    ")
    return f"with op.get_context().autocommit_block():\n{body}"


@renderers.dispatch_for(RewritingAddColumnOp)
def _render_rewriting_add_column(
    autogen_context: AutogenContext, operation: RewritingAddColumnOp
) -> list[str]:
    standard = renderers.dispatch(ops.AddColumnOp)(autogen_context, operation)
    note = [
        f"# vecorm: WARNING: {operation.table_name!r} has ~{operation.rows} rows. Adding a "
        "GENERATED ... STORED column",
        "# rewrites the whole table (and rebuilds its indexes) under an ACCESS EXCLUSIVE "
        "lock: every read",
        '# and write waits until it is done. SearchConfig(search_vector="trigger") adds '
        "the column online",
        "# instead (no rewrite, batched fill, concurrent index builds): see vecorm "
        "docs/adopting.md.",
    ]
    return [*note, *([standard] if isinstance(standard, str) else standard)]
