"""Exercise 3: where hybrid search beats pure semantic search, side by side.

Two kinds of question are asked of the 65 shipped passages, each with the one passage that
answers it:

* **exact**: the question hinges on a token an embedding model blurs (an error code, a
  setting or a tool name: ``SQLSTATE 40P01``, ``pg_repack``, ``datfrozenxid``);
* **vague**: the question paraphrases the answer without its words.

For each question the top 3 of ``Model.nearest`` (semantic) and of ``Model.hybrid_search``
(semantic and full-text candidates fused in one SQL statement) are printed side by side with
the rank each gives the answer, then hit@1, hit@3 and MRR@10 per kind and method::

    python examples/hybrid_pipeline.py                 # embedded server, best offline embedder
    python examples/hybrid_pipeline.py --embedder hashing --database-url postgresql://...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.embedders import Embedder, choose_embedder
from vecorm.tools.demo import load_passages

#: (kind, question, slug of the passage that answers it)
JUDGED: tuple[tuple[str, str, str], ...] = (
    ("exact", "what does SQLSTATE 40P01 mean?", "deadlock"),
    ("exact", "pg_repack", "bloat"),
    ("exact", "datfrozenxid", "wraparound"),
    ("exact", "FATAL 53300", "too-many-connections"),
    ("exact", "gin_trgm_ops", "pg-trgm"),
    ("exact", "jit_above_cost", "jit"),
    ("exact", "SPLADE", "sparsevec"),
    ("exact", "selectinload", "eager-loading"),
    ("vague", "the database sometimes kills one of two competing updates", "deadlock"),
    ("vague", "keeping many idle clients from exhausting the server", "connection-pooling"),
    ("vague", "which of my queries cost the most time overall", "pg-stat-statements"),
    ("vague", "my table file keeps growing even though I remove old data", "bloat"),
    ("vague", "make vectors take less room on disk", "halfvec"),
    ("vague", "the planner picks bad plans after I load lots of data", "statistics"),
    (
        "vague",
        "a web request left a transaction open and now everything waits",
        "idle-in-transaction",
    ),
    ("vague", "split big documents before embedding them", "chunking"),
)
DEPTH = 10  # ranks beyond this count as a miss


class Base(DeclarativeBase):
    pass


class Passage(vecorm.Searchable, Base):
    __tablename__ = "hybrid_pipeline_passages"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=384,
        index=vecorm.HNSW(),
        weights={"title": "A", "body": "B"},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(60), unique=True)
    title: Mapped[str] = mapped_column(String(120))
    body: Mapped[str]


@dataclass(frozen=True)
class Outcome:
    """One judged question: the top slugs of each method and the answer's rank (None: missed)."""

    kind: str
    question: str
    answer: str
    semantic: list[tuple[str, str]]  # (slug, title), best first
    hybrid: list[tuple[str, str]]

    def rank(self, method: str) -> int | None:
        slugs = [slug for slug, _ in getattr(self, method)]
        return slugs.index(self.answer) + 1 if self.answer in slugs else None


def load(session: Session, embedder: Embedder) -> None:
    vecorm.install(session, embedder=embedder)
    session.add_all(
        Passage(slug=passage.slug, title=passage.title, body=passage.body)
        for passage in load_passages()
    )
    session.commit()


def run(session: Session, embedder: Embedder) -> list[Outcome]:
    """Ask every judged question both ways."""
    outcomes = []
    for kind, question, answer in JUDGED:
        semantic = session.execute(Passage.nearest(question, k=DEPTH, embedder=embedder)).all()
        hybrid = session.execute(Passage.hybrid_search(question, k=DEPTH, embedder=embedder)).all()
        outcomes.append(
            Outcome(
                kind,
                question,
                answer,
                [(row[0].slug, row[0].title) for row in semantic],
                [(row[0].slug, row[0].title) for row in hybrid],
            )
        )
    return outcomes


def metrics(outcomes: Sequence[Outcome], kind: str, method: str) -> dict[str, float]:
    """hit@1, hit@3 and MRR@10 of ``method`` over the questions of ``kind``."""
    ranks = [outcome.rank(method) for outcome in outcomes if outcome.kind == kind]
    return {
        "hit@1": sum(rank == 1 for rank in ranks) / len(ranks),
        "hit@3": sum(rank is not None and rank <= 3 for rank in ranks) / len(ranks),
        "mrr@10": sum(1 / rank for rank in ranks if rank is not None) / len(ranks),
    }


def report(outcomes: Sequence[Outcome]) -> list[str]:
    lines = []
    width = 44
    for outcome in outcomes:
        lines.append("")
        lines.append(f"[{outcome.kind}] {outcome.question}")
        lines.append(f"    {'semantic':<{width}}hybrid")
        for position in range(3):
            cells = []
            for method in ("semantic", "hybrid"):
                slug, title = getattr(outcome, method)[position]
                mark = "*" if slug == outcome.answer else " "
                cells.append(f"{position + 1}{mark} {title}"[: width - 2])
            lines.append(f"    {cells[0]:<{width}}{cells[1]}")
        ranks = {method: outcome.rank(method) for method in ("semantic", "hybrid")}
        shown = {method: f"#{rank}" if rank else "missed" for method, rank in ranks.items()}
        verdict = ""
        if ranks["hybrid"] and (ranks["semantic"] is None or ranks["hybrid"] < ranks["semantic"]):
            verdict = "  <- hybrid wins"
        elif ranks["semantic"] and (ranks["hybrid"] is None or ranks["semantic"] < ranks["hybrid"]):
            verdict = "  <- semantic wins"
        lines.append(f"    answer: semantic {shown['semantic']}, hybrid {shown['hybrid']}{verdict}")
    lines.append("")
    lines.append(f"{'kind':<8}{'method':<10}{'hit@1':>7}{'hit@3':>7}{'MRR@10':>8}")
    for kind in ("exact", "vague"):
        for method in ("semantic", "hybrid"):
            scores = metrics(outcomes, kind, method)
            lines.append(
                f"{kind:<8}{method:<10}{scores['hit@1']:>7.2f}{scores['hit@3']:>7.2f}"
                f"{scores['mrr@10']:>8.2f}"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--embedder", choices=("auto", "local", "hashing"), default="auto")
    args = parser.parse_args(argv)

    embedder = choose_embedder(args.embedder)
    with vecorm.database(args.database_url) as url:
        engine = vecorm.create_engine(url)
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            load(session, embedder)
            outcomes = run(session, embedder)
        Base.metadata.drop_all(engine)
        engine.dispose()
    print(f"{len(JUDGED)} judged questions, embedder {embedder.model_name}")
    print("\n".join(report(outcomes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
