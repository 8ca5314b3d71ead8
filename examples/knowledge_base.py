"""Exercise 1: a knowledge base you can ask questions.

Loads the 65 passages vecorm ships (PostgreSQL, pgvector and search), lets vecorm's flush hook
embed them on commit, and answers a question with the 3 nearest passages and their cosine
distances. Offline: the local all-MiniLM-L6-v2 model when ``vecorm[local]`` is installed,
else the deterministic hashing embedder. Runs on an embedded PostgreSQL unless you name one::

    python examples/knowledge_base.py "why is my table still big after a delete?"
    python examples/knowledge_base.py --database-url postgresql://me@localhost/kb -k 5 "vacuum"
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.embedders import Embedder, choose_embedder
from vecorm.tools.demo import load_passages


class Base(DeclarativeBase):
    pass


class Article(vecorm.Searchable, Base):
    """A knowledge-base article: title and body are embedded and full-text indexed."""

    __tablename__ = "kb_articles"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=384,  # all-MiniLM-L6-v2's width
        distance="cosine",
        index=vecorm.HNSW(m=16, ef_construction=64),
        weights={"title": "A", "body": "B"},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(120))
    category: Mapped[str] = mapped_column(String(40), index=True)
    body: Mapped[str]


def load(session: Session, embedder: Embedder) -> int:
    """Insert the shipped passages; the hook embeds all of them in batches on commit."""
    vecorm.install(session, embedder=embedder)
    passages = load_passages()
    session.add_all(
        Article(title=passage.title, category=passage.category, body=passage.body)
        for passage in passages
    )
    session.commit()
    return len(passages)


def answer(
    session: Session, question: str, embedder: Embedder, k: int = 3
) -> list[tuple[Article, float]]:
    """The ``k`` articles nearest to ``question``, with their cosine distances."""
    statement = Article.nearest(question, k=k, embedder=embedder)
    return [(article, float(distance)) for article, distance in session.execute(statement)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="*", help="what to ask (several words are joined)")
    parser.add_argument("-k", type=int, default=3, help="passages to show (default 3)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="default: $VECORM_DATABASE_URL, else an embedded server",
    )
    parser.add_argument("--embedder", choices=("auto", "local", "hashing"), default="auto")
    args = parser.parse_args(argv)
    question = " ".join(args.question) or "How do I make nearest-neighbour queries fast?"

    embedder = choose_embedder(args.embedder)
    with vecorm.database(args.database_url) as url:
        engine = vecorm.create_engine(url)
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            count = load(session, embedder)
            print(f"{count} passages embedded with {embedder.model_name}")
            print(f"\nQ: {question}")
            for rank, (article, distance) in enumerate(
                answer(session, question, embedder, args.k), start=1
            ):
                print(f"{rank:>2}. {distance:.3f}  {article.title} [{article.category}]")
                print(
                    textwrap.fill(article.body, 96, initial_indent="    ", subsequent_indent="    ")
                )
        Base.metadata.drop_all(engine)
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
