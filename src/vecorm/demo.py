"""The ``vecorm demo`` command: a tiny knowledge base, embedded, indexed and searched.

Runs on the embedded PostgreSQL server (or ``$VECORM_DATABASE_URL``) with the deterministic
hashing embedder, so it needs no network and no API key.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import URL, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vecorm.config import HNSW, SearchConfig
from vecorm.embedded import create_engine, database
from vecorm.embedders.hashing import HashingEmbedder
from vecorm.mixin import Searchable

DIMENSIONS = 384

PASSAGES = [
    ("Indexes", "An HNSW index answers nearest-neighbour queries in milliseconds."),
    ("Indexes", "IVFFlat indexes cluster vectors into lists and probe a few of them."),
    ("Tuning", "Raise hnsw.ef_search for better recall at the cost of speed."),
    ("Tuning", "Autovacuum keeps table statistics fresh for the query planner."),
    ("Search", "Full-text search ranks documents by how well they match the query words."),
    ("Search", "Hybrid search blends vector similarity with full-text rank."),
    ("Storage", "A halfvec column stores each value in two bytes instead of four."),
    ("Storage", "TOAST compresses and moves large values out of the main table."),
]

QUESTIONS = [
    "how do I make nearest neighbour queries fast?",
    "which setting improves recall?",
    "how can vectors use less storage?",
]


class _Base(DeclarativeBase):
    pass


class Passage(Searchable, _Base):
    """A demo passage; the mixin adds the embedding, tsvector and indexes."""

    __tablename__ = "vecorm_demo_passages"
    __vecorm__ = SearchConfig(
        fields=("topic", "body"),
        dimensions=DIMENSIONS,
        index=HNSW(m=16, ef_construction=64),
        weights={"topic": "A", "body": "B"},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(40))
    body: Mapped[str]


def run_demo(url: str | URL | None = None, *, echo: Callable[[str], object] = print) -> None:
    """Create the table, embed the passages, answer the questions."""
    embedder = HashingEmbedder(dimensions=DIMENSIONS)
    with database(url) as resolved:
        engine = create_engine(resolved)
        _Base.metadata.drop_all(engine)
        _Base.metadata.create_all(engine)
        with Session(engine) as session:
            texts = [f"{topic}\n{body}" for topic, body in PASSAGES]
            vectors = embedder.embed(texts)
            session.add_all(
                Passage(topic=topic, body=body, embedding=vector)
                for (topic, body), vector in zip(PASSAGES, vectors, strict=True)
            )
            session.commit()
            echo(
                f"Loaded {len(PASSAGES)} passages into {Passage.__tablename__} "
                f"({DIMENSIONS}-d, HNSW cosine)."
            )
            for question in QUESTIONS:
                query = embedder.embed([question])[0]
                distance = Passage.embedding.cosine_distance(query).label("distance")
                rows = session.execute(
                    select(Passage, distance).order_by(distance, Passage.id).limit(3)
                ).all()
                echo(f"\nQ: {question}")
                for passage, value in rows:
                    echo(f"  {value:.3f}  [{passage.topic}] {passage.body}")
        _Base.metadata.drop_all(engine)
        engine.dispose()
