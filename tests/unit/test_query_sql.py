"""Compile-only checks of the SQL the query layer builds (no server needed)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import Select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.search.settings import (
    SETTINGS,
    ByFilter,
    index_search_options,
    search_options,
    settings_from_options,
    stored_out_of_line,
)

DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


class Base(DeclarativeBase):
    pass


class Doc(vecorm.Searchable, Base):
    __tablename__ = "unit_docs"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class Ivf(vecorm.Searchable, Base):
    __tablename__ = "unit_ivf"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",),
        dimensions=3,
        distance="l2",
        index=vecorm.IVFFlat(lists=10, probes=3, max_probes=5),
        language="simple",
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class Plain(vecorm.Searchable, Base):
    __tablename__ = "unit_plain"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3, distance="l1", index=None)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


def sql(stmt: Select[object]) -> str:
    """The SQL as it reaches the driver (LIMITs are rendered as numbers at execution)."""
    compiled = stmt.compile(dialect=DIALECT, compile_kwargs={"render_postcompile": True})
    return " ".join(str(compiled).split())


def test_nearest_orders_by_the_index_operator_then_primary_key() -> None:
    compiled = sql(Doc.nearest([1, 2, 3], k=5))
    assert "unit_docs.embedding <=> CAST(%(param_1)s AS VECTOR(3)) AS distance" in compiled
    # A literal LIMIT: a bound one lets a prepared statement's generic plan skip the index.
    assert compiled.endswith("ORDER BY distance, unit_docs.id LIMIT 5")
    assert "unit_docs.embedding IS NOT NULL" in compiled
    assert "[1" not in compiled  # the vector is a parameter, never SQL text


@pytest.mark.parametrize(("model", "operator"), [(Doc, "<=>"), (Ivf, "<->"), (Plain, "<+>")])
def test_each_metric_uses_its_operator(model: type, operator: str) -> None:
    assert f"embedding {operator} CAST" in sql(model.nearest([0, 0, 1]))  # type: ignore[attr-defined]
    assert "embedding <#> CAST" in sql(Doc.nearest([0, 0, 1], distance="inner_product"))


def test_exact_threshold_and_score() -> None:
    exact = sql(Doc.nearest([1, 2, 3], exact=True))
    assert re.search(
        r"ORDER BY \(?unit_docs\.embedding <=> CAST\(%\(param_1\)s AS VECTOR\(3\)\)\)? \+ %\(",
        exact,
    )
    threshold = sql(Doc.nearest([1, 2, 3], max_distance=0.25, with_score=True))
    assert re.search(r"<=> CAST\(%\(param_1\)s AS VECTOR\(3\)\)\)? <= %\(", threshold)
    assert "AS score" in threshold


def test_distance_to_is_an_expression_on_the_class() -> None:
    expression = Doc.distance_to([1, 0, 0], distance="l2")
    assert str(expression.compile(dialect=DIALECT)).startswith("unit_docs.embedding <-> CAST(")


def test_text_search_sql() -> None:
    compiled = sql(Doc.text_search("error 0x80070057", ranking="ts_rank"))  # BM25 is default
    assert re.search(
        r"pg_catalog\.replace\(CAST\(pg_catalog\.plainto_tsquery\(CAST\(%\(param_1\)s(::VARCHAR)? "
        r"AS REGCONFIG\), "
        r"%\(param_2\)s(::VARCHAR)?\) AS TEXT\)",
        compiled,
    )
    # pg_catalog's functions are called qualified (docs/security.md).
    assert "unit_docs.search_vector @@ CAST(pg_catalog.replace(" in compiled
    assert "pg_catalog.ts_rank(unit_docs.search_vector," in compiled
    params = Doc.text_search("error 0x80070057", ranking="ts_rank").compile(dialect=DIALECT).params
    assert "english" in params.values() and "error 0x80070057" in params.values()
    assert "pg_catalog.websearch_to_tsquery(" in sql(
        Doc.text_search("x", mode="websearch", ranking="ts_rank")
    )
    assert "pg_catalog.phraseto_tsquery(" in sql(
        Doc.text_search("x", mode="phrase", ranking="ts_rank")
    )
    assert "replace(" not in sql(Doc.text_search("x", mode="all", ranking="ts_rank"))
    simple = Ivf.text_search("x").compile(dialect=DIALECT).params
    assert "simple" in simple.values()


def test_hybrid_search_is_one_statement_with_both_arms() -> None:
    compiled = sql(
        Doc.hybrid_search("error 0x80070057", vector=[1, 2, 3], k=5, where=Doc.body != "x")
    )
    assert compiled.count("FULL OUTER JOIN") == 1
    # the filter sits in both arms, and in the semantic arm's exact branch
    assert compiled.count("unit_docs.body != %(") == 3
    assert "row_number() OVER (ORDER BY semantic_candidates.distance ASC" in compiled
    # Min-max over the fused rows, whose scores are completed where an arm missed them.
    assert "max(completed.distance) OVER ()" in compiled
    assert "min(completed.text_score) OVER ()" in compiled
    assert "WHERE fused.text_score IS NULL" in compiled  # the rows to score lexically
    # ... with the statistics the lexical arm computed: one set in the statement
    assert compiled.count("bm25_terms AS") == 1 and "bm25_fill_terms" not in compiled
    assert "coalesce(fused.distance, unit_docs.embedding <=> " in compiled
    assert "row_number() OVER (ORDER BY lexical_candidates.score DESC" in compiled
    assert compiled.endswith("ORDER BY score DESC, unit_docs.id LIMIT 5")
    assert "LIMIT 100)" in compiled  # each arm's depth, literal too
    assert "AS NUMERIC" not in compiled  # min-max normalisation stays in float8
    rrf = sql(Doc.hybrid_search("x", vector=[1, 2, 3], method="rrf"))
    assert "semantic.rank" in rrf and "lexical.rank" in rrf
    worst = sql(Doc.hybrid_search("x", vector=[1, 2, 3], missing="worst"))
    assert "completed" not in worst and "max(fused.distance) OVER ()" in worst


def test_search_options_map_to_pgvector_settings() -> None:
    options = search_options(
        ef_search=80, iterative_scan="relaxed_order", max_scan_tuples=5000, probes=4, max_probes=9
    )
    assert settings_from_options(options) == {
        "hnsw.ef_search": "80",
        "hnsw.iterative_scan": "relaxed_order",
        "hnsw.max_scan_tuples": "5000",
        "ivfflat.probes": "4",
        "ivfflat.max_probes": "9",
        "ivfflat.iterative_scan": "relaxed_order",
    }
    assert "vecorm_ivfflat_iterative_scan" not in search_options(iterative_scan="strict_order")
    assert settings_from_options({"unrelated": 1, "vecorm_other": 2}) == {}
    with pytest.raises(vecorm.ConfigurationError, match="unknown execution option"):
        settings_from_options({"vecorm_hnsw_ef_serch": 10})
    with pytest.raises(vecorm.ConfigurationError, match="ef_search"):
        search_options(ef_search=1001)
    with pytest.raises(vecorm.ConfigurationError, match="scan_mem_multiplier"):
        search_options(scan_mem_multiplier=0.5)
    assert set(SETTINGS) == {key for key in SETTINGS if key.startswith("vecorm_")}


def test_index_defaults_follow_the_config() -> None:
    # Searches are planned with their parameter values, even as prepared statements.
    # Filtered searches are the planner's to plan; unfiltered ones are index searches (no
    # exact scan's sort).
    assert index_search_options(vecorm.search_config(Doc), filtered=True) == {
        "vecorm_hnsw_ef_search": 200,
        "vecorm_hnsw_iterative_scan": "relaxed_order",
        "vecorm_plan_cache_mode": "force_custom_plan",
    }
    assert index_search_options(vecorm.search_config(Doc), filtered=False) == {
        "vecorm_hnsw_ef_search": 200,
        "vecorm_hnsw_iterative_scan": "relaxed_order",
        "vecorm_plan_cache_mode": "force_custom_plan",
        "vecorm_enable_sort": "off",
    }
    # Not known when the statement is built: chosen per execution.
    assert index_search_options(vecorm.search_config(Doc), depth=500) == {
        "vecorm_hnsw_ef_search": 500,
        "vecorm_hnsw_iterative_scan": "relaxed_order",
        "vecorm_plan_cache_mode": "force_custom_plan",
        "vecorm_enable_sort": ByFilter(None, "off"),
    }
    # Vectors stored out of line: filtered searches at pgvector's ef_search, whose cost
    # estimate does not push PostgreSQL onto an exact scan it under-costs.
    wide = vecorm.SearchConfig(fields=("a",), dimensions=1536)
    assert index_search_options(wide)["vecorm_hnsw_ef_search"] == ByFilter(40, 200)
    assert index_search_options(wide, depth=300)["vecorm_hnsw_ef_search"] == ByFilter(40, 300)
    assert not stored_out_of_line(vecorm.SearchConfig(fields=("a",), dimensions=384))
    assert stored_out_of_line(vecorm.SearchConfig(fields=("a",), dimensions=768))
    assert not stored_out_of_line(
        vecorm.SearchConfig(fields=("a",), dimensions=768, storage="halfvec")
    )
    assert index_search_options(vecorm.search_config(Ivf), filtered=True) == {
        "vecorm_ivfflat_iterative_scan": "relaxed_order",
        "vecorm_ivfflat_probes": 3,
        "vecorm_ivfflat_max_probes": 5,
        "vecorm_plan_cache_mode": "force_custom_plan",
    }
    default_ivf = vecorm.SearchConfig(fields=("a",), distance="l2", index=vecorm.IVFFlat(lists=100))
    assert index_search_options(default_ivf)["vecorm_ivfflat_probes"] == 10  # sqrt(lists)
    assert index_search_options(vecorm.search_config(Plain)) == {}
    assert Plain.nearest([1, 2, 3]).get_execution_options() == {}
    tuned = vecorm.SearchConfig(
        fields=("a",), index=vecorm.HNSW(ef_search=64, iterative_scan="off", max_scan_tuples=100)
    )
    assert index_search_options(tuned, filtered=True) == {
        "vecorm_hnsw_ef_search": 64,
        "vecorm_hnsw_iterative_scan": "off",
        "vecorm_hnsw_max_scan_tuples": 100,
        "vecorm_plan_cache_mode": "force_custom_plan",
    }
