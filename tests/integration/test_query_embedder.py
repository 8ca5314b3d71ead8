"""Text queries on a model without an embedder of its own, embedded at execution by the
embedder ``vecorm.install`` gave the session (``vecorm.search.vector.PendingQuery``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, String, select
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import vecorm
from vecorm.embedding.embedders.base import EmbeddingMatrix
from vecorm.testing import FakeEmbedder

DIMS = 32
EMBEDDER = vecorm.HashingEmbedder(dimensions=DIMS)
BODIES = [
    "The printer on the third floor is out of toner",
    "Printer jams every morning when printing duplex",
    "VPN drops the connection after ten minutes",
    "Password reset emails never arrive",
    "Laptop battery drains overnight while asleep",
    "The office printer prints blank pages",
    "Wi-Fi in the meeting room keeps disconnecting",
    "Outlook asks for the password again and again",
] * 3
QUERIES = ["printer prints blank pages", "password emails", "wifi disconnecting"]


class Base(DeclarativeBase):
    pass


class Ticket(vecorm.Searchable, Base):
    """No SearchConfig(embedder=...): the session's installation embeds rows and queries."""

    __tablename__ = "embedder_tickets"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=DIMS, index=vecorm.HNSW(m=8))
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    category: Mapped[str] = mapped_column(String(20))


@pytest.fixture
def sessions(vecorm_engine: Engine) -> Iterator[sessionmaker[Session]]:
    Base.metadata.create_all(vecorm_engine)
    factory = sessionmaker(vecorm_engine)
    vecorm.install(factory, embedder=EMBEDDER)
    with factory() as session, session.begin():  # the flush hook embeds them with EMBEDDER
        session.add_all(
            Ticket(id=i, body=body, category="hardware" if "rint" in body else "other")
            for i, body in enumerate(BODIES)
        )
    yield factory
    vecorm.uninstall(factory)


def _ranked(rows: Any) -> list[tuple[int, float]]:
    return [(row[0].id, round(float(row[1]), 6)) for row in rows]


@pytest.mark.parametrize("query", QUERIES)
def test_installed_embedder_ranks_as_an_explicit_one(
    sessions: sessionmaker[Session], query: str
) -> None:
    with sessions() as session:
        installed = _ranked(session.execute(Ticket.nearest(query, k=5)))
        explicit = _ranked(session.execute(Ticket.nearest(query, k=5, embedder=EMBEDDER)))
        assert installed == explicit and len(installed) == 5
        hybrid = _ranked(session.execute(Ticket.hybrid_search(query, k=5)))
        hybrid_explicit = _ranked(
            session.execute(Ticket.hybrid_search(query, k=5, embedder=EMBEDDER))
        )
        assert hybrid == hybrid_explicit and len(hybrid) == 5
        rrf = _ranked(session.execute(Ticket.hybrid_search(query, k=5, method="rrf")))
        assert rrf == _ranked(
            session.execute(Ticket.hybrid_search(query, k=5, method="rrf", embedder=EMBEDDER))
        )


def test_the_query_is_embedded_once_per_text_at_execution(vecorm_engine: Engine) -> None:
    Base.metadata.create_all(vecorm_engine)
    recorder = FakeEmbedder(dimensions=DIMS)
    factory = sessionmaker(vecorm_engine)
    vecorm.install(factory, embedder=recorder)
    try:
        statement = Ticket.hybrid_search("printer toner", k=3)  # builds, embeds nothing
        assert recorder.texts == []
        with factory() as session:
            session.execute(statement).all()
            session.execute(statement).all()  # the query cache: no second call
        assert recorder.texts == ["printer toner"]
    finally:
        vecorm.uninstall(factory)


def test_a_search_nested_in_your_own_statement_resolves(sessions: sessionmaker[Session]) -> None:
    nearest = Ticket.nearest("printer prints blank pages", k=3).subquery()
    outer = select(Ticket.body).where(Ticket.id.in_(select(nearest.c.id))).order_by(Ticket.id)
    with sessions() as session:
        bodies = session.scalars(outer).all()
        expected = [
            row[0].id
            for row in session.execute(
                Ticket.nearest("printer prints blank pages", k=3, embedder=EMBEDDER)
            )
        ]
        assert bodies == [BODIES[i] for i in sorted(expected)]


