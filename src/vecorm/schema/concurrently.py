"""``CREATE INDEX CONCURRENTLY`` with a bound on its waits, and a message naming who it waited for.

A concurrent build waits, more than once, for transactions that began before it: for writers
of the table, then for every transaction whose snapshot is older than the new index (through
their ``virtualxid`` locks). A session left *idle in transaction* (``status(Session(engine))``
with the session never closed, a REPL, a stuck worker) therefore makes it wait forever, and if
that session is the caller's own, the program hangs. :func:`run_concurrently` bounds each wait:

* before the statement it waits, at most ``wait_timeout``, for the transactions already open
  to end, and raises :class:`~vecorm.errors.IndexBuildBlocked` naming them (pid, state,
  application_name, xact_start) if they don't, so no index is created;
* the statement runs with ``lock_timeout = wait_timeout``; if it still times out (a transaction
  began meanwhile), the ``INVALID`` index it leaves is dropped when that is possible, and the
  same error names the sessions.

::

    run_concurrently(connection, lambda: connection.execute(CreateIndex(index)),
                     index="public.ix_documents_embedding_hnsw", wait_timeout=60)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from vecorm.errors import ConfigurationError, IndexBuildBlocked

__all__ = [
    "DEFAULT_WAIT_TIMEOUT",
    "BlockingSession",
    "WaitTimeout",
    "old_transactions",
    "run_concurrently",
    "wait_seconds",
]

#: How long a concurrent index build waits for other transactions, each time it waits.
DEFAULT_WAIT_TIMEOUT = 60.0
#: Seconds (a number) or a PostgreSQL interval (``"90s"``, ``"5min"``); ``None``: no limit.
WaitTimeout = float | int | str | None
#: How often the wait before the build looks at ``pg_stat_activity``.
_POLL_SECONDS = 0.1
_LOCK_NOT_AVAILABLE = "55P03"

_OLD_TRANSACTIONS = text(
    """
    SELECT pid, state, application_name, xact_start, left(query, 120)
    FROM pg_catalog.pg_stat_activity
    WHERE datname = pg_catalog.current_database()
      AND pid <> pg_catalog.pg_backend_pid()
      AND backend_type = 'client backend'
      AND xact_start < :before
      AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)
    ORDER BY xact_start, pid
    """
)


@dataclass(frozen=True)
class BlockingSession:
    """A session whose open transaction a concurrent index build must wait for."""

    pid: int
    state: str | None
    application_name: str
    xact_start: datetime | None
    query: str

    def describe(self) -> str:
        started = self.xact_start.isoformat(sep=" ", timespec="seconds") if self.xact_start else "?"
        name = f" application_name={self.application_name!r}" if self.application_name else ""
        return f"pid {self.pid} ({self.state},{name} transaction since {started}: {self.query!r})"


def wait_seconds(connection: Connection, wait_timeout: WaitTimeout) -> float | None:
    """``wait_timeout`` in seconds (an interval string is read by the server)."""
    if wait_timeout is None:
        return None
    if isinstance(wait_timeout, str):
        seconds = connection.execute(
            text("SELECT EXTRACT(EPOCH FROM CAST(:t AS interval))"), {"t": wait_timeout}
        ).scalar_one()
        value = float(seconds)
    elif isinstance(wait_timeout, bool) or not isinstance(wait_timeout, int | float):
        raise ConfigurationError(
            f"wait_timeout must be seconds or an interval like '90s', not {wait_timeout!r}"
        )
    else:
        value = float(wait_timeout)
    if value <= 0:
        raise ConfigurationError(f"wait_timeout must be positive, not {wait_timeout!r}")
    return value


def old_transactions(connection: Connection, before: datetime) -> list[BlockingSession]:
    """Sessions of this database whose transaction (holding a snapshot or an xid) began
    before ``before``: those a concurrent index build started then waits for."""
    rows = connection.execute(_OLD_TRANSACTIONS, {"before": before})
    return [
        BlockingSession(int(pid), state, str(app or ""), started, str(query or ""))
        for pid, state, app, started, query in rows
    ]


def _now(connection: Connection) -> datetime:
    value: datetime = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
    return value


def _sqlstate(error: DBAPIError) -> str | None:
    orig = error.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _blocked(
    what: str, seconds: float, blockers: list[BlockingSession], leftover: str | None
) -> IndexBuildBlocked:
    names = "; ".join(session.describe() for session in blockers) or (
        "no such session is left now (it ended just after the timeout)"
    )
    pids = ", ".join(str(session.pid) for session in blockers) or "PID"
    message = (
        f"{what} waited {seconds:g} s for transactions that began before it and gave up: "
        f"{names}. End them (commit or roll back; close sessions you no longer use, e.g. "
        f"`with Session(engine) as session:`; or SELECT pg_terminate_backend({pids})), then "
        "run the build again, or pass a larger wait_timeout (None waits forever)."
    )
    if leftover is not None:
        message += (
            f" The build left the INVALID index {leftover} behind, which could not be dropped "
            f"while they run: the next build drops it, or run DROP INDEX CONCURRENTLY {leftover}."
        )
    return IndexBuildBlocked(message, blockers)


def run_concurrently(
    connection: Connection,
    build: Callable[[], object],
    *,
    index: str,
    wait_timeout: WaitTimeout = DEFAULT_WAIT_TIMEOUT,
    what: str | None = None,
) -> None:
    """Run ``build`` (a ``CREATE INDEX CONCURRENTLY`` of ``index``, a qualified name) on the
    AUTOCOMMIT ``connection``, each of its waits bounded by ``wait_timeout``."""
    what = what or f"CREATE INDEX CONCURRENTLY {index}"
    seconds = wait_seconds(connection, wait_timeout)
    if seconds is None:
        build()
        return
    started = _now(connection)
    deadline = time.monotonic() + seconds
    blockers = old_transactions(connection, started)
    while blockers and time.monotonic() < deadline:
        time.sleep(min(_POLL_SECONDS, max(deadline - time.monotonic(), 0)))
        blockers = old_transactions(connection, started)
    if blockers:
        raise _blocked(what, seconds, blockers, None)
    previous = connection.execute(text("SELECT current_setting('lock_timeout')")).scalar_one()
    connection.execute(
        text("SELECT set_config('lock_timeout', :v, false)"), {"v": f"{int(seconds * 1000)}ms"}
    )
    try:
        build()
    except DBAPIError as error:
        if _sqlstate(error) != _LOCK_NOT_AVAILABLE:
            raise
        # A transaction begun after the check above, but before the build's last wait.
        blockers = old_transactions(connection, _now(connection))
        leftover = _drop_invalid(connection, index)
        raise _blocked(what, seconds, blockers, leftover) from error
    finally:
        connection.execute(text("SELECT set_config('lock_timeout', :v, false)"), {"v": previous})


def _drop_invalid(connection: Connection, index: str) -> str | None:
    """Drop ``index`` if it is INVALID; its name when it could not be dropped."""
    valid = connection.execute(
        text(
            "SELECT indisvalid FROM pg_catalog.pg_index "
            "WHERE indexrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:n)"
        ),
        {"n": index},
    ).scalar()
    if valid is None or valid:
        return None
    # The build's lock_timeout is in force; the drop gets a short one of its own.
    previous = connection.execute(text("SELECT current_setting('lock_timeout')")).scalar_one()
    connection.execute(text("SELECT set_config('lock_timeout', '1s', false)"))
    try:
        connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {index}"))
    except DBAPIError as error:
        if _sqlstate(error) != _LOCK_NOT_AVAILABLE:
            raise
        return index
    finally:
        connection.execute(text("SELECT set_config('lock_timeout', :v, false)"), {"v": previous})
    return None
