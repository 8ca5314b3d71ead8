"""Changing the embedding model, or its dimensions, without a window where search is broken.

A model of the same width can be swapped in place: rows record the model that embedded them,
so with the new provider every row is stale and :func:`vecorm.embedding.backfill.backfill`
re-embeds it
(while it runs, old and new vectors share the column). When the width changes, or search must
stay consistent throughout, :class:`ModelChange` embeds into **shadow columns** next to the live
ones, so queries keep using the old vectors until the new ones are complete, then switches in
one short transaction::

    change = ModelChange(Document, OpenAIEmbedder(model="text-embedding-3-large", dimensions=3072),
                         storage="halfvec")
    change.start(engine)            # ALTER TABLE ... ADD COLUMN embedding_next halfvec(3072), ...
    with Session(engine) as session:
        change.backfill(session)    # resumable, SKIP LOCKED batches, safe next to the app
    change.create_index(engine)     # CREATE INDEX CONCURRENTLY on the shadow column
    with Session(engine) as session:
        change.finish(session)      # lock, embed rows edited meanwhile, swap columns and index
    # then deploy the app with SearchConfig(dimensions=3072, storage="halfvec") and the new
    # embedder; change.abort(engine) instead drops the shadow columns

While the change runs the application keeps writing the live columns through its flush hook;
rows it inserts or edits are stale in the shadow (their shadow digest no longer matches), and the
next :meth:`ModelChange.backfill` or the catch-up inside :meth:`ModelChange.finish` embeds them.
The shadow columns are unknown to the model, so exclude them from Alembic autogenerate while a
change is in progress.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    any_,
    column,
    literal_column,
    select,
    table,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql.compiler import IdentifierPreparer
from sqlalchemy.types import TypeEngine

from vecorm.embedding.backfill import (
    BackfillResult,
    EmbeddingColumns,
    columns_of,
    count_stale,
    embed_stale_in_transaction,
    run_backfill,
)
from vecorm.embedding.embedders.base import Embedder
from vecorm.errors import ConfigurationError
from vecorm.progress import ProgressChoice
from vecorm.schema.concurrently import DEFAULT_WAIT_TIMEOUT, WaitTimeout, run_concurrently
from vecorm.schema.config import SearchConfig, Storage
from vecorm.schema.embeddings import EmbeddingRef, embedding_slot
from vecorm.schema.indexes import (
    MAX_IDENTIFIER_LENGTH,
    index_name,
    indexed_expression,
    vector_index_name,
)
from vecorm.schema.pgcatalog import catalog_operator, pg, qualified_table, text_value
from vecorm.schema.types import HalfVec, Vector

__all__ = ["ChangeStatus", "ModelChange"]

logger = logging.getLogger("vecorm.embedding.reembed")


@dataclass(frozen=True)
class ChangeStatus:
    """Progress of a :class:`ModelChange`: rows with text, and how many still need a vector."""

    rows: int
    remaining: int

    @property
    def complete(self) -> bool:
        return self.remaining == 0


class ModelChange:
    """Re-embed ``model`` with ``embedder`` into shadow columns, then switch to them.

    ``storage`` defaults to the model's (``"vector"``/``"halfvec"``); the width is
    ``embedder.dimensions``; the index keeps the model's settings. ``embedding`` names
    another of the model's embeddings (``SearchConfig(embeddings=...)``) to change instead of
    ``embedding``. Example::

        change = ModelChange(Document, HashingEmbedder(384))
        change = ModelChange(Document, HashingEmbedder(64), embedding="title_embedding")
    """

    def __init__(
        self,
        model: type[Any],
        embedder: Embedder,
        *,
        storage: Storage | None = None,
        suffix: str = "next",
        embedding: EmbeddingRef = None,
    ) -> None:
        self.model = model
        self.embedder = embedder
        self.old_config: SearchConfig = embedding_slot(model, embedding).config
        if self.old_config.related:
            raise ConfigurationError(
                f"ModelChange({model.__name__}): a model whose text includes related rows "
                "(SearchConfig(related=...)) cannot change models through shadow columns yet; "
                "deploy the new embedder and run vecorm.backfill() instead"
            )
        dimensions = getattr(embedder, "dimensions", None)
        if not isinstance(dimensions, int):
            raise ConfigurationError(
                f"embedder {embedder!r} must state its dimensions for a model change"
            )
        self.config = dataclasses.replace(
            self.old_config,
            dimensions=dimensions,
            storage=storage or self.old_config.storage,
            embedder=None,
        )
        self.config.validate(f"ModelChange({model.__name__})")
        live = columns_of(model, embedding)
        self._live = live
        self._table: Table = live.embedding.table
        names = {
            "embedding": f"{live.embedding.name}_{suffix}",
            "digest": f"{live.digest.name}_{suffix}",
            "model": f"{live.model.name}_{suffix}",
        }
        for name in names.values():
            if len(name) > MAX_IDENTIFIER_LENGTH or name in self._table.c:
                raise ConfigurationError(
                    f"shadow column {name!r} is too long or already a column of "
                    f"{self._table.name}; pass another suffix="
                )
        self.shadow_names = names
        vector_type: TypeEngine[Any] = (
            Vector(dimensions, as_numpy=True)
            if self.config.storage == "vector"
            else HalfVec(dimensions, as_numpy=True)
        )
        self._types: dict[str, TypeEngine[Any]] = {
            "embedding": vector_type,
            "digest": LargeBinary(),
            "model": String(200),
        }
        # A Table, not a table() clause: SQLAlchemy translates its schema as the live table's
        # (schema_translate_map), so the shadow columns are read in the same tenant's table.
        shadow = Table(
            self._table.name,
            MetaData(),
            *(Column(key.name, key.type) for key in live.keys),
            *(Column(field.name, field.type) for field in live.fields),
            *(Column(names[role], self._types[role]) for role in ("embedding", "digest", "model")),
            schema=self._table.schema,
        )
        self.shadow = EmbeddingColumns(
            owner=live.owner,
            table=shadow,
            keys=tuple(shadow.c[key.name] for key in live.keys),
            field_names=live.field_names,
            fields=tuple(shadow.c[field.name] for field in live.fields),
            embedding=shadow.c[names["embedding"]],
            digest=shadow.c[names["digest"]],
            model=shadow.c[names["model"]],
            dimensions=dimensions,
        )

    def __repr__(self) -> str:
        return (
            f"ModelChange({self._live.owner}, {self.embedder.model_name!r}, "
            f"{self.config.storage}({self.config.dimensions}))"
        )

    # --- steps ------------------------------------------------------------------------------

    def start(self, bind: Engine | Connection) -> None:
        """Add the shadow columns (nullable, so instant); running it again changes nothing."""
        with _transaction(bind) as conn:
            preparer = conn.dialect.identifier_preparer
            additions = ", ".join(
                f"ADD COLUMN IF NOT EXISTS {preparer.quote(self.shadow_names[role])} "
                f"{self._types[role].compile(dialect=conn.dialect)}"
                for role in ("embedding", "digest", "model")
            )
            conn.exec_driver_sql(f"ALTER TABLE {qualified_table(conn, self._table)} {additions}")

    def backfill(
        self, session: Session, *, batch_size: int | None = None, progress: ProgressChoice = False
    ) -> BackfillResult:
        """Embed the rows whose shadow vector is missing or stale; see
        :func:`vecorm.embedding.backfill`."""
        return run_backfill(
            session,
            self.shadow,
            self.embedder,
            batch_size=batch_size,
            progress=progress,
            description=f"re-embed {self.model.__name__}",
        )

    def status(self, session: Session) -> ChangeStatus:
        """How many rows have text, and how many of them lack a current shadow vector.

        A transaction that ``status`` begins itself is ended (rolled back: it only read), so
        ``change.status(Session(engine))`` leaves no session idle in transaction for
        :meth:`create_index` to wait for; a transaction already open stays open.
        """
        began = not session.in_transaction()
        try:
            rows = session.execute(
                select(pg.count(literal_column("*")))
                .select_from(self.shadow.table)
                .where(self.shadow.text != text_value(""))
            ).scalar_one()
            remaining = count_stale(session, self.shadow, self.embedder.model_name)
        finally:
            if began:
                session.rollback()
        return ChangeStatus(int(rows), remaining)

    def create_index(
        self, bind: Engine, *, wait_timeout: WaitTimeout = DEFAULT_WAIT_TIMEOUT
    ) -> str | None:
        """Build the shadow column's vector index with ``CREATE INDEX CONCURRENTLY``.

        Writes go on meanwhile. An index left invalid by an interrupted build is rebuilt.
        Returns the index name, or ``None`` when the model has no vector index.

        A concurrent build waits for every transaction older than it, so a session left idle
        in transaction would stall it for ever: each wait is bounded by ``wait_timeout``
        (seconds, or an interval such as ``"5min"``; ``None``: no limit), after which
        :class:`~vecorm.errors.IndexBuildBlocked` names those sessions (pid, state,
        application_name, xact_start) and no INVALID index is left behind.
        """
        index = self._shadow_index(concurrently=True)
        if index is None:
            return None
        with bind.connect() as conn:
            autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
            valid = self._index_state(autocommit, index.name)  # type: ignore[arg-type]
            qualified = self._qualified(autocommit, str(index.name))
            if valid is False:
                run_concurrently(
                    autocommit,
                    lambda: autocommit.exec_driver_sql(
                        f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}"
                    ),
                    index=qualified,
                    wait_timeout=wait_timeout,
                    what=f"DROP INDEX CONCURRENTLY {qualified} (left INVALID by a failed build)",
                )
            if valid is not True:
                run_concurrently(
                    autocommit,
                    lambda: autocommit.execute(CreateIndex(index, if_not_exists=True)),
                    index=qualified,
                    wait_timeout=wait_timeout,
                    what=f"ModelChange({self.model.__name__}).create_index() building {qualified}",
                )
        return str(index.name)

    def finish(
        self,
        session: Session,
        *,
        lock_timeout: str = "10s",
        batch_size: int | None = None,
        keep_previous: bool = False,
    ) -> BackfillResult:
        """Switch to the new vectors in one transaction.

        Locks the table against writes (readers carry on), embeds the rows edited since the last
        :meth:`backfill`, then renames the shadow columns and index to the live names and drops
        the old ones (or keeps them as ``<name>_previous`` with ``keep_previous=True``).
        ``lock_timeout`` bounds the wait for the lock. Returns what the catch-up embedded.
        """
        if session.in_transaction():
            session.commit()
        try:
            conn = session.connection()
            preparer = conn.dialect.identifier_preparer
            target = qualified_table(conn, self._table)
            conn.execute(select(pg.set_config("lock_timeout", lock_timeout, True)))
            conn.exec_driver_sql(f"LOCK TABLE {target} IN SHARE ROW EXCLUSIVE MODE")
            self._require_shadow(conn)
            caught_up = embed_stale_in_transaction(
                session,
                self.shadow,
                self.embedder,
                batch_size=batch_size or self.embedder.max_batch_size,
            )
            self._swap(conn, preparer, target, keep_previous)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return caught_up

    def abort(self, bind: Engine | Connection) -> None:
        """Drop the shadow columns and their index; the live columns are untouched."""
        with _transaction(bind) as conn:
            preparer = conn.dialect.identifier_preparer
            index = self._shadow_index(concurrently=False)
            if index is not None:
                qualified = self._qualified(conn, str(index.name))
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {qualified}")
            drops = ", ".join(
                f"DROP COLUMN IF EXISTS {preparer.quote(name)}"
                for name in self.shadow_names.values()
            )
            conn.exec_driver_sql(f"ALTER TABLE {qualified_table(conn, self._table)} {drops}")

    # --- helpers ----------------------------------------------------------------------------

    def _shadow_index(self, *, concurrently: bool) -> Index | None:
        if self.config.index is None:
            return None
        name = self.shadow_names["embedding"]
        scratch = Table(
            self._table.name,
            MetaData(),
            Column(name, self._types["embedding"]),
            schema=self._table.schema,
        )
        key: Any = scratch.c[name]
        ops_key = name
        if self.config.index_is_expression:  # e.g. a halfvec index on a 3072-d vector column
            ops_key = f"{name}_{self.config.index_precision}"
            key = indexed_expression(key, self.config).label(ops_key)
        return Index(
            index_name(str(self._table.name), name, self.config.index.method),
            key,
            postgresql_using=self.config.index.method,
            postgresql_with=self.config.index.with_params,
            postgresql_ops={ops_key: self.config.opclass},
            postgresql_concurrently=concurrently,
        )

    def _qualified(self, conn: Connection, name: str) -> str:
        return qualified_table(conn, self._table, name)

    def _index_state(self, conn: Connection, name: str) -> bool | None:
        """``True`` valid, ``False`` left invalid by a failed build, ``None`` absent."""
        qualified = self._qualified(conn, name)
        valid = conn.execute(
            select(pg.bool_and(column("indisvalid")))
            .select_from(
                table("pg_index", column("indexrelid"), column("indisvalid"), schema="pg_catalog")
            )
            .where(column("indexrelid").op(catalog_operator("="))(pg.to_regclass(qualified)))
        ).scalar_one_or_none()
        return None if valid is None else bool(valid)

    def _require_shadow(self, conn: Connection) -> None:
        present = conn.execute(
            select(pg.count(literal_column("*")))
            .select_from(
                table("pg_attribute", column("attrelid"), column("attname"), schema="pg_catalog")
            )
            .where(
                column("attrelid").op(catalog_operator("="))(
                    pg.to_regclass(self._qualified_table(conn))
                ),
                column("attname").op(catalog_operator("="))(
                    any_(postgresql.array(list(self.shadow_names.values()), type_=Text))
                ),
            )
        ).scalar_one()
        if present != len(self.shadow_names):
            raise ConfigurationError(
                f"{self._table.name} has no shadow columns {sorted(self.shadow_names.values())}; "
                "run ModelChange.start() and backfill() before finish()"
            )

    def _qualified_table(self, conn: Connection) -> str:
        return qualified_table(conn, self._table)

    def _swap(
        self, conn: Connection, preparer: IdentifierPreparer, target: str, keep_previous: bool
    ) -> None:
        live_index = vector_index_name(
            str(self._table.name), self._live.embedding.name, self.old_config
        )
        if live_index is not None:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {self._qualified(conn, live_index)}")
        shadow_index = self._shadow_index(concurrently=False)
        if shadow_index is not None:
            state = self._index_state(conn, str(shadow_index.name))
            if state is not True:
                logger.warning(
                    "building %s inside the switch (call create_index() first to build it "
                    "without holding the lock)",
                    shadow_index.name,
                )
                if state is False:
                    qualified = self._qualified(conn, str(shadow_index.name))
                    conn.exec_driver_sql(f"DROP INDEX {qualified}")
                conn.execute(CreateIndex(shadow_index))
        roles = (
            (self._live.embedding.name, self.shadow_names["embedding"]),
            (self._live.digest.name, self.shadow_names["digest"]),
            (self._live.model.name, self.shadow_names["model"]),
        )
        for live_name, shadow_name in roles:
            previous = f"{live_name}_previous"[:MAX_IDENTIFIER_LENGTH]
            if keep_previous:
                conn.exec_driver_sql(
                    f"ALTER TABLE {target} RENAME COLUMN {preparer.quote(live_name)} "
                    f"TO {preparer.quote(previous)}"
                )
            else:
                conn.exec_driver_sql(
                    f"ALTER TABLE {target} DROP COLUMN {preparer.quote(live_name)}"
                )
            conn.exec_driver_sql(
                f"ALTER TABLE {target} RENAME COLUMN {preparer.quote(shadow_name)} "
                f"TO {preparer.quote(live_name)}"
            )
        final = vector_index_name(str(self._table.name), self._live.embedding.name, self.config)
        if shadow_index is not None and final is not None:
            conn.exec_driver_sql(
                f"ALTER INDEX {self._qualified(conn, str(shadow_index.name))} "
                f"RENAME TO {preparer.quote(final)}"
            )


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """The given Connection as is, or a transaction begun (and committed) on an Engine."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.begin() as conn:
        yield conn
