"""The ``vecorm demo`` command: a small knowledge base, embedded, indexed and searched.

65 short passages about PostgreSQL, pgvector and search ship with vecorm
(``vecorm/data/passages.jsonl``). The demo loads them into a searchable table on the embedded
server (or the database you name), lets the flush hook embed them on commit, answers a few
questions with the 3 nearest passages and their cosine distances, then puts semantic and
hybrid search side by side on questions that hinge on an exact term::

    from vecorm.tools.demo import run_demo

    run_demo()                          # embedded server, best offline embedder
    run_demo(url, embedder="hashing")   # your server, the deterministic embedder

The embedder is chosen offline: the local all-MiniLM-L6-v2 model when ``vecorm[local]`` is
installed, else :class:`~vecorm.embedding.embedders.HashingEmbedder`. OpenAI is used only when asked
for by name (``embedder="openai"``); an ``OPENAI_API_KEY`` in the environment alone never
makes the demo call a remote API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from sqlalchemy import URL, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.embedders.hashing import HashingEmbedder
from vecorm.embedding.embedders.registry import (
    EMBEDDER_CHOICES,
    LOCAL_DIMENSIONS,
    choose_embedder,
)
from vecorm.embedding.events import install
from vecorm.engine import create_engine
from vecorm.mixin import Searchable
from vecorm.schema.config import HNSW, SearchConfig
from vecorm.tools.embedded import database

__all__ = [
    "DIMENSIONS",
    "EMBEDDER_CHOICES",
    "Hit",
    "Passage",
    "PassageRecord",
    "ask",
    "choose_embedder",
    "describe_embedder",
    "hybrid",
    "load_knowledge_base",
    "load_passages",
    "run_demo",
]

#: Width of the demo's vectors: all-MiniLM-L6-v2's, and what OpenAI is asked to return.
DIMENSIONS = LOCAL_DIMENSIONS


QUESTIONS = (
    "How do I keep nearest-neighbour queries fast on a big table?",
    "Why doesn't my table get smaller after deleting rows?",
    "What should I do when a transaction is aborted by a deadlock?",
)

#: Questions that hinge on one exact term, and the passage that names it.
EXACT_TERM_QUESTIONS = (
    ("what does SQLSTATE 40P01 mean?", "deadlock"),
    ("pg_repack", "bloat"),
    ("datfrozenxid", "wraparound"),
    ("FATAL 53300", "too-many-connections"),
)


@dataclass(frozen=True)
class PassageRecord:
    """One shipped passage: a slug, a title, a category and a paragraph of text."""

    slug: str
    title: str
    category: str
    body: str


def load_passages() -> list[PassageRecord]:
    """The passages shipped in the wheel (``vecorm/data/passages.jsonl``), in file order.

    ``len(load_passages())  # 65``
    """
    source = resources.files("vecorm").joinpath("data", "passages.jsonl")
    records = []
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            records.append(PassageRecord(item["id"], item["title"], item["category"], item["body"]))
    return records


def describe_embedder(embedder: Embedder) -> str:
    """One line naming the provider, for humans."""
    name = type(embedder).__name__
    if name == "LocalEmbedder":
        return f"all-MiniLM-L6-v2 on this machine ({embedder.dimensions}-d)"
    if isinstance(embedder, HashingEmbedder):
        return (
            f"deterministic hashing embedder ({embedder.dimensions}-d); "
            "pip install 'vecorm[local]' for a real model"
        )
    return f"{embedder.model_name} ({embedder.dimensions}-d)"


class _Base(DeclarativeBase):
    pass


class Passage(Searchable, _Base):
    """A demo passage; the mixin adds the embedding, the tsvector and their indexes."""

    __tablename__ = "vecorm_demo_passages"
    __vecorm__ = SearchConfig(
        fields=("title", "body"),
        dimensions=DIMENSIONS,
        index=HNSW(m=16, ef_construction=64),
        weights={"title": "A", "body": "B"},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(60), unique=True)
    title: Mapped[str] = mapped_column(String(120))
    category: Mapped[str] = mapped_column(String(40), index=True)
    body: Mapped[str]


@dataclass(frozen=True)
class Hit:
    """One search result: which passage, and its cosine distance and fused score if any."""

    slug: str
    title: str
    category: str
    body: str
    distance: float | None
    score: float | None = None


def load_knowledge_base(session: Session, embedder: Embedder) -> int:
    """Insert the shipped passages through ``session``; the flush hook embeds them on commit.

    Returns the number of passages. ``session`` gets vecorm's hook installed.
    """
    install(session, embedder=embedder)
    records = load_passages()
    session.add_all(
        Passage(slug=record.slug, title=record.title, category=record.category, body=record.body)
        for record in records
    )
    session.commit()
    return len(records)


def ask(session: Session, question: str, embedder: Embedder, *, k: int = 3) -> list[Hit]:
    """The ``k`` passages nearest to ``question`` (semantic search), nearest first."""
    rows = session.execute(Passage.nearest(question, k=k, embedder=embedder)).all()
    return [_hit(passage, distance) for passage, distance in rows]


def hybrid(session: Session, question: str, embedder: Embedder, *, k: int = 3) -> list[Hit]:
    """The ``k`` best passages by vecorm's hybrid search (semantic + full text), best first."""
    rows = session.execute(Passage.hybrid_search(question, k=k, embedder=embedder)).all()
    return [_hit(row[0], row.distance, row.score) for row in rows]


