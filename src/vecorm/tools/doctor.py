"""``vecorm doctor``: is this database ready for vecorm, and are these models healthy?

Checks the server and pgvector versions, whether the ``vector`` extension is installed, and for
each searchable model: its table and vector column (type and width), the provider's width,
the vector and full-text indexes (present and valid), whether ``EXPLAIN`` of a typical
nearest-neighbour query uses the vector index, whether that index fits the server's
``shared_buffers``, and how many rows are stale::

    from vecorm.tools.doctor import diagnose

    with Session(engine) as session:
        for finding in diagnose(session, [Document], embedder=embedder):
            print(finding.status, finding.subject, finding.message)

Nothing is written: every query runs in a transaction that is rolled back.

``vecorm doctor --json`` prints :func:`doctor_report` instead of the table: one JSON document
on stdout (``{"database", "ok", "problems", "warnings", "findings": [{"status", "subject",
"message", "hint"}, ...]}``), with anything else (which server it is checking) on stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sqlalchemy import (
    URL,
    column,
    func,
    literal,
    literal_column,
    select,
    table,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from vecorm.embedding.backfill import columns_of, stale_count
from vecorm.embedding.embedders.base import Embedder
from vecorm.errors import VecormError
from vecorm.schema.config import search_config
from vecorm.schema.embeddings import EmbeddingSlot, embedding_slots
from vecorm.schema.pgcatalog import pg, qualified_in
from vecorm.search.explain import indexes_used

__all__ = [
    "Finding",
    "buffers_finding",
    "diagnose",
    "doctor_report",
    "format_findings",
    "has_failures",
    "run_doctor",
    "server_versions",
]

Status = Literal["ok", "info", "warn", "fail"]

#: pgvector release that added iterative index scans (filtered search that keeps its promise).
ITERATIVE_SCAN_VERSION = (0, 8, 0)

#: Quotes names as ``to_regclass`` reads them (a ``%`` stays single: they are bound values).
PREPARER = postgresql.dialect(paramstyle="named").identifier_preparer  # type: ignore[no-untyped-call]

_extension = table("pg_extension", column("extname"), column("extversion"))
_available = table("pg_available_extensions", column("name"), column("default_version"))
_indexes = table("pg_indexes", column("schemaname"), column("tablename"), column("indexname"))


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``status`` is ok, info, warn or fail; ``hint`` says what to do."""

    status: Status
    subject: str
    message: str
    hint: str | None = None


def has_failures(findings: Iterable[Finding]) -> bool:
    """Whether any finding is a failure (``vecorm doctor`` then exits with status 1)."""
    return any(finding.status == "fail" for finding in findings)


def server_versions(session: Session) -> tuple[str, str | None, str | None]:
    """``(server_version, installed pgvector or None, available pgvector or None)``."""
    server = session.execute(select(func.current_setting("server_version"))).scalar_one()
    installed = session.execute(
        select(_extension.c.extversion).where(_extension.c.extname == "vector")
    ).scalar_one_or_none()
    available = session.execute(
        select(_available.c.default_version).where(_available.c.name == "vector")
    ).scalar_one_or_none()
    return str(server).split()[0], installed, available


