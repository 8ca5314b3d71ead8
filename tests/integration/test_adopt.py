"""vecorm.embedding.adopt and ``vecorm adopt``: existing vectors recorded as current without a
provider
call, or embedded again; the column checked against the model and the provider first."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import URL, Engine, String, TypeDecorator, insert, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.embedding.adopt import adopt
from vecorm.embedding.backfill import backfill, stale_count
from vecorm.embedding.source import source_text, text_digest
from vecorm.errors import ConfigurationError, DimensionMismatch
from vecorm.testing import FakeEmbedder
from vecorm.tools.cli import main

DIMENSIONS = 8


class Base(DeclarativeBase):
    pass


class Note(vecorm.Searchable, Base):
    """Text fields only: digests are computed by PostgreSQL."""

    __tablename__ = "adopt_notes"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "body"), dimensions=DIMENSIONS)

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str | None] = mapped_column(String(200))
    body: Mapped[str | None]


class Tag(TypeDecorator[str]):
    """Not a ``String`` to SQLAlchemy, so SQL cannot be trusted to compose the same text."""

    impl = String(50)
    cache_ok = True


class Release(vecorm.Searchable, Base):
    """A field of a custom type: digests are computed in Python, as the flush hook does."""

    __tablename__ = "adopt_releases"
    __vecorm__ = vecorm.SearchConfig(fields=("name", "tag"), dimensions=DIMENSIONS, index=None)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    tag: Mapped[str | None] = mapped_column(Tag)


@pytest.fixture
def tables(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


def _vector(n: int) -> list[float]:
    return list(np.random.default_rng(n).standard_normal(DIMENSIONS).astype(np.float32))


def _fill_notes(engine: Engine) -> None:
    """30 rows with text and a vector, 5 with text and none, 3 with a vector and no text."""
    rows: list[dict[str, Any]] = []
    for n in range(30):
        rows.append({"title": f"Note {n}", "body": None if n % 4 else f"body {n}"})
    rows += [{"title": f"Draft {n}", "body": "no vector yet"} for n in range(5)]
    rows += [{"title": None, "body": "  "} for _ in range(3)]
    with engine.begin() as conn:
        for n, row in enumerate(rows):
            vector = None if row["body"] == "no vector yet" else _vector(n)
            conn.execute(insert(Note).values(**row, embedding=vector))


def _stored(engine: Engine, model: Any) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT id, vector_send(embedding), embedding_digest, embedding_model "
                f"FROM {model.__tablename__} ORDER BY id"
            )
        )
        return {row[0]: tuple(row[1:]) for row in rows}


def test_existing_vectors_are_recorded_without_a_provider_call(tables: Engine) -> None:
    _fill_notes(tables)
    before = _stored(tables, Note)
    fake = FakeEmbedder(DIMENSIONS)
    with Session(tables) as session:
        assert stale_count(session, Note, embedder=fake) == 35
        result = adopt(session, Note, embedder=fake, batch_size=7, progress=False)
        assert (result.recorded, result.embedded, result.missing, result.calls) == (30, 0, 5, 0)
        # recorded digests are what the flush hook and backfill compute: only the 5 are stale
        assert stale_count(session, Note, embedder=fake) == 5
        notes = session.scalars(select(Note).order_by(Note.id)).all()
        texts = {note.id: source_text(note, ("title", "body")) for note in notes}
    assert fake.calls == []

    after = _stored(tables, Note)
    for key, (vector, digest, model) in after.items():
        assert vector == before[key][0]  # byte-identical
        if vector is not None and texts[key] is not None:
            assert (digest, model) == (text_digest(str(texts[key])), fake.model_name)
        else:
            assert (digest, model) == (None, None)
    assert after[2][1] == text_digest("Note 1")
    assert after[1][1] == text_digest("Note 0\nbody 0")

    with Session(tables) as session:  # again: nothing left to record
        again = adopt(session, Note, embedder=fake, progress=False)
    assert (again.recorded, again.missing) == (0, 5)
    assert _stored(tables, Note) == after


def test_non_text_fields_are_digested_as_the_flush_hook_does(tables: Engine) -> None:
    with tables.begin() as conn:
        for n in range(9):
            conn.execute(
                insert(Release).values(
                    name=f"v{n}", tag=None if n == 3 else f"stable-{n}", embedding=_vector(n)
                )
            )
    fake = FakeEmbedder(DIMENSIONS)
    with Session(tables) as session:
        result = adopt(session, Release, embedder=fake, batch_size=2, progress=False)
        assert result.recorded == 9
        # SQL cannot tell (stale_count over-counts such models); backfill checks in Python
        assert backfill(session, Release, embedder=fake, progress=False).embedded == 0
    stored = _stored(tables, Release)
    assert stored[1][1] == text_digest("v0\nstable-0")
    assert stored[4][1] == text_digest("v3")
    assert fake.calls == []


def test_re_embed_embeds_with_the_provider(tables: Engine) -> None:
    _fill_notes(tables)
    fake = FakeEmbedder(DIMENSIONS, max_batch_size=16)
    with Session(tables) as session:
        result = adopt(session, Note, embedder=fake, re_embed=True, progress=False)
        assert (result.recorded, result.embedded, result.missing) == (0, 35, 0)
        assert result.calls == len(fake.calls) == 3
        assert stale_count(session, Note, embedder=fake) == 0
        first = session.get_one(Note, 1)
        expected = fake.inner.embed(["Note 0\nbody 0"])[0]
        np.testing.assert_allclose(first.embedding, expected, rtol=1e-6)  # type: ignore[arg-type]


@pytest.mark.parametrize("column_type", ["vector(12)", "vector"])
def test_dimension_mismatch_stops_before_anything_runs(
    vecorm_engine: Engine, column_type: str
) -> None:
    Base.metadata.create_all(vecorm_engine)
    with vecorm_engine.begin() as conn:  # the table really holds 12-dimensional vectors
        conn.execute(text("DROP INDEX ix_adopt_notes_embedding_hnsw"))
        conn.execute(text(f"ALTER TABLE adopt_notes ALTER COLUMN embedding TYPE {column_type}"))
        conn.execute(
            text("INSERT INTO adopt_notes (title, embedding) VALUES ('a', :v)"),
            {"v": str([0.5] * 12)},
        )
    fake = FakeEmbedder(DIMENSIONS)
    with (
        Session(vecorm_engine) as session,
        pytest.raises(DimensionMismatch, match=r"adopt_notes\.embedding holds 12-dimensional"),
    ):
        adopt(session, Note, embedder=fake, re_embed=True, progress=False)
    assert fake.calls == []
    with vecorm_engine.connect() as conn:
        assert conn.execute(text("SELECT embedding_digest FROM adopt_notes")).scalar() is None


def test_provider_of_another_width_stops_before_anything_runs(tables: Engine) -> None:
    _fill_notes(tables)
    before = _stored(tables, Note)
    other = FakeEmbedder(384)
    with (
        Session(tables) as session,
        pytest.raises(
            DimensionMismatch, match=r"embedder 'vecorm-hashing-384' returns 384"
        ) as caught,
    ):
        adopt(session, Note, embedder=other, re_embed=True, progress=False)
    assert f"{DIMENSIONS}-dimensional" in str(caught.value)
    assert other.calls == []
    assert _stored(tables, Note) == before


def test_missing_bookkeeping_columns_ask_for_the_migration(vecorm_engine: Engine) -> None:
    with vecorm_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE adopt_notes (id serial PRIMARY KEY, title varchar(200), body text, "
                f"embedding vector({DIMENSIONS}))"
            )
        )
    with (
        Session(vecorm_engine) as session,
        pytest.raises(ConfigurationError, match="lacks vecorm's bookkeeping columns"),
    ):
        adopt(session, Note, embedder=FakeEmbedder(DIMENSIONS), progress=False)


def test_vector_index_name_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="vector_index_name"):

        class Bad(vecorm.Searchable, Base):
            __tablename__ = "adopt_bad"
            __vecorm__ = vecorm.SearchConfig(fields=("body",), vector_index_name="x" * 64)
            id: Mapped[int] = mapped_column(primary_key=True)
            body: Mapped[str]


# --- the command -------------------------------------------------------------------------------

MODELS = f"""
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import vecorm
    from vecorm.testing import FakeEmbedder

    embedder = FakeEmbedder({DIMENSIONS})
    narrow = FakeEmbedder(4)

    class Base(DeclarativeBase):
        pass

    class Note(vecorm.Searchable, Base):
        __tablename__ = "adopt_notes"
        __vecorm__ = vecorm.SearchConfig(
            fields=("title", "body"), dimensions={DIMENSIONS}, embedder=embedder
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str | None] = mapped_column(String(200))
        body: Mapped[str | None]
