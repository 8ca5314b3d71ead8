"""BM25 ranking computed in SQL from the model's generated ``tsvector``.

PostgreSQL's ``ts_rank`` knows nothing of the collection (how rare a word is, how long a
document is compared to the others), which is why full-text search in PostgreSQL ranks
poorly. BM25 needs three statistics, and vecorm keeps them in side tables that the database
maintains itself, in the writing transaction, whatever writes the rows (ORM, Core, raw SQL,
``COPY``; ``INSERT``, ``UPDATE`` of the text, ``DELETE``, ``TRUNCATE``):

``<table>_bm25_postings``
    One row per (document, lexeme): term frequency ``tf``, document length ``dl`` and an
    ``impact`` (the BM25 term-frequency part at write time). Covering indexes on (lexeme,
    impact) and (document, lexeme) let a query read a lexeme's postings, best first, or probe
    one, without touching the table; MaxScore pruning (queries whose terms hold more than
    ``BM25.prune_above`` postings, 10,000 by default) never reads the postings of very
    common words.
``<table>_bm25_terms``
    Compacted document frequency per lexeme; the row for ``''`` holds the number of
    documents and their total length.
``<table>_bm25_deltas``
    Append-only changes to those counts, one row per lexeme per statement. Writers only
    append, so concurrent writers never wait on a hot row for a common word; every 64th
    statement folds the deltas into ``_terms`` in sorted order under an advisory lock that
    nobody waits for (``pg_try_advisory_xact_lock``).

Statement-level ``AFTER`` triggers with transition tables (one per event: PostgreSQL refuses
transition tables on a multi-event trigger) do the bookkeeping, once per statement, so a
``COPY`` or a multi-row ``INSERT`` is one batch. The mixin declares the tables and
``create_all`` creates them with the triggers; :func:`rebuild` recomputes everything (for
rows that existed before, or after :func:`bulk_load`)::

    class Document(vecorm.Searchable, Base):
        __tablename__ = "documents"
        __vecorm__ = vecorm.SearchConfig(fields=("title", "body"), dimensions=384)
        ...

    session.execute(Document.text_search("statin myopathy risk", k=10)).all()   # BM25
    with vecorm.search.bm25.bulk_load(session, Document):      # statistics rebuilt once at the end
        session.execute(insert(Document), rows)

``BM25(distributed_by="tenant_id")`` keeps the statistics per value of that column instead
(the terms and deltas tables keyed by it, no sequence), for Citus to distribute the side
tables with the table and run the triggers on its shards: a search whose ``where`` names one
tenant ranks with that tenant's statistics, any other with their sum (docs/scaling.md)::

    __vecorm__ = vecorm.SearchConfig(fields=("body",), bm25=vecorm.BM25(distributed_by="tenant_id"))
    Document.text_search("statin", k=10, where=Document.tenant_id == 7)   # the tenant's BM25

The functions, triggers and sequences are DDL elements (:mod:`vecorm.search.bm25.ddl`), one
named object per statement, compiled with the connection's dialect; ``create_statements`` /
``drop_statements`` give their text as migrations render it.

Scores are Lucene's BM25: ``sum qtf * idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl))``
with ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))``, where ``tf`` counts the positions of
the lexeme in the ``tsvector``, ``dl`` the positions of all its lexemes and ``qtf`` the
lexeme's count in the query. See docs/search-quality.md.
"""

from vecorm.search.bm25.maintenance import attach, bulk_load, compact, rebuild
from vecorm.search.bm25.ranking import BM25Arm, query_terms, scores
from vecorm.search.bm25.tables import (
    COMPACT_EVERY,
    BM25Tables,
    declared_tables,
    has_bm25,
    side_tables,
)
from vecorm.search.bm25.triggers import (
    COMMENT_PREFIX,
    SEARCH_PATH,
    TRIGGER_EVENTS,
    create_statements,
    drop_statements,
    function_definitions,
    indexed_expression,
    replica_identity_statement,
    signature,
    table_schema,
    trigger_definitions,
    trigger_names,
)
from vecorm.search.tsquery import MODES, Mode

__all__ = [
    "COMMENT_PREFIX",
    "COMPACT_EVERY",
    "MODES",
    "SEARCH_PATH",
    "TRIGGER_EVENTS",
    "BM25Arm",
    "BM25Tables",
    "Mode",
    "attach",
    "bulk_load",
    "compact",
    "create_statements",
    "declared_tables",
    "drop_statements",
    "function_definitions",
    "has_bm25",
    "indexed_expression",
    "query_terms",
    "rebuild",
    "replica_identity_statement",
    "scores",
    "side_tables",
    "signature",
    "table_schema",
    "trigger_definitions",
    "trigger_names",
]