def _version_tuple(value: str) -> tuple[int, ...]:
    parts = []
    for part in value.split("."):
        digits = "".join(character for character in part if character.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def diagnose(
    session: Session,
    models: Sequence[type[Any]] = (),
    *,
    embedder: Embedder | Mapping[type[Any], Embedder] | None = None,
) -> list[Finding]:
    """Check the server, pgvector and each of ``models``; see the module docstring.

    ``embedder`` (one for all models, or one per model; else each model's own
    ``SearchConfig(embedder=...)``) is used for the width check and the stale count; without
    one those checks are reported as skipped.
    """
    findings: list[Finding] = []
    try:
        findings.extend(_server_findings(session))
        if any(finding.status == "fail" for finding in findings):
            return findings  # without the extension no model check can run
        for model in models:
            chosen = embedder.get(model) if isinstance(embedder, Mapping) else embedder
            findings.extend(_model_findings(session, model, chosen))
    finally:
        session.rollback()
    return findings


_LABELS = {"ok": "ok", "info": "info", "warn": "WARN", "fail": "FAIL"}


def format_findings(findings: Iterable[Finding]) -> list[str]:
    """The report's lines: a status column, the subject, the message, and indented hints."""
    listed = list(findings)
    width = max((len(finding.subject) for finding in listed), default=6)
    lines = []
    for finding in listed:
        lines.append(
            f"  {_LABELS[finding.status]:<5} {finding.subject:<{width}}  {finding.message}"
        )
        if finding.hint:
            lines.append(f"  {'':<5} {'':<{width}}  hint: {finding.hint}")
    return lines


def doctor_report(findings: Sequence[Finding], database: str) -> dict[str, Any]:
    """The report as JSON-ready data: ``ok`` is ``False`` when a check failed.

    ``json.dumps(doctor_report(diagnose(session, [Document]), "postgresql://..."))``
    """
    return {
        "database": database,
        "ok": not has_failures(findings),
        "problems": sum(finding.status == "fail" for finding in findings),
        "warnings": sum(finding.status == "warn" for finding in findings),
        "findings": [
            {
                "status": finding.status,
                "subject": finding.subject,
                "message": finding.message,
                "hint": finding.hint,
            }
            for finding in findings
        ],
    }


def run_doctor(
    url: URL | None,
    model_paths: Sequence[str] = (),
    *,
    embedder_name: str | None = None,
    echo: Callable[[str], object] = print,
    as_json: bool = False,
    note: Callable[[str], object] | None = None,
) -> bool:
    """``vecorm doctor``: print the report for ``url`` (else a scratch embedded server).

    ``as_json`` echoes one JSON document (:func:`doctor_report`) instead of the table, and the
    line naming the server goes to ``note`` (the command's stderr). Returns ``False`` when a
    check failed.
    """
    import json

    from vecorm.tools.clitools import connect, load_embedder, load_model
    from vecorm.tools.embedded import database

    header = (note or (lambda _: None)) if as_json else echo
    models = [load_model(path) for path in model_paths]
    embedders = {
        model: load_embedder(embedder_name, dimensions=search_config(model).dimensions)
        for model in models
        if embedder_name
    }
    with ExitStack() as stack:
        if url is None:
            resolved = stack.enter_context(database())
            target = "scratch embedded server"
        else:
            resolved = url  # not vecorm.database(url): it would create a missing extension
            target = url.render_as_string()
        header(f"vecorm doctor: {target}")
        session = stack.enter_context(connect(resolved))
        findings = diagnose(session, models, embedder=embedders or None)
    problems = sum(finding.status == "fail" for finding in findings)
    if as_json:
        echo(json.dumps(doctor_report(findings, target), indent=2))
        return problems == 0
    for line in format_findings(findings):
        echo(line)
    warnings = sum(finding.status == "warn" for finding in findings)
    if problems:
        echo(f"{problems} problem{'s' if problems != 1 else ''} found")
    elif warnings:
        echo(f"no problems, {warnings} warning{'s' if warnings != 1 else ''}")
    else:
        echo("all checks passed")
    return problems == 0


def _server_findings(session: Session) -> list[Finding]:
    server, installed, available = server_versions(session)
    database = session.execute(select(func.current_database())).scalar_one()
    findings = [Finding("ok", "server", f"PostgreSQL {server}, database {database}")]
    if installed is None and available is None:
        findings.append(
            Finding(
                "fail",
                "pgvector",
                "pgvector is not installed on this server",
                "install it on the database host (e.g. the postgresql-NN-pgvector package), "
                "then CREATE EXTENSION vector",
            )
        )
    elif installed is None:
        findings.append(
            Finding(
                "fail",
                "pgvector",
                f"the vector extension is missing from database {database} "
                f"(version {available} is available)",
                "run CREATE EXTENSION vector, or op.create_vector_extension() in a migration",
            )
        )
    else:
        status: Status = "ok"
        message = f"vector extension {installed} installed"
        hint = None
        if available and _version_tuple(available) > _version_tuple(installed):
            status, hint = "warn", "ALTER EXTENSION vector UPDATE"
            message += f"; {available} is available"
        if _version_tuple(installed) < ITERATIVE_SCAN_VERSION:
            status = "warn"
            message += "; filtered searches need 0.8.0 for iterative index scans"
            hint = hint or "ALTER EXTENSION vector UPDATE (after upgrading pgvector)"
        findings.append(Finding(status, "pgvector", message, hint))
    return findings


def _model_findings(session: Session, model: type[Any], embedder: Embedder | None) -> list[Finding]:
    name = model.__name__
    columns = columns_of(model)
    table_name = columns.table.name
    schema = getattr(columns.table, "schema", None)
    qualified = _qualified(columns.table)
    exists = session.execute(select(func.to_regclass(qualified))).scalar_one()
    if exists is None:
        return [
            Finding(
                "fail",
                name,
                f"table {qualified} does not exist",
                "create it: `alembic upgrade head`, or metadata.create_all(engine)",
            )
        ]
    rows = session.execute(select(func.count()).select_from(columns.table)).scalar_one()
    findings: list[Finding] = []
    present = _present_indexes(session, schema, table_name)
    for slot in embedding_slots(model):
        # the embedder given is the default embedding's; another one uses its own
        provider = embedder if slot.is_default else None
        findings.extend(
            _embedding_findings(session, model, slot, provider, qualified, rows, present)
        )
        if slot.is_default:
            findings.extend(_gin_findings(model, present))
            bm25_finding = _bm25_finding(session, model)
            if bm25_finding is not None:
                findings.append(bm25_finding)
                findings.extend(_row_security_findings(session, model, qualified))
    return findings


def _row_security_findings(session: Session, model: type[Any], qualified: str) -> list[Finding]:
    """Row-level security on a table with BM25 statistics: vecorm's searches keep to the rows
    a role sees, but the side tables hold every row's words and carry no policy."""
    relation = table("pg_class", column("oid"), column("relrowsecurity"))
    secured = session.execute(
        select(relation.c.relrowsecurity).where(relation.c.oid == func.to_regclass(qualified))
    ).scalar()
    if not secured:
        return []
    return [
        Finding(
            "warn",
            model.__name__,
            f"row-level security on {qualified}: searches rank only the rows a role sees, but "
            "the BM25 side tables hold every row's words (postings) and vocabulary (terms) "
            "with no policy, and vecorm.grant_access lets the role read them",
            "grant the side tables only to roles that may see every row, or drop BM25: "
            "SearchConfig(bm25=None) ranks text with ts_rank on the table itself "
            "(docs/security.md, row-level security)",
        )
    ]


def _embedding_findings(
    session: Session,
    model: type[Any],
    slot: EmbeddingSlot,
    embedder: Embedder | None,
    qualified: str,
    rows: int,
    present: set[str],
) -> list[Finding]:
    """The checks of one embedding: its column, its provider, its index and its stale rows
    (subject ``Document``, or ``Document.title_embedding`` for another embedding)."""
    config = slot.config
    columns = columns_of(model, slot.attribute)
    name = columns.owner  # Document, or Document.title_embedding
    expected_type = f"{config.storage}({config.dimensions})"
    stored_type = _column_type(session, qualified, columns.embedding.name)
    if stored_type is None:
        return [
            Finding(
                "fail",
                name,
                f"{qualified} has no column {columns.embedding.name}",
                "generate a migration: `alembic revision --autogenerate`, then upgrade",
            )
        ]
    findings: list[Finding] = []
    if stored_type != expected_type:
        findings.append(
            Finding(
                "fail",
                name,
                f"{qualified}.{columns.embedding.name} is {stored_type}, "
                f"the model declares {expected_type}",
                "migrate the column (vecorm.embedding.reembed.ModelChange) or fix SearchConfig",
            )
        )
    elif slot.is_default:
        findings.append(
            Finding(
                "ok",
                name,
                f"table {qualified}: {rows} rows, {columns.embedding.name} {stored_type}",
            )
        )
    else:
        findings.append(Finding("ok", name, f"column {columns.embedding.name} {stored_type}"))
    provider = embedder or config.embedder
    if provider is None:
        findings.append(
            Finding(
                "info",
                name,
                "no embedder configured: width and stale checks skipped",
                "pass --embedder (local, hashing, openai or MODULE:NAME)"
                if slot.is_default
                else f"set vecorm.Embedding(embedder=...) for {slot.attribute}",
            )
        )
    elif provider.dimensions != config.dimensions:
        findings.append(
            Finding(
                "fail",
                name,
                f"embedder {provider.model_name!r} returns {provider.dimensions} values, "
                f"the column holds {config.dimensions}",
                "use a provider of the column's width, or change the column "
                "(vecorm.embedding.reembed.ModelChange)",
            )
        )
        provider = None
    else:
        findings.append(
            Finding("ok", name, f"embedder {provider.model_name} ({provider.dimensions}-d)")
        )
    index = _declared_indexes(model, columns.embedding.name).get("vector")
    findings.extend(_vector_index_findings(session, model, slot, name, index, rows, present))
    if provider is not None:
        findings.append(_stale_finding(session, model, slot, name, provider, rows))
    return findings


def _column_type(session: Session, qualified: str, column_name: str) -> str | None:
    attribute = table(
        "pg_attribute",
        column("attrelid"),
        column("attname"),
        column("atttypid"),
        column("atttypmod"),
        column("attisdropped"),
    )
    value = session.execute(
        select(func.format_type(attribute.c.atttypid, attribute.c.atttypmod)).where(
            attribute.c.attrelid == func.to_regclass(qualified),
            attribute.c.attname == column_name,
            attribute.c.attisdropped.is_(False),
        )
    ).scalar_one_or_none()
    return None if value is None else str(value)


def _present_indexes(session: Session, schema: str | None, table_name: str) -> set[str]:
    return set(
        session.execute(
            select(_indexes.c.indexname).where(
                _indexes.c.tablename == table_name,
                _indexes.c.schemaname == (schema or func.current_schema()),
            )
        ).scalars()
    )


def _gin_findings(model: type[Any], present: set[str]) -> list[Finding]:
    gin = _declared_indexes(model, columns_of(model).embedding.name).get("gin")
    if gin is None:
        return []
    if gin in present:
        return [Finding("ok", model.__name__, f"full-text index {gin} present")]
    return [
        Finding(
            "warn",
            model.__name__,
            f"full-text index {gin} is missing: text and hybrid search scan every row",
            "generate a migration: `alembic revision --autogenerate`",
        )
    ]


def _vector_index_findings(
    session: Session,
    model: type[Any],
    slot: EmbeddingSlot,
    name: str,
    index: str | None,
    rows: int,
    present: set[str],
) -> list[Finding]:
    if slot.config.index is None or index is None:
        return [
            Finding("info", name, "no vector index declared: nearest() scans every row (exact)")
        ]
    if index not in present:
        return [
            Finding(
                "fail",
                name,
                f"vector index {index} is missing: nearest() scans every row",
                "generate a migration: `alembic revision --autogenerate`, then upgrade",
            )
        ]
    return [
        _explain_finding(session, model, slot, name, index, rows),
        _buffers_finding(session, model, name, index),
    ]


def _buffers_finding(session: Session, model: type[Any], name: str, index: str) -> Finding:
    qualified = _qualified_name(getattr(columns_of(model).table, "schema", None), index)
    index_bytes, buffer_bytes = session.execute(
        select(
            func.coalesce(pg.pg_relation_size(pg.to_regclass(literal(qualified))), literal(0)),
            pg.pg_size_bytes(pg.current_setting(literal("shared_buffers"))),
        )
    ).one()
    return buffers_finding(name, index, int(index_bytes), int(buffer_bytes))


def buffers_finding(name: str, index: str, index_bytes: int, buffer_bytes: int) -> Finding:
    """Whether the vector index ``index`` is larger than the server's ``shared_buffers``: a
    search then reads its pages from the operating system's cache (measured at 1,000,000 x 64
    rows, a 544 MB index and 128 MB of buffers: 16 ms a search, 1.4 ms with every page in the
    buffers; docs/querying.md):

    >>> buffers_finding("Document", "ix_documents_hnsw", 544 << 20, 128 << 20).status
    'warn'
    """
    sizes = f"{index} is {_megabytes(index_bytes)}, shared_buffers {_megabytes(buffer_bytes)}"
    if index_bytes <= buffer_bytes:
        return Finding("ok", name, sizes)
    return Finding(
        "warn",
        name,
        f"{sizes}: searches read the index's pages from the operating system's cache, "
        "several times slower than from the buffers",
        "raise shared_buffers above the index's size (it takes a server restart), "
        "or search with HNSW(ef_search=40), which reads about a third of the pages",
    )


def _megabytes(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MB" if size >= 1 << 20 else f"{size / 1024:,.0f} kB"


def _bm25_finding(session: Session, model: type[Any]) -> Finding | None:
    """Are the BM25 side tables and their triggers there (text and hybrid search need them)?"""
    from vecorm.search import bm25

    if not bm25.has_bm25(model):
        return None
    name = model.__name__
    tables = bm25.side_tables(model)
    hint = "generate a migration: `alembic revision --autogenerate`, then upgrade"
    missing = [
        side.name
        for side in (tables.postings, tables.terms, tables.deltas)
        if session.execute(select(func.to_regclass(_qualified(side)))).scalar_one() is None
    ]
    if missing:
        return Finding(
            "fail",
            name,
            f"BM25 statistics tables missing ({', '.join(missing)}): text and hybrid search fail",
            hint,
        )
    trigger = table("pg_trigger", column("tgrelid"), column("tgname"))
    present = set(
        session.execute(
            select(trigger.c.tgname).where(
                trigger.c.tgrelid == func.to_regclass(_qualified(tables.table))
            )
        ).scalars()
    )
    absent = [event for event in bm25.trigger_names(tables) if event not in present]
    if absent:
        return Finding(
            "fail",
            name,
            f"BM25 triggers missing ({', '.join(absent)}): the statistics go stale on writes",
            hint,
        )
    stored = session.execute(
        select(
            func.pg_catalog.obj_description(
                func.pg_catalog.to_regprocedure(
                    _qualified_name(tables.table.schema, tables.function_name("insert")) + "()"
                ),
                "pg_proc",
            )
        )
    ).scalar_one()
    if stored != bm25.COMMENT_PREFIX + bm25.signature(tables):
        return Finding(
            "fail",
            name,
            "BM25 functions differ from this model and vecorm version (an earlier release, "
            "other k1/b, or statistics built from another tsvector expression)",
            hint,
        )
    drifted = session.execute(_postings_drift(tables)).scalar_one()
    if drifted:
        return Finding(
            "fail",
            name,
            f"BM25 postings of sampled rows differ from their {tables.config.tsvector_column} "
            f"({drifted} lexemes): the statistics are stale",
            f"rebuild them: vecorm.search.bm25.rebuild(session, {name}); session.commit()",
        )
    return Finding("ok", name, "BM25 statistics tables, triggers and functions up to date")


#: Rows whose postings :func:`_postings_drift` compares with their tsvector.
DRIFT_SAMPLE = 200


def _postings_drift(tables: Any) -> Any:
    """``SELECT`` the number of (row, lexeme, tf) that differ between the postings and the
    tsvector of the first :data:`DRIFT_SAMPLE` rows."""
    table_keys = [tables.table.c[key] for key in tables.keys]
    sample = (
        select(*table_keys, tables.table.c[tables.config.tsvector_column].label("vector"))
        .limit(DRIFT_SAMPLE)
        .cte("sample")
    )
    lexemes = pg.unnest(sample.c.vector).table_valued("lexeme", "positions").render_derived("u")
    sample_keys = [sample.c[key] for key in tables.keys]
    expected = select(
        *sample_keys,
        lexemes.c.lexeme,
        func.coalesce(pg.array_length(lexemes.c.positions, literal_column("1")), 1),
    ).select_from(sample.join(lexemes, true()))
    postings = tables.postings
    stored = select(
        *(postings.c[key] for key in tables.keys), postings.c.term, postings.c.tf
    ).where(tuple_(*(postings.c[key] for key in tables.keys)).in_(select(*sample_keys)))
    difference = union_all(expected.except_all(stored), stored.except_all(expected)).subquery(
        "drift"
    )
    return select(func.count()).select_from(difference)


def _qualified(side: Any) -> str:
    return _qualified_name(side.schema, side.name)


def _qualified_name(schema: str | None, name: str) -> str:
    """``"schema"."name"``, quoted where needed, as ``to_regclass`` reads it."""
    return qualified_in(PREPARER, schema, name)


def _declared_indexes(model: type[Any], vector_column: str) -> dict[str, str]:
    """Names of the model's declared index on ``vector_column`` (``"vector"``) and of its
    GIN index (``"gin"``)."""
    config = search_config(model)
    found: dict[str, str] = {}
    for index in getattr(columns_of(model).table, "indexes", ()):
        method = index.dialect_options["postgresql"].get("using")
        names = {indexed.name for indexed in index.columns}  # expressions' columns too
        if method in ("hnsw", "ivfflat") and vector_column in names:
            found["vector"] = str(index.name)
        elif method == "gin" and config.tsvector_column in names:
            found["gin"] = str(index.name)
    return found


def _explain_finding(
    session: Session, model: type[Any], slot: EmbeddingSlot, name: str, index: str, rows: int
) -> Finding:
    config = slot.config
    probe = np.random.default_rng(0).standard_normal(config.dimensions).astype(np.float32)
    probe /= np.linalg.norm(probe)
    statement = model.nearest(probe, k=10, embedding=slot.attribute)
    with session.begin_nested():
        used = indexes_used(session, statement)
    if index in used:
        return Finding("ok", name, f"EXPLAIN nearest(k=10): Index Scan using {index}")
    with session.begin_nested():
        session.execute(select(func.set_config("enable_seqscan", "off", literal(True))))
        forced = indexes_used(session, statement)
        session.execute(select(func.set_config("enable_seqscan", "on", literal(True))))
    if index in forced:
        return Finding(
            "ok" if rows < 10_000 else "warn",
            name,
            f"EXPLAIN nearest(k=10): the planner reads the {rows} rows exactly "
            f"(cheaper at this size); {index} is used once the table grows",
            None if rows < 10_000 else "run ANALYZE on the table so the planner sees its size",
        )
    return Finding(
        "fail",
        name,
        f"EXPLAIN nearest(k=10): {index} cannot serve the query (plan uses {used or 'no index'})",
        "the index's operator class must match SearchConfig(distance=...); "
        "regenerate it with `alembic revision --autogenerate`",
    )


def _stale_finding(
    session: Session,
    model: type[Any],
    slot: EmbeddingSlot,
    name: str,
    embedder: Embedder,
    rows: int,
) -> Finding:
    try:
        stale = stale_count(session, model, embedder=embedder, embedding=slot.attribute)
    except VecormError as exc:
        return Finding("warn", name, f"stale rows not counted: {exc}")
    if stale == 0:
        return Finding(
            "ok", name, f"no stale rows: every row with text is embedded by {embedder.model_name}"
        )
    command = f"vecorm backfill {model.__module__}:{model.__qualname__}"
    return Finding(
        "warn",
        name,
        f"{stale} of {rows} rows are stale (no embedding, edited text, or another model)",
        command if slot.is_default else f"{command} --embedding {slot.attribute}",
    )
