"""Read replicas: searches go to a streaming replica, writes and embedding to the primary.

A vector search is read-only, CPU-heavy and easy to spread; writes (and the flush hook that
embeds changed rows) must reach the primary. :class:`RoutingSession` is an ordinary
:class:`~sqlalchemy.orm.Session` whose ``get_bind`` sends *search statements* (those carrying
vecorm's query-time options: ``nearest()``, ``hybrid_search()``, or any statement marked
``.execution_options(vecorm_route="replica")``) to a replica, round robin, and everything else
(flushes, ``session.get``, DML, other selects) to the primary::

    Session = sessionmaker(class_=RoutingSession, primary=primary_engine,
                           replicas=[replica_engine])
    with Session() as session:
        session.add(Document(title="new"))        # embedded and written on the primary
        session.commit()
        rows = session.execute(Document.nearest("query", k=10)).all()   # on the replica

**Replica lag.** A streaming replica replays the primary's WAL a little later (milliseconds
when idle, more under load). A row committed on the primary is invisible on the replica until
its commit record is replayed, so a search right after a commit may miss it. With
``read_your_writes=True`` (the default) the session records the primary's WAL position when
it commits a write, and sends its searches to the primary until the chosen replica has
replayed that far (one cheap ``pg_last_wal_replay_lsn()`` query per search meanwhile). Other
sessions get no such promise; :func:`wait_for_replay` waits explicitly. See docs/scaling.md.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Delete, Insert, Update, bindparam, func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable

from vecorm.errors import ReplicaLagError

#: Execution option: ``"replica"`` or ``"primary"`` forces a statement's route.
ROUTE_OPTION = "vecorm_route"
_SEARCH_PREFIXES = ("vecorm_hnsw_", "vecorm_ivfflat_")
_REPLAYED_SQL = text("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)").bindparams(
    bindparam("lsn")
)


def is_search(statement: Any) -> bool:
    """Whether ``statement`` is a read-only search vecorm may route to a replica."""
    if not isinstance(statement, Executable):
        return False
    options = statement.get_execution_options()
    route = options.get(ROUTE_OPTION)
    if route is not None:
        return bool(route == "replica")
    if isinstance(statement, Insert | Update | Delete) or not getattr(
        statement, "is_select", False
    ):
        return False
    return any(key.startswith(_SEARCH_PREFIXES) for key in options)


def primary_lsn(primary: Engine | Connection) -> str:
    """The primary's current WAL insert position: everything committed so far lies before it.

    (``pg_current_wal_insert_lsn()``, not ``pg_current_wal_lsn()``: with
    ``synchronous_commit = off`` a commit may not have been written out yet.)
    """
    if isinstance(primary, Connection):
        return str(primary.execute(select(func.pg_current_wal_insert_lsn())).scalar_one())
    with primary.connect() as conn:
        return str(conn.execute(select(func.pg_current_wal_insert_lsn())).scalar_one())


def replayed(replica: Engine, lsn: str) -> bool:
    """Whether ``replica`` has replayed the WAL up to ``lsn``."""
    with replica.connect() as conn:
        return bool(conn.execute(_REPLAYED_SQL, {"lsn": lsn}).scalar())


def wait_for_replay(
    primary: Engine, replica: Engine, *, lsn: str | None = None, timeout: float = 10.0
) -> float:
    """Wait until ``replica`` has replayed the primary's WAL up to ``lsn`` (default: now).

    Returns the seconds waited; raises :class:`ReplicaLagError` after ``timeout``. Polls the
    replica every 10 ms on one connection.
    """
    target = lsn if lsn is not None else primary_lsn(primary)
    started = time.monotonic()
    pause = threading.Event()
    with replica.connect() as conn:
        while True:
            if conn.execute(_REPLAYED_SQL, {"lsn": target}).scalar():
                return time.monotonic() - started
            conn.rollback()
            if time.monotonic() - started > timeout:
                raise ReplicaLagError(
                    f"the replica has not replayed up to {target} after {timeout:.1f} s; "
                    "check pg_stat_replication on the primary"
                )
            pause.wait(0.01)


class RoutingSession(Session):
    """A Session that sends searches to replicas and everything else to ``primary``.

    ``replicas`` are engines on streaming replicas (none: everything goes to the primary).
    The route of the last statement is kept in ``session.info["vecorm_route"]``.
    """

    def __init__(
        self,
        *,
        primary: Engine,
        replicas: Sequence[Engine] = (),
        read_your_writes: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.primary = primary
        self.replicas = tuple(replicas)
        self.read_your_writes = read_your_writes
        self._next_replica = itertools.cycle(range(len(self.replicas))) if self.replicas else None
        self._wrote = False
        self._written_lsn: str | None = None

    def get_bind(self, mapper: Any = None, *, clause: Any = None, **kwargs: Any) -> Any:
        if self._flushing or not self.replicas or not is_search(clause):
            if self._flushing or not getattr(clause, "is_select", False):
                self._wrote = True  # a flush, DML or text(): may have written
            return self._route(self.primary, "primary")
        assert self._next_replica is not None
        replica = self.replicas[next(self._next_replica)]
        if self._written_lsn is not None:
            if not replayed(replica, self._written_lsn):
                return self._route(self.primary, "primary (the replica is behind this session)")
            self._written_lsn = None  # caught up: no more checks
        return self._route(replica, "replica")

    def _route(self, engine: Engine, name: str) -> Engine:
        self.info[ROUTE_OPTION] = name
        return engine

    def commit(self) -> None:
        pending = bool(self.new or self.dirty or self.deleted)
        super().commit()
        wrote, self._wrote = self._wrote or pending, False
        if wrote and self.read_your_writes and self.replicas:
            self._written_lsn = primary_lsn(self.primary)
