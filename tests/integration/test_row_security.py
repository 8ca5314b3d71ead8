"""Row-level security on a searchable table: a role the policy restricts gets the best of the
rows it may see, from every search, BM25's included, whose statistics live in side tables
that carry no policy. Before, BM25 ranked every row, kept the ``depth`` best and only then
met the policy: a tenant whose rows scored below another tenant's got nothing back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Text, insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm import bm25


class Base(DeclarativeBase):
    pass


class Ledger(vecorm.Searchable, Base):
    __tablename__ = "rls_ledgers"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3)
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)


#: Tenant b's rows outscore tenant a's on every word a searches for.
ROWS = [
    *((i, "b", "invoice invoice invoice merger", [1.0, 0.0, 0.0]) for i in range(1, 31)),
    *(
        (100 + i, "a", f"invoice {i} from a much longer ledger line of a", [0.9, 0.1, i])
        for i in range(3)
    ),
]
TENANT_A = {i for i, tenant, _, _ in ROWS if tenant == "a"}


@pytest.fixture
def app_role(vecorm_engine: Engine) -> Iterator[str]:
    with vecorm_engine.connect() as conn:
        if not conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")):
            pytest.skip("creates a role: needs a superuser")
    role = f"vecorm_rls_{uuid.uuid4().hex[:8]}"
    Base.metadata.create_all(vecorm_engine)
    with Session(vecorm_engine) as session:
        session.execute(text(f'CREATE ROLE "{role}" NOSUPERUSER'))
        session.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        vecorm.grant_access(session, Ledger, role)
        session.execute(
            insert(Ledger),
            [{"id": i, "tenant": t, "body": b, "embedding": v} for i, t, b, v in ROWS],
        )
        session.execute(text("ALTER TABLE rls_ledgers ENABLE ROW LEVEL SECURITY"))
        session.execute(
            text(
                "CREATE POLICY per_tenant ON rls_ledgers "
                "USING (tenant = current_setting('vecorm_test.tenant', true))"
            )
        )
        session.commit()
    try:
        yield role
    finally:
        with vecorm_engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}" CASCADE'))
            conn.execute(text(f'DROP ROLE "{role}"'))


def as_tenant(session: Session, role: str, tenant: str) -> None:
    session.execute(text(f'SET LOCAL ROLE "{role}"'))
    session.execute(text("SELECT set_config('vecorm_test.tenant', :t, true)"), {"t": tenant})


def keys(rows: Any) -> list[int]:
    return [row[0].id if isinstance(row[0], Ledger) else row[0] for row in rows]


@pytest.mark.parametrize("prune_above", [None, 1])
def test_bm25_ranks_the_rows_the_role_sees(
    vecorm_engine: Engine, app_role: str, prune_above: int | None
) -> None:
    with Session(vecorm_engine) as session:  # the owner: no policy applies
        everyone = session.execute(bm25.scores(Ledger, "invoice", depth=50)).all()
        assert {row.pk_0 for row in everyone[:30]} == set(range(1, 31))
        expected = [(row.pk_0, row.score) for row in everyone if row.pk_0 in TENANT_A]
        session.rollback()
        as_tenant(session, app_role, "a")
        statement = bm25.scores(Ledger, "invoice", depth=5, prune_above=prune_above)
        # The statistics are the table's (every row's), so are the scores: the same numbers.
        assert [tuple(row) for row in session.execute(statement)] == expected


def test_searches_return_the_best_rows_the_role_sees(vecorm_engine: Engine, app_role: str) -> None:
    with Session(vecorm_engine) as session:
        as_tenant(session, app_role, "a")
        assert set(keys(session.execute(Ledger.text_search("invoice", k=2)))) < TENANT_A
        assert set(keys(session.execute(Ledger.text_search("invoice", k=5)))) == TENANT_A
        hybrid = Ledger.hybrid_search("invoice merger", k=5, vector=[1, 0, 0])
        assert set(keys(session.execute(hybrid))) == TENANT_A
        assert set(keys(session.execute(Ledger.nearest([1, 0, 0], k=5)))) == TENANT_A


def test_the_role_writes_and_searches_its_own_rows(vecorm_engine: Engine, app_role: str) -> None:
    with Session(vecorm_engine) as session:
        as_tenant(session, app_role, "a")
        session.add(Ledger(id=200, tenant="a", body="merger memo", embedding=[0, 0, 1]))
        session.flush()
        found = keys(session.execute(Ledger.text_search("merger", k=1)))
        assert found == [200]
        session.commit()


def test_doctor_warns_that_the_side_tables_carry_no_policy(
    vecorm_engine: Engine, app_role: str
) -> None:
    from vecorm.tools.doctor import diagnose

    with Session(vecorm_engine) as session:
        found = [f for f in diagnose(session, [Ledger]) if "row-level security" in f.message]
        assert [f.status for f in found] == ["warn"]
        assert "rls_ledgers" in found[0].message
        session.execute(text("ALTER TABLE rls_ledgers DISABLE ROW LEVEL SECURITY"))
        assert not [f for f in diagnose(session, [Ledger]) if "row-level" in f.message]
