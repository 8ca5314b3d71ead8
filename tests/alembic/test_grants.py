"""``op.grant_search_access`` / ``op.revoke_search_access`` give a role that owns nothing
exactly what searching and writing a searchable table needs, and take it back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session

import vecorm.alembic  # noqa: F401
from tests.integration.test_bm25 import Note


@pytest.fixture
def role(vecorm_engine: Engine) -> Iterator[str]:
    name = f"vecorm_app_{uuid.uuid4().hex[:8]}"
    Note.metadata.create_all(vecorm_engine)
    with vecorm_engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{name}"'))
    yield name
    with vecorm_engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{name}"'))
    vecorm_engine.dispose()
    with vecorm_engine.begin() as conn:
        conn.execute(text(f'DROP ROLE "{name}"'))


def migrate(engine: Engine, operation: str, role: str, **options: object) -> None:
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        getattr(op, operation)("notes", role, **options)


def write_and_search(engine: Engine, role: str) -> list[int]:
    with Session(engine) as session:
        session.execute(text(f'SET LOCAL ROLE "{role}"'))
        session.execute(insert(Note).values(id=1, title="vacuum", body="autovacuum"))
        session.flush()
        found = [note.id for note, _ in session.execute(Note.text_search("vacuum"))]
        session.rollback()
        return found


def test_grant_and_revoke_search_access(vecorm_engine: Engine, role: str) -> None:
    with pytest.raises(ProgrammingError, match="permission denied"):
        write_and_search(vecorm_engine, role)
    migrate(vecorm_engine, "grant_search_access", role)
    assert write_and_search(vecorm_engine, role) == [1]
    migrate(vecorm_engine, "revoke_search_access", role)
    with pytest.raises(ProgrammingError, match="permission denied"):
        write_and_search(vecorm_engine, role)
    migrate(vecorm_engine, "grant_search_access", role, write=False)
    with Session(vecorm_engine) as session:
        session.execute(text(f'SET LOCAL ROLE "{role}"'))
        assert session.execute(Note.text_search("vacuum")).all() == []
        with pytest.raises(ProgrammingError, match="permission denied"):
            session.execute(insert(Note).values(id=1, title="vacuum", body="x"))