def _hit(passage: Passage, distance: float | None, score: float | None = None) -> Hit:
    return Hit(
        passage.slug,
        passage.title,
        passage.category,
        passage.body,
        None if distance is None else float(distance),
        None if score is None else float(score),
    )


def run_demo(
    url: str | URL | None = None,
    *,
    embedder: str | Embedder = "auto",
    echo: Callable[[str], object] = print,
    questions: Sequence[str] = QUESTIONS,
) -> None:
    """Load the knowledge base, answer ``questions``, compare semantic and hybrid search."""
    started = time.perf_counter()
    provider = choose_embedder(embedder) if isinstance(embedder, str) else embedder
    with database(url) as resolved:
        engine = create_engine(resolved)
        try:
            _Base.metadata.drop_all(engine)
            _Base.metadata.create_all(engine)
            with Session(engine) as session:
                echo(f"Server:   {_server_versions(session)}")
                load = getattr(provider, "load", None)
                if callable(load):  # a local model: load it now, so timings are honest
                    loading = time.perf_counter()
                    load()
                    echo(
                        f"Embedder: {describe_embedder(provider)}, "
                        f"loaded in {time.perf_counter() - loading:.1f} s"
                    )
                else:
                    echo(f"Embedder: {describe_embedder(provider)}")
                loading = time.perf_counter()
                count = load_knowledge_base(session, provider)
                echo(
                    f"Loaded {count} passages into {Passage.__tablename__}, embedded on commit "
                    f"in {time.perf_counter() - loading:.1f} s (HNSW cosine index, GIN full text)."
                )
                echo("")
                echo("Semantic search: the 3 nearest passages (cosine distance, lower is nearer)")
                for question in questions:
                    echo("")
                    echo(f"Q: {question}")
                    for hit in ask(session, question, provider):
                        echo(f"   {hit.distance:.3f}  [{hit.category}] {hit.title}")
                        echo(f"          {_clip(hit.body, 86)}")
                echo("")
                _echo_comparison(session, provider, echo)
            _Base.metadata.drop_all(engine)
        finally:
            engine.dispose()
    echo("")
    echo(f"Done in {time.perf_counter() - started:.1f} s.")


def _echo_comparison(session: Session, embedder: Embedder, echo: Callable[[str], object]) -> None:
    echo("Exact terms: semantic vs hybrid search, top 3 (* = the passage naming the term)")
    column = 48
    for question, answer in EXACT_TERM_QUESTIONS:
        semantic_hits = ask(session, question, embedder, k=10)
        hybrid_hits = hybrid(session, question, embedder, k=10)
        echo("")
        echo(f"Q: {question}")
        echo(f"   {'semantic (cosine distance)':<{column}}hybrid (fused score)")
        for rank in range(3):
            left = _cell(semantic_hits, rank, answer, "distance", column - 3)
            right = _cell(hybrid_hits, rank, answer, "score", column - 3)
            echo(f"   {left:<{column}}{right}")
        echo(
            f"   answer ranked {_rank(semantic_hits, answer)} by semantic search, "
            f"{_rank(hybrid_hits, answer)} by hybrid search"
        )


def _cell(hits: list[Hit], rank: int, answer: str, value: str, width: int) -> str:
    if rank >= len(hits):
        return ""
    hit = hits[rank]
    number = getattr(hit, value)
    mark = "*" if hit.slug == answer else " "
    shown = f"{number:.3f}" if number is not None else "  -  "
    return _clip(f"{rank + 1} {mark} {shown}  {hit.title}", width)


def _rank(hits: list[Hit], answer: str) -> str:
    for position, hit in enumerate(hits, start=1):
        if hit.slug == answer:
            return f"#{position}"
    return f"below #{len(hits)}"


def _clip(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 3].rstrip() + "..."


def _server_versions(session: Session) -> str:
    from vecorm.tools.doctor import server_versions

    server, vector, _ = server_versions(session)
    return f"PostgreSQL {server} + pgvector {vector or '(not installed)'}"
