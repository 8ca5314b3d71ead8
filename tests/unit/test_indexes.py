from __future__ import annotations

from vecorm.schema.generated import tsvector_expression
from vecorm.schema.indexes import index_name


def test_index_names_are_deterministic_and_fit_postgres() -> None:
    assert index_name("documents", "embedding", "hnsw") == "ix_documents_embedding_hnsw"
    long_name = index_name("t" * 60, "embedding", "hnsw")
    assert len(long_name) == 63
    assert long_name == index_name("t" * 60, "embedding", "hnsw")
    assert long_name != index_name("t" * 60, "embedding", "ivfflat")


def test_tsvector_expression_quotes_identifiers_and_weights() -> None:
    sql = tsvector_expression(["title", "Body Text"], "english", {"title": "A"})
    assert sql == (
        "pg_catalog.setweight(pg_catalog.to_tsvector('english'::pg_catalog.regconfig, "
        "coalesce(title, '')), 'A'::\"char\") OPERATOR(pg_catalog.||) "
        "pg_catalog.to_tsvector('english'::pg_catalog.regconfig, coalesce(\"Body Text\", ''))"
    )
