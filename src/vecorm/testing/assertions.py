"""Assertions for your own test suite: is the index used, and how good are the neighbours?

::

    from vecorm.testing.assertions import assert_index_used, assert_recall

    def test_search_uses_hnsw(session):
        stmt = Document.nearest(query, k=10).where(Document.category == "ml")
        assert_index_used(session, stmt, "ix_documents_embedding_hnsw")
        assert_recall(session, stmt, at_least=0.95)

Both run inside the session's current transaction and leave no setting behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Executable, inspect, literal, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import func, true

from vecorm.search.explain import SCAN_NODES as SCAN_NODES
from vecorm.search.explain import explain as explain
from vecorm.search.explain import indexes_used as indexes_used
from vecorm.search.explain import plan_nodes as plan_nodes


def assert_index_used(
    target: Session | Connection, stmt: Executable, index: str | None = None
) -> list[str]:
    """Fail unless the plan of ``stmt`` scans ``index`` (any index when ``None``).

    Returns the names of the indexes used. A tiny table may rightly be read sequentially:
    give your test enough rows, or ``SET LOCAL enable_seqscan = off`` first.
    """
    used = indexes_used(target, stmt)
    if (index is None and not used) or (index is not None and index not in used):
        plan = json.dumps(explain(target, stmt)["Plan"], indent=2)
        wanted = f"index {index!r}" if index else "an index"
        raise AssertionError(
            f"expected the plan to use {wanted}, it uses {used or 'none'}:\n{plan}"
        )
    return used


def _row_key(row: Row[Any]) -> Any:
    first = row[0]
    state = inspect(first, raiseerr=False)
    identity = getattr(state, "identity", None)
    return identity if identity is not None else first


def _execute_exact(target: Session | Connection, stmt: Executable) -> list[Row[Any]]:
    """Run ``stmt`` with index scans disabled inside a savepoint rolled back afterwards.

    pgvector's indexes are only reachable through index scans, so the planner must compute
    every distance: the exact answer to the same SQL, filters and joins included. (A vecorm
    search may ask for ``enable_sort = off``, which would make the index scan as unwelcome as
    the exact scan's sort: it is turned back on for this run.)
    """
    nested = target.begin_nested()
    try:
        target.execute(select(func.set_config(literal("enable_indexscan"), "off", true())))
        return list(target.execute(stmt.execution_options(vecorm_enable_sort="on")))
    finally:
        nested.rollback()  # SET LOCAL survives RELEASE, not ROLLBACK TO SAVEPOINT


def recall_at_k(
    target: Session | Connection,
    stmt: Executable,
    k: int | None = None,
    *,
    key: Callable[[Row[Any]], Any] = _row_key,
) -> float:
    """Share of the exact top ``k`` that ``stmt`` (run normally) returns in its top ``k``.

    ``k`` defaults to the number of rows the exact run returns; rows are told apart by the
    primary key of their first entity (or their first column). 1.0 when nothing is expected.
    """
    approximate = [key(row) for row in target.execute(stmt)]
    exact = [key(row) for row in _execute_exact(target, stmt)]
    depth = len(exact) if k is None else k
    expected = exact[:depth]
    if not expected:
        return 1.0
    return len(set(approximate[:depth]) & set(expected)) / len(expected)


def assert_recall(
    target: Session | Connection,
    stmt: Executable,
    *,
    at_least: float,
    k: int | None = None,
    queries: Sequence[Executable] = (),
) -> float:
    """Fail unless the mean recall@k of ``stmt`` (and any other ``queries``) >= ``at_least``."""
    statements = [stmt, *queries]
    recalls = [recall_at_k(target, each, k) for each in statements]
    mean = sum(recalls) / len(recalls)
    if mean < at_least:
        raise AssertionError(
            f"recall@{k or 'k'} is {mean:.3f} (per query: {[round(r, 3) for r in recalls]}), "
            f"expected at least {at_least}"
        )
    return mean
