"""The evaluation kit: trec_eval's numbers, every judged query counted, modes run on a model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.tools.evaluation import MODES, EmbeddingCache, evaluate, load_beir, score_run

QRELS = {
    "q1": {"d1": 1, "d2": 2, "d5": 0},
    "q2": {"d3": 1},
    "q3": {"d4": 1, "d6": 1},
}
RUN = {
    "q1": ["d2", "d5", "d1", "d9"],
    "q2": ["d8", "d7", "d6", "d5", "d4", "d3"],
    "q3": ["d6", "d1", "d2", "d4"],
}


def trec_eval(qrels: dict, run: dict[str, list[str]]) -> dict:  # type: ignore[type-arg]
    """trec_eval itself (pytrec_eval), scores decreasing down each ranking."""
    scored = {q: {d: float(100 - i) for i, d in enumerate(ranked)} for q, ranked in run.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    return evaluator.evaluate(scored)  # type: ignore[no-any-return]


def test_ndcg_and_recall_equal_trec_eval_on_a_hand_made_run() -> None:
    ours = score_run(QRELS, RUN)
    reference = trec_eval(QRELS, RUN)
    for query in QRELS:
        assert ours["nDCG@10"][query] == pytest.approx(reference[query]["ndcg_cut_10"], abs=1e-12)
        assert ours["R@100"][query] == pytest.approx(reference[query]["recall_100"], abs=1e-12)
    # Worked by hand for q1 (gains 2, 0, 1 at ranks 1-3; ideal 2, 1):
    dcg = 2 / np.log2(2) + 1 / np.log2(4)
    ideal = 2 / np.log2(2) + 1 / np.log2(3)
    assert ours["nDCG@10"]["q1"] == pytest.approx(dcg / ideal)
    assert ours["RR@10"] == {"q1": 1.0, "q2": 1 / 6, "q3": 1.0}


def test_a_query_with_no_rows_counts_as_zero() -> None:
    run = {"q1": RUN["q1"], "q2": [], "q3": RUN["q3"]}
    ours = score_run(QRELS, run)
    assert ours["nDCG@10"]["q2"] == 0.0 and ours["RR@10"]["q2"] == 0.0
    # trec_eval without -c would average over q1 and q3 only; every judged query counts here.
    reference = trec_eval(QRELS, {q: r for q, r in run.items() if r})
    mean = sum(reference[q]["ndcg_cut_10"] for q in ("q1", "q3")) / 3
    assert np.mean(list(ours["nDCG@10"].values())) == pytest.approx(mean)


DIMS = 32


class Base(DeclarativeBase):
    pass


class Abstract(vecorm.Searchable, Base):
    __tablename__ = "abstracts"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=DIMS,
        embedder=vecorm.HashingEmbedder(dimensions=DIMS),
        index=vecorm.HNSW(m=8),
    )
    id: Mapped[str] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]


class PlainAbstract(vecorm.Searchable, Base):
    """No BM25 statistics: ranked with ts_rank."""

    __tablename__ = "plain_abstracts"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",),
        dimensions=DIMS,
        embedder=vecorm.HashingEmbedder(dimensions=DIMS),
        index=None,
        bm25=None,
    )
    id: Mapped[str] = mapped_column(primary_key=True)
    body: Mapped[str]


TOPICS = ["statin myopathy", "vitamin d fracture", "aspirin bleeding", "insulin resistance"]


@pytest.fixture
def session(vecorm_engine: Engine) -> Iterator[Session]:
    Base.metadata.create_all(vecorm_engine)
    rng = np.random.default_rng(0)
    filler = ["patients", "cohort", "trial", "outcome", "risk", "dose", "study", "effect"]
    rows = []
    for i in range(80):
        topic = TOPICS[i % len(TOPICS)] if i < 8 else ""
        words = " ".join(rng.choice(filler, 12))
        rows.append({"id": f"d{i}", "title": topic or words[:20], "body": f"{topic} {words}"})
    with Session(vecorm_engine) as setup, setup.begin():
        setup.execute(insert(Abstract), rows)
        for abstract in setup.query(Abstract):
            abstract.embedding = Abstract.__vecorm__.embedder.embed(  # type: ignore[union-attr]
                [f"{abstract.title} {abstract.body}"]
            )[0]
    with Session(vecorm_engine) as session:
        yield session


def test_evaluate_runs_every_mode_on_a_model(session: Session) -> None:
    queries = {f"q{i}": topic for i, topic in enumerate(TOPICS)}
    qrels = {f"q{i}": {f"d{i}": 1, f"d{i + 4}": 1} for i in range(len(TOPICS))}
    report = evaluate(session, Abstract, queries, qrels)
    assert list(report.modes) == list(MODES)
    bm25 = report.modes["bm25"]
    # Each topic's two abstracts are the only rows holding its words.
    assert bm25.metrics["nDCG@10"] == pytest.approx(1.0)
    assert bm25.metrics["R@100"] == 1.0 and bm25.metrics["RR@10"] == 1.0
    assert set(bm25.per_query) == set(qrels)
    assert len(bm25.latencies_ms) == 4 and bm25.median_ms > 0
    assert report.modes["dense"].p_value is None
    assert report.modes["blend"].metrics["nDCG@10"] == pytest.approx(1.0)
    table = report.table()
    assert table.splitlines()[0].startswith("| mode | nDCG@10 | Recall@100 | MRR@10 |")
    assert "| bm25 | 1.000 | 1.000 | 1.000 |" in table
    numbers = report.as_dict()
    header = [cell.strip() for cell in table.splitlines()[0].split("|")[1:-1]]
    assert numbers["columns"] == header == report.headers()
    assert set(numbers["modes"]["bm25"]) == {*header, "per_query"}
    assert numbers["modes"]["bm25"]["nDCG@10"] == pytest.approx(1.0)


def test_evaluate_refuses_what_cannot_be_judged(session: Session) -> None:
    with pytest.raises(vecorm.ConfigurationError, match="unknown mode"):
        evaluate(session, Abstract, {"q": "x"}, {"q": {"d1": 1}}, modes=["bm26"])
    with pytest.raises(vecorm.ConfigurationError, match="no text"):
        evaluate(session, Abstract, {"q": "x"}, {"q": {"d1": 1}, "r": {"d2": 1}})
    with pytest.raises(vecorm.ConfigurationError, match="k=10"):
        evaluate(session, Abstract, {"q": "x"}, {"q": {"d1": 1}}, k=5)


def test_embedding_cache_embeds_each_text_once(tmp_path: Path) -> None:
    embedder = vecorm.testing.FakeEmbedder(dimensions=8, max_batch_size=2)
    cache = EmbeddingCache(tmp_path)
    first = cache.embed(embedder, ["a", "b", "c"])
    again = cache.embed(embedder, ["c", "a", "d"])
    assert [len(batch) for batch in embedder.calls] == [2, 1, 1]
    np.testing.assert_array_equal(again[0], first[2])
    np.testing.assert_array_equal(again[1], first[0])


def test_load_beir_reads_the_layout(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "body"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "what"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    collection = load_beir(tmp_path)
    assert collection.corpus == {"d1": ("T", "body")}
    assert collection.queries == {"q1": "what"} and collection.qrels == {"q1": {"d1": 1}}
    with pytest.raises(vecorm.ConfigurationError, match="--split"):
        load_beir(tmp_path, "dev")


def test_default_modes_leave_out_bm25_for_a_model_without_it(session: Session) -> None:
    embedder = PlainAbstract.__vecorm__.embedder
    assert embedder is not None
    session.add_all(
        PlainAbstract(id=f"p{i}", body=topic, embedding=embedder.embed([topic])[0])
        for i, topic in enumerate(TOPICS)
    )
    session.commit()
    report = evaluate(session, PlainAbstract, {"q": TOPICS[0]}, {"q": {"p0": 1}})
    assert "bm25" not in report.modes and "blend" in report.modes
    assert report.modes["ts_rank"].metrics["nDCG@10"] == 1.0