"""


@pytest.fixture
def project_module(tmp_path: Path, vecorm_engine: Engine) -> Iterator[Any]:
    name = f"adopt_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODELS), encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        module.Base.metadata.create_all(vecorm_engine)
        _fill_notes(vecorm_engine)
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def _run(url: URL, *args: str) -> Any:
    database = url.render_as_string(hide_password=False)
    return CliRunner().invoke(
        main,
        ["adopt", *args, "--database-url", database, "--no-progress"],
        env={"DATABASE_URL": None, "VECORM_DATABASE_URL": None},
    )


def test_cli_records_existing_vectors(project_module: Any, vecorm_url: URL) -> None:
    result = _run(vecorm_url, f"{project_module.__name__}:Note")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "Note: recorded 30 existing vectors as current (no provider calls)",
        f"Note: 5 rows have text but no vector; `vecorm adopt {project_module.__name__}:Note "
        "--re-embed` embeds them (recorded rows are kept)",
    ]
    assert project_module.embedder.calls == []

    # --re-embed afterwards embeds only what has no vector; recorded rows are kept
    result = _run(vecorm_url, f"{project_module.__name__}:Note", "--re-embed")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["Note: embedded 5 rows in 1 provider call"]
    assert sorted(project_module.embedder.texts) == ["Draft 0\nno vector yet"] + [
        f"Draft {n}\nno vector yet" for n in range(1, 5)
    ]


def test_cli_json_is_one_document_on_stdout(project_module: Any, vecorm_url: URL) -> None:
    result = _run(vecorm_url, f"{project_module.__name__}:Note", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # all of stdout is the document
    assert {key: value for key, value in report.items() if key != "seconds"} == {
        "model": "Note",
        "re_embed": False,
        "recorded": 30,
        "embedded": 0,
        "missing": 5,
        "calls": 0,
    }
    assert report["seconds"] >= 0
    assert "5 rows have text but no vector" in result.stderr  # the hint: stderr
    again = _run(vecorm_url, f"{project_module.__name__}:Note", "--re-embed", "--json")
    assert json.loads(again.stdout)["embedded"] == 5 and again.stderr == ""


def test_cli_re_embed_uses_the_named_embedder(project_module: Any, vecorm_url: URL) -> None:
    result = _run(
        vecorm_url,
        f"{project_module.__name__}:Note",
        "--re-embed",
        "--embedder",
        f"{project_module.__name__}:embedder",
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["Note: embedded 35 rows in 1 provider call"]
    assert len(project_module.embedder.texts) == 35


def test_cli_dimension_mismatch_is_one_line(project_module: Any, vecorm_url: URL) -> None:
    result = _run(
        vecorm_url,
        f"{project_module.__name__}:Note",
        "--embedder",
        f"{project_module.__name__}:narrow",
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: adopt_notes.embedding holds 8-dimensional vectors")
    assert "Traceback" not in result.output
    assert project_module.narrow.calls == []


def test_cli_needs_a_database(project_module: Any) -> None:
    result = CliRunner().invoke(
        main,
        ["adopt", f"{project_module.__name__}:Note"],
        env={"DATABASE_URL": None, "VECORM_DATABASE_URL": None},
    )
    assert result.exit_code == 2
    assert "pass --database-url or set DATABASE_URL" in result.output