def test_where_no_embedder_is_known_execution_names_the_fix(
    sessions: sessionmaker[Session], vecorm_engine: Engine
) -> None:
    statement = Ticket.nearest("printer", k=3)
    # Raised while the parameters are prepared, before any SQL is sent: SQLAlchemy's
    # StatementError wraps it, as it does vecorm's other bind-time errors.
    with vecorm_engine.connect() as conn, pytest.raises(StatementError) as caught:
        conn.execute(statement)
    assert isinstance(caught.value.orig, vecorm.ConfigurationError)
    message = str(caught.value.orig)
    assert "has no embedder" in message and "vecorm.install" in message and "Ticket" in message
    with Session(vecorm_engine) as plain, pytest.raises(StatementError, match="no embedder"):
        plain.execute(statement)
    vecorm.uninstall(sessions)
    with sessions() as session, pytest.raises(StatementError, match="no embedder"):
        session.execute(statement)
    # A vector needs no embedder anywhere.
    vector = EMBEDDER.embed(["printer"])[0]
    with vecorm_engine.connect() as conn:
        assert len(conn.execute(Ticket.nearest(vector, k=3)).all()) == 3


def test_the_models_own_embedder_still_wins(sessions: sessionmaker[Session]) -> None:
    # Explicit embedder= wins over the installed one: a wrong width fails while building.
    with pytest.raises(vecorm.DimensionMismatch):
        Ticket.nearest("printer", embedder=vecorm.HashingEmbedder(dimensions=8))


class AwaitedEmbedder(FakeEmbedder):
    """Records the texts it was awaited for (``aembed``), apart from ``embed`` calls."""

    def __init__(self, dimensions: int) -> None:
        super().__init__(dimensions=dimensions)
        self.awaited: list[str] = []

    async def aembed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        self.awaited.extend(texts)
        return await super().aembed(texts)


@pytest.fixture
async def async_sessions(
    sessions: sessionmaker[Session], vecorm_async_engine: AsyncEngine
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    factory = async_sessionmaker(vecorm_async_engine, expire_on_commit=False)
    vecorm.install(factory, embedder=EMBEDDER)
    yield factory
    vecorm.uninstall(factory)


@pytest.mark.parametrize("query", QUERIES)
async def test_async_session_ranks_as_an_explicit_embedder(
    async_sessions: async_sessionmaker[AsyncSession], query: str
) -> None:
    async with async_sessions() as session:
        installed = _ranked(await session.execute(Ticket.hybrid_search(query, k=5)))
        explicit = _ranked(
            await session.execute(Ticket.hybrid_search(query, k=5, embedder=EMBEDDER))
        )
        assert installed == explicit and len(installed) == 5
        nearest = _ranked(await session.execute(Ticket.nearest(query, k=4)))
        assert nearest == _ranked(
            await session.execute(Ticket.nearest(query, k=4, embedder=EMBEDDER))
        )


async def test_async_session_awaits_the_providers_aembed(
    sessions: sessionmaker[Session], vecorm_async_engine: AsyncEngine
) -> None:
    recorder = AwaitedEmbedder(dimensions=DIMS)
    factory = async_sessionmaker(vecorm_async_engine)
    vecorm.install(factory, embedder=recorder)
    try:
        async with factory() as session:
            rows = (await session.execute(Ticket.nearest("laptop battery", k=2))).all()
        assert len(rows) == 2 and recorder.awaited == ["laptop battery"]
    finally:
        vecorm.uninstall(factory)


def test_a_session_installed_over_its_factory_embeds_with_its_own(
    sessions: sessionmaker[Session],
) -> None:
    own = FakeEmbedder(dimensions=DIMS)
    with sessions() as session:
        vecorm.install(session, embedder=own)
        try:
            assert vecorm.installed_embedder(session) is own
            rows = _ranked(session.execute(Ticket.nearest("password emails", k=3)))
            assert own.texts == ["password emails"]  # the session's, as installed_embedder says
            assert rows == _ranked(
                session.execute(Ticket.nearest("password emails", k=3, embedder=own))
            )
        finally:
            vecorm.uninstall(session)
