"""``op.grant_search_access``: the grants an application role needs on a searchable table.

Grants are not compared by autogenerate (a database's roles are the deployment's, not the
models'): write the operation by hand, after the revision that creates the table::

    def upgrade() -> None:
        op.grant_search_access("documents", "app")                  # search + write
        op.grant_search_access("documents", "reporting", write=False)

    def downgrade() -> None:
        op.revoke_search_access("documents", "reporting", write=False)
        op.revoke_search_access("documents", "app")

The BM25 side tables and sequences are included when the table keeps BM25 statistics (read
from the catalog when the migration runs); see :mod:`vecorm.search.grants` and docs/security.md.
"""

from __future__ import annotations

from alembic.operations import MigrateOperation, Operations
from sqlalchemy import MetaData, Table

from vecorm.schema.pgcatalog import relation_exists
from vecorm.search.grants import revoke_statements, table_grants


@Operations.register_operation("grant_search_access")
class GrantSearchAccessOp(MigrateOperation):
    """``GRANT`` ``role`` search (and ``write``) access to ``table_name`` and its statistics."""

    def __init__(
        self,
        table_name: str,
        role: str,
        *,
        schema: str | None = None,
        write: bool = True,
        truncate: bool = False,
        revoke: bool = False,
    ) -> None:
        self.table_name = table_name
        self.role = role
        self.schema = schema
        self.write = write
        self.truncate = truncate
        self.revoke = revoke

    @classmethod
    def grant_search_access(
        cls,
        operations: Operations,
        table_name: str,
        role: str,
        *,
        schema: str | None = None,
        write: bool = True,
        truncate: bool = False,
    ) -> None:
        """Grant ``role`` what it needs to search (and ``write``) ``table_name``."""
        operations.invoke(cls(table_name, role, schema=schema, write=write, truncate=truncate))

    def reverse(self) -> GrantSearchAccessOp:
        return GrantSearchAccessOp(
            self.table_name,
            self.role,
            schema=self.schema,
            write=self.write,
            truncate=self.truncate,
            revoke=not self.revoke,
        )


@Operations.register_operation("revoke_search_access")
class RevokeSearchAccessOp(GrantSearchAccessOp):
    """``REVOKE`` what :class:`GrantSearchAccessOp` granted."""

    @classmethod
    def revoke_search_access(
        cls,
        operations: Operations,
        table_name: str,
        role: str,
        *,
        schema: str | None = None,
        write: bool = True,
        truncate: bool = False,
    ) -> None:
        """Revoke from ``role`` what ``op.grant_search_access`` granted on ``table_name``."""
        operations.invoke(
            cls(table_name, role, schema=schema, write=write, truncate=truncate, revoke=True)
        )


@Operations.implementation_for(GrantSearchAccessOp)
@Operations.implementation_for(RevokeSearchAccessOp)
def _grant(operations: Operations, operation: GrantSearchAccessOp) -> None:
    connection = operations.get_bind()
    table = Table(operation.table_name, MetaData(), schema=operation.schema)
    postings = f"{operation.table_name}_bm25_postings"
    qualified = f"{operation.schema}.{postings}" if operation.schema else postings
    has_bm25 = relation_exists(connection, qualified)
    statements = table_grants(
        connection,
        table,
        operation.role,
        bm25_statistics=has_bm25,
        write=operation.write,
        truncate=operation.truncate,
    )
    if operation.revoke:
        statements = revoke_statements(statements)
    for statement in statements:
        connection.exec_driver_sql(statement)
