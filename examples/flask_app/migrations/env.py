"""Alembic environment with vecorm's autogenerate support (made by ``vecorm init``)."""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import URL, Connection, make_url

import vecorm.alembic  # noqa: F401  registers vecorm's comparators, renderers and op.* operations
from vecorm.alembic import metadata_from_config

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Your models' MetaData: `target_metadata = myapp.models:Base` in alembic.ini, or replace this
# line with `from myapp.models import Base` and `target_metadata = Base.metadata`.
target_metadata = metadata_from_config(config)


def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    """Compare the default schema plus the schemas your models name, nothing else."""
    if type_ == "schema":
        return name is None or name in {table.schema for table in _metadata_tables()}
    return True


def _metadata_tables() -> list[Any]:
    if target_metadata is None:
        return []
    return list(target_metadata.tables.values())


def database_url() -> URL:
    """``sqlalchemy.url`` from alembic.ini, else ``$DATABASE_URL``; psycopg 3 by default."""
    value = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not value:
        raise SystemExit("Set sqlalchemy.url in alembic.ini or the DATABASE_URL variable")
    url = make_url(value)
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade --sql``) instead of running it."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    # One transaction per revision, so a revision that builds an index CONCURRENTLY (outside
    # the transaction) commits only its own work.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_schemas=True,
        include_name=include_name,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            do_run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
