"""create_all on a database without pgvector: the extension is created when the role may, and
otherwise a clear vecorm error says what to run (not ``type "vector" does not exist``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import URL, String, create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm


class Base(DeclarativeBase):
    pass


class Memo(vecorm.Searchable, Base):
    __tablename__ = "memos"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3, index=None)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


@pytest.fixture
def bare_url(vecorm_engine: Engine) -> Iterator[URL]:
    """A database without the vector extension (from template0)."""
    name = f"vecorm_bare_{uuid.uuid4().hex[:8]}"
    admin = vecorm_engine.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    try:
        yield vecorm_engine.url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_create_all_creates_the_missing_extension(bare_url: URL) -> None:
    engine = create_engine(bare_url)
    try:
        Base.metadata.create_all(engine)
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT extname FROM pg_extension WHERE extname = 'vector'"))
            assert conn.scalar(text("SELECT to_regclass('memos')")) is not None
    finally:
        engine.dispose()


def test_a_role_that_cannot_create_it_gets_a_clear_error(bare_url: URL) -> None:
    role = f"vecorm_owner_{uuid.uuid4().hex[:8]}"
    engine = create_engine(bare_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE ROLE "{role}"'))
            conn.execute(text(f'GRANT CREATE, USAGE ON SCHEMA public TO "{role}"'))
            conn.execute(text(f'REVOKE CREATE ON DATABASE "{bare_url.database}" FROM PUBLIC'))
        with engine.begin() as conn:
            conn.execute(text(f'SET LOCAL ROLE "{role}"'))
            with pytest.raises(vecorm.ConfigurationError, match="CREATE EXTENSION vector"):
                Base.metadata.create_all(conn)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        engine.dispose()
