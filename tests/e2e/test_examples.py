"""The three exercises under examples/, run as a user would (their ``main``) and as a library."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import URL
from sqlalchemy.orm import Session

import vecorm
from tests.e2e.conftest import url_text
from vecorm.embedding.embedders.base import Embedder


def test_knowledge_base_answers_with_three_passages(
    vecorm_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    import knowledge_base

    argv = ["--database-url", url_text(vecorm_url), "--embedder", "hashing"]
    assert knowledge_base.main([*argv, "why is my table still big after deleting rows"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("65 passages embedded with vecorm-hashing-384\n")
    answers = re.findall(r"^ ?(\d)\. (\d\.\d{3})  (.+) \[(\w+)\]$", output, re.MULTILINE)
    assert [rank for rank, *_ in answers] == ["1", "2", "3"]
    distances = [float(distance) for _, distance, _, _ in answers]
    assert distances == sorted(distances)
    assert answers[0][2:] == ("Table bloat after mass deletes", "maintenance")


def test_knowledge_base_with_the_local_model(vecorm_url: URL, local_embedder: Embedder) -> None:
    import knowledge_base

    engine = vecorm.create_engine(vecorm_url)
    knowledge_base.Base.metadata.create_all(engine)
    with Session(engine) as session:
        assert knowledge_base.load(session, local_embedder) == 65
        expectations = {
            "Why doesn't my table get smaller after deleting rows?": "Table bloat after mass "
            "deletes",
            "two transactions waited for each other's locks": "Deadlocks between transactions",
            "how do I find the queries that cost my server the most time?": "Finding slow "
            "queries with pg_stat_statements",
        }
        for question, title in expectations.items():
            answers = knowledge_base.answer(session, question, local_embedder)
            assert len(answers) == 3
            assert answers[0][0].title == title, (question, [a.title for a, _ in answers])
            assert 0 < answers[0][1] < answers[1][1] <= answers[2][1] < 1
    engine.dispose()


def _pipeline_metrics(outcomes: list, module: object) -> dict[tuple[str, str], dict[str, float]]:
    return {
        (kind, method): module.metrics(outcomes, kind, method)  # type: ignore[attr-defined]
        for kind in ("exact", "vague")
        for method in ("semantic", "hybrid")
    }


def test_hybrid_pipeline_shows_hybrid_winning_on_exact_terms(
    vecorm_url: URL, local_embedder: Embedder
) -> None:
    import hybrid_pipeline

    engine = vecorm.create_engine(vecorm_url)
    hybrid_pipeline.Base.metadata.create_all(engine)
    with Session(engine) as session:
        hybrid_pipeline.load(session, local_embedder)
        outcomes = hybrid_pipeline.run(session, local_embedder)
    engine.dispose()
    scores = _pipeline_metrics(outcomes, hybrid_pipeline)
    exact_semantic, exact_hybrid = scores["exact", "semantic"], scores["exact", "hybrid"]
    assert exact_hybrid["hit@1"] >= 0.875 > exact_semantic["hit@1"]
    assert exact_hybrid["mrr@10"] > exact_semantic["mrr@10"] + 0.1
    # On paraphrases the embedding does the work, and fusing in the text arm does not hurt it.
    assert scores["vague", "hybrid"]["mrr@10"] >= scores["vague", "semantic"]["mrr@10"] - 0.05
    assert scores["vague", "semantic"]["hit@3"] >= 0.75
    by_question = {outcome.question: outcome for outcome in outcomes}
    assert by_question["pg_repack"].rank("hybrid") == 1
    assert by_question["pg_repack"].rank("semantic") != 1


def test_hybrid_pipeline_main_prints_the_comparison(
    vecorm_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    import hybrid_pipeline

    assert (
        hybrid_pipeline.main(["--database-url", url_text(vecorm_url), "--embedder", "hashing"]) == 0
    )
    output = capsys.readouterr().out
    assert output.startswith("16 judged questions, embedder vecorm-hashing-384\n")
    assert "[exact] what does SQLSTATE 40P01 mean?" in output
    assert "    answer: semantic missed, hybrid #1  <- hybrid wins" in output
    table = output.splitlines()[-5:]
    assert table[0].split() == ["kind", "method", "hit@1", "hit@3", "MRR@10"]
    rows = {tuple(line.split()[:2]): [float(v) for v in line.split()[2:]] for line in table[1:]}
    assert rows["exact", "hybrid"][0] == 1.0  # every exact-term question answered first
    assert rows["exact", "hybrid"][2] > rows["exact", "semantic"][2]


def test_index_benchmark_example_writes_its_plot(
    vecorm_url: URL, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import index_benchmark

    plot = tmp_path / "bench.png"
    argv = [
        "--rows",
        "2000",
        "--dimensions",
        "128",
        "--queries",
        "20",
        "--data",
        "clustered",
        "--plot",
        str(plot),
        "--database-url",
        url_text(vecorm_url),
    ]
    assert index_benchmark.main(argv) == 0
    output = capsys.readouterr().out
    assert output.startswith("2,000 clustered 128-d vectors, 20 queries, top 10")
    assert re.search(
        r"^HNSW reaches recall (0\.9\d|1\.00) at ef_search=\d+: [\d.]+x faster",
        output,
        re.MULTILINE,
    )
    assert output.rstrip().endswith(f"plot: {plot}")
    assert plot.read_bytes().startswith(b"\x89PNG") and plot.stat().st_size > 10_000
