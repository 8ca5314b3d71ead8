"""``vecorm rechunk``: passages for parents written without the flush hook."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, create_engine, insert, text

import vecorm
from tests.e2e.conftest import url_text
from tests.e2e.test_cli import invoke

PASSAGE_MODELS = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class DocPassage(vecorm.Passage, Base):
    __tablename__ = "doc_passages"
    __vecorm__ = vecorm.PassageConfig(
        parent=Doc, source=("body",), chunker=vecorm.chunk_characters(60, 0), dimensions=32
    )
"""


@pytest.fixture
def passage_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A project directory with a parent and its passage model, as the current directory."""
    name = f"doc_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PASSAGE_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def body(number: int) -> str:
    """Three sentences of about 50 characters: three passages of the 60-character chunker."""
    return " ".join(f"Document {number} says thing {part} about vacuum." for part in range(3))


def insert_docs(url: URL, module: str, numbers: range) -> None:
    """Parents written by raw SQL: no flush hook, no passages."""
    models = __import__(module)
    engine = vecorm.create_engine(url)
    models.Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(models.Doc.__table__), [{"id": i, "body": body(i)} for i in numbers])
    engine.dispose()


def passages(url: URL) -> list[tuple[int, int, str, bool, str | None]]:
    """(parent, ordinal, text, has a vector, embedding model) of every stored passage."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT parent_id, ordinal, text, embedding IS NOT NULL, embedding_model "
                "FROM doc_passages ORDER BY parent_id, ordinal"
            )
        ).all()
    engine.dispose()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_rechunk_cuts_and_embeds_parents_written_by_raw_sql(
    vecorm_url: URL, passage_module: str
) -> None:
    insert_docs(vecorm_url, passage_module, range(1, 5))
    url = url_text(vecorm_url)
    model = f"{passage_module}:DocPassage"
    result = invoke("rechunk", model, "--embedder", "hashing", "--database-url", url, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"model", "passages", "unembedded", "seconds"}
    assert (document["model"], document["passages"], document["unembedded"]) == (model, 12, 0)
    chunker = vecorm.chunk_characters(60, 0)
    expected = [
        (i, ordinal, chunk.text, True, "vecorm-hashing-32")
        for i in range(1, 5)
        for ordinal, chunk in enumerate(chunker(body(i)))
    ]
    assert passages(vecorm_url) == expected and len(expected) == 12

    again = invoke("rechunk", model, "--embedder", "hashing", "--database-url", url)
    assert again.exit_code == 0, again.output
    assert again.stdout == "DocPassage: nothing to write, every passage is current\n"
    assert passages(vecorm_url) == expected


def test_without_an_embedder_passages_wait_for_backfill(
    vecorm_url: URL, passage_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_docs(vecorm_url, passage_module, range(1, 3))
    monkeypatch.setenv("VECORM_DATABASE_URL", url_text(vecorm_url))
    model = f"{passage_module}:DocPassage"
    result = invoke("rechunk", model, "--batch-size", "1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("DocPassage: wrote 6 passages in ")
    assert (
        lines[1]
        == f"DocPassage: 6 passages have no vector yet; `vecorm backfill {model}` embeds them"
    )
    assert [row[3] for row in passages(vecorm_url)] == [False] * 6
    filled = invoke("backfill", model, "--embedder", "hashing", "--no-progress")
    assert filled.exit_code == 0, filled.output
    assert [row[3] for row in passages(vecorm_url)] == [True] * 6


def test_a_model_that_is_not_a_passage_model_is_one_line(
    vecorm_url: URL, passage_module: str
) -> None:
    url = url_text(vecorm_url)
    for name in ("Doc", "Nothing"):
        result = invoke("rechunk", f"{passage_module}:{name}", "--database-url", url)
        assert result.exit_code == 1
        assert "Traceback" not in result.output
    result = invoke("rechunk", f"{passage_module}:Doc", "--database-url", url)
    assert result.stderr.splitlines() == [
        f"Error: {passage_module}:Doc is not a passage model",
        "hint: name a class declared with vecorm.Passage and "
        "__vecorm__ = vecorm.PassageConfig(parent=..., source=...)",
    ]
