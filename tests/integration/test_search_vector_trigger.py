"""``SearchConfig(search_vector="trigger")``: a plain tsvector column kept by a row trigger holds
exactly what the generated column holds, searches return the same rows, and the trigger
function pins its search_path like every other vecorm function."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, String, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm

from .test_bm25 import assert_statistics_exact

DIMS = 8
EMBEDDER = vecorm.HashingEmbedder(dimensions=DIMS)


class Base(DeclarativeBase):
    pass


def _config(mode: str) -> vecorm.SearchConfig:
    return vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=DIMS,
        embedder=EMBEDDER,
        index=vecorm.HNSW(m=8),
        weights={"title": "A"},
        search_vector=mode,  # type: ignore[arg-type]
    )


class Generated(vecorm.Searchable, Base):
    __tablename__ = "sv_generated"
    __vecorm__ = _config("generated")
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column("body_text")


class Triggered(vecorm.Searchable, Base):
    __tablename__ = "sv_trigger"
    __vecorm__ = _config("trigger")
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column("body_text")


ROWS = [
    (1, "Vacuum tuning", "autovacuum thresholds and bloat"),
    (2, "Index bloat", None),
    (3, "Replica lag", "wal shipping and replay on the standby"),
    (4, "Lock queues", "an ACCESS EXCLUSIVE lock makes every writer wait"),
]


@pytest.fixture
def session(vecorm_engine: Engine) -> Iterator[Session]:
    Base.metadata.create_all(vecorm_engine)
    with Session(vecorm_engine) as session:
        vecorm.install(session, embedder=EMBEDDER)
        for model in (Generated, Triggered):
            session.add_all(model(id=i, title=t, body=b) for i, t, b in ROWS)
        session.commit()
        yield session


def vectors(session: Session, table: str) -> list[tuple[int, str]]:
    return [
        (row[0], str(row[1]))
        for row in session.execute(text(f"SELECT id, search_vector FROM {table} ORDER BY id"))
    ]


def test_the_trigger_column_equals_the_generated_one(session: Session) -> None:
    assert vectors(session, "sv_trigger") == vectors(session, "sv_generated")
    for model in (Generated, Triggered):
        session.execute(update(model).where(model.id == 2).values(body="vacuum freeze"))
        doc = session.get(model, 3)
        assert doc is not None
        doc.title = "Standby lag"
        session.add(model(id=5, title="Planner", body=None))
        session.flush()
        assert "standbi" in str(doc.search_vector)  # the ORM reads the trigger's value back
    session.commit()
    assert vectors(session, "sv_trigger") == vectors(session, "sv_generated")
    assert_statistics_exact(session, Triggered)


def test_searches_return_the_same_rows(session: Session) -> None:
    for query in ("vacuum", "lock writer", "bloat"):
        found = [
            [(row[0].id, round(row[1], 6)) for row in session.execute(m.text_search(query))]
            for m in (Generated, Triggered)
        ]
        assert found[0] == found[1] and found[0]
        hybrid = [
            [row[0].id for row in session.execute(m.hybrid_search(query, k=3))]
            for m in (Generated, Triggered)
        ]
        assert hybrid[0] == hybrid[1]


def test_the_column_is_plain_and_nullable(session: Session) -> None:
    generated, nullable = session.execute(
        text(
            "SELECT attgenerated, NOT attnotnull FROM pg_attribute "
            "WHERE attrelid = 'sv_trigger'::regclass AND attname = 'search_vector'"
        )
    ).one()
    assert (generated, nullable) == ("", True)
    assert session.scalar(select(Triggered.search_vector).where(Triggered.id == 1)) is not None


def test_the_trigger_function_pins_its_search_path(session: Session) -> None:
    config = session.execute(
        text("SELECT proconfig FROM pg_proc WHERE proname = 'sv_trigger_search_vector'")
    ).scalar_one()
    assert config == ["search_path=pg_catalog, pg_temp"]
    source = session.execute(
        text("SELECT prosrc FROM pg_proc WHERE proname = 'sv_trigger_search_vector'")
    ).scalar_one()
    assert "pg_catalog.to_tsvector" in source and "OPERATOR(pg_catalog.||)" in source


def test_writers_with_an_empty_search_path(session: Session) -> None:
    session.execute(text("SET LOCAL search_path = ''"))
    session.execute(
        text("INSERT INTO public.sv_trigger (id, title, body_text) VALUES (9, 'wal', 'archive')")
    )
    session.execute(text("UPDATE public.sv_trigger SET body_text = 'restore' WHERE id = 9"))
    assert (
        str(session.scalar(text("SELECT search_vector FROM public.sv_trigger WHERE id = 9")))
        == "'restor':2 'wal':1A"
    )


def test_drop_all_removes_the_function(vecorm_engine: Engine, session: Session) -> None:
    session.close()
    Base.metadata.drop_all(vecorm_engine)
    with vecorm_engine.connect() as conn:
        left = conn.scalar(
            text("SELECT count(*) FROM pg_proc WHERE proname = 'sv_trigger_search_vector'")
        )
    assert left == 0
