"""EXPLAIN in SQLAlchemy: the plan of a statement and the indexes it scans (``vecorm doctor``,
``vecorm bench`` and the test kit's assertions read them)::

    indexes_used(session, Document.nearest(q, k=10))   # ['ix_documents_embedding_hnsw']
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

SCAN_NODES = ("Index Scan", "Index Only Scan", "Bitmap Index Scan")


class Explain(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON) <statement>``, with the statement's parameters bound as usual."""

    inherit_cache = False

    def __init__(self, statement: Executable, *, analyze: bool = False) -> None:
        self.statement = statement
        self.analyze = analyze


@compiles(Explain, "postgresql")
def _compile_explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    options = "ANALYZE, FORMAT JSON" if element.analyze else "FORMAT JSON"
    statement: Any = element.statement
    return f"EXPLAIN ({options}) " + compiler.process(statement, **kw)


def explain(target: Session | Connection, stmt: Executable, *, analyze: bool = False) -> Any:
    """The JSON plan of ``stmt`` (``EXPLAIN (FORMAT JSON)``), as a dict: ``plan["Plan"]``."""
    options = {
        key: value
        for key, value in stmt.get_execution_options().items()
        if key.startswith("vecorm_")
    }
    result = target.execute(Explain(stmt, analyze=analyze), execution_options=options)
    document = result.scalar_one()
    if isinstance(document, str):
        document = json.loads(document)
    return document[0]


def plan_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    """Every node of a JSON plan, depth first (init plans and subplans included)."""
    node = plan.get("Plan", plan)
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def indexes_used(target: Session | Connection, stmt: Executable) -> list[str]:
    """Names of the indexes ``stmt``'s plan scans, in plan order."""
    return [
        node["Index Name"]
        for node in plan_nodes(explain(target, stmt))
        if node.get("Node Type") in SCAN_NODES and "Index Name" in node
    ]
