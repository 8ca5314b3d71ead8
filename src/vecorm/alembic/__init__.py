"""Alembic support: autogenerate that understands pgvector, and operations for migrations.

One line in an existing project's ``env.py`` is enough; Alembic (1.18+) copies the module-level
``comparators`` / ``renderers`` registries that this package fills into every autogenerate run::

    # migrations/env.py
    import vecorm.alembic  # noqa: F401

    $ alembic revision --autogenerate -m "searchable documents"

The revision then creates the ``vector`` extension first if it is missing, imports
``vecorm.schema.types`` for the vector column, renders HNSW / IVFFlat / GIN indexes with their
method,
operator class and parameters, rebuilds an index whose parameters changed, changes a generated
tsvector column's expression with ``op.alter_column_expression`` and, run again against an
up-to-date database, is empty. ``vecorm init DIR`` lays down a ready environment.

The same import registers the comparators as named Alembic plugins (``vecorm.autogenerate``,
``vecorm.partitions``, ``vecorm.bm25``, ``vecorm.precision``), so that an env.py passing
``autogenerate_plugins=["alembic.autogenerate.*", "~vecorm.bm25"]`` leaves BM25 out; each
comparator still runs once per run (see :mod:`vecorm.alembic.plugin`).

Operations for hand-written migrations (``op.create_vector_extension()``,
``op.create_vector_index(..., concurrently=True)``, ``op.backfill_embeddings("pkg.mod:Model")``
...) are described in :mod:`vecorm.alembic.operations`; ``op.grant_search_access(...)`` in
:mod:`vecorm.alembic.grants`. Adopting an existing vector column
and index (renamed with ``op.rename_index``, or reported when it differs, never rebuilt) is
described in docs/adopting.md.
"""

from __future__ import annotations

from vecorm.alembic import bm25 as bm25  # BM25 trigger functions: compare + render
from vecorm.alembic import citus, comparators, partitions, precision, renderers
from vecorm.alembic.citus import (
    CreateDistributedTableOp,
    CreateReferenceTableOp,
    UndistributeTableOp,
)
from vecorm.alembic.comparators import IndexMismatchOp, IndexMismatchWarning, IVFFlatCreateIndexOp
from vecorm.alembic.environment import metadata_from_config
from vecorm.alembic.grants import GrantSearchAccessOp, RevokeSearchAccessOp
from vecorm.alembic.operations import (
    AlterColumnExpressionOp,
    AlterVectorDimensionsOp,
    BackfillEmbeddingsOp,
    CreateVectorExtensionOp,
    CreateVectorIndexOp,
    DropVectorExtensionOp,
    DropVectorIndexOp,
    EmptyIVFFlatWarning,
    RenameIndexOp,
    VectorDimensionsError,
)
from vecorm.alembic.partitions import CreatePartitionOp, DropPartitionOp
from vecorm.alembic.plugin import PLUGIN_NAMES, setup_plugins
from vecorm.objects import import_model, import_object

setup_plugins()

__all__ = [
    "PLUGIN_NAMES",
    "AlterColumnExpressionOp",
    "AlterVectorDimensionsOp",
    "BackfillEmbeddingsOp",
    "CreateDistributedTableOp",
    "CreatePartitionOp",
    "CreateReferenceTableOp",
    "CreateVectorExtensionOp",
    "CreateVectorIndexOp",
    "DropPartitionOp",
    "DropVectorExtensionOp",
    "DropVectorIndexOp",
    "EmptyIVFFlatWarning",
    "GrantSearchAccessOp",
    "IVFFlatCreateIndexOp",
    "IndexMismatchOp",
    "IndexMismatchWarning",
    "RenameIndexOp",
    "RevokeSearchAccessOp",
    "UndistributeTableOp",
    "VectorDimensionsError",
    "citus",
    "comparators",
    "import_model",
    "import_object",
    "metadata_from_config",
    "partitions",
    "precision",
    "renderers",
]
