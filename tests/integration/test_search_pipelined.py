"""A search's settings travel in the search's own round trip (psycopg 3's pipeline mode), and a
search that fails leaves the settings recorded exactly as the server has them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import URL, Integer, func, literal, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError

from tests.integration.recording import RecordingCursor, recording_engine
from tests.integration.test_search_settings import ASKED, DEFAULTS, SEEN_WITH_ASKED, SETTINGS
from vecorm.search.settings import search_options

#: Another search's settings (pgvector's others), beside test_search_settings' ASKED.
OTHER = search_options(ef_search=55)
SEEN_WITH_OTHER = ("55", "off", "auto")
#: Divides by zero only when it runs with ef_search = 123 (ASKED's).
FAILING = select(
    literal(1) / (func.current_setting("hnsw.ef_search").cast(Integer) - 123)
).execution_options(**ASKED)


@pytest.fixture
def status_engine(vecorm_url: URL) -> Iterator[Engine]:
    with recording_engine(vecorm_url, pool_size=1, max_overflow=0) as engine:
        yield engine


@pytest.fixture(params=["psycopg", "psycopg2"])
def any_engine(request: pytest.FixtureRequest, vecorm_url: URL) -> Iterator[Engine]:
    """psycopg 3 (the settings pipelined with the search) and psycopg 2 (a statement of
    their own before it): failures must leave the same record on both."""
    if request.param == "psycopg2":
        pytest.importorskip("psycopg2")
        url = vecorm_url.set(drivername="postgresql+psycopg2")
    else:
        url = vecorm_url
    engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


def _settings(conn: Connection, stmt: Any = SETTINGS) -> tuple[str, ...]:
    return tuple(conn.execute(stmt).one())


def _load_pgvector(conn: Connection) -> None:
    conn.execute(text("SELECT '[1]'::vector"))  # defines the hnsw.* settings
    conn.commit()


def test_the_settings_and_the_search_are_sent_together(status_engine: Engine) -> None:
    with status_engine.connect() as conn:
        _load_pgvector(conn)
        RecordingCursor.sent.clear()
        assert _settings(conn, SETTINGS.execution_options(**ASKED)) == SEEN_WITH_ASKED
        settings_statement, search = RecordingCursor.sent[-2:]
        assert "set_config" in settings_statement.sql and settings_statement.pipelined
        assert "current_setting" in search.sql and search.pipelined  # queued behind them
        # The pipeline is closed: the next statement goes on its own, with the old values.
        RecordingCursor.sent.clear()
        assert _settings(conn) == DEFAULTS
        assert all(not sent.pipelined for sent in RecordingCursor.sent)
        assert conn.connection.driver_connection.pgconn.pipeline_status == 0  # type: ignore[union-attr]
        conn.rollback()


def test_a_search_failing_in_a_savepoint_leaves_the_settings_it_found(any_engine: Engine) -> None:
    with any_engine.connect() as conn:
        _load_pgvector(conn)
        with conn.begin():
            assert _settings(conn, SETTINGS.execution_options(**OTHER)) == SEEN_WITH_OTHER
            savepoint = conn.begin_nested()
            with pytest.raises(DataError, match="division by zero"):
                conn.execute(FAILING)  # its settings ran, then it failed on the server
            savepoint.rollback()  # which undoes them
            # Not recorded as in effect: the same settings are set again for the next search.
            assert _settings(conn, SETTINGS.execution_options(**ASKED)) == SEEN_WITH_ASKED
            assert _settings(conn, SETTINGS.execution_options(**OTHER)) == SEEN_WITH_OTHER
            assert _settings(conn) == DEFAULTS


def test_a_failed_search_ends_its_transaction_cleanly(any_engine: Engine) -> None:
    with any_engine.connect() as conn:
        _load_pgvector(conn)
        with pytest.raises(DataError, match="division by zero"):
            conn.execute(FAILING)
        conn.rollback()
        assert _settings(conn) == DEFAULTS
        assert _settings(conn, SETTINGS.execution_options(**ASKED)) == SEEN_WITH_ASKED
        assert _settings(conn) == DEFAULTS
        conn.rollback()
